"""Ray Tune can end a trial ERROR before it used its retries: when the actor a PENDING trial waits on dies (its
node lost while it starts, or a cached actor dead before the trial's reset), Tune counts the one loss twice.
`sync.errored_with_retries_left` finds such trials in Ray's own record and the engine resumes them once
(`AblationKind.errored_early`, sweep/kinds.py). First Ray's record, read back from a real Tune experiment (one
trial that always crashes, one that finishes); then the double count itself, reproduced in a real ablation.
The node-loss path: tests/test_sweep_cluster.py::test_losing_the_worker_node_mid_sweep."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from conftest import child_runs, wait_for, write_ablation
from mlflow import MlflowClient
from ray import tune

from sweep.engine import SweepOptions, run_sweep
from sweep.sync import errored_with_retries_left


def _crash_or_finish(config):
    if config["trial"]["name"] == "crash":
        raise RuntimeError("this trial always crashes")
    tune.report({"epoch": 1})


def test_only_trials_that_ended_error_before_their_retries_count(tmp_path, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray's workers cannot import tests/
    tuner = tune.Tuner(_crash_or_finish, param_space={"trial": tune.grid_search([{"name": "crash"}, {"name": "finish"}])},
                       run_config=tune.RunConfig(name="early", storage_path=str(tmp_path),
                                                 failure_config=tune.FailureConfig(max_failures=1)))
    tuner.fit()
    path = tmp_path / "early"
    # The crashing trial used its one retry: two failures, so at max_failures 1 it ended ERROR fairly.
    assert errored_with_retries_left(path, 1, 2) == ({}, 1)
    # Read with a budget of 2 retries, the same record is a trial that ended ERROR with one retry left.
    early, errored = errored_with_retries_left(path, 2, 2)
    assert errored == 1 and len(early) == 1
    crashed = [t for t in tune.ExperimentAnalysis(str(path)).trials if t.status == "ERROR"]
    assert list(early) == [crashed[0].trial_id] and crashed[0].config["trial"]["name"] == "crash"
    # An experiment with trials still to come (interrupted) is never resumed from here.
    assert errored_with_retries_left(path, 2, 3) == ({}, 0)


class _KillTheFirstTrialsWorker(tune.Callback):
    """When the first trial completes, SIGKILL its worker: Tune has just cached that actor for the next trial
    (the ablation reuses actors), so the next trial's `reset` fails on a dead actor while the trial is still
    PENDING, the same path as a node lost under a starting trial."""

    def __init__(self):
        self.killed: list[int] = []

    def on_trial_complete(self, iteration, trials, trial, **info):
        pid = (trial.last_result or {}).get("pid")
        if not self.killed and pid:
            os.kill(int(pid), signal.SIGKILL)
            self.killed.append(int(pid))
            # Tune caches the actor and sends the next trial's reset after this callback returns: wait until
            # the process is gone (or a zombie) so that the reset always meets a dead actor.
            assert wait_for(lambda: _dead(int(pid)), timeout=120, interval=0.05)


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_trial_ray_ended_error_with_retries_left_is_resumed_and_finishes(tmp_path, ray_local, stage1_cache):
    spec = write_ablation(tmp_path, "reused", {"full": {}, "T": {"fusion.modalities": ["text"]}}, seeds=(0,),
                          epochs=2, max_concurrent=1, max_failures=3)
    outcome = run_sweep("ablate", spec, [], SweepOptions(output=tmp_path / "runs", cache_dir=stage1_cache,
                                                         callbacks=[_KillTheFirstTrialsWorker()]))
    runs = child_runs(tmp_path / "runs", "reused")
    assert outcome.status == "finished", outcome.messages
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    # Ray Tune counted the one dead actor twice (failures 1 and 2 of the trial that was to reuse it) and ended
    # that trial ERROR with a retry left; the sweep said so and resumed it, and it finished.
    assert any("ERROR before their 3 retries were used" in m and "resuming them once" in m for m in outcome.messages)
    (error_file,) = (tmp_path / "runs" / "ray" / "reused").glob("*/T-s0-*/error.txt")
    assert "Failure # 2" in error_file.read_text() and "Failure # 3" not in error_file.read_text()
    # One run per trial, its every epoch logged once, no failure left on it.
    (resumed,) = [r for r in runs if r.data.tags["variant"] == "T"]
    assert "failure_reason" not in resumed.data.tags and resumed.data.tags.get("resumed") == "1"
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "dev_wf1")] == [1, 2]
