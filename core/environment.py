"""The process environment every entry point sets before Ray, MLflow or transformers are imported.

One home for these defaults: `run_sweep.py` and `python -m reports.cli` call `apply_defaults()` first
thing, tests/conftest.py forces them, and the sweep engine hands `worker_env()` to every Ray worker.
No module sets them at import time.
"""
from __future__ import annotations

import os
from typing import MutableMapping

DEFAULTS = {
    # Offline: nothing downloads at run time.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # No usage stats or telemetry.
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Every Ray process of a local run on 127.0.0.1; no Ray auth token file (a stale one makes a
    # second node fail with InvalidAuthToken).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    # Quiet: tokenizers' fork warning, Ray's own tables and snapshot warning (our progress line
    # replaces them), MLflow's URL lines and artifact progress bars in printed tables.
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # Tune's CSV and TensorBoard result files: MLflow is the record, and each file costs the driver a
    # write per result. The sweep adds Tune's JSON logger itself (result.json, which Ray's
    # ExperimentAnalysis reads back).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # A tracking server that is down should cost seconds, not MLflow's minutes of retries.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # glibc's malloc raises its mmap threshold each time a large block is freed, after which blocks of a clip's
    # size (1.2 MB of frames) come from the heap and fragment it: a stage-1 task's peak RSS grew with the number
    # of clips. A fixed threshold keeps such blocks in their own mappings, returned on free (the figures, before
    # and after: benchmarks/RESULTS.md, issue 26). Read by glibc when a process starts: set for the processes
    # we start.
    "MALLOC_MMAP_THRESHOLD_": "131072",
    # Ray starts its workers at nice 15, so on a machine shared with anyone else's CPU-bound job (nice 0) the
    # trials and stage-1 tasks got 3% of a core: `make test` beside two busy loops had run 16 minutes with the
    # stage-1 tasks at 32 s of CPU. Read by the raylet when it starts (Ray's own job server sets it to 0 too).
    "RAY_worker_niceness": "0",
}

# What every trial worker gets (also on a cluster joined with --address, whose workers did not run
# an entry point of ours).
WORKER_KEYS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "MLFLOW_DISABLE_TELEMETRY",
               "MALLOC_MMAP_THRESHOLD_")
M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter (malloc.h)


def apply_defaults(environ: MutableMapping[str, str] | None = None, force: bool = False) -> None:
    """Set every default that is not set yet (all of them with force=True, as the tests do)."""
    environ = os.environ if environ is None else environ
    for key, value in DEFAULTS.items():
        if force:
            environ[key] = value
        else:
            environ.setdefault(key, value)


def worker_env() -> dict[str, str]:
    """The environment for Ray's trial workers: this process's values, else the defaults (and the trial
    span log, sweep/trainable.py, when this process has one)."""
    env = {key: os.environ.get(key, DEFAULTS[key]) for key in WORKER_KEYS}
    if os.environ.get("MAGTKD_SPAN_LOG"):
        env["MAGTKD_SPAN_LOG"] = os.environ["MAGTKD_SPAN_LOG"]
    return env


def fix_mmap_threshold(environ: MutableMapping[str, str] | None = None) -> bool:
    """The same fixed mmap threshold for this process, already running (a process started without the variable,
    e.g. stage 1 called from a user's own script): glibc's mallopt through ctypes. False where there is no glibc."""
    import ctypes
    import ctypes.util

    environ = os.environ if environ is None else environ
    try:
        threshold = int(environ.get("MALLOC_MMAP_THRESHOLD_", DEFAULTS["MALLOC_MMAP_THRESHOLD_"]))
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError, ValueError):
        return False
