"""`seed_bundle` in an ablation spec, end to end (real Ray, MLflow SQLite, the real pipeline): one Ray trial
per variant trains its seeds as one bundle, and MLflow holds exactly what per-seed trials would have written."""
from __future__ import annotations

import pytest
from conftest import child_runs, write_ablation
from mlflow.tracking import MlflowClient

from pipeline.trial import run_trial
from sweep.ablation_spec import load_ablation
from sweep.engine import SweepOptions, prepare, run_sweep as sweep_run

pytestmark = pytest.mark.slow

VARIANTS = {"full": {}, "T": {"fusion.modalities": ["text"]}}
SEEDS = (0, 1, 2)
COMPARED = ("selected_epoch", "selected_dev_wf1", "selected_test_wf1", "selected_test_acc", "train_loss", "dev_loss")


def _by_identity(output, name) -> dict:
    """child runs by trial identity"""
    return {r.data.tags["trial_identity"]: r for r in child_runs(output, name)}


def test_bundled_seeds_are_recorded_as_their_own_runs_equal_to_per_seed_trials(tmp_path, ray_local, stage1_cache):
    spec = write_ablation(tmp_path, "bundled", VARIANTS, seeds=SEEDS, epochs=3, seed_bundle="auto")
    opts = SweepOptions(output=tmp_path / "runs", cache_dir=stage1_cache)
    outcome = sweep_run("ablate", spec, [], opts)
    assert outcome.status == "finished" and outcome.exit_code == 0
    assert outcome.trained == len(VARIANTS) * len(SEEDS)   # seeds trained

    bundled = _by_identity(opts.output, "bundled")
    plan = prepare("ablate", spec, [], opts)
    assert len(bundled) == len(VARIANTS) * len(SEEDS) and set(bundled) == set(plan.identities)  # per-seed identities
    ray_trials = {r.data.tags["trial_id"].rsplit("-s", 1)[0] for r in bundled.values()}
    assert len(ray_trials) == len(VARIANTS)   # one Ray trial per variant, each a bundle of its 3 seeds
    client = MlflowClient(f"sqlite:///{(opts.output / 'mlflow.db').resolve()}")
    runs = {(r.data.tags["variant"], int(r.data.tags["seed"])): r for r in bundled.values()}
    for trial in load_ablation(spec).trials():   # each seed trained alone, in this process, from the same cache
        run = runs[(trial.variant, trial.seed)]
        assert run.info.status == "FINISHED" and run.data.tags["trial_id"].endswith(f"-s{trial.seed}")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_wf1")] == [1, 2, 3]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"predictions.csv", "config.yaml"}
        alone = run_trial(trial.cfg, stage1_cache, log=lambda _: None).metrics
        for key in COMPARED:
            assert abs(run.data.metrics[key] - alone[key]) <= 1e-4, (trial.variant, trial.seed, key)
    # the seeds of a bundle really are different trainings
    full = [runs[("full", seed)] for seed in SEEDS]
    assert len({r.data.metrics["train_loss"] for r in full}) == len(SEEDS)

    rerun = sweep_run("ablate", spec, [], opts)   # dedup: every seed is final, nothing trains
    assert rerun.status == "finished" and rerun.trained == 0 and rerun.skipped == len(VARIANTS) * len(SEEDS)
