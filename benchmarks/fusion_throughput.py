"""Stage-2 fusion throughput (utterances/second), packed rows against the padded oracle, and parameter counts.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fusion_throughput.py [--train-steps 8] [--eval-steps 16]
        [--repeats 3] [--threads 1,2] [--widths 768,128]

For every thread count and width the two implementations (`build_fusion(..., packed=False)`, the
padded path, and `packed=True`, the default) are measured on identical batches, alternating
padded / packed within each repeat so that a load change on a shared machine hits both; the table
prints the median (best) of each and the ratio of the medians. "padded" is the implementation as it
was before the packed rows: padded model, default (foreach) AdamW; "packed" is what
model/train.py runs now: packed model, fused AdamW.

Batches are 16 dialogues whose lengths are drawn from MELD's training split (dialogue lengths of
../shared/data/meld/train_sent_emo.csv, grouped by Dialogue_ID), padded to the longest in the batch
as the trainer does. Inputs are random 768-d stage-1 vectors for text, audio and video (the
authors' MELD widths); width 128 therefore adds a 768 -> 128 projection per modality. Training
throughput times forward + stage-2 loss (ce + logit terms) + backward + clip + AdamW step;
evaluation times the no-grad forward in eval mode. Only real (unpadded) utterances are counted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import load_config  # noqa: E402
from model.fusion import build_fusion, count_parameters, stage2_loss  # noqa: E402
from model.train import build_optimizer  # noqa: E402

MODALITIES = ("text", "audio", "video")
INPUT_DIM = 768
CLASSES = 7
DIALOGUES_PER_BATCH = 16


def meld_dialogue_lengths(csv_path: Path) -> torch.Tensor:
    frame = pd.read_csv(csv_path)
    return torch.tensor(frame.groupby("Dialogue_ID").size().to_numpy(), dtype=torch.int64)


def make_batches(lengths_pool: torch.Tensor, n: int, seed: int, device) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        lengths = lengths_pool[torch.randint(0, len(lengths_pool), (DIALOGUES_PER_BATCH,), generator=g)]
        t = int(lengths.max())
        mask = torch.arange(t)[None, :] < lengths[:, None]
        batches.append({
            "inputs": {m: torch.randn(DIALOGUES_PER_BATCH, t, INPUT_DIM, generator=g).to(device) for m in MODALITIES},
            "speakers": torch.randint(0, 9, (DIALOGUES_PER_BATCH, t), generator=g).to(device),
            "labels": torch.randint(0, CLASSES, (DIALOGUES_PER_BATCH, t), generator=g).to(device),
            "mask": mask.to(device),
        })
    return batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(cfg, batches_train, batches_eval, device, packed: bool, warmup: int = 2,
               clock=time.perf_counter) -> tuple[float, float]:
    """(training, evaluation) utterances per second of `clock` over the batches after the first `warmup`."""
    torch.manual_seed(0)
    model = build_fusion(cfg.fusion, CLASSES, {m: INPUT_DIM for m in MODALITIES}, packed=packed).to(device)
    if packed:  # what model/train.py does now
        optimizer = build_optimizer(model, cfg)
    else:       # today's padded implementation as it was: the padded model and the default (foreach) AdamW
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def train_step(b):
        out = model(b["inputs"], b["speakers"], b["mask"])
        loss = stage2_loss(cfg, out, b["labels"], b["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()

    model.train()
    for b in batches_train[:warmup]:
        train_step(b)
    _sync(device)
    start = clock()
    for b in batches_train[warmup:]:
        train_step(b)
    _sync(device)
    train_rate = sum(int(b["mask"].sum()) for b in batches_train[warmup:]) / (clock() - start)

    model.eval()
    with torch.no_grad():
        for b in batches_eval[:warmup]:
            model(b["inputs"], b["speakers"], b["mask"])
        _sync(device)
        start = clock()
        for b in batches_eval[warmup:]:
            model(b["inputs"], b["speakers"], b["mask"])
        _sync(device)
    eval_rate = sum(int(b["mask"].sum()) for b in batches_eval[warmup:]) / (clock() - start)
    return train_rate, eval_rate


def authors_parameter_count(w: int = 768, classes: int = CLASSES) -> int:
    """What the authors' MELD Transformer_Based_Model constructs (their printed total), by formula:
    9 encoders (6 used + t_t, and a_t / v_t built but unused), each with a layer LayerNorm that one
    layer never uses; 9 gates (2 unused); 3 reductions; an unused fc (3W -> W); 3 classifiers;
    a 305-row speaker table."""
    encoder = 4 * (w * w + w) + 2 * (w * w + w) + 2 * w + 2 * w
    return 9 * encoder + 9 * (w * w + w) + 3 * (3 * w * w + w) + (3 * w * w + w) + 3 * (w * classes + classes) + 305 * w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meld-csv", default=str(ROOT.parent / "shared" / "data" / "meld" / "train_sent_emo.csv"))
    ap.add_argument("--train-steps", type=int, default=8, help="timed training batches (after 2 warm-up)")
    ap.add_argument("--eval-steps", type=int, default=16, help="timed evaluation batches (after 2 warm-up)")
    ap.add_argument("--widths", default="768,128")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="measure this many times; median and best are printed")
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts to measure, comma-separated")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU seconds (time.process_time), steadier on a shared machine; "
                         "with 2 threads it counts both threads' time, spin-waits included")
    args = ap.parse_args()
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    lengths = meld_dialogue_lengths(Path(args.meld_csv))
    print(f"MELD train dialogues: {len(lengths)}, lengths {int(lengths.min())}..{int(lengths.max())}, "
          f"mean {lengths.float().mean():.2f}")
    print(f"torch {torch.__version__}, device {device}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}")

    print("\nStage-2 parameters at the authors' MELD settings (width 768, 8 heads, 7 classes, inputs 768 x 3):")
    for shared in (True, False):
        cfg = load_config(None, [f"fusion.shared_anchor_layers={str(shared).lower()}"])
        model = build_fusion(cfg.fusion, CLASSES, {m: INPUT_DIM for m in MODALITIES})
        print(f"  shared_anchor_layers={str(shared).lower():5s}: {count_parameters(model):,}")
    print(f"  (the authors' Transformer_Based_Model, as constructed incl. unused modules: {authors_parameter_count():,})")

    print(f"\nThroughput, batches of {DIALOGUES_PER_BATCH} dialogues (MELD train lengths), dropout 0.5, "
          f"{args.train_steps} train / {args.eval_steps} eval batches timed, {args.repeats} repeats, "
          f"utt per {args.clock}-clock second, median (best); ratio = packed / padded medians:")
    print(f"  {'threads':>7} {'width':>5} {'mode':>5} {'padded utt/s':>16} {'packed utt/s':>16} {'ratio':>6}")
    for threads in (int(n) for n in args.threads.split(",")):
        torch.set_num_threads(threads)
        for width in (int(w) for w in args.widths.split(",")):
            cfg = load_config(None, [f"fusion.width={width}", f"fusion.heads={args.heads}"])
            batches_train = make_batches(lengths, args.train_steps + 2, seed=1, device=device)
            batches_eval = make_batches(lengths, args.eval_steps + 2, seed=2, device=device)
            rates = {False: [], True: []}
            for _ in range(args.repeats):
                for packed in (False, True):
                    rates[packed].append(throughput(cfg, batches_train, batches_eval, device, packed, clock=clock))
            for col, mode in enumerate(("train", "eval")):
                padded = sorted(r[col] for r in rates[False])
                packed = sorted(r[col] for r in rates[True])
                cell = lambda xs: f"{statistics.median(xs):.0f} ({xs[-1]:.0f})"
                ratio = statistics.median(packed) / statistics.median(padded)
                print(f"  {threads:>7} {width:>5} {mode:>5} {cell(padded):>16} {cell(packed):>16} {ratio:>6.2f}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
