"""`ui`: the MLflow UI (`mlflow server`) against the project's store, on 127.0.0.1 unless told otherwise.

The server runs as a child in its own process group; SIGINT/SIGTERM to this process are passed on to
that group (which we started, by its id), so the server's own workers stop with it and nothing is
left listening.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from reports.store import ReportError
from sweep.tracking import EXPERIMENT_KIND, SweepError, check_store, make_client, retrying

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
SERVE_TIMEOUT_S = 180.0   # `mlflow server` answers in about 6 s on an idle machine; minutes on a loaded one


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str:
    if is_loopback(host):
        return ""
    return (f"WARNING: binding the MLflow UI to {host}, not loopback: anyone who can reach this machine on that "
            f"address can read and change every run (MLflow has no authentication here). Use the default "
            f"127.0.0.1 and an SSH tunnel unless you mean it.")


def server_command(tracking_uri: str, host: str, port: int, artifacts: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if artifacts is not None:
        # Experiments made by the sweep carry absolute artifact paths; this only serves new ones made in the UI.
        cmd += ["--artifacts-destination", str(artifacts)]
    return cmd


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner for a read-mostly UI
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def runs_url(base: str, experiment_id: str) -> str:
    """The runs table of an experiment. MLflow 3.17's UI opens in its GenAI mode and then ignores the
    experiment's kind tag; the workflowType parameter switches it to "Model training" (checked in
    headless Chromium: without it the page is the GenAI overview, with it the runs table)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def sweep_urls(tracking_uri: str, base: str) -> list[str]:
    """One line per sweep in the store: its name and the URL of its runs table. Experiments that sweeps
    made before they were marked as model-training experiments are marked now (the UI otherwise opens
    them on its GenAI overview)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        return []
    client = make_client(tracking_uri)
    lines = []
    for exp in retrying(client.search_experiments):
        if exp.name == "Default":  # MLflow's own, never a sweep
            continue
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            retrying(client.set_experiment_tag, exp.experiment_id, *EXPERIMENT_KIND)
        lines.append(f"  {exp.name}: {runs_url(base, exp.experiment_id)}")
    return lines


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _reap_group(pgid: int, grace_s: float = 5.0) -> None:
    """The server's workers (same process group) get a moment to finish, then SIGKILL."""
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ReportError(f"--port {port}: a TCP port is 1-65535 (e.g. 5000)")


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before starting a server that would die on it."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            busy = error.errno == errno.EADDRINUSE
            raise SweepError(f"the MLflow UI cannot listen on {host}:{port} ({error.strerror})"
                             + ("; another program (an earlier `ui`?) uses that port: pick another with --port"
                                if busy else "; check --host and --port")) from None


def wait_until_serving(child: subprocess.Popen, base: str, timeout_s: float = SERVE_TIMEOUT_S) -> str:
    """'' once the server answers /health; else why not (it exited, or never answered within timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            return f"the server exited with code {code} before answering (its output is above)"
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as response:  # noqa: S310 (our own server)
                if response.status == 200:
                    return ""
        except OSError:
            pass
        time.sleep(0.5)
    return f"the server did not answer {base}/health within {timeout_s:g} s"


def _stop_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        pass
    _reap_group(child.pid)


def serve(tracking_uri: str, host: str, port: int, artifacts: Path | None, dry_run: bool = False,
          out=None, err=None) -> int:
    """Run the MLflow UI until Ctrl-C / SIGTERM; exit 1 when its server does not come up (a busy port, a
    server that dies), 0 when stopped by a signal."""
    out, err = out or sys.stdout, err or sys.stderr  # looked up now, so a redirected stdout is honoured
    check_port(port)
    if not (tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists()):
        check_store(tracking_uri)
    warning = host_warning(host)
    if warning:
        print(warning, file=err, flush=True)
    cmd = server_command(tracking_uri, host, port, artifacts)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        print(f"note: no store yet at {tracking_uri}; runs appear once a sweep writes there", file=err, flush=True)
    if dry_run:
        print(" ".join(cmd), file=out, flush=True)
        urls = sweep_urls(tracking_uri, address(host, port))
        if urls:
            print("runs of each sweep:\n" + "\n".join(urls), file=out, flush=True)
        return 0
    check_port_free(host, port)
    child = subprocess.Popen(cmd, env=server_env(), start_new_session=True)

    def stop(signum, _frame):
        try:
            os.killpg(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    # Installed before anything is printed: a SIGTERM sent as soon as the address appears must stop the server
    # (its own session) through this handler, not kill `ui` and leave the server behind.
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    problem = wait_until_serving(child, address(host, port))
    if problem:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_group(child)
        print(f"error: the MLflow UI did not come up at {address(host, port)}: {problem}", file=err, flush=True)
        return 1
    print(f"MLflow UI for {tracking_uri} at {address(host, port)} (server pid {child.pid}; Ctrl-C stops it)",
          file=out, flush=True)
    urls = sweep_urls(tracking_uri, address(host, port))
    if urls:
        print("runs of each sweep:\n" + "\n".join(urls), file=out, flush=True)

    try:
        try:
            code = child.wait()
        except KeyboardInterrupt:
            stop(signal.SIGINT, None)
            code = child.wait()
        _reap_group(child.pid)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # A server stopped by our signal is a normal end of `ui`.
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code
