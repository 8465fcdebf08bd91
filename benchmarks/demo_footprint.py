"""How large each planted effect of the demo can be, from how the data were made, against what the demo can detect.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/demo_footprint.py [--se 2.0] [--table DIR/reports/demo/table.csv]

Needs no training and no sweep: it regenerates the demo's test split (ablations/demo.yaml) with the generator's trace
(`dialogue_data.synthetic.PlantedTurn`: which channels carry each turn's true label) and scores an *ideal reader*
that knows the generator, once with every channel and once without the channels a variant removes:
  a turn is read right (1) when a channel the reader keeps names its label: a strong text cue, a clip or frames that
  express it by design, the question before a reply (the prompt); otherwise a reader that knows the speaker's role
  (the speaker embeddings) answers with the role's habitual emotion when a weak cue leaves it possible, and is right
  exactly when the label is that emotion; a reader without it guesses among what is left (1/2 after a weak cue,
  shared by two emotions, else 1/6). Dialogue history (a speaker keeping an
  emotion, a turn catching the one before) is read by every variant and is left out, so the figures are upper
  bounds: what the data reward a part for, in accuracy points on the test turns.
Rows whose part removes no channel (KD, anchor gating) get no bound: an ideal reader needs neither (label noise and a
bad line it can hear do not stop it); their effect can only come from how the model learns.

The minimum detectable effect (MDE) is what a row's Δ must be for the report's Holm-corrected test to find it 80%
of the time: (t[1 - alpha / (2 k)] + t[0.8]) x SE at the row's degrees of freedom, for k = 12 comparisons (the strictest Holm step) and k = 3 (the
most lenient step any planted effect can reach when the 10 planted effects come first). SE defaults to 2 points,
the calibration study's figure quoted in ablations/demo.yaml (normal quantiles); `--table` takes each row's SE and
Welch degrees of freedom from a report instead.
Prints one row per variant; benchmarks/RESULTS.md quotes them.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dialogue_data.synthetic import LABELS, PARTNER, PlantedTurn, generate  # noqa: E402
from sweep.ablation_spec import load_ablation  # noqa: E402

REMOVES = {   # variant -> the channels to its label that it takes away (video is the noise modality: never a channel)
    "w/o prompt": {"prompt"}, "w/o speaker embeddings": {"role"},
    "T": {"audio", "video"}, "T+V": {"audio"}, "A": {"text", "prompt", "video"}, "A+V": {"text", "prompt"},
    "V": {"text", "prompt", "audio"}, "T+A": {"video"},
    "w/o stage-1 KD": set(), "w/o stage-2 KD": set(), "w/o any KD": set(), "w/o anchor gating": set(),
}
NO_CHANNEL = {"w/o stage-1 KD", "w/o stage-2 KD", "w/o any KD", "w/o anchor gating"}
ALL = {"text", "prompt", "audio", "video", "role"}


def ideal_score(turn: PlantedTurn, keep: set[str]) -> float:
    """P(an ideal reader with the channels `keep` gets `turn` right); see the module docstring."""
    if (("text" in keep and turn.text_cue == "strong") or ("audio" in keep and turn.audio_true)
            or ("video" in keep and turn.video_true) or ("prompt" in keep and turn.reply)):
        return 1.0
    candidates = ({turn.label, LABELS.index(PARTNER[LABELS[turn.label]])} if "text" in keep and turn.text_cue == "weak"
                  else set(range(len(LABELS))))
    if "role" in keep and turn.role_emotion in candidates:    # the speaker's habit is the likeliest of them
        return float(turn.label == turn.role_emotion)
    return 1 / len(candidates)


def ideal_accuracy(trace: list[PlantedTurn]) -> dict[str, float]:
    """Variant -> the ideal reader's accuracy in percent on the test turns ("full": every channel)."""
    test = [t for t in trace if t.split == "test"]
    return {v: 100 * float(np.mean([ideal_score(t, ALL - removed) for t in test]))
            for v, removed in {"full": set(), **REMOVES}.items()}


