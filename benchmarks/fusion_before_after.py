"""The packed stage-2 model now against the same model at an earlier commit, side by side in one process.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fusion_before_after.py --before 111abb7 [--widths 128,64]
        [--repeats 5] [--train-steps 10] [--eval-steps 30]

`model/fusion.py` as it was at `--before` is read with `git show` and imported beside the current one;
both build the packed model (`build_fusion(..., packed=True)`) with the same seed and run the same
batches (16 MELD-length dialogues, as in benchmarks/fusion_throughput.py), alternating before / now
within each repeat so that a load change hits both. Prints utterances per second (median of the
repeats) for training and evaluation and the ratio now / before. One thread.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fusion_throughput as bench  # noqa: E402
from core.config import load_config  # noqa: E402
import model.fusion as fusion_now  # noqa: E402


def fusion_at(commit: str, directory: Path):
    """model/fusion.py as it was at `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "show", f"{commit}:model/fusion.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = directory / "fusion_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("fusion_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rates(module, cfg, batches_train, batches_eval) -> tuple[float, float]:
    bench.build_fusion, bench.stage2_loss = module.build_fusion, module.stage2_loss
    return bench.throughput(cfg, batches_train, batches_eval, torch.device("cpu"), packed=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git commit whose model/fusion.py is the 'before'")
    ap.add_argument("--meld-csv", default=str(ROOT.parent / "shared" / "data" / "meld" / "train_sent_emo.csv"))
    ap.add_argument("--widths", default="128,64")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--eval-steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lengths = bench.meld_dialogue_lengths(Path(args.meld_csv))
    with tempfile.TemporaryDirectory() as tmp:
        before = fusion_at(args.before, Path(tmp))
        print(f"packed stage 2, model/fusion.py at {args.before} (before) and now, 1 thread, "
              f"{args.train_steps} train / {args.eval_steps} eval batches, median of {args.repeats}:")
        print(f"  {'width':>5} {'mode':>5} {'before utt/s':>13} {'now utt/s':>10} {'now/before':>10}")
        for width in (int(w) for w in args.widths.split(",")):
            cfg = load_config(None, [f"fusion.width={width}", f"fusion.heads={args.heads}"])
            batches_train = bench.make_batches(lengths, args.train_steps + 2, seed=1, device="cpu")
            batches_eval = bench.make_batches(lengths, args.eval_steps + 2, seed=2, device="cpu")
            measured = {"before": [], "now": []}
            for _ in range(args.repeats):
                measured["before"].append(rates(before, cfg, batches_train, batches_eval))
                measured["now"].append(rates(fusion_now, cfg, batches_train, batches_eval))
            for col, mode in enumerate(("train", "eval")):
                was = statistics.median(r[col] for r in measured["before"])
                now = statistics.median(r[col] for r in measured["now"])
                print(f"  {width:>5} {mode:>5} {was:>13.0f} {now:>10.0f} {now / was:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
