"""How large each planted effect of the demo can be, from how the data were made, against what the demo can detect.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/demo_footprint.py [--se 2.0] [--table DIR/reports/demo/table.csv]

Needs no training and no sweep (a few seconds). It regenerates the demo's test split (ablations/demo.yaml) with the
generator's trace (`dialogue_data.synthetic.PlantedTurn`: the hidden facts of each turn, e.g. whether its clip
expresses the true emotion by design) and scores an *ideal reader*: an oracle that sees those facts, but only
through the channels a variant's model has. Each variant's channels come from its own config:
  text         the text modality (`fusion.modalities`): a strong cue names the label, a weak cue narrows it to two;
  prompt       text with `stage1.prompt`: the question before a reply names the reply's emotion;
  audio, video the modality: a clip / frames that express the label by design name it;
  role         the speaker's role (order of first appearance), which names the role's habitual emotion
               (`data.speaker_prior`). The speaker embeddings carry it, and so does the prompt, whose
               "Now <sK> feels <mask>" numbers the speaker exactly as the roles are numbered.
A turn nothing names is guessed: with the role, as the role's habit (right exactly when the label is that);
without, uniformly among what is left (1/2 after a weak cue, else 1/6). Two readers: history-free (each turn on
its own), and with history, where a turn that copies an earlier label (a speaker keeping an emotion, a turn
catching the one before) is also right when that earlier turn was read for sure. Neither bounds every possible
reader, so a row's planted effect is taken as the larger of the two losses (every channel minus the variant's),
in points of accuracy on the test turns.
A row that removes no channel (KD, anchor gating) has no such effect: label noise and a bad line that can be heard
cost an ideal reader nothing, so their effect can only come from how the model learns.

The minimum detectable effect (MDE) is the Δ that the report's Holm-corrected test finds 80% of the time:
(t[1 - alpha / (2 k)] + t[0.8]) x SE at the row's Welch degrees of freedom, where k is the Holm step (12 rows are
compared with `full`: the first rejection needs alpha / 12; k = 3 is the best any planted effect can hope for, if
the 9 other planted effects were all rejected before it). SE defaults to 2 points (the calibration figure quoted
in ablations/demo.yaml, normal quantiles); `--table` takes each row's SE, df and measured Δ of test accuracy
(the bounds' unit) from a report. "not ruled out" only means that the bound is not below the MDE.
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

CHANNELS = {"text", "prompt", "audio", "video", "speaker_embeddings"}


def channels(cfg) -> set[str]:
    """The channels to a turn's label that a trial with config `cfg` (a `core.config.MAGTKDConfig`) has."""
    modalities = set(cfg.fusion.modalities)
    kept = modalities & {"text", "audio", "video"}
    if "text" in modalities and cfg.stage1.prompt:
        kept.add("prompt")
    if cfg.fusion.speaker_embeddings:
        kept.add("speaker_embeddings")
    return kept


def ideal_score(turn: PlantedTurn, keep: set[str]) -> float:
    """P(an ideal reader with the channels `keep` gets `turn` right, history aside); see the module docstring."""
    if (("text" in keep and turn.text_cue == "strong") or ("audio" in keep and turn.audio_true)
            or ("video" in keep and turn.video_true) or ("prompt" in keep and turn.reply)):
        return 1.0
    candidates = ({turn.label, LABELS.index(PARTNER[LABELS[turn.label]])} if "text" in keep and turn.text_cue == "weak"
                  else set(range(len(LABELS))))
    knows_role = "speaker_embeddings" in keep or "prompt" in keep
    if knows_role and turn.role_emotion in candidates:        # the speaker's habit is the likeliest of them
        return float(turn.label == turn.role_emotion)
    return 1 / len(candidates)


