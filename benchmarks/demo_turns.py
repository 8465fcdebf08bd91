"""Where each row of a demo table comes from: stage-2 accuracy per kind of planted turn, from MLflow.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/demo_turns.py --output /tmp/demo    # after: run_sweep.py ablate
                                                                                  #   ablations/demo.yaml --output /tmp/demo
Reads the sweep's trials and their per-utterance predictions (the predictions.csv artifact of every MLflow
run, the file the report's bootstrap uses), regenerates the demo's data from ablations/demo.yaml, and
prints, per variant, accuracy (mean and spread over seeds) on the test and dev turns of each kind:
  reply      a reply that names no emotion; only the question in the turn before says it (the prompt, E4)
  asking     the turn before a reply (it ends with that question)
  bad line   any other turn of a dialogue whose audio is a corrupted line (anchor gating, E6)
  other      every other turn
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from demo_mechanisms import bad_line, demo_config  # noqa: E402
from dialogue_data.registry import load_dataset  # noqa: E402
from dialogue_data.synthetic import is_reply  # noqa: E402
from reports.store import load_sweep, tracking_uri_for, trial_predictions  # noqa: E402

KINDS = ("reply", "asking", "bad line", "other")


def turn_kinds(dataset) -> dict[str, dict[str, str]]:
    """split -> (utterance id -> its kind, one of KINDS), for the test and dev splits."""
    kinds: dict[str, dict[str, str]] = {"test": {}, "dev": {}}
    for split, of_split in kinds.items():
        for dialogue in dataset.splits[split]:
            turns = dialogue.utterances
            corrupted = bad_line(turns)
            for i, u in enumerate(turns):
                asking = i + 1 < len(turns) and is_reply(turns[i + 1].text)
                of_split[u.utterance_id] = ("reply" if is_reply(u.text) else "asking" if asking
                                            else "bad line" if corrupted else "other")
    return kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True, help="the --output directory of the demo sweep")
    ap.add_argument("--sweep", default="demo")
    args = ap.parse_args()
    by_split = turn_kinds(load_dataset(demo_config({}).data))
    kinds = {uid: kind for of_split in by_split.values() for uid, kind in of_split.items()}
    uri = tracking_uri_for(args.output)
    rows = []
    for trial in load_sweep(args.sweep, uri, args.output).trials:
        text = trial_predictions(uri, trial.run_id) if trial.status == "FINISHED" else ""
        if not text:
            continue
        p = pd.read_csv(io.StringIO(text))
        p["kind"] = p["utterance_id"].map(kinds)
        if p["kind"].isna().any():
            raise SystemExit(f"run {trial.run_id}: utterance ids not in the demo's data (another dataset?)")
        right = (p["gold"] == p["predicted"]).groupby([p["split"], p["kind"]]).mean()
        rows.append({"variant": trial.variant, "seed": trial.seed, **{f"{s} {k}": v for (s, k), v in right.items()}})
    if not rows:
        raise SystemExit(f"no finished trial with predictions in sweep {args.sweep!r} under {args.output}")
    df = pd.DataFrame(rows)
    print("turns per kind: " + "; ".join(f"{split} " + ", ".join(f"{k} {list(of_split.values()).count(k)}" for k in KINDS)
                                         for split, of_split in by_split.items()))
    columns = [f"{s} {k}" for s in ("test", "dev") for k in KINDS if f"{s} {k}" in df]
    order = list(dict.fromkeys(df["variant"]))
    mean = df.groupby("variant")[columns].mean().loc[order]
    sd = df.groupby("variant")[columns].std().loc[order]
    cells = mean.map(lambda v: f"{100 * v:.1f}") + " ± " + sd.map(lambda v: f"{100 * v:.1f}")
    print(f"stage-2 accuracy (%) per kind of turn, mean ± sd over seeds (n = {df.groupby('variant').size().min()}"
          f"-{df.groupby('variant').size().max()}), sweep {args.sweep!r} in {args.output}")
    print(cells.to_string())


if __name__ == "__main__":
    main()
