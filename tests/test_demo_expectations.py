"""`make demo`'s sweep, run as a user runs it, ends in a table that agrees with the planted answers.

Runs `python run_sweep.py ablate ablations/demo.yaml` (real Ray, MLflow, stage 1 and stage 2), then
reads the report's CSV (which `report` regenerates from MLflow alone) and checks the expected
answers written as comments in ablations/demo.yaml. Each check names the answer it checks.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "run_sweep.py", "ablate", "ablations/demo.yaml", "--output", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "36 FINISHED" in proc.stdout and "| full |" in proc.stdout, proc.stdout[-3000:]
    rows = list(csv.DictReader((out / "reports" / "demo" / "table.csv").open(encoding="utf-8")))
    cells = {(r["variant"], r["metric"]): r for r in rows}
    return cells


def mean(table, variant, metric="test_wf1"):
    return float(table[(variant, metric)]["mean"])


def delta_and_p(table, variant, metric="test_wf1"):
    row = table[(variant, metric)]
    return float(row["delta_pct"]), float(row["p_value"])


def test_every_cell_has_three_seeds(table):
    assert all(int(r["n"]) == 3 for r in table.values())


def test_1_all_modalities_beat_text_alone(table):
    assert mean(table, "full") > mean(table, "T")


def test_2_text_over_audio_over_video_and_video_is_noise(table):
    for metric in ("dev_wf1", "test_wf1"):
        assert mean(table, "T", metric) > mean(table, "A", metric) > mean(table, "V", metric)
    assert mean(table, "V") < 0.25   # six balanced classes: chance is about 0.17


def test_3_removing_the_noise_modality_is_not_significant(table):
    delta, p = delta_and_p(table, "T+A")
    assert abs(delta) < 1.5 and p > 0.05


def test_4_distillation_and_gating_rows_stay_within_noise(table):
    for variant in ("w/o stage-1 KD", "w/o stage-2 KD", "w/o any KD", "w/o anchor gating"):
        delta, p = delta_and_p(table, variant)
        assert abs(delta) < 3.0 and p > 0.05, (variant, delta, p)


def test_5_a_tiny_encoder_trained_from_scratch_reads_the_utterance_alone_better(table):
    delta, p = delta_and_p(table, "w/o prompt")
    assert delta > 0 and p < 0.05