def accuracy(turns: list[PlantedTurn], keep: set[str], history: bool) -> float:
    """The ideal reader's accuracy in percent over `turns` (in generation order, so a source precedes its copy)."""
    sure: set[str] = set()
    scores = []
    for turn in turns:
        score = ideal_score(turn, keep)
        if history and turn.source in sure:
            score = 1.0
        if score == 1.0:
            sure.add(turn.utterance_id)
        scores.append(score)
    return 100 * float(np.mean(scores))


def effects(trace: list[PlantedTurn], variants: dict[str, set[str]]) -> dict[str, dict]:
    """Variant -> its ideal-reader accuracy and planted effect (points) on the test turns, both readers."""
    test = [t for t in trace if t.split == "test"]
    full = {h: accuracy(test, CHANNELS, h) for h in (False, True)}
    out = {}
    for variant, keep in variants.items():
        acc = {h: accuracy(test, keep, h) for h in (False, True)}
        loss = {h: full[h] - acc[h] for h in (False, True)}
        out[variant] = {"accuracy": acc[False], "accuracy_history": acc[True], "loss": loss[False],
                        "loss_history": loss[True], "bound": max(loss.values()), "removes": CHANNELS - keep}
    return out


def shares(trace: list[PlantedTurn]) -> dict[str, float]:
    test = [t for t in trace if t.split == "test"]
    train = [t for t in trace if t.split == "train"]
    share = lambda turns, keep: 100 * sum(map(keep, turns)) / len(turns)   # noqa: E731
    return {
        "test turns": len(test),
        "replies (prompt)": share(test, lambda t: t.reply),
        "replies whose label is the speaker role's habit": share(test, lambda t: t.reply and
                                                                 t.label == t.role_emotion),
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
    parser.add_argument("--se", type=float, default=2.0, help="SE of a row's Δ in points (default: 2.0)")
    parser.add_argument("--table", help="a report's table.csv: each row's SE, df and Δ of test accuracy")
    args = parser.parse_args(argv)

    trials = load_ablation(Path(args.spec)).trials()
    variants = {t.variant: channels(t.cfg) for t in trials if t.variant != "full"}
    trace: list[PlantedTurn] = []
    generate(trials[0].cfg.data, trace=trace)
    for name, value in shares(trace).items():
        print(f"SHARE {name}: {value:.1f}" + ("" if name == "test turns" else "%"))

    stats, measured = {}, {}
    if args.table:
        with open(args.table, encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["metric"] == "test_acc" and r.get("se_pct")]
        stats = {r["variant"]: (float(r["se_pct"]), float(r["df"])) for r in rows}
        measured = {r["variant"]: float(r["delta_pct"]) for r in rows}
    test = [t for t in trace if t.split == "test"]
    print(f"\nideal reader, every channel: {accuracy(test, CHANNELS, False):.1f}% of the test turns right "
          f"({accuracy(test, CHANNELS, True):.1f}% with history)")
    print(f"{'variant':<24} {'removes':<30} {'ideal acc':>9} {'loss':>5} {'w/ hist':>7} {'SE':>5} {'df':>5} "
          f"{'MDE k=12':>8} {'k=3':>5}  verdict" + ("; measured Δ test acc" if measured else ""))
    for variant, row in effects(trace, variants).items():
        se, df = stats.get(variant, (args.se, math.inf))
        strict, lenient = mde(se, 12, df), mde(se, 3, df)
        bound = row["bound"]
        verdict = ("no channel removed: only through learning" if not row["removes"] else
                   "no effect: the rest name all it names" if bound == 0 else
                   "not ruled out" if bound >= strict else
                   "only at a lenient Holm step" if bound >= lenient else "below the MDE")
        removes = ", ".join(sorted(row["removes"])) or "-"
        print(f"{variant:<24} {removes:<30} {row['accuracy']:>8.1f}% {row['loss']:>5.1f} {row['loss_history']:>7.1f} "
              f"{se:>5.2f} {df:>5.1f} {strict:>8.1f} {lenient:>5.1f}  {verdict}"
              + (f"; {measured[variant]:+.2f}" if variant in measured else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
