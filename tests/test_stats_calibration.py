"""Calibration of the report's significance test (reports/stats.py) on simulated prediction files.

Each simulated table draws a fresh test set of dialogues and, for two variants x three seeds, the
per-utterance predictions a trained model would make: an utterance is right with probability
sigmoid(skill + ease), where `ease` is the utterance's difficulty (shared by every model, partly per
dialogue: what makes paired comparisons correlated) and `skill` is the variant's mean plus a per-seed
draw (training randomness); a wrong prediction is one of the other labels at random. The predictions go
through the same code path as a real report (Predictions.from_rows -> bootstrap_test).

Under the null (both variants with the same mean skill) the test must reject at about its nominal rate;
under a planted difference its power is printed (the README's statistics paragraph quotes both).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from reports.stats import LEVEL, Predictions, bootstrap_test, equivalence_p
from sweep.ablation_spec import load_ablation

LABELS = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
TABLES = 200           # simulated tables per setting (>= 200)
SEEDS = ("0", "1", "2")
ALPHA = 0.05
ROOT = Path(__file__).resolve().parent.parent
# The demo's seed count (ablations/demo.yaml): its power is reported beside the 3-seed figure.
DEMO_SEEDS = tuple(str(s) for s in load_ablation(ROOT / "ablations" / "demo.yaml").seeds)


def simulate_table(rng: np.random.Generator, skill_gap: float, dialogues: int = 40, seeds=SEEDS):
    lengths = rng.integers(4, 13, size=dialogues)
    dialogue = np.repeat(np.arange(dialogues), lengths)
    n = len(dialogue)
    gold = rng.integers(len(LABELS), size=n)
    ease = rng.normal(0.0, 0.7, size=dialogues)[dialogue] + rng.normal(0.0, 1.0, size=n)
    dialogue_ids = [f"test{d}" for d in dialogue]
    utterance_ids = [f"test{d}_u{i}" for i, d in enumerate(dialogue)]

    def trial(mean_skill: float) -> Predictions:
        skill = mean_skill + rng.normal(0.0, 0.15)                 # seed-to-seed spread of training
        right = rng.random(n) < 1.0 / (1.0 + np.exp(-(skill + ease)))
        wrong = (gold + rng.integers(1, len(LABELS), size=n)) % len(LABELS)
        predicted = np.where(right, gold, wrong)
        return Predictions.from_rows(dialogue_ids, utterance_ids, [LABELS[g] for g in gold],
                                     [LABELS[p] for p in predicted], LABELS)

    baseline = {s: trial(0.5) for s in seeds}
    variant = {s: trial(0.5 + skill_gap) for s in seeds}
    return bootstrap_test(variant, baseline, "wf1", LABELS, replicates=400)


def rejection_rate(skill_gap: float, seed: int, seeds=SEEDS) -> tuple[float, list]:
    rng = np.random.default_rng(seed)
    tests = [simulate_table(rng, skill_gap, seeds=seeds) for _ in range(TABLES)]
    assert all(t.made for t in tests)
    return sum(t.p < ALPHA for t in tests) / TABLES, tests


def test_null_rejection_rate_is_nominal_and_power_under_a_planted_difference_is_reported():
    null_rate, null_tests = rejection_rate(0.0, seed=11)
    # The CI is the same statistic: it covers the true difference (0) as often as the test does not reject.
    coverage = sum(t.ci[0] <= 0.0 <= t.ci[1] for t in null_tests) / TABLES
    power_rate, power_tests = rejection_rate(0.35, seed=12)
    mean_gap = float(np.mean([t.delta for t in power_tests]))
    print(f"\ncalibration over {TABLES} simulated tables (3 seeds, 40 test dialogues): rejection at alpha "
          f"{ALPHA} under the null {null_rate:.3f}; CI coverage {coverage:.3f} (nominal {LEVEL}); power "
          f"{power_rate:.3f} for a planted wF1 gap of {100 * mean_gap:.1f} points")
    assert 0.02 <= null_rate <= 0.08, null_rate
    assert abs(coverage - (1.0 - null_rate)) < 1e-9
    assert power_rate > 3 * ALPHA, power_rate   # the planted gap is found far more often than by chance


def test_at_the_demos_seed_count_the_test_stays_nominal_and_its_power_is_reported():
    """The same calibration with as many seeds as the demo trains (ablations/demo.yaml `seeds`), same planted gap:
    more seeds give the seed part of the variance more degrees of freedom, so the power should not fall."""
    null_rate, _ = rejection_rate(0.0, seed=21, seeds=DEMO_SEEDS)
    power_rate, power_tests = rejection_rate(0.35, seed=22, seeds=DEMO_SEEDS)
    mean_gap = float(np.mean([t.delta for t in power_tests]))
    print(f"\ncalibration at the demo's {len(DEMO_SEEDS)} seeds over {TABLES} simulated tables (40 test dialogues): "
          f"rejection at alpha {ALPHA} under the null {null_rate:.3f}; power {power_rate:.3f} for a planted wF1 gap "
          f"of {100 * mean_gap:.1f} points")
    assert 0.01 <= null_rate <= 0.09, null_rate   # a 99% binomial band around 0.05 for 200 tables (two settings)
    assert power_rate > 3 * ALPHA, power_rate


def test_equivalence_is_tost_the_90_percent_interval_inside_the_margin():
    from scipy import stats

    rng = np.random.default_rng(5)
    for gap in (0.0, 0.3, 1.0):
        test = simulate_table(rng, gap, dialogues=120)
        half = stats.t.ppf(0.95, test.df) * test.se
        for margin in (0.02, 0.05, 0.1, 0.2):
            inside = -margin < test.delta - half and test.delta + half < margin
            assert (equivalence_p(test.delta, test.se, test.df, margin) < ALPHA) == inside, (gap, margin)
    same = simulate_table(rng, 0.0, dialogues=120)
    assert equivalence_p(same.delta, same.se, same.df, margin=0.15) < ALPHA       # no difference: shown small
    assert math.isnan(equivalence_p(0.0, math.nan, 2.0, margin=0.05))
