"""One trial end to end, without Ray or MLflow (pipeline/trial.py): the quick lane's test of `pipeline/`.

The tiny synthetic config of the sweep tests (tests/conftest.py): stage 1 computed into a fresh cache, then
stage 2; a second trial with another stage-2 seed reads the same stage-1 entry from the cache.
"""
from __future__ import annotations

from conftest import TINY_BASE, TINY_DATASET

from core.config import load_config
from pipeline.trial import run_trial


def test_one_trial_reports_every_epoch_and_the_selected_scores_and_reuses_stage_1(tmp_path):
    overrides = [f"data.{k}={v}" for k, v in TINY_DATASET.items()] + [f"{k}={v}" for k, v in TINY_BASE.items()]
    cfg = load_config(None, overrides + ["train.epochs=2", "stage1.shared_seed=0"])
    logs: list[str] = []
    first = run_trial(cfg, tmp_path / "cache", log=logs.append)
    assert [h["epoch"] for h in first.history] == [1, 2]
    for key in ("selected_dev_wf1", "selected_test_wf1", "selected_test_acc", "selected_epoch"):
        assert key in first.metrics, key
    assert 0.0 <= first.metrics["selected_test_wf1"] <= 1.0 and first.metrics["selected_epoch"] in (1, 2)
    assert len(first.labels) >= 2 and len(first.dataset_fingerprint) == 16 and first.masked_modalities == []
    entries = sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors"))
    assert entries, "stage 1 left no cache entry"
    second = run_trial(cfg.replace(["seed=1"]), tmp_path / "cache", log=logs.append)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors")) == entries   # read, not recomputed
    assert second.dataset_fingerprint == first.dataset_fingerprint
