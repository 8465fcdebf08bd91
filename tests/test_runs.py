"""`runs` and `ui` against a real MLflow SQLite store (tests/sample_store.py) and a real `mlflow server`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from reports.cli import main as cli_main
from tests.sample_store import ABLATION, _flat, sample_ablation, sample_tune
from reports.ui import is_loopback, server_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    uri = sample_ablation(out, "demo")
    sample_tune(out, "fusion")
    sample_ablation(out, "shared", stage1_seed_mode="shared", failed=(), killed=())
    return {"out": out, "uri": uri}


def _children(uri: str, name: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[name], max_results=10000)
    return df[df["tags.mlflow.parentRunId"].notna()]


def test_runs_lists_sweeps_with_states_and_best(store, capsys):
    assert cli_main(["runs", "--output", str(store["out"])]) == 0
    out = capsys.readouterr().out
    demo = next(line for line in out.splitlines() if line.startswith("demo "))
    assert "ablate" in demo and "13 FINISHED, 1 FAILED, 1 KILLED" in demo and "2026-01-01 00:00 UTC" in demo
    # The best variant by its mean over its finished seeds (not its luckiest seed), with the spread.
    means = _variant_means(store["uri"], "demo", "dev_wf1")
    variant = max(means, key=lambda v: means[v][0])
    mean, std, n = means[variant]
    assert f"{100 * mean:.2f} ± {100 * std:.2f} over {n} seeds ({variant})" in demo
    fusion = next(line for line in out.splitlines() if line.startswith("fusion "))
    assert "tune" in fusion and "9 FINISHED, 1 FAILED" in fusion


def test_runs_of_one_sweep_lists_every_trial(store, capsys):
    assert cli_main(["runs", "demo", "--output", str(store["out"])]) == 0
    out = capsys.readouterr().out
    df = _children(store["uri"], "demo")
    assert all(run_id in out for run_id in df["run_id"])
    header = out.splitlines()[1]
    # Key params are what the variants change, found from the params themselves.
    for key in ("fusion.anchor_gating", "stage1.kd", "fusion.modalities", "fusion.speaker_embeddings"):
        assert key in header
    assert "train.lr" not in header
    assert "FAILED (DivergedError: loss is nan at epoch 2)" in out and "KILLED" in out


def test_runs_best_k_gives_the_top_trials_with_overrides(store, capsys):
    assert cli_main(["runs", "fusion", "--best", "3", "--output", str(store["out"])]) == 0
    out = capsys.readouterr().out
    df = _children(store["uri"], "fusion")
    top = df[df["status"] == "FINISHED"].sort_values("metrics.selected_dev_wf1", ascending=False).head(3)
    ranks = [line for line in out.splitlines() if line.startswith("#")]
    assert [line.split()[-1] for line in ranks] == list(top["run_id"])
    first = top.iloc[0]
    assert f"train.lr={first['params.train.lr']}" in out and f"fusion.mode={first['params.fusion.mode']}" in out
    assert "config.yaml" in out
    assert cli_main(["runs", "fusion", "--best", "0", "--output", str(store["out"])]) == 2


def _variant_means(uri: str, name: str, key: str) -> dict[str, tuple[float, float, int]]:
    """variant -> (mean, sample std, n) of selected_KEY over its FINISHED runs, straight from MLflow."""
    df = _children(uri, name)
    done = df[df["status"] == "FINISHED"]
    stats = done.groupby("tags.variant")[f"metrics.selected_{key}"].agg(["mean", "std", "count"])
    return {v: (row["mean"], row["std"], int(row["count"])) for v, row in stats.iterrows()}


def test_runs_best_in_an_ablation_ranks_variants_by_their_mean_over_seeds(store, capsys):
    """Three seeds per variant, one FAILED and one KILLED run among them: each variant is ranked by the mean of
    its finished seeds, printed with its sample std and seed count, and lists every one of its runs."""
    assert cli_main(["runs", "demo", "--best", "3", "--output", str(store["out"])]) == 0
    out = capsys.readouterr().out
    means = _variant_means(store["uri"], "demo", "dev_wf1")
    order = sorted(means, key=lambda v: -means[v][0])[:3]
    ranks = [line for line in out.splitlines() if line.startswith("#")]
    assert [line.split()[1] for line in ranks] == order
    assert f"the 3 best of {len(means)} variants" in out.splitlines()[0]
    df = _children(store["uri"], "demo")
    for line, variant in zip(ranks, order):
        mean, std, n = means[variant]
        assert f"dev_wf1 {100 * mean:.2f} ± {100 * std:.2f} over {n} seeds" in line
        finished = df[(df["status"] == "FINISHED") & (df["tags.variant"] == variant)]
        assert set(line.split("runs ", 1)[1].split()) == set(finished["run_id"])


def test_runs_best_in_an_ablation_names_what_differs_from_the_baseline_variant(store, capsys):
    """Each of the best trials says what its variant changes against the baseline (`full`), nothing else: not the
    seed, not the sweep's shared stage-1 seed; scores are said to be percent."""
    assert cli_main(["runs", "shared", "--best", "15", "--output", str(store["out"])]) == 0
    out = capsys.readouterr().out
    assert "(scores in percent; MLflow holds them as 0-1)" in out.splitlines()[0]
    base = _flat({})
    said = {}
    for rank, differs in zip(*[iter([ln for ln in out.splitlines() if ln.startswith(("#", "    differs"))])] * 2):
        said[rank.split()[1]] = differs.split(" in: ", 1)[1]
    assert set(said) == set(ABLATION)
    for variant, (overrides, _) in ABLATION.items():
        changed = {k: v for k, v in _flat(overrides).items() if base.get(k) != v}
        assert said[variant] == (" ".join(f"{k}={v}" for k, v in sorted(changed.items()))
                                 or "(nothing: this is the baseline config)"), variant
    assert "stage1.shared_seed" not in out and " seed=" not in out and "differs from the baseline full in" in out


