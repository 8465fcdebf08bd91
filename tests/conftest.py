"""Shared test settings and fixtures (generic: any test module may use them).

The environment below is set before anything imports Ray, MLflow or transformers: offline, no usage
stats, every Ray process on 127.0.0.1, no auth token file, no MLflow telemetry.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.environment import apply_defaults  # noqa: E402  (plain constants: nothing heavy is imported)

apply_defaults(force=True)

# The real MELD transcripts (train/dev/test_sent_emo.csv) for the tests that need them; .ci/run points
# this at ../shared/data/meld when that exists. Without it those tests skip and say how to run them.
MELD_DIR = Path(os.environ.get("MAGTKD_MELD", "/nonexistent")).expanduser()
HAS_MELD = (MELD_DIR / "train_sent_emo.csv").is_file()
MELD_SKIP_REASON = ("MELD transcripts not found: set MAGTKD_MELD=/path/to/meld (the folder holding "
                    "train_sent_emo.csv; in this project's checkout: MAGTKD_MELD=../shared/data/meld)")

import signal  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402


# ---- processes, by id only -----------------------------------------------------------------------

def descendants(pid: int) -> set[int]:
    """Every live descendant of pid, read from /proc (no psutil here)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True for a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pids(pids) -> None:
    """SIGKILL the given processes (ones a test started, by id), ignoring those already gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---- a local Ray shared by in-process tests ------------------------------------------------------

def ensure_local_ray(num_cpus: int = 2) -> None:
    """One local Ray for the in-process tests of a session (start-up costs seconds): started on first
    use, restarted after a test that needed its own cluster shut it down."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=150 * 1024 ** 2,
                 log_to_driver=False, logging_level="WARNING")


@pytest.fixture
def ray_local():
    ensure_local_ray()
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_exit():
    yield
    import sys as _sys

    if "ray" in _sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


# ---- tiny sweeps ------------------------------------------------------------------------------------

# A synthetic dataset and model small enough for a trial to take a second or two on a CPU. Every sweep
# test uses this same stage-1 section (and one shared stage-1 seed), so stage 1 is computed once per
# session into `stage1_cache` and then read from the cache.
TINY_DATASET = {"name": "synthetic", "synthetic_dialogues": 8, "audio_seconds": 0.25, "sample_rate": 4000,
                "frames": 2, "frame_size": 8}
TINY_BASE = {"stage1.tiny_hidden": 8, "stage1.tiny_layers": 1, "stage1.width": 8, "stage1.max_tokens": 32,
             "stage1.epochs": 0, "stage1.batch_size": 8, "fusion.width": 8, "fusion.heads": 2,
             "train.epochs": 3, "train.batch_size": 4, "train.device": "cpu",
             "train.checkpoint_interval_s": 0}  # every epoch: the retry and resume tests kill trials mid-run


def write_ablation(directory: Path, name: str, variants: dict, seeds=(0, 1), epochs: int = 3,
                   extra_base: dict | None = None, **top) -> Path:
    """A tiny ablation YAML (shared stage-1 seed) in directory; returns its path."""
    import yaml

    spec = {"name": name, "dataset": TINY_DATASET, "base": {**TINY_BASE, "train.epochs": epochs, **(extra_base or {})},
            "variants": variants, "seeds": list(seeds), "stage1_seed": "shared", "resources": {"cpu": 1},
            "max_concurrent": 2, **top}
    path = Path(directory) / f"{name}.yaml"
    path.write_text(f"# python run_sweep.py ablate {path}\n" + yaml.safe_dump(spec, sort_keys=False))
    return path


def write_search(directory: Path, name: str, params: dict, num_samples: int = 6, epochs: int = 4, **top) -> Path:
    import yaml

    spec = {"name": name, "dataset": TINY_DATASET,
            "base": {**TINY_BASE, "train.epochs": epochs, "stage1.shared_seed": 0},
            "num_samples": num_samples, "max_concurrent": 2, "resources": {"cpu": 1}, "params": params, **top}
    path = Path(directory) / f"{name}.yaml"
    path.write_text(f"# python run_sweep.py tune {path}\n" + yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def stage1_cache(tmp_path_factory) -> Path:
    """One stage-1 feature cache for every sweep test of the session."""
    return tmp_path_factory.mktemp("stage1-cache")


def child_runs(output: Path, sweep: str, tracking_uri: str | None = None) -> list:
    """Child runs of a sweep in the store under output (or at tracking_uri)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or f"sqlite:///{Path(output).resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def parent_runs(output: Path, sweep: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(output).resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(sweep)
    runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
    # A sweep's own run has sweep_kind; stage-1 runs (no parent tag either) are not parents.
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags and "sweep_kind" in r.data.tags]


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine run several times faster on one intra-op thread
    (a second one only spin-waits on a core another process holds)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- order: heaviest files first ---------------------------------------------------------------------

# `make test` runs two pytest-xdist workers, one test file at a time each (--dist loadfile), taking files in
# collection order (--no-loadscope-reorder). Starting the long files first lets the two workers finish
# together instead of one running the demo alone at the end. Seconds measured serially on 2 cores.
HEAVY_FIRST = [
    "test_demo_expectations.py",   # ~300 s: the whole `make demo` sweep
    "test_sweep_interrupt.py",     # ~250 s
    "test_sweep_ablate.py",        # ~200 s
    "test_sweep_identity.py",      # ~200 s
    "test_planted_effects.py",     # ~180 s
    "test_stage1_schedule.py",     # ~150 s
    "test_ray_start.py",           # ~125 s
    "test_sweep_tune.py",          # ~120 s
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept within a rank


def run_cli(argv, capsys):
    """run_sweep.main(argv) in this process: (exit code, everything it printed)."""
    import run_sweep

    code = run_sweep.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err