def bounds(trace: list[PlantedTurn]) -> dict[str, float]:
    """Variant -> the ideal reader's accuracy loss in points on the test turns (all channels minus the variant's)."""
    accuracy = ideal_accuracy(trace)
    return {v: accuracy["full"] - accuracy[v] for v in REMOVES if v not in NO_CHANNEL}


def shares(trace: list[PlantedTurn]) -> dict[str, float]:
    test = [t for t in trace if t.split == "test"]
    train = [t for t in trace if t.split == "train"]
    share = lambda turns, keep: 100 * sum(map(keep, turns)) / len(turns)   # noqa: E731
    return {
        "test turns": len(test),
        "replies (prompt)": share(test, lambda t: t.reply),
        "replies whose label is also the speaker role's habit": share(test, lambda t: t.reply and t.role_drawn),
        "role-drawn turns (speakers)": share(test, lambda t: t.role_drawn),
        "turns whose label is the speaker role's habit": share(test, lambda t: t.label == t.role_emotion),
        "... of them, turns nothing else names": share(test, lambda t: t.label == t.role_emotion and not t.reply
                                                       and not t.audio_true and t.text_cue != "strong"),
        "turns in bad-line dialogues (gating)": share(test, lambda t: t.corrupt),
        "turns whose clip names the label": share(test, lambda t: t.audio_true),
        "turns with a strong text cue": share(test, lambda t: t.text_cue == "strong"),
        "train labels redrawn (KD)": share(train, lambda t: t.label_noised),
    }


def mde(se_points: float, comparisons: int, df: float = math.inf, alpha: float = 0.05, power: float = 0.8) -> float:
    """|Δ| that a two-sided test at alpha / comparisons finds with `power` (t quantiles at `df`, normal when inf)."""
    from scipy import stats
    return float(stats.t.ppf(1 - alpha / (2 * comparisons), df) + stats.t.ppf(power, df)) * se_points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "ablations" / "demo.yaml"))
    parser.add_argument("--se", type=float, default=2.0, help="SE of a row's delta in points (default: 2.0)")
    parser.add_argument("--table", help="a report's table.csv: take each row's SE (se_pct, test_wf1) from it")
    args = parser.parse_args(argv)

    spec = load_ablation(Path(args.spec))
    trace: list[PlantedTurn] = []
    generate(spec.trials()[0].cfg.data, trace=trace)
    for name, value in shares(trace).items():
        print(f"SHARE {name}: {value:.1f}" + ("" if name == "test turns" else "%"))

    se, measured = {}, {}
    if args.table:
        with open(args.table, encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["metric"] == "test_wf1" and r.get("se_pct")]
        se = {r["variant"]: (float(r["se_pct"]), float(r["df"])) for r in rows}
        measured = {r["variant"]: float(r["delta_pct"]) for r in rows}
    limit, accuracy = bounds(trace), ideal_accuracy(trace)
    print(f"\nideal reader, every channel: {accuracy['full']:.1f}% of the test turns right")
    print(f"{'variant':<24} {'ideal acc':>9} {'bound (points)':>15} {'SE':>5} {'df':>5} {'MDE k=12':>9} {'MDE k=3':>8}"
          "  reachable" + ("; measured Δ test wF1" if measured else ""))
    for variant in REMOVES:
        s, df = se.get(variant, (args.se, math.inf))
        need_strict, need_lenient = mde(s, 12, df), mde(s, 3, df)
        if variant in NO_CHANNEL:
            bound, verdict = "none", "only through learning (no ideal-reader effect)"
        else:
            b = limit[variant]
            bound = f"{b:.1f}"
            verdict = ("planted null" if b == 0 else "yes" if b >= need_strict else
                       "only at the lenient step" if b >= need_lenient else "no: below the MDE")
        print(f"{variant:<24} {accuracy[variant]:>8.1f}% {bound:>15} {s:>5.2f} {df:>5.1f} {need_strict:>9.1f}"
              f" {need_lenient:>8.1f}  {verdict}" + (f"; {measured[variant]:+.2f}" if variant in measured else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
