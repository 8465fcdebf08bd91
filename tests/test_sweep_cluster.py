"""A two-node Ray cluster on 127.0.0.1 (`ray.cluster_utils.Cluster`): the worker node is removed while
trials run on it, and the sweep still completes, the lost trials retried from their checkpoints."""
from __future__ import annotations

import threading

import pytest
from conftest import child_runs, write_ablation
from ray import tune

from sweep.engine import SweepOptions, run_sweep

pytestmark = pytest.mark.slow

# Callbacks are pickled with the experiment: they hold only a key into this registry, never the cluster.
_EVENTS: dict[str, threading.Event] = {}


class _SignalAfterResults(tune.Callback):
    def __init__(self, key: str, results: int):
        self.key, self.results, self.seen = key, results, 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.seen += 1
        if self.seen >= self.results and sum(t.status == "RUNNING" for t in trials) >= 3:
            _EVENTS[self.key].set()


def test_losing_the_worker_node_mid_sweep(tmp_path, stage1_cache):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # this test needs a cluster of its own; the shared local Ray restarts on next use
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 1024 ** 2})
    worker = cluster.add_node(num_cpus=2, object_store_memory=100 * 1024 ** 2)
    cluster.wait_for_nodes()
    removed: list[bool] = []
    abort = threading.Event()
    _EVENTS["remove"] = threading.Event()

    def remove_worker():
        if _EVENTS["remove"].wait(240) and not abort.is_set():
            cluster.remove_node(worker, allow_graceful=False)
            removed.append(True)

    remover = threading.Thread(target=remove_worker, daemon=True)
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"} and len(ray.nodes()) == 2
        remover.start()
        spec = write_ablation(tmp_path, "nodes", {"full": {}, "T": {"fusion.modalities": ["text"]}}, seeds=(0, 1),
                              epochs=8, max_concurrent=3, max_failures=3)
        outcome = run_sweep("ablate", spec, [], SweepOptions(output=tmp_path / "runs", cache_dir=stage1_cache,
                                                             callbacks=[_SignalAfterResults("remove", 2)]))
        assert removed, "the worker node was never removed"
        assert outcome.status == "finished"
        runs = child_runs(tmp_path / "runs", "nodes")
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
        lost = [p for p in (tmp_path / "runs" / "ray" / "nodes").glob("*/*/error.txt")]
        assert lost, "no trial ran on the removed node"
    finally:
        abort.set()
        _EVENTS["remove"].set()
        remover.join(timeout=60) if remover.is_alive() else None
        ray.shutdown()
        cluster.shutdown()
