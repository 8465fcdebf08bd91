"""Seed bundles: wall per seed of k seeds trained as one bundle against k separate stage-2 trainings.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/seed_bundle.py [--ks 1,3,5,8] [--widths 64,768]
        [--threads 1,2] [--epochs 2] [--repeats 1] [--probe-only] [--no-probe] [--device cpu|cuda]

`--device cuda` trains on the GPU (benchmarks/gpu_check.sh runs it; the probe is CPU-only and is skipped).

For each thread count, width and k: k separate `train_stage2` runs (seeds 0..k-1, one after another,
as k trials on one core would run) and one `train_stage2_bundle` of the same k seeds, on the same
generated stage-1 vectors, alternating which goes first from repeat to repeat so that a load change on a
shared machine hits both. Each is the whole training (data tensors, model, every epoch with its dev and
test evaluation). Printed: wall seconds per seed of each, and speed-up = (seeds/s bundled) / (seeds/s
separate) = separate wall / bundled wall.

Settings: width 64 is the demo's stage 2 (ablations/demo.yaml: 32-d stage-1 vectors projected to 64,
4 heads, batches of 8 dialogues, 120 training / 30 dev / 60 test dialogues). Width 768 is the authors'
(768-d inputs, 8 heads, batches of 16) on fewer dialogues (--dialogues-768), to keep the run short.
Dialogue lengths are drawn from 3..14 utterances.

The probe (`--probe-only`, or first unless --no-probe): training steps per second at k=5, width 64,
1 thread, on fixed batches, of (a) 5 separate packed models, (b) the hand-batched bundle (baddbmm
over the seed dimension, what model/seed_bundle.py does), and (c) torch.func.vmap over
torch.func.functional_call of the padded model with randomness="different" (vmap cannot draw from
per-seed generators, so it could not give each seed its own dropout masks anyway). All three use the
same loss there (the sum of every head's cross-entropy: boolean-mask indexing cannot be vmapped).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import load_config  # noqa: E402
from core.features import SplitFeatures, Stage1Features  # noqa: E402
from model.fusion import build_fusion  # noqa: E402
from model.seed_bundle import SeedBundle, train_stage2_bundle  # noqa: E402
from model.train import IGNORE_LABEL, PaddedSplit, build_optimizer, train_stage2  # noqa: E402

LABELS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
MODALITIES = ("text", "audio", "video")


def make_features(train_dialogues: int, input_dim: int, seed: int = 0) -> Stage1Features:
    """Label-dependent Gaussian vectors for train / dev (a quarter) / test (half), dialogues of 3..14 turns."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(LABELS), input_dim, generator=g)
    splits = {}
    for split, n in (("train", train_dialogues), ("dev", max(2, train_dialogues // 4)), ("test", max(2, train_dialogues // 2))):
        lengths = torch.randint(3, 15, (n,), generator=g).tolist()
        rows = sum(lengths)
        y = torch.randint(0, len(LABELS), (rows,), generator=g)
        vectors = {m: s * centres[y] + torch.randn(rows, input_dim, generator=g) for m, s in zip(MODALITIES, (1.0, 0.6, 0.2))}
        present = {m: torch.ones(rows, dtype=torch.bool) for m in MODALITIES}
        splits[split] = SplitFeatures(vectors, present, y, torch.randint(0, 4, (rows,), generator=g), lengths)
    return Stage1Features(list(LABELS), splits, {"source": "benchmarks/seed_bundle.py"})


def width_settings(width: int) -> dict:
    if width == 64:  # the demo's stage 2
        return {"input_dim": 32, "overrides": ["fusion.width=64", "fusion.heads=4", "train.batch_size=8"]}
    return {"input_dim": width, "overrides": [f"fusion.width={width}", "fusion.heads=8", "train.batch_size=16"]}


def configs(width: int, k: int, epochs: int, device: str = "cpu"):
    return [load_config(None, [*width_settings(width)["overrides"], f"train.epochs={epochs}", f"train.device={device}",
                               f"seed={seed}"]) for seed in range(k)]


def wall_separate(cfgs, features) -> float:
    start = time.perf_counter()
    for cfg in cfgs:
        train_stage2(cfg, features)
    return time.perf_counter() - start


def wall_bundled(cfgs, features) -> float:
    start = time.perf_counter()
    train_stage2_bundle(cfgs, [features] * len(cfgs))
    return time.perf_counter() - start


# ---- the probe: hand-batched against vmap ---------------------------------------------------------

def _dense_loss(logits: dict, labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(z.reshape(-1, z.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_LABEL)
               for z in logits.values())


def probe(k: int = 5, width: int = 64, steps: int = 12, warmup: int = 3) -> dict:
    """Training steps per second of k separate models, the hand-batched bundle, and vmap (see the docstring)."""
    cfg = configs(width, 1, 1)[0]
    dim = width_settings(width)["input_dim"]
    features = make_features(120, dim)
    data = PaddedSplit.build(features.splits["train"], list(MODALITIES), cfg.fusion.max_speakers, torch.device("cpu"))
    bs = cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    orders = [[torch.randperm(len(data), generator=g)[:bs] for _ in range(k)] for _ in range(steps)]
    dims = {m: dim for m in MODALITIES}
    rates = {}

    def timed(step_fn) -> float:
        for i in range(warmup):
            step_fn(orders[i])
        start = time.perf_counter()
        for i in range(warmup, steps):
            step_fn(orders[i])
        return (steps - warmup) / (time.perf_counter() - start)

    models = [build_fusion(cfg.fusion, len(LABELS), dims) for _ in range(k)]
    optimizers = [build_optimizer(m, cfg) for m in models]

    def separate_step(indices):
        for model, optimizer, index in zip(models, optimizers, indices):
            b = data.batch(index)
            loss = _dense_loss(model(b["inputs"], b["speakers"], b["mask"])["logits"], b["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()

    bundle = SeedBundle(cfg.fusion, len(LABELS), dims, list(range(k)), torch.device("cpu"))
    bundle_optimizer = build_optimizer(bundle, cfg)

    def bundled_step(indices):
        batches = [data.batch(index) for index in indices]
        output = bundle(batches)
        loss = sum(_dense_loss(output.seed(s)["logits"], output.rows.per_seed[s].pack(batches[s]["labels"]))
                   for s in range(k))
        bundle_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bundle.clip_gradients(cfg.train.grad_clip)
        bundle_optimizer.step()

    padded = build_fusion(cfg.fusion, len(LABELS), dims, packed=False)
    params, buffers = torch.func.stack_module_state([build_fusion(cfg.fusion, len(LABELS), dims, packed=False)
                                                     for _ in range(k)])
    params = {n: torch.nn.Parameter(p.detach()) for n, p in params.items()}
    vmap_optimizer = torch.optim.AdamW(params.values(), lr=cfg.train.lr, fused=True)

    def one_seed(p, b, inputs, speakers, mask, labels):
        out = torch.func.functional_call(padded, (p, b), (inputs, speakers, mask))
        return _dense_loss(out["logits"], labels)

    vmapped = torch.func.vmap(one_seed, in_dims=(0, 0, 0, 0, 0, 0), randomness="different")

    def vmap_step(indices):
        batches = [data.batch(index) for index in indices]
        t = max(b["mask"].shape[1] for b in batches)  # vmap needs one shape: pad every seed's batch to the longest
        pad = lambda x, fill: F.pad(x, (0, 0, 0, t - x.shape[1]) if x.dim() == 3 else (0, t - x.shape[1]), value=fill)
        inputs = {m: torch.stack([pad(b["inputs"][m], 0.0) for b in batches]) for m in MODALITIES}
        speakers = torch.stack([pad(b["speakers"], cfg.fusion.max_speakers) for b in batches])
        mask = torch.stack([pad(b["mask"], False) for b in batches])
        labels = torch.stack([pad(b["labels"], IGNORE_LABEL) for b in batches])
        loss = vmapped(params, buffers, inputs, speakers, mask, labels).sum()
        vmap_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        vmap_optimizer.step()

    for name, fn in (("separate", separate_step), ("hand-batched", bundled_step), ("vmap", vmap_step)):
        for module in models + [bundle, padded]:
            module.train()
        rates[name] = timed(fn)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="1,3,5,8")
    ap.add_argument("--widths", default="64,768")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dialogues-64", type=int, default=120, help="training dialogues at width 64 (the demo's)")
    ap.add_argument("--dialogues-768", type=int, default=32, help="training dialogues at width 768")
    ap.add_argument("--repeats", type=int, default=1, help="measure this many times; medians are printed")
    ap.add_argument("--probe-only", action="store_true")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the whole trainings run")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}")

    if not args.no_probe and args.device == "cpu":
        torch.set_num_threads(1)
        rates = probe()
        print("\nProbe: k=5 seeds, width 64, 1 thread, training steps/s (each step trains all 5 seeds once):")
        for name, rate in rates.items():
            print(f"  {name:>13}: {rate:6.2f} steps/s   {rate / rates['separate']:.2f}x separate")
        if args.probe_only:
            return

    print(f"\nWhole trainings on {args.device} ({args.epochs} epochs, dev and test evaluated each epoch), wall s per seed, median "
          f"of {args.repeats}; speed-up = separate / bundled:")
    print(f"  {'threads':>7} {'width':>5} {'k':>2} {'separate s/seed':>15} {'bundled s/seed':>14} {'speed-up':>8}")
    for threads in (int(n) for n in args.threads.split(",")):
        torch.set_num_threads(threads)
        for width in (int(w) for w in args.widths.split(",")):
            dialogues = args.dialogues_64 if width == 64 else args.dialogues_768
            features = make_features(dialogues, width_settings(width)["input_dim"])
            for k in (int(n) for n in args.ks.split(",")):
                cfgs = configs(width, k, args.epochs, args.device)
                walls = {"separate": [], "bundled": []}
                for repeat in range(args.repeats):
                    order = ("separate", "bundled") if repeat % 2 == 0 else ("bundled", "separate")
                    for name in order:
                        walls[name].append((wall_separate if name == "separate" else wall_bundled)(cfgs, features))
                separate, bundled = (statistics.median(walls[n]) for n in ("separate", "bundled"))
                print(f"  {threads:>7} {width:>5} {k:>2} {separate / k:>15.3f} {bundled / k:>14.3f} "
                      f"{separate / bundled:>8.2f}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
