"""A local sweep starts a Ray of its own whatever else runs (or ran) on the machine; --address joins the
cluster it names; an address where nothing listens is a clear error in seconds.

The head node is a real `ray start --head` on 127.0.0.1 with its own port and temp directory
(RAY_TMPDIR, which is where `ray start` records "the machine's current cluster" and where a plain
`ray.init()` would look for it). It is stopped by its process ids, leaving that record stale.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, alive, child_runs, descendants, kill_pids, wait_for, write_ablation

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_sweep.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _joined(out: str) -> str:
    found = re.search(r"Ray: (.*)", out)
    assert found, out[-3000:]
    return found.group(1)


@pytest.fixture
def ray_tmp():
    """A short private Ray temp root (Unix socket paths must stay under ~107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_local_sweeps_ignore_a_live_and_a_stale_cluster_and_address_joins_it(tmp_path, stage1_cache, ray_tmp):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmp)
    port = _free_port()
    head_log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats",
                             f"--object-store-memory={100 * 1024 ** 2}"],
                            env=env, stdout=head_log, stderr=subprocess.STDOUT)
    head_pids: set[int] = {head.pid}
    try:
        record = ray_tmp / "ray" / "ray_current_cluster"
        assert wait_for(lambda: record.exists() and head_pids.update(descendants(head.pid)) is None
                        and len(head_pids) > 3, 90), (tmp_path / "head.log").read_text()[-2000:]
        assert f"127.0.0.1:{port}" in record.read_text()
        spec = write_ablation(tmp_path, "rayown", {"full": {}}, seeds=(0,), epochs=1)
        common = ["--cache-dir", str(stage1_cache)]

        # 1. no --address while a cluster runs and is recorded: the sweep starts and owns its own Ray
        own = _sweep(["ablate", str(spec), "--output", str(tmp_path / "own"), *common], env)
        assert own.returncode == 0, own.stdout[-3000:] + own.stderr[-3000:]
        assert "private local Ray" in _joined(own.stdout) and f":{port}" not in _joined(own.stdout)

        # 2. --address: the sweep runs on that cluster
        head_pids.update(descendants(head.pid))
        joined = _sweep(["ablate", str(spec), "--output", str(tmp_path / "joined"), "--address",
                         f"127.0.0.1:{port}", *common], env)
        assert joined.returncode == 0, joined.stdout[-3000:] + joined.stderr[-3000:]
        assert f"joined the Ray cluster at 127.0.0.1:{port}" in _joined(joined.stdout)
        assert [r.info.status for r in child_runs(tmp_path / "joined", "rayown")] == ["FINISHED"]

        # 3. the head dies without `ray stop` (as after a crash): its record stays behind, stale
        head_pids.update(descendants(head.pid))
        kill_pids(head_pids)
        assert wait_for(lambda: not any(alive(p) for p in head_pids), 120)
        assert record.exists()
        stale = _sweep(["ablate", str(spec), "--output", str(tmp_path / "stale"), *common], env)
        assert stale.returncode == 0, stale.stdout[-3000:] + stale.stderr[-3000:]
        assert "private local Ray" in _joined(stale.stdout)
        assert [r.info.status for r in child_runs(tmp_path / "stale", "rayown")] == ["FINISHED"]
    finally:
        head_pids.update(descendants(head.pid))
        kill_pids(head_pids)
        head.wait(timeout=30)
        head_log.close()


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "auto"])
def test_an_address_where_nothing_listens_is_a_clear_error_in_seconds(tmp_path, ray_tmp, address):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmp)  # no cluster was ever recorded there
    spec = write_ablation(tmp_path, "nowhere", {"full": {}}, seeds=(0,), epochs=1)
    address = address.format(port=_free_port())
    started = time.time()
    result = _sweep(["ablate", str(spec), "--output", str(tmp_path / "out"), "--address", address], env, timeout=300)
    elapsed = time.time() - started
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert elapsed < 150   # seconds on an idle machine; a bound for a loaded one (Ray's own retries: minutes)
    assert f"--address {address}" in result.stderr and "leave --address out" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()  # nothing written before the failure
