"""Starting Ray for a sweep: a private local instance, or a cluster the user names.

    started = start_ray(address=None, num_cpus=2, verbose=False, worker_env={...})   # private, on 127.0.0.1
    started = start_ray(address="127.0.0.1:6379", ...)                              # join that cluster

Two rules, so that a sweep never depends on what else ran on the machine:
- no address (neither --address nor RAY_ADDRESS): a new local Ray that this sweep owns and stops,
  started with `ray.init(address="local")`. A plain `ray.init()` would instead join whatever cluster
  `ray start` last recorded in Ray's temp directory, even a dead one, and then refuse our start-up
  arguments ("When connecting to an existing cluster, object_store_memory must not be provided").
- an address: join that cluster with no start-up arguments (a running cluster refuses them). Its
  head's port is probed first, so an address where nothing listens is a clear error in seconds rather
  than Ray's minutes of retries.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Optional

from sweep.tracking import SweepError

# Ray is imported inside the functions that start or join it: it costs seconds, and every check before
# Ray starts must stay fast.

LOCAL_OBJECT_STORE_BYTES = 256 * 1024 ** 2
PROBE_TIMEOUT_S = 5.0


class RayStartError(SweepError):
    """Ray could not be started or reached; the message says what was tried and how to fix it."""


def cluster_address(option: Optional[str]) -> Optional[str]:
    """The cluster to join: --address, else RAY_ADDRESS, else None (start a private local Ray)."""
    address = (option or os.environ.get("RAY_ADDRESS") or "").strip()
    return address or None


def recorded_address(temp_root: Optional[str] = None) -> tuple[Optional[str], Path]:
    """What `ray start` recorded as the machine's current cluster (in Ray's temp directory: RAY_TMPDIR,
    else TMPDIR, else /tmp, as Ray picks it on Linux), and the file it read."""
    root = Path(temp_root or os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"
    record = root / "ray_current_cluster"
    try:
        text = record.read_text().strip()
    except OSError:
        return None, record
    return (text.splitlines()[0].strip() if text else None), record


def _host_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        raise RayStartError(f"--address {address}: expected HOST:PORT (e.g. 127.0.0.1:6379), 'auto', or "
                            f"ray://HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Fail fast unless something listens at the cluster's address; returns the address to join."""
    where = address
    if address == "auto":
        recorded, record = recorded_address()
        if recorded is None:
            raise RayStartError(f"--address auto: no running Ray cluster is recorded on this machine ({record} "
                                f"is missing). Start one with `ray start --head --node-ip-address=127.0.0.1`, give "
                                f"its HOST:PORT, or leave --address out to run on a private local Ray.")
        where = recorded
    host, port = _host_port(where)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        stale = " (recorded by an earlier `ray start`; that cluster is gone)" if address == "auto" else ""
        raise RayStartError(f"--address {address}: no Ray cluster answers at {host}:{port}{stale} "
                            f"({err.strerror or err}). Is the head node running (`ray status --address "
                            f"{host}:{port}`)? Start it with `ray start --head --port={port}`, or leave --address "
                            f"out to run on a private local Ray.") from None
    return address


def start_ray(address: Optional[str], num_cpus: Optional[int], verbose: bool, worker_env: dict[str, str],
              num_gpus: Optional[float] = None) -> bool:
    """Start a private local Ray or join `address`. Returns whether this call started Ray (the caller
    then shuts it down); False when the process already had Ray initialised. `num_gpus` tells a local
    Ray how many GPUs it has (default: what it detects); they may be logical, as in the tests."""
    import ray

    if ray.is_initialized():
        return False
    common = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING,
                  runtime_env={"env_vars": dict(worker_env)})
    if address:
        probe(address)
        try:
            ray.init(address=address, **common)
        except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError, TimeoutError, ...
            raise RayStartError(f"--address {address}: could not join the Ray cluster ({type(err).__name__}: "
                                f"{str(err)[:300]}). Check that the cluster runs the same Ray version "
                                f"({ray.__version__}) and Python, or leave --address out to run on a private "
                                f"local Ray.") from err
        return True
    try:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
    except Exception as err:
        raise RayStartError(f"could not start a local Ray ({type(err).__name__}: {str(err)[:300]}). Likely causes: "
                            f"no free memory for the object store ({LOCAL_OBJECT_STORE_BYTES // 1024 ** 2} MiB) or "
                            f"/dev/shm, or an unwritable temp directory ({os.environ.get('RAY_TMPDIR') or '/tmp'}/ray; "
                            f"set RAY_TMPDIR to move it). Rerun with -v for Ray's own log.") from err
    return True


def describe(address: Optional[str], started: bool) -> str:
    """One line for the sweep's log: which Ray the trials run on."""
    import ray

    gcs = ray.get_runtime_context().gcs_address
    if not started:
        return f"the Ray already initialised in this process ({gcs})"
    if address:
        return f"joined the Ray cluster at {gcs} (--address {address})"
    return f"a private local Ray at {gcs}, started by this sweep and stopped at its end"
