"""Softmax over a short last dimension on a CPU: torch's own against `model.fusion.softmax_last`.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/softmax_short.py [--threads 1] [--repeats 200]

Training attention with dropout computes softmax over (B, H, T, T) scores, T the longest dialogue of the
batch. torch's CPU softmax takes a scalar loop when T is shorter than one SIMD vector (16 floats with
AVX-512, 8 with AVX2); `softmax_last` pads the keys with -inf to one vector. For each T and batch size,
forward + backward microseconds of each (median of `--repeats`, the two alternating), the ratio, and the
largest difference of their probabilities.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.fusion import softmax_last  # noqa: E402

HEADS = 4


def forward_backward_us(fn, scores: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    torch.autograd.grad(fn(scores), scores, grad)
    return (time.perf_counter() - start) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s)")
    print(f"{'dialogues':>9} {'T':>3} {'torch us':>9} {'softmax_last us':>16} {'ratio':>6} {'max |diff|':>11}")
    ways = {"torch": lambda x: x.softmax(dim=-1), "padded": softmax_last}
    for dialogues in (8, 24, 120):           # a batch of 8; 3 stacked copies of it; a bundle of 5 of those
        for t in (5, 9, 14, 16, 24):
            scores = torch.randn(dialogues, HEADS, t, t, requires_grad=True)
            grad = torch.randn(dialogues, HEADS, t, t)
            times = {name: [] for name in ways}
            for _ in range(5):
                for fn in ways.values():
                    forward_backward_us(fn, scores, grad)
            for _ in range(args.repeats):
                for name, fn in ways.items():
                    times[name].append(forward_backward_us(fn, scores, grad))
            plain, padded = (statistics.median(times[name]) for name in ways)
            with torch.no_grad():
                diff = (ways["torch"](scores) - softmax_last(scores)).abs().max().item()
            print(f"{dialogues:>9} {t:>3} {plain:>9.1f} {padded:>16.1f} {plain / padded:>5.1f}x {diff:>11.1e}")


if __name__ == "__main__":
    main()
