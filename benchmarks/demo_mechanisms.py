"""Why the demo's planted mechanisms do or do not reach its table: stage-1 probes on the demo's own data.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/demo_mechanisms.py [--minilm]

Trains stage 1 exactly as a demo trial does (`model.stage1.run_text` / `run_media` with the config of
ablations/demo.yaml) and scores the kept epoch on dev and test, split by what the generator planted:
1. text, prompt on and off: accuracy on the context-only turns ("I still feel the same way.": the label is
   the speaker's earlier emotion) and on the other turns. With --minilm also the bundled all-MiniLM-L6-v2
   fine-tuned (3 epochs, lr 5e-5, 64 tokens), to see whether a pretrained encoder reads the context better
   and what that costs on a CPU;
2. the audio student, with and without distillation from the text teacher, and with the label-noise and
   corrupted-line mechanisms turned off: accuracy on clean and on corrupted dialogues. A dialogue counts as
   corrupted when its clips' median sample-to-sample spread is above 0.35 (the bad line's white noise;
   a clean clip's harmonic tone stays well below).
Prints one RESULT line per probe; benchmarks/RESULTS.md quotes them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model.stage1 as stage1  # noqa: E402
from dialogue_data.registry import load_dataset  # noqa: E402
from dialogue_data.synthetic import CONTINUATIONS  # noqa: E402
from sweep.ablation_spec import load_ablation  # noqa: E402

CONTEXT_ONLY = set(CONTINUATIONS) | {c[0].upper() + c[1:] for c in CONTINUATIONS}
CPU = torch.device("cpu")


def demo_config(overrides: dict):
    return load_ablation(ROOT / "ablations" / "demo.yaml").trials()[0].cfg.replace(overrides)


def logits_of_last_predictions(run):
    """Run `run()` while recording model.stage1.predict's outputs; -> (dev logits, test logits), the last two
    calls (run_text and run_media encode train, dev, test in that order at the end)."""
    calls, original = [], stage1.predict

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out[1])
        return out

    stage1.predict = recording
    try:
        run()
    finally:
        stage1.predict = original
    return calls[-2], calls[-1]


def right_and_context_only(table, logits) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `table`: 1.0 where the kept epoch's prediction is right; True where the turn is context-only."""
    right = (logits.argmax(-1) == table.labels).float().numpy()
    return right, np.array([u.text in CONTEXT_ONLY for u in table.utterances])


def text_probe(encoder: str, prompt: bool, epochs: int, lr: float) -> None:
    over = {"stage1.text_encoder": encoder, "stage1.prompt": prompt, "stage1.epochs": epochs, "stage1.lr": lr}
    if encoder != "tiny":
        over["stage1.max_tokens"] = 64
    cfg = demo_config(over)
    dataset = load_dataset(cfg.data)
    tables = stage1.split_tables(dataset, cfg.fusion.max_speakers)
    start = time.perf_counter()
    logits = logits_of_last_predictions(lambda: stage1.run_text(cfg, dataset, tables, CPU, log=lambda m: None))
    seconds = time.perf_counter() - start
    for split, z in zip(("dev", "test"), logits):
        table = tables[split]
        right, context = right_and_context_only(table, z)
        print(f"RESULT text {encoder} prompt={'on' if prompt else 'off'} {epochs} epochs lr {lr:g} {split}: "
              f"context-only acc {right[context].mean():.3f} (n={context.sum()}), other turns "
              f"{right[~context].mean():.3f}, all {right.mean():.3f}; stage-1 text {seconds:.0f} s", flush=True)


def corrupted_rows(table) -> np.ndarray:
    dialogue = np.repeat(np.arange(len(table.lengths)), table.lengths)                 # (N,) dialogue of each row
    spread = np.array([float(np.std(np.diff(u.waveform))) for u in table.utterances])
    bad = np.array([np.median(spread[dialogue == d]) > 0.35 for d in range(len(table.lengths))])
    return bad[dialogue]


def audio_probe(kd: bool, mechanisms_on: bool) -> None:
    over = {"stage1.kd": kd}
    if not mechanisms_on:
        over.update({"data.train_label_noise": 0.0, "data.corrupt_share": 0.0})
    cfg = demo_config(over)
    dataset = load_dataset(cfg.data)
    tables = stage1.split_tables(dataset, cfg.fusion.max_speakers)

    def run():
        _, teacher = stage1.run_text(cfg, dataset, tables, CPU, log=lambda m: None)
        stage1.run_media("audio", cfg, dataset, tables, teacher, CPU, log=lambda m: None)

    start = time.perf_counter()
    logits = logits_of_last_predictions(run)
    seconds = time.perf_counter() - start
    for split, z in zip(("dev", "test"), logits):
        table = tables[split]
        right, context = right_and_context_only(table, z)
        bad = corrupted_rows(table)
        clean = ~bad & ~context
        corrupted = f"{right[bad].mean():.3f} (n={bad.sum()})" if bad.any() else "none"
        print(f"RESULT audio {'student (KD)' if kd else 'encoder (no KD)'}, mechanisms "
              f"{'on' if mechanisms_on else 'noise+corruption off'} {split}: clean turns {right[clean].mean():.3f} "
              f"(n={clean.sum()}), corrupted dialogues {corrupted}, all {right.mean():.3f}; "
              f"stage-1 text+audio {seconds:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm", action="store_true", help="also fine-tune the bundled MiniLM (about 10 min on 1 CPU thread)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    demo_stage1 = demo_config({}).stage1
    for prompt in (True, False):
        text_probe("tiny", prompt, demo_stage1.epochs, demo_stage1.lr)
    if args.minilm:
        for prompt in (True, False):
            text_probe("minilm", prompt, 3, 5e-5)
    for kd, mechanisms_on in ((True, True), (False, True), (False, False)):
        audio_probe(kd, mechanisms_on)


if __name__ == "__main__":
    main()
