"""fp32 against bf16 (autocast), side by side: stage-2 and stage-1 throughput, and one small end-to-end case.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/precision_check.py case                  # CPU: both stages, metrics + time
    PYTHONPATH=$PWD .venv/bin/python benchmarks/precision_check.py stage2 --device cuda --width 768
    PYTHONPATH=$PWD .venv/bin/python benchmarks/precision_check.py minilm --device cuda  # bundled MiniLM fine-tuning
    (add --quick for a seconds-long smoke run: tests/test_gpu_check.py runs every part that way on the CPU)

`case`: the fixed small cases of tests/test_precision.py (stage 1: tiny text, audio and video encoders with
KD on a hand-built dataset; stage 2: class-centred vectors), in fp32 and in bf16; prints each stage's
seconds and scores and the differences.
`stage2`: training throughput of the fusion model (utterances/s, forward + loss + backward + clip +
AdamW) on random 768-d inputs in batches of 16 dialogues of 4-20 turns. `minilm`: fine-tuning throughput
of the bundled all-MiniLM-L6-v2 text encoder (sequences/s, batch 8, 128 tokens). Each throughput
alternates fp32 and bf16 within every repeat so that a load change hits both, and reports the median
and the bf16/fp32 ratio. benchmarks/gpu_check.sh runs the GPU parts.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import load_config  # noqa: E402
from core.features import SplitFeatures  # noqa: E402
from model.fusion import build_fusion  # noqa: E402
from model.runtime import autocast, grad_scaler  # noqa: E402
from model.train import PaddedSplit, build_optimizer, linear_warmup_decay, train_step  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_split(n_dialogues: int, dim: int, labels: int, generator: torch.Generator) -> SplitFeatures:
    lengths = torch.randint(4, 21, (n_dialogues,), generator=generator).tolist()
    rows = sum(lengths)
    vectors = {m: torch.randn(rows, dim, generator=generator) for m in ("text", "audio", "video")}
    present = {m: torch.ones(rows, dtype=torch.bool) for m in vectors}
    return SplitFeatures(vectors, present, torch.randint(0, labels, (rows,), generator=generator),
                         torch.randint(0, 3, (rows,), generator=generator), lengths)


def stage2_throughput(device: torch.device, width: int, steps: int, repeats: int) -> dict[str, float]:
    """Training utterances per second of the stage-2 model, per precision (median over repeats)."""
    generator = torch.Generator().manual_seed(0)
    split = _random_split(16 * steps, 768, 7, generator)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(repeats):
        for precision in PRECISIONS:
            cfg = load_config(None, [f"fusion.width={width}", f"train.precision={precision}", "train.device=cpu"])
            torch.manual_seed(0)
            data = PaddedSplit.build(split, list(cfg.fusion.modalities), cfg.fusion.max_speakers, device)
            model = build_fusion(cfg.fusion, 7, {m: 768 for m in cfg.fusion.modalities}).to(device).train()
            optimizer = build_optimizer(model, cfg)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(0, 10 ** 6))
            scaler = grad_scaler(precision, device)
            batches = [data.batch(torch.arange(i * 16, (i + 1) * 16)) for i in range(steps)]
            train_step(cfg, model, batches[0], optimizer, scheduler, scaler, device)   # warm-up
            _sync(device)
            start = time.perf_counter()
            for batch in batches:
                train_step(cfg, model, batch, optimizer, scheduler, scaler, device)
            _sync(device)
            times[precision].append(time.perf_counter() - start)
    utterances = sum(split.dialogue_lengths)
    return {p: utterances / statistics.median(t) for p, t in times.items()}


def minilm_throughput(device: torch.device, steps: int, repeats: int, tokens: int = 128,
                      batch: int = 8) -> dict[str, float]:
    """Fine-tuning sequences per second of the bundled MiniLM text encoder (forward, CE, backward, AdamW)."""
    from model.encoders import build_text_encoder

    cfg = load_config(None, ["stage1.text_encoder=minilm", "stage1.width=384", f"stage1.max_tokens={tokens}"])
    encoder = build_text_encoder(cfg.stage1, ["a few words"], 7, cfg.fusion.max_speakers).to(device).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(len(encoder.tokenizer), 30000), (batch, tokens), generator=generator).to(device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 7, (batch,), generator=generator).to(device)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(repeats):
        for precision in PRECISIONS:
            scaler = grad_scaler(precision, device)

            def step():
                with autocast(precision, device):
                    _, logits = encoder(ids, mask)
                    loss = torch.nn.functional.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

            step()
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            times[precision].append(time.perf_counter() - start)
    return {p: batch * steps / statistics.median(t) for p, t in times.items()}


def end_to_end_case(quick: bool, repeats: int = 1) -> None:
    """The fixed small cases of tests/test_precision.py, fp32 and bf16 side by side: stage 1 on the hand-built
    dataset of tests/test_stage1.py (tiny text, audio and video encoders, KD on), stage 2 on the class-centred
    vectors of tests/test_train_stage2.py. Seconds are the median over `repeats`, fp32 and bf16 alternating."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_stage1 import make_dataset
    from test_stage1 import tiny_cfg as stage1_cfg
    from test_train_stage2 import make_features, tiny_cfg

    from model.stage1 import run_stage1
    from model.train import train_stage2

    dataset = make_dataset(train=10, dev=4, test=4)
    features = make_features(n_train=48)
    seconds: dict[str, dict[str, list[float]]] = {p: {"stage1_s": [], "stage2_s": []} for p in PRECISIONS}
    rows: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for precision in PRECISIONS:
            start = time.perf_counter()
            stage1 = run_stage1(stage1_cfg(**{"stage1.epochs": 1 if quick else 3, "stage1.precision": precision}),
                                dataset, log=lambda m: None)
            seconds[precision]["stage1_s"].append(time.perf_counter() - start)
            start = time.perf_counter()
            stage2 = train_stage2(tiny_cfg("train.epochs=2" if quick else "train.epochs=6",
                                           f"train.precision={precision}"), features)
            seconds[precision]["stage2_s"].append(time.perf_counter() - start)
            rows[precision] = {**{f"stage1 {m} dev wF1": float(stage1.info[f"{m}_dev_wf1"]) for m in ("text", "audio", "video")},
                               "stage2 dev wF1": stage2.metrics["selected_dev_wf1"],
                               "stage2 test wF1": stage2.metrics["selected_test_wf1"],
                               "stage2 final train loss": stage2.history[-1]["train_loss"]}
    for precision in PRECISIONS:
        rows[precision].update({k: statistics.median(v) for k, v in seconds[precision].items()})
    print(f"{'':24s} {'fp32':>9s} {'bf16':>9s} {'bf16-fp32':>10s}")
    for key in rows["fp32"]:
        a, b = rows["fp32"][key], rows["bf16"][key]
        ratio = f"  bf16/fp32 x{b / a:.2f}" if key.endswith("_s") else ""
        print(f"{key:24s} {a:9.4f} {b:9.4f} {b - a:+10.4f}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["case", "stage2", "minilm"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps, repeats = (1, 1) if args.quick else (args.steps, args.repeats)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    if args.part == "case":
        end_to_end_case(args.quick, repeats)
        return
    if args.part == "stage2":
        width = 32 if args.quick else args.width
        result, unit = stage2_throughput(device, width, steps, repeats), f"utterances/s (stage 2 training, width {width})"
    else:
        result, unit = minilm_throughput(device, steps, repeats, tokens=16 if args.quick else 128), \
            "sequences/s (MiniLM fine-tuning, batch 8)"
    print(f"{unit}: fp32 {result['fp32']:.1f}, bf16 {result['bf16']:.1f}, bf16/fp32 x{result['bf16'] / result['fp32']:.2f}")


if __name__ == "__main__":
    main()
