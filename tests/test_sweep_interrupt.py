"""Sweep drivers as real subprocesses: Ctrl-C (SIGINT) and SIGKILL of the driver, then the same command
again; two sweeps writing one SQLite store at once. Only processes these tests started are signalled, by id."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import alive, child_runs, descendants, kill_pids, wait_for, write_ablation

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# A bound, never a window: each wait ends as soon as its condition holds. Under two CPU burners beside the
# suite, stage 1 alone took 93 s and a first trial 2.5 min, past the 240 s these waits once had.
BOUND_S = 1200
VARIANTS = {"full": {}, "w/o anchor gating": {"fusion.anchor_gating": False}, "T": {"fusion.modalities": ["text"]}}


class Driver:
    """`python run_sweep.py ...` in a subprocess; remembers every descendant process it ever had."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.file = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "run_sweep.py", *args], cwd=ROOT, stdout=self.file,
                                     stderr=subprocess.STDOUT, env=dict(os.environ))
        self.family: set[int] = set()
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._track, daemon=True)
        self._watch.start()

    def _track(self) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            self.family |= descendants(self.proc.pid)
            time.sleep(0.3)

    def text(self) -> str:
        if not self.file.closed:
            self.file.flush()
        return self.log.read_text()

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._stop.set()
            self.file.close()

    def leftovers(self) -> set[int]:
        return {pid for pid in self.family if alive(pid)}


def _finished_pairs(output: Path, sweep: str, running_ok: bool = False) -> Counter:
    runs = child_runs(output, sweep)
    assert running_ok or not [r for r in runs if r.info.status == "RUNNING"], "a run was left RUNNING"
    return Counter((r.data.tags["variant"], r.data.tags["seed"]) for r in runs if r.info.status == "FINISHED")


