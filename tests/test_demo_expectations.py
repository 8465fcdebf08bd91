"""`make demo`'s sweep, run as a user runs it, ends in a table that shows every planted mechanism.

Runs `python run_sweep.py ablate ablations/demo.yaml` (real Ray, MLflow, stage 1 and stage 2), then reads the
report's CSV (which `report` regenerates from MLflow alone) and checks the expectations E1-E8 written in
ablations/demo.yaml before the sweep was first run. "Significant" is the report's own Holm-corrected p
(paired bootstrap over test dialogues + seed variance); "equivalent" is two one-sided tests against the
stated margin, Holm-corrected across the planted-null rows.

Set MAGTKD_DEMO_OUTPUT=DIR to check a demo that already ran with `--output DIR` instead of running it again.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reports.stats import equivalence_p, holm

ROOT = Path(__file__).resolve().parent.parent
ALPHA = 0.05
MARGIN = 0.05                       # equivalence margin in wF1 (5 points), fixed in ablations/demo.yaml
PLANTED_EFFECTS = {                 # row: why it must be significantly below full
    "T": "E1", "A": "E1", "V": "E1", "T+V": "E1", "A+V": "E1",
    "w/o prompt": "E4", "w/o stage-1 KD": "E5", "w/o any KD": "E5",
    "w/o anchor gating": "E6", "w/o speaker embeddings": "E7",
}
PLANTED_NULLS = {"T+A": "E3", "w/o stage-2 KD": "E8"}
# The demo runs (2-core machine, `make demo`) met only some expectations. The ones the latest runs missed are
# recorded here with their numbers, as strict xfails: the expectation stays as written (never tuned to the
# result), and a run that starts meeting it fails the xfail so that this record is updated. ablations/demo.yaml
# and the README say the same. Latest runs: git 51c46ad + the reply mechanism for the prompt and
# stage1.target_segment (each set from a probe before the run), on two kinds of host: AVX2 (2026-11-30 and
# 12-01, /tmp/demo12 and /tmp/demo13, identical) and AVX-512 (2026-12-01, git c7077be and after, three runs,
# identical). The two kinds gave different numbers in 6 of the 12 compared rows (same pinned packages; the CPU's
# float kernels), so a row whose Holm p sits near 0.05 can land on either side by host alone: BORDERLINE below.
# What the data allow each row, from the generator alone: benchmarks/demo_footprint.py and benchmarks/RESULTS.md.
NOT_SHOWN = {
    "T": "E1 not shown: Δ -3.16 [-6.34, +0.01], Holm p=0.454 (AVX-512: -3.23, 0.425)",
    "T+V": "E1 not shown: Δ -1.95 [-4.34, +0.45], Holm p=0.861 (both hosts)",
    "w/o prompt": "E4 not shown: Δ +1.67 [-2.49, +5.84], Holm p=1.000 (AVX-512: +1.60); with the prompt, replies 44.1% "
                  "vs 41.1% right at stage 2, but ordinary turns 69.6% vs 74.0% (benchmarks/demo_turns.py)",
    "w/o stage-1 KD": "E5 not shown: Δ -0.19 [-2.47, +2.10], Holm p=1.000 (AVX-512: -0.11)",
    "w/o any KD": "E5 not shown: Δ -0.68 [-3.57, +2.21], Holm p=1.000 (both hosts)",
    "w/o anchor gating": "E6 not shown: Δ +0.92 [-0.90, +2.73], Holm p=1.000 (the authors' gate lies in [0.5, 1); "
                         "trained, it stays at 0.51-0.59 on clean and corrupted dialogues alike)",
    "w/o speaker embeddings": "E7 not shown: Δ -1.13 [-4.67, +2.41], Holm p=1.000; cannot be, as planted: the prompt's "
                              "'Now <sK> feels' numbers speakers as the roles are numbered, so with the prompt on the "
                              "row removes nothing the roles need (benchmarks/demo_footprint.py: effect 0)",
    "E2": "E2 not shown: T > A > V on dev and test wF1 (AVX2 test 52.46 > 47.68 > 44.82; AVX-512 52.39 > 47.68 > "
          "44.82), but V is not below 25: as written, E2 contradicts E7's mechanism, which reaches the V row through "
          "the speaker embeddings (the role alone names 50.7% of the test labels: benchmarks/demo_footprint.py)",
}
# E1 for A and A+V: Holm p at 0.045-0.066 in the recorded runs (A 0.066 on both hosts; A+V 0.052 AVX2, 0.045
# AVX-512), so the host's CPU decides the side of 0.05. Checked apart: the planted direction with Holm p < 0.10.
BORDERLINE = {"A": "Δ -7.95 [-13.59, -2.30], Holm p=0.066 (both hosts)",
              "A+V": "Δ -8.24 [-13.85, -2.63], Holm p=0.052 (AVX2); -8.44 [-14.09, -2.80], Holm p=0.045 (AVX-512)"}


def _recorded(variants):
    return [pytest.param(v, marks=pytest.mark.xfail(strict=True, reason=NOT_SHOWN[v])) if v in NOT_SHOWN else v
            for v in sorted(set(variants) - set(BORDERLINE))]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    given = os.environ.get("MAGTKD_DEMO_OUTPUT")
    if given:
        out = Path(given)
    else:
        out = tmp_path_factory.mktemp("demo") / "runs"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run([sys.executable, "run_sweep.py", "ablate", "ablations/demo.yaml", "--output", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "39 FINISHED" in proc.stdout and "| full |" in proc.stdout, proc.stdout[-3000:]
    rows = list(csv.DictReader((out / "reports" / "demo" / "table.csv").open(encoding="utf-8")))
    return {(r["variant"], r["metric"]): r for r in rows}


def mean(table, variant, metric="test_wf1"):
    return float(table[(variant, metric)]["mean"])


def test_every_cell_has_three_seeds_and_the_bootstrap_test(table):
    assert all(int(r["n"]) == 3 for r in table.values())
    compared = [r for (v, m), r in table.items() if m == "test_wf1" and v != "full"]
    assert {r["test"] for r in compared} == {"paired bootstrap + seeds"}   # every trial left its predictions
    assert all(r["ci_low_pct"] and r["p_holm"] for r in compared)


@pytest.mark.parametrize("variant", _recorded(PLANTED_EFFECTS))
def test_planted_effect_is_significant_after_holm(table, variant):
    row = table[(variant, "test_wf1")]
    delta, p_holm = float(row["delta_pct"]), float(row["p_holm"])
    assert delta < 0 and p_holm < ALPHA, (PLANTED_EFFECTS[variant], variant, delta, p_holm)


@pytest.mark.parametrize("variant", sorted(BORDERLINE))
def test_borderline_planted_effect_stays_at_the_threshold(table, variant):
    """E1 for a row recorded at Holm p 0.045-0.066: when it is below 0.05 here E1 holds for it; what must hold on
    every host is the planted direction and Holm p < 0.10 (a row that drifts away from E1 fails)."""
    row = table[(variant, "test_wf1")]
    delta, p_holm = float(row["delta_pct"]), float(row["p_holm"])
    assert delta < 0 and p_holm < 2 * ALPHA, (BORDERLINE[variant], variant, delta, p_holm)


@pytest.mark.xfail(strict=True, reason=NOT_SHOWN["E2"])
def test_2_text_over_audio_over_video_and_video_is_noise(table):
    for metric in ("dev_wf1", "test_wf1"):
        assert mean(table, "T", metric) > mean(table, "A", metric) > mean(table, "V", metric)
    assert mean(table, "V") < 0.25   # six classes: chance is about 0.17


@pytest.mark.parametrize("variant", _recorded(PLANTED_NULLS))
def test_planted_null_is_equivalent_within_the_margin(table, variant):
    rows = [table[(v, "test_wf1")] for v in PLANTED_NULLS]   # Holm across every planted-null row
    p_tost = [equivalence_p(float(r["delta_pct"]) / 100, float(r["se_pct"]) / 100, float(r["df"]), MARGIN)
              for r in rows]
    p = dict(zip(PLANTED_NULLS, holm(p_tost)))[variant]
    row = table[(variant, "test_wf1")]
    assert p < ALPHA, (PLANTED_NULLS[variant], variant, row["delta_pct"], row["ci_low_pct"], row["ci_high_pct"], p)


def test_the_report_states_every_rows_expectation_with_the_verdict_computed_here(table):
    """The table itself says what each row must show (the spec's `expectations`: E1, E3-E8 as ablations/demo.yaml
    writes them) and whether it did; its verdict must be the one this file computes on its own."""
    for variant in PLANTED_EFFECTS:
        row = table[(variant, "test_wf1")]
        met = float(row["delta_pct"]) < 0 and float(row["p_holm"]) < ALPHA
        assert (row["expected"], row["expected_met"]) == ("below", str(int(met))), (variant, row["expected"])
    rows = [table[(v, "test_wf1")] for v in PLANTED_NULLS]
    p_tost = holm([equivalence_p(float(r["delta_pct"]) / 100, float(r["se_pct"]) / 100, float(r["df"]), MARGIN)
                   for r in rows])
    for row, p in zip(rows, p_tost):
        assert row["expected"] == f"equivalent {MARGIN!r}" and row["expected_met"] == str(int(p < ALPHA))
        assert float(row["expected_p"]) == pytest.approx(p, rel=1e-5)


def test_this_file_checks_exactly_the_expectations_the_spec_writes():
    """ablations/demo.yaml's `expectations` and this file's lists are one record: a row added to one is in both."""
    from sweep.ablation_spec import load_ablation

    spec = load_ablation(ROOT / "ablations" / "demo.yaml").expectations
    assert {v: r["must"] for v, r in spec["rows"].items()} == {
        **{v: "below" for v in PLANTED_EFFECTS}, **{v: "equivalent" for v in PLANTED_NULLS}}
    assert spec["equivalence_margin"] == MARGIN and spec["metric"] == "test_wf1"
    assert {v: e for v, e in PLANTED_EFFECTS.items()} == {v: r["why"][:2] for v, r in spec["rows"].items()
                                                          if r["must"] == "below"}
