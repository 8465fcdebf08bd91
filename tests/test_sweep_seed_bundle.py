"""`seed_bundle` in an ablation spec, end to end (real Ray, MLflow SQLite, the real pipeline): one Ray trial
per variant trains its seeds as one bundle, and MLflow holds exactly what per-seed trials would have written."""
from __future__ import annotations

import pytest
from conftest import child_runs, write_ablation
from mlflow.tracking import MlflowClient

from sweep.engine import SweepOptions, run_sweep as sweep_run

pytestmark = pytest.mark.slow

VARIANTS = {"full": {}, "T": {"fusion.modalities": ["text"]}}
SEEDS = (0, 1, 2)
COMPARED = ("selected_epoch", "selected_dev_wf1", "selected_test_wf1", "selected_test_acc", "train_loss", "dev_loss")


def _by_identity(output, name) -> dict:
    return {r.data.tags["trial_identity"]: r for r in child_runs(output, name)}


def test_bundled_seeds_are_recorded_as_their_own_runs_equal_to_per_seed_trials(tmp_path, ray_local, stage1_cache):
    (tmp_path / "b").mkdir()
    (tmp_path / "p").mkdir()
    bundled_spec = write_ablation(tmp_path / "b", "bundled", VARIANTS, seeds=SEEDS, epochs=3, seed_bundle="auto")
    plain_spec = write_ablation(tmp_path / "p", "bundled", VARIANTS, seeds=SEEDS, epochs=3)
    bundled_out = SweepOptions(output=tmp_path / "b" / "runs", cache_dir=stage1_cache)
    plain_out = SweepOptions(output=tmp_path / "p" / "runs", cache_dir=stage1_cache)

    outcome = sweep_run("ablate", bundled_spec, [], bundled_out)
    assert outcome.status == "finished" and outcome.exit_code == 0
    assert outcome.trained == len(VARIANTS) * len(SEEDS)   # seeds trained
    plain = sweep_run("ablate", plain_spec, [], plain_out)
    assert plain.status == "finished" and plain.trained == len(VARIANTS) * len(SEEDS)

    bundled, alone = _by_identity(bundled_out.output, "bundled"), _by_identity(plain_out.output, "bundled")
    assert len(bundled) == len(VARIANTS) * len(SEEDS) and set(bundled) == set(alone)  # the same identities
    client = MlflowClient(f"sqlite:///{(bundled_out.output / 'mlflow.db').resolve()}")
    for identity, run in bundled.items():
        tags, other = run.data.tags, alone[identity]
        assert run.info.status == "FINISHED" and tags["seed"] == other.data.tags["seed"]
        assert tags["trial_id"].endswith(f"-s{tags['seed']}") and tags["variant"] == other.data.tags["variant"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_wf1")] == [1, 2, 3]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"predictions.csv", "config.yaml"}
        for key in COMPARED:
            assert abs(run.data.metrics[key] - other.data.metrics[key]) <= 1e-4, (identity, key)
    ray_trials = {r.data.tags["trial_id"].rsplit("-s", 1)[0] for r in bundled.values()}
    assert len(ray_trials) == len(VARIANTS)   # one Ray trial per variant, each a bundle of its 3 seeds
    # the seeds of a bundle really are different trainings
    full = sorted((r for r in bundled.values() if r.data.tags["variant"] == "full"), key=lambda r: r.data.tags["seed"])
    assert len({r.data.metrics["train_loss"] for r in full}) == len(SEEDS)

    rerun = sweep_run("ablate", bundled_spec, [], bundled_out)   # dedup: every seed is final, nothing trains
    assert rerun.status == "finished" and rerun.trained == 0 and rerun.skipped == len(VARIANTS) * len(SEEDS)
