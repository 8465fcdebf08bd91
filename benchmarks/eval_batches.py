"""Stage-2 evaluation cost by batch size and attention layout, at the demo's sizes.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/eval_batches.py [--dialogues 120] [--width 64] [--repeats 5]

One pass of the packed model (eval, no grad, 1 thread) over D synthetic dialogues of 4-12 utterances
(the demo's lengths), in batches of 8, 16, 32, 60 and all D dialogues, with attention as the (N, N)
block-diagonal product (what model/fusion.py does without dropout) and, for comparison, on the (B, T, T)
grid. The median of the repeats is printed per cell. model/train.evaluate uses batches of
EVAL_BATCH_FACTOR x train.batch_size dialogues (32 in the demo).
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
from model import fusion  # noqa: E402

MODALITIES = ("text", "audio", "video")


def batches(lengths: torch.Tensor, size: int, dim: int, g: torch.Generator) -> list[tuple]:
    out = []
    for start in range(0, len(lengths), size):
        chunk = lengths[start:start + size]
        b, t = len(chunk), int(chunk.max())
        mask = torch.arange(t)[None, :] < chunk[:, None]
        out.append(({m: torch.randn(b, t, dim, generator=g) for m in MODALITIES},
                    torch.randint(0, 4, (b, t), generator=g), mask))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=120)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, [f"fusion.width={args.width}", "fusion.heads=4"])
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 13, (args.dialogues,), generator=g)
    model = fusion.build_fusion(cfg.fusion, 6, {m: 32 for m in MODALITIES}, packed=True).eval()
    block_diagonal = fusion.PackedRows.attend

    def on_grid(self, q, k, v, key_mask, heads, dropout=None):
        return self._attend_on_grid(q, k, v, key_mask, heads, dropout)

    print(f"torch {torch.__version__}, width {args.width}, {args.dialogues} dialogues of 4-12 utterances, "
          f"ms per pass (median of {args.repeats}):")
    print(f"  {'batch':>5} {'block-diag':>10} {'grid':>8}")
    for size in (8, 16, 32, 60, args.dialogues):
        bb = batches(lengths, size, 32, g)
        cells = []
        for attend in (block_diagonal, on_grid):
            fusion.PackedRows.attend = attend
            with torch.no_grad():
                for x in bb:
                    model(*x)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    for x in bb:
                        model(*x)
                    times.append(time.perf_counter() - start)
            cells.append(statistics.median(times) * 1000)
        fusion.PackedRows.attend = block_diagonal
        print(f"  {size:>5} {cells[0]:>10.1f} {cells[1]:>8.1f}")


if __name__ == "__main__":
    main()
