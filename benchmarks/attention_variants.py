"""Packed attention four ways, on the benchmark's MELD-length batches: the block-diagonal SDPA product the packed
model runs in evaluation, the padded (B, H, T, T) grid (scatter, SDPA, gather), the same grid with the
training path's hand-written product and `softmax_last`, and a hand-written baddbmm.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/attention_variants.py

One thread, no grad, 20 batches of 16 dialogues x 3 repeats per width; prints milliseconds per call and the
largest difference of any way's output from the block-diagonal one (they compute the same thing).
"""
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fusion_throughput as ft  # noqa: E402
from model.fusion import PackedRows, softmax_last  # noqa: E402


def baddbmm_attention(rows: PackedRows, q, k, v, key_mask, heads: int) -> torch.Tensor:
    n, w = q.shape
    bias, keep = rows._attention_mask(key_mask, q.dtype)
    q, k, v = (x.view(n, heads, w // heads).transpose(0, 1) for x in (q, k, v))          # (H, N, hd)
    scores = torch.baddbmm(bias.expand(heads, n, n), q, k.transpose(1, 2), alpha=(w // heads) ** -0.5)
    context = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, w)
    return context if keep is None else context * keep


def grid_softmax_last(rows: PackedRows, q, k, v, key_mask, heads: int) -> torch.Tensor:
    """The training path's grid product (`PackedRows._attend_on_grid` with dropout) without the dropout."""
    b, t = rows.shape
    w = q.shape[-1]
    grid = rows.unpack(torch.cat([q, k, v], dim=-1)).view(b, t, 3, heads, w // heads)
    q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)                                     # each (B, H, T, hd)
    has_key = key_mask.any(dim=-1)
    allowed = (key_mask | ~has_key[:, None])[:, None, None, :]
    scores = (q @ k.transpose(-2, -1)) * (w // heads) ** -0.5
    context = softmax_last(scores.masked_fill(~allowed, float("-inf"))) @ v
    context = rows.pack(context.transpose(1, 2).reshape(b, t, w))
    return context * rows._keep(has_key, context.dtype)


def main() -> None:
    torch.set_num_threads(1)
    lengths = ft.meld_dialogue_lengths(ROOT.parent / "shared" / "data" / "meld" / "train_sent_emo.csv")
    batches = ft.make_batches(lengths, 20, seed=1, device="cpu")
    ways = {"block-diagonal": lambda r, q, k, v, m, h: r.attend(q, k, v, m, h),
            "grid": lambda r, q, k, v, m, h: r._attend_on_grid(q, k, v, m, h, None),
            "grid, softmax_last": grid_softmax_last,
            "baddbmm": baddbmm_attention}
    for width in (64, 128, 768):
        heads = 4 if width == 64 else 8
        seconds, calls, worst = dict.fromkeys(ways, 0.0), 0, 0.0
        with torch.no_grad():
            for _ in range(3):
                for batch in batches:
                    rows, mask = PackedRows(batch["mask"]), batch["mask"]
                    q, k, v = (torch.randn(len(rows.index), width) for _ in range(3))
                    reference = rows.attend(q, k, v, mask, heads)                        # also builds the mask once
                    for name, way in ways.items():
                        start = time.perf_counter()
                        out = way(rows, q, k, v, mask, heads)
                        seconds[name] += time.perf_counter() - start
                        worst = max(worst, (out - reference).abs().max().item())
                    calls += 1
        print(f"width {width}: " + ", ".join(f"{n} {s * 1000 / calls:.2f} ms" for n, s in seconds.items())
              + f" per call; any way vs block-diagonal max |diff| {worst:.1e}")


if __name__ == "__main__":
    main()
