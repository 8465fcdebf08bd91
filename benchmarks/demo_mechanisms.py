"""Why the demo's planted mechanisms do or do not reach its table: stage-1 probes on the demo's own data.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/demo_mechanisms.py [--minilm]

Trains stage 1 exactly as a demo trial does (`model.stage1.run_text` / `run_media` with the config of
ablations/demo.yaml) and scores the kept epoch on dev and test, split by what the generator planted:
1. text, prompt on (with and without stage1.target_segment) and off: accuracy on the context-only turns (replies such as "Don't even ask.": the label
   is the emotion of the event the turn before asks about) and on the other turns. With --minilm also the bundled all-MiniLM-L6-v2
   fine-tuned (3 epochs, lr 5e-5, 64 tokens), to see whether a pretrained encoder reads the context better
   and what that costs on a CPU;
2. the audio student, with and without distillation from the text teacher, and with the label-noise and
   corrupted-line mechanisms turned off: accuracy on clean and on corrupted dialogues. A dialogue counts as
   corrupted when its clips' median sample-to-sample spread is above 0.35 (the bad line's white noise;
   a clean clip's harmonic tone stays well below);
3. the anchor gates of a trained `full` stage 2 (the demo's config, trained as a trial trains it, last epoch):
   the mean gate value sigmoid(relu(W x)) of each gate on each path, over the test rows of clean and of
   corrupted dialogues. The authors' gate lies in [0.5, 1) by construction: it can halve a path, never shut it.
Prints one RESULT line per probe; benchmarks/RESULTS.md quotes them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model.stage1 as stage1  # noqa: E402
import model.train as train  # noqa: E402
from dialogue_data.registry import load_dataset  # noqa: E402
from dialogue_data.synthetic import is_reply  # noqa: E402
from model.fusion import Gate  # noqa: E402
from pipeline.trial import stage1_features  # noqa: E402
from sweep.ablation_spec import load_ablation  # noqa: E402

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
    return right, np.array([is_reply(u.text) for u in table.utterances])


def text_probe(encoder: str, prompt: bool, epochs: int, lr: float, segment: bool = False) -> None:
    over = {"stage1.text_encoder": encoder, "stage1.prompt": prompt, "stage1.epochs": epochs, "stage1.lr": lr,
            "stage1.target_segment": segment}
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
        print(f"RESULT text {encoder} prompt={'on' if prompt else 'off'}{' + target segment' if segment else ''} {epochs} epochs lr {lr:g} {split}: "
              f"context-only acc {right[context].mean():.3f} (n={context.sum()}), other turns "
              f"{right[~context].mean():.3f}, all {right.mean():.3f}; stage-1 text {seconds:.0f} s", flush=True)


def bad_line(utterances) -> bool:
    """A corrupted dialogue (data.corrupt_share): its clips' median sample-to-sample spread is above 0.35."""
    return float(np.median([np.std(np.diff(u.waveform)) for u in utterances])) > 0.35


def corrupted_rows(table) -> np.ndarray:
    ends = np.cumsum(table.lengths)
    bad = np.array([bad_line(table.utterances[end - n:end]) for n, end in zip(table.lengths, ends)])
    return np.repeat(bad, table.lengths)                                               # (N,) per row


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


def trained_full_stage2(cfg, features) -> torch.nn.Module:
    """Train stage 2 as a trial does (`model.train.train_stage2`) and keep the model it built (last epoch)."""
    built, original = [], train.build_fusion

    def keeping(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    train.build_fusion = keeping
    try:
        train.train_stage2(cfg, features)
    finally:
        train.build_fusion = original
    return built[0].eval()


def gate_probe() -> None:
    cfg = demo_config({})
    with tempfile.TemporaryDirectory() as cache:                  # stage 1 computed afresh, as in a cold demo
        dataset, _, features = stage1_features(cfg, cache, log=lambda m: None)
        model = trained_full_stage2(cfg, features)
    test = train.PaddedSplit.build(features.splits["test"], list(cfg.fusion.modalities), cfg.fusion.max_speakers, CPU)
    bad = corrupted_rows(stage1.split_tables(dataset, cfg.fusion.max_speakers)["test"])
    calls = []                                                    # (gate name, (N,) mean gate value per row)

    def hook(name):
        return lambda gate, args, out: calls.append((name, gate.openness(args[0]).mean(-1)))

    for name, module in model.named_modules():
        if isinstance(module, Gate):
            module.register_forward_hook(hook(name))
    with torch.inference_mode():
        train._forward(model, test.batch(torch.arange(len(test))))
    sources = {f"branches.{m}": [m] + [o for o in model.modalities if o != m] for m in model.branch_modalities}
    sources["anchor"] = [model.anchor_modality] + list(model.branch_modalities)
    seen: dict[str, int] = {}
    for name, g in calls:
        block = name.rsplit(".gates.", 1)[0]
        k = seen[block] = seen.get(block, -1) + 1
        g = g.numpy()
        print(f"RESULT gate {block}, path from {sources[block][k]}: mean gate on clean dialogues' rows "
              f"{g[~bad].mean():.3f}, on corrupted dialogues' rows {g[bad].mean():.3f} (n={bad.sum()}); "
              f"lowest row {g.min():.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm", action="store_true", help="also fine-tune the bundled MiniLM (about 10 min on 1 CPU thread)")
    ap.add_argument("--only", choices=("text", "audio", "gates"), help="run one probe only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.only == "gates":
        return gate_probe()
    demo_stage1 = demo_config({}).stage1
    if args.only in (None, "text"):
        for prompt, segment in ((True, True), (True, False), (False, False)):
            text_probe("tiny", prompt, demo_stage1.epochs, demo_stage1.lr, segment)
        if args.minilm:
            for prompt in (True, False):
                text_probe("minilm", prompt, 3, 5e-5)
    if args.only in (None, "audio"):
        for kd, mechanisms_on in ((True, True), (False, True), (False, False)):
            audio_probe(kd, mechanisms_on)
    if args.only is None:
        gate_probe()


if __name__ == "__main__":
    main()
