"""Ray Tune can end a trial ERROR before it used its retries (a node lost while the trial's actor started on it:
Tune counts the one loss twice). `sync.errored_with_retries_left` finds such trials in Ray's own record, so
that the engine resumes them once (`AblationKind.resume_errored_early`, sweep/kinds.py). Here a real Tune
experiment, one trial that always crashes and one that finishes, is read back as Ray saved it; the node-loss path itself is
tests/test_sweep_cluster.py::test_losing_the_worker_node_mid_sweep."""
from __future__ import annotations

import sys

from sweep.sync import errored_with_retries_left


def _crash_or_finish(config):
    from ray import tune

    if config["trial"] == "crash":
        raise RuntimeError("this trial always crashes")
    tune.report({"epoch": 1})


def test_only_trials_that_ended_error_before_their_retries_count(tmp_path, ray_local):
    import ray
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray's workers cannot import tests/
    tuner = tune.Tuner(_crash_or_finish, param_space={"trial": tune.grid_search(["crash", "finish"])},
                       run_config=tune.RunConfig(name="early", storage_path=str(tmp_path),
                                                 failure_config=tune.FailureConfig(max_failures=1)))
    tuner.fit()
    path = tmp_path / "early"
    # The crashing trial used its one retry: two failures, so at max_failures 1 it ended ERROR fairly.
    assert errored_with_retries_left(path, 1, 2) == ([], 1)
    # Read with a budget of 2 retries, the same record is a trial that ended ERROR with one retry left.
    early, errored = errored_with_retries_left(path, 2, 2)
    assert errored == 1 and len(early) == 1
    crashed = [t for t in tune.ExperimentAnalysis(str(path)).trials if t.status == "ERROR"]
    assert early == [crashed[0].trial_id] and crashed[0].config["trial"] == "crash"
    # An experiment with trials still to come (interrupted) is never resumed from here.
    assert errored_with_retries_left(path, 2, 3) == ([], 0)
