"""Checkpoint I/O at width 768: seconds and bytes per save, and its share of a trial's time.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/checkpoint_io.py [--dir /tmp] [--train-steps 3] [--epochs 30]

Builds the stage-2 model at the authors' MELD settings (width 768, three modalities), takes a few
training steps on batches with MELD train lengths (which also gives the epoch time this machine
would need for MELD's 9,989 training utterances), then saves the resume state exactly as a sweep
trial does (model + AdamW state as CPU copies, `torch.save`) and copies the directory once more, as
Ray does when it persists a reported checkpoint. It prints the share of a trial spent on
checkpoints with one save per epoch (before) and with `train.checkpoint_interval_s` (now), and disk
per trial with 2 checkpoints kept (before) and 1 (now).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fusion_throughput import CLASSES, INPUT_DIM, MODALITIES, make_batches, meld_dialogue_lengths  # noqa: E402
from core.config import load_config  # noqa: E402
from model.fusion import build_fusion, stage2_loss  # noqa: E402
from model.train import _cpu_copy, build_optimizer  # noqa: E402

MELD_TRAIN_UTTERANCES = 9989


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meld-csv", default=str(ROOT.parent / "shared" / "data" / "meld" / "train_sent_emo.csv"))
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoints are written (a local disk)")
    ap.add_argument("--train-steps", type=int, default=3, help="timed training steps (after 1 warm-up)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the trial the shares are computed for")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, ["fusion.width=768"])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
          f"load average at start {os.getloadavg()[0]:.2f}")

    torch.manual_seed(0)
    model = build_fusion(cfg.fusion, CLASSES, {m: INPUT_DIM for m in MODALITIES})
    optimizer = build_optimizer(model, cfg)
    batches = make_batches(meld_dialogue_lengths(Path(args.meld_csv)), args.train_steps + 1, seed=1, device="cpu")
    model.train()
    for i, b in enumerate(batches):
        if i == 1:
            start = time.perf_counter()
        loss = stage2_loss(cfg, model(b["inputs"], b["speakers"], b["mask"]), b["labels"], b["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    rate = sum(int(b["mask"].sum()) for b in batches[1:]) / (time.perf_counter() - start)
    epoch_s = MELD_TRAIN_UTTERANCES / rate

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ckpt-bench-") as tmp:
        start = time.perf_counter()
        state = {"model": _cpu_copy(model.state_dict()), "optimizer": _cpu_copy(optimizer.state_dict())}
        os.makedirs(os.path.join(tmp, "trial"))
        torch.save(state, os.path.join(tmp, "trial", "state.pt"))
        shutil.copytree(os.path.join(tmp, "trial"), os.path.join(tmp, "persisted"))  # Ray's copy into storage
        save_s = time.perf_counter() - start
        size = os.path.getsize(os.path.join(tmp, "trial", "state.pt"))

    interval = cfg.train.checkpoint_interval_s
    trial_s = args.epochs * epoch_s
    saves_now = math.floor(trial_s / interval) + 1 if interval > 0 else args.epochs
    saves_now = min(saves_now, args.epochs)
    share = lambda saves: saves * save_s / (trial_s + saves * save_s)
    print(f"training rate {rate:.0f} utt/s -> MELD epoch {epoch_s:.0f} s (training only), trial of {args.epochs} epochs "
          f"{trial_s / 60:.0f} min")
    print(f"one checkpoint: {size / 1e9:.2f} GB, {save_s:.2f} s (CPU copy + torch.save + one directory copy)")
    print(f"  before: a save every epoch, 2 kept : {args.epochs} saves, I/O {100 * share(args.epochs):.1f}% of the trial, "
          f"disk {2 * size / 1e9:.2f} GB per trial")
    print(f"  now: every {interval:.0f} s + last, 1 kept: {saves_now} saves, I/O {100 * share(saves_now):.1f}% of the trial, "
          f"disk {size / 1e9:.2f} GB per trial")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
