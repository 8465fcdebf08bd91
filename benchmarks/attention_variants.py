"""Packed attention three ways, on the benchmark's MELD-length batches: the block-diagonal SDPA product the packed
model runs in evaluation, the padded (B, H, T, T) grid (scatter, SDPA, gather), and a hand-written baddbmm.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/attention_variants.py

One thread, no grad, 20 batches of 16 dialogues x 3 repeats per width; prints milliseconds per call and the
largest difference of the baddbmm output from the block-diagonal one (they compute the same thing).
"""
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fusion_throughput as ft  # noqa: E402
from model.fusion import PackedRows  # noqa: E402


def baddbmm_attention(rows: PackedRows, q, k, v, key_mask, heads: int) -> torch.Tensor:
    n, w = q.shape
    bias, keep = rows._attention_mask(key_mask, q.dtype)
    q, k, v = (x.view(n, heads, w // heads).transpose(0, 1) for x in (q, k, v))          # (H, N, hd)
    scores = torch.baddbmm(bias.expand(heads, n, n), q, k.transpose(1, 2), alpha=(w // heads) ** -0.5)
    context = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, w)
    return context if keep is None else context * keep


def main() -> None:
    torch.set_num_threads(1)
    lengths = ft.meld_dialogue_lengths(ROOT.parent / "shared" / "data" / "meld" / "train_sent_emo.csv")
    batches = ft.make_batches(lengths, 20, seed=1, device="cpu")
    ways = {"block-diagonal": lambda r, q, k, v, m, h: r.attend(q, k, v, m, h),
            "grid": lambda r, q, k, v, m, h: r._attend_on_grid(q, k, v, m, h, None),
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
              + f" per call; baddbmm vs block-diagonal max |diff| {worst:.1e}")


if __name__ == "__main__":
    main()