def _interrupt_after_first_trial(driver: Driver, sig: int) -> None:
    assert wait_for(lambda: "  finished " in driver.text() or driver.proc.poll() is not None, BOUND_S), driver.text()
    assert driver.proc.poll() is None, f"the sweep ended before it could be interrupted:\n{driver.text()}"
    os.kill(driver.proc.pid, sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_driver_then_the_same_command_resumes(tmp_path, stage1_cache, sig):
    name = f"int-{sig.name.lower()}"
    spec = write_ablation(tmp_path, name, VARIANTS, seeds=(0, 1), epochs=8)
    out = tmp_path / "runs"
    args = ["ablate", str(spec), "--output", str(out), "--cache-dir", str(stage1_cache)]

    first = Driver(args, tmp_path / "first.log")
    _interrupt_after_first_trial(first, sig)
    code = first.wait(BOUND_S)
    if sig == signal.SIGINT:
        assert code == 130, first.text()
        assert "was interrupted" in first.text() and "Rerun the same command to resume" in first.text()
        # Stopped cleanly: nothing of this driver's Ray (or anything else it started) is left running.
        assert first.family, "never saw the driver's child processes"
        assert wait_for(lambda: not first.leftovers(), 120), f"left running: {first.leftovers()}"
    else:
        assert code == -signal.SIGKILL
        wait_for(lambda: not first.leftovers(), 10)
        kill_pids(first.leftovers())  # Ray's agents outlive a SIGKILLed driver: stop ours, by id
    # A clean stop closes the runs of unfinished trials (KILLED); a SIGKILLed driver cannot.
    printed = first.text().count("  finished ")
    recorded = sum(_finished_pairs(out, name, running_ok=sig == signal.SIGKILL).values())
    assert 1 <= printed < 6
    # A clean stop waits for the driver's MLflow writes (on a thread beside Tune's loop: sweep/mlflow_callback.py),
    # so every trial it printed as finished is FINISHED in MLflow. A SIGKILL can cut queued writes; the
    # trials stay in Ray's storage, and the rerun below writes them.
    if sig == signal.SIGINT:
        assert recorded == printed, first.text()
    else:
        assert recorded <= printed

    second = Driver(args, tmp_path / "second.log")
    assert second.wait(BOUND_S) == 0, second.text()
    assert "resuming sweep" in second.text()
    pairs = _finished_pairs(out, name)
    assert pairs == Counter({(v, s): 1 for v in VARIANTS for s in ("0", "1")}), pairs
    assert len(child_runs(out, name)) == 6        # an interrupted trial's run was taken up again, not doubled
    kill_pids(second.leftovers())


def test_two_sweeps_write_one_sqlite_store_at_once(tmp_path, ray_local, stage1_cache):
    import ray

    address = ray.get_runtime_context().gcs_address  # both drivers join this test session's Ray
    out = tmp_path / "runs"
    drivers = []
    for name in ("left", "right"):
        spec = write_ablation(tmp_path, name, {"full": {}, "T": {"fusion.modalities": ["text"]}}, seeds=(0, 1),
                              epochs=3, max_concurrent=1)
        drivers.append(Driver(["ablate", str(spec), "--output", str(out), "--cache-dir", str(stage1_cache),
                               "--address", address], tmp_path / f"{name}.log"))
    for driver in drivers:
        assert driver.wait(BOUND_S) == 0, driver.text()
    for name in ("left", "right"):
        assert _finished_pairs(out, name) == Counter({(v, s): 1 for v in ("full", "T") for s in ("0", "1")})
        # Each sweep's Ray storage holds its own four trials only (Ray stages files per experiment name).
        assert len([p for p in (out / "ray" / name).glob("*/*") if (p / "params.json").exists()]) == 4


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (one worker, no job execution), stopped by its process ids."""

    def __init__(self, db: Path, artifacts: Path, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "a")
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                                      "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                                      "--port", str(port), "--workers", "1"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        import urllib.request

        def up() -> bool:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        if not wait_for(up, 180):  # minutes, not seconds, on a loaded 2-core machine
            self.stop()               # never leave a server behind
            raise AssertionError(f"mlflow server did not answer on {self.url}:\n{log.read_text()}")

    def stop(self) -> None:
        family = descendants(self.proc.pid) | {self.proc.pid}
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        kill_pids(pid for pid in family if alive(pid))
        self.log.close()


def test_a_tracking_server_lost_mid_sweep_loses_nothing(tmp_path, ray_local, stage1_cache):
    import socket

    import ray
    from mlflow.tracking import MlflowClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db, artifacts = tmp_path / "server.db", tmp_path / "server-artifacts"
    server = MlflowServer(db, artifacts, port, tmp_path / "server.log")
    out = tmp_path / "runs"
    spec = write_ablation(tmp_path, "lost", {"full": {}, "T": {"fusion.modalities": ["text"]}}, seeds=(0, 1), epochs=6)
    try:
        driver = Driver(["ablate", str(spec), "--output", str(out), "--cache-dir", str(stage1_cache),
                         "--tracking-uri", server.url, "--address", ray.get_runtime_context().gcs_address],
                        tmp_path / "driver.log")
        assert wait_for(lambda: "  finished " in driver.text() or driver.proc.poll() is not None, BOUND_S)
        server.stop()                                   # the tracking server goes away mid-sweep
        assert driver.wait(BOUND_S) == 1, driver.text()     # training went on; the MLflow record is unfinished
        text = driver.text()
        assert "MLflow write failed" in text and f"python run_sweep.py sync lost --output {out}" in text
        assert text.count("  finished ") == 4

        server = MlflowServer(db, artifacts, port, tmp_path / "server.log")   # back again
        sync = subprocess.run([sys.executable, "run_sweep.py", "sync", "lost", "--output", str(out),
                               "--tracking-uri", server.url], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        client = MlflowClient(server.url)
        runs = [r for r in client.search_runs([client.get_experiment_by_name("lost").experiment_id])
                if "mlflow.parentRunId" in r.data.tags]
        assert sorted((r.data.tags["variant"], r.data.tags["seed"], r.info.status) for r in runs) == \
            [(v, s, "FINISHED") for v in ("T", "full") for s in ("0", "1")]
        for run in runs:
            assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_wf1")] == [1, 2, 3, 4, 5, 6]
    finally:
        server.stop()


# ---- a driver SIGKILLed at each point where Ray or the sweep writes state (issue 27) -------------------------

def _tuner_without_snapshot(out: Path, name: str) -> bool:
    """Ray Tune's tuner.pkl is written, its first experiment_state-*.json not yet."""
    return any(not list(p.parent.glob("experiment_state-*.json")) for p in (out / "ray" / name).glob("*/tuner.pkl"))


def _every_trial_reported_its_last_epoch(out: Path, name: str, trials: int = 2, epochs: int = 2) -> bool:
    """Both trials' result.json hold their last epoch: Tune is ending; its last snapshot, the sync into MLflow
    and the parent run's end are what the driver writes next."""
    results = list((out / "ray" / name).glob("*/*/result.json"))
    return len(results) == trials and all(f'"epoch": {epochs}' in r.read_text() for r in results)


# window -> what appears on disk (or in the log) when the driver is inside it
WINDOWS = {
    "before-tuner-pkl": lambda out, name, cache, d: (out / "ray" / name / ".lock").exists(),
    "during-stage-1": lambda out, name, cache, d: any(cache.iterdir()) if cache.exists() else False,
    "after-tuner-pkl": lambda out, name, cache, d: _tuner_without_snapshot(out, name),
    "during-trials": lambda out, name, cache, d: any((out / "ray" / name).glob("*/*/checkpoint_*")),
    "final-writes": lambda out, name, cache, d: _every_trial_reported_its_last_epoch(out, name),
}


def _kill_at(args: list[str], log: Path, reached) -> Driver:
    """Start the driver, SIGKILL it as soon as `reached(driver)` holds, then stop its Ray (by pid)."""
    driver = Driver(args, log)
    assert wait_for(lambda: reached(driver) or driver.proc.poll() is not None, BOUND_S, interval=0.05), driver.text()
    assert driver.proc.poll() is None, f"the sweep ended before the window:\n{driver.text()}"
    os.kill(driver.proc.pid, signal.SIGKILL)
    assert driver.wait(120) == -signal.SIGKILL
    kill_pids(driver.leftovers())   # Ray's processes outlive a SIGKILLed driver: ours, by id
    assert wait_for(lambda: not driver.leftovers(), 120), f"left running: {driver.leftovers()}"
    return driver


@pytest.mark.parametrize("windows", [["before-tuner-pkl"], ["during-stage-1"],
                                     ["after-tuner-pkl", "during-trials", "final-writes"]],
                         ids=["before-tuner-pkl", "during-stage-1", "after-tuner-pkl+trials+final-writes"])
def test_a_driver_killed_in_any_window_resumes_on_rerun(tmp_path, windows):
    """Each window is reached by waiting on the file Ray or the sweep writes there (no sleeps); after the last
    kill the same command finishes every trial exactly once. The third case chains three windows in one
    output directory (each rerun is killed in the next window): tuner.pkl without a snapshot used to fail
    every rerun with "No experiment snapshot file"."""
    name = "windows"
    spec = write_ablation(tmp_path, name, {"full": {}}, seeds=(0, 1), epochs=2, max_concurrent=1)
    out, cache = tmp_path / "runs", tmp_path / "cache"   # a cache of its own: stage 1 really runs here
    args = ["ablate", str(spec), "--output", str(out), "--cache-dir", str(cache)]
    for i, window in enumerate(windows):
        killed = _kill_at(args, tmp_path / f"{i}-{window}.log",
                          lambda d, w=window: WINDOWS[w](out, name, cache, d))
        if window == "after-tuner-pkl":
            assert _tuner_without_snapshot(out, name), f"the kill missed the window:\n{killed.text()}"

    last = Driver(args, tmp_path / "last.log")
    assert last.wait(BOUND_S) == 0, last.text()
    assert _finished_pairs(out, name) == Counter({("full", "0"): 1, ("full", "1"): 1})
    assert len(child_runs(out, name)) == 2
    if "after-tuner-pkl" in windows:
        assert list((out / "ray" / name / ".unrestorable").iterdir())   # set aside, not deleted
    assert wait_for(lambda: not last.leftovers(), 120), f"left running: {last.leftovers()}"