def test_runs_unknown_sweep_lists_known_ones(store, capsys):
    assert cli_main(["runs", "nope", "--output", str(store["out"])]) == 2
    assert "unknown sweep 'nope'" in capsys.readouterr().err
    assert cli_main(["runs", "--best", "2", "--output", str(store["out"])]) == 2


def test_ui_warns_for_a_non_loopback_host_only(store, capsys):
    assert cli_main(["ui", "--output", str(store["out"]), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err
    assert "--host 127.0.0.1" in captured.out and "--workers 1" in captured.out and "--port 5000" in captured.out
    assert f"sqlite:///{store['out'].resolve()}/mlflow.db" in captured.out
    assert cli_main(["ui", "--host", "0.0.0.0", "--port", "5123", "--output", str(store["out"]), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: binding the MLflow UI to 0.0.0.0, not loopback" in captured.err
    assert "--host 0.0.0.0" in captured.out
    assert is_loopback("localhost") and is_loopback("127.0.0.1") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as the kernel writes them) listening on `port`, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.append(address)
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
def test_ui_binds_loopback_answers_health_and_stops_on_sigterm(store):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "reports.cli", "ui", "--output", str(store["out"]), "--port",
                             str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # `ui` prints its line once /health answers; the server's own start-up lines may come first.
        seen = []
        while not any(f"at http://127.0.0.1:{port}" in line for line in seen[-1:]):
            line = proc.stdout.readline()
            assert line, "ui ended without saying where it serves:\n" + "".join(seen)
            seen.append(line)
        first = seen[-1]
        server_pid = int(first.split("server pid ")[1].split(";")[0])
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and body is None:
            assert proc.poll() is None, "ui exited early"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.5)
        assert body is not None and body.strip() == "OK"
        assert _listening(port) == ["0100007F"]  # 127.0.0.1 only, nothing on 0.0.0.0 or IPv6
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0
    deadline = time.monotonic() + 60
    while _group_alive(server_pid) and time.monotonic() < deadline:  # the server's workers go with it
        time.sleep(0.2)
    assert not _group_alive(server_pid)
    assert _listening(port) == []
