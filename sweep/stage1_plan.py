"""Stage 1 as scheduled work: each distinct stage-1 entry computed once, as its own Ray task, before its trials.

    entries = schedule_stage1(trial_settings, Stage1Context(...))   # after ray.init: beside tuner.fit (stage1_gate) or before it
    link_trials(trial_settings, entries)                              # tags stage1_run_id / stage1_failure

Why: stage 1 (the text teacher, the distilled audio/video students) is the expensive part, and many
trials share one entry (same data, same stage-1 section and stage-1 seed). Computed inside the first
trial that needs it, the other trials needing it would hold their slots waiting on the cache lock.
Here the driver derives the distinct entries from the trial list by their cache key
(`dialogue_data.cache.entry_key`: dataset fingerprint + `cfg.stage1_hash()`), takes those the cache
already holds as they are (a resumed or repeated sweep), and runs the missing ones as Ray tasks with
their own resources (`resources.stage1` in the spec; default a trial's), as many at once as the
cluster and `max_concurrent` allow. An ablation's trials start as their own entry becomes ready
(`sweep/stage1_gate.py` hands them to Tune then), so the stage-2 trials of one entry run while the
next entry is computed, and no trial slot ever waits on stage 1.

Each entry is an MLflow run in the sweep's experiment, without the parent-run tag (it is not a trial:
tables, dedup and resume never count it), tagged `stage1_cache_key`, `dataset_fingerprint`,
`dataset`, `git_commit`, `device`, `stage1_source` (computed | cache); metrics: per epoch (step =
epoch) `{text,audio,video}_train_loss`, `_dev_wf1`, `_dev_acc`, `_test_wf1`, `_test_acc`; the kept
(best dev) epoch's `selected_{modality}_dev_wf1`, `_dev_acc`, `_test_wf1`, `_test_acc`, `_epoch`; `stage1_seconds` and `wall_seconds`; the stage-1
log as artifact `stage1.log`. Every trial that uses the entry carries tag `stage1_run_id`.

Failures: a deterministic one (NaN loss, bad data, a config the data refuse) is returned by the
task, not raised, so Ray does not retry it; the trials needing the entry then fail once with that
reason. Anything else (a dead worker, an unexpected exception) is retried by Ray up to
`max_failures` times, like a trial.
"""
from __future__ import annotations

import math
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from dialogue_data.cache import Stage1Cache, entry_key
from core.config import ConfigError
from sweep import tracking
from sweep.spec_common import Resources
from sweep.trainable import STAGE1_FAILURE, trial_config

RUN_KIND_TAG = "magtkd_run"          # = "stage1" on a stage-1 run
CACHE_KEY_TAG = "stage1_cache_key"
TRIAL_LINK_TAG = "stage1_run_id"     # on every trial run: the stage-1 run it used
PROGRESS_EVERY_S = 30.0
WAIT_S = 1.0                         # how often the driver looks at the tasks (and at `stop`)
MODALITIES = ("text", "audio", "video")
# One line per epoch from model.stage1.fit:
# "stage1 text: epoch 3/60 train loss 1.2345 dev wF1 0.5 acc 0.6 test wF1 0.4 acc 0.5 (2.1s)"
_EPOCH_LINE = re.compile(r"^stage1 (?P<modality>text|audio|video)\b[^:]*: epoch (?P<epoch>\d+)/\d+ "
                         r"train loss (?P<train_loss>\S+)(?: dev wF1 (?P<dev_wf1>\S+) acc (?P<dev_acc>\S+))?"
                         r"(?: test wF1 (?P<test_wf1>\S+) acc (?P<test_acc>\S+))?")


@dataclass
class Stage1Entry:
    key: str
    settings: dict                   # the first trial needing it (its stage-1 part is the entry's)
    users: list[str] = field(default_factory=list)   # run names of the trials needing it
    run_id: str = ""
    failure: str = ""
    source: str = ""                 # computed | cache

    def rows(self) -> list[str]:
        """The table rows (variants) whose trials use this entry: run names 'VARIANT sSEED' without the seed."""
        return list(dict.fromkeys(re.sub(r" s\d+$", "", user) for user in self.users))

    def run_name(self) -> str:
        """Its MLflow run's name, after the rows that use it (the UI lists stage-1 runs beside the sweep's)."""
        rows = self.rows()
        shown = ", ".join(rows[:3]) + (f" +{len(rows) - 3} rows" if len(rows) > 3 else "")
        return f"stage 1 for {shown or 'trials'} ({self.key[-8:]})"


@dataclass
class Stage1Context:
    """What scheduling needs from the sweep (the engine fills it in)."""
    sweep: str
    client: Any                      # MlflowClient of the sweep's store
    experiment_id: str
    git_commit: str
    cache_dir: str
    resources: Resources             # per stage-1 task
    max_concurrent: int = 0          # 0 = as many as the cluster fits
    max_failures: int = 0            # Ray retries of a crashed task
    say: Callable[[str], None] = print


# ---- planning ------------------------------------------------------------------------------------

def entry_of(settings: dict) -> Optional[str]:
    """The cache key of the stage-1 entry a trial needs (None: the authors' released features, no stage 1)."""
    cfg = trial_config({"trial": settings})
    if cfg.data.name == "features":
        return None
    return entry_key(settings["data"]["fingerprint"], cfg.stage1_hash())


def plan_entries(trial_settings: list[dict]) -> dict[str, Stage1Entry]:
    """The distinct entries the trials need, in launch order, each with the trials that need it."""
    entries: dict[str, Stage1Entry] = {}
    for settings in trial_settings:
        key = entry_of(settings)
        if key is not None:
            entries.setdefault(key, Stage1Entry(key, settings)).users.append(settings.get("run_name", "trials"))
    return entries


def fixed_stage1(searched_keys: list[str], shared_seed: int) -> bool:
    """True when a tune sweep's trials all need one stage-1 entry: nothing searched changes the data or
    stage 1 (its section, or the seed when stage 1 is trained per seed). Otherwise entries are only known
    as Optuna samples them, and each is computed by the first trial that needs it (behind the cache lock)."""
    return not any(k.startswith(("stage1.", "data.")) or (k == "seed" and shared_seed < 0) for k in searched_keys)


def link_trials(trial_settings: list[dict], entries: dict[str, Stage1Entry]) -> None:
    """Each trial's settings get the run id of its entry (tag stage1_run_id) and, when the entry
    failed, the reason (the trial then fails at once with it, see sweep.trainable)."""
    for settings in trial_settings:
        entry = entries.get(entry_of(settings) or "")
        if entry is None:
            continue
        if entry.run_id:
            settings[TRIAL_LINK_TAG] = entry.run_id
        if entry.failure:
            settings[STAGE1_FAILURE] = entry.failure


# ---- the Ray task ------------------------------------------------------------------------------------

def compute_entry(settings: dict, cache_dir: str) -> dict:
    """Ray task body: the entry this trial config needs, computed into the cache (or found there).

    Deterministic failures come back as `failure` (Ray must not retry them); other exceptions raise
    and Ray retries the task."""
    started = time.time()   # before the imports: loading torch and the encoders is part of the work
    import torch

    from core.schema import DataError
    from dialogue_data.registry import load_dataset
    from model.stage1 import run_stage1
    from model.train import DivergedError
    from pipeline.media_loader import store_reader

    from sweep.trainable import out_of_memory_reason, place_on_ray_worker

    lines: list[str] = []

    def log(message: str) -> None:
        lines.append(message)
        print(message, flush=True)   # the worker's stdout: on the driver's terminal with -v

    computed = []
    info: dict = {}
    failure = ""
    cfg, share, gpu_ids = None, 0.0, []
    try:
        cfg = trial_config({"trial": settings})
        cfg, gpu_ids, share = place_on_ray_worker(cfg, lambda message: log(f"stage1: {message}"))
        dataset = load_dataset(cfg.data, cache_dir)

        def compute():
            computed.append(True)
            return run_stage1(cfg, dataset, log=log, media_reader=store_reader(cfg))

        features = Stage1Cache(cache_dir, log=log).get_or_compute(entry_key(dataset.fingerprint(), cfg.stage1_hash()),
                                                                  compute, dataset.labels)
        info = {str(k): str(v) for k, v in features.info.items()}
    except torch.OutOfMemoryError as err:   # a retry would fine-tune the text model again and fail at the same point
        failure = out_of_memory_reason(err, cfg, share, "stage 1")[:2000]
        log(f"stage1: failed: {failure}")
    except (DataError, ConfigError, FloatingPointError, DivergedError) as err:
        failure = f"{type(err).__name__}: {err}"[:2000]
        log(f"stage1: failed: {failure}")
    return {"computed": bool(computed), "info": info, "log": lines, "failure": failure, "started": started,
            "ended": time.time(), "host": socket.gethostname(), "gpu_ids": ",".join(map(str, gpu_ids)),
            "gpu_share": share}


# ---- the driver's side -------------------------------------------------------------------------------

def schedule_stage1(trial_settings: list[dict], ctx: Stage1Context,
                    settled: Callable[[Stage1Entry], None] = lambda entry: None,
                    stop: Optional[threading.Event] = None) -> dict[str, Stage1Entry]:
    """Every entry the trials need, ready in the cache (or failed, with its reason) and recorded in MLflow.

    `settled(entry)` is called as each entry becomes ready or fails (with its run id and failure set);
    when `stop` is set, the tasks still running are cancelled and the entries returned so far are those
    settled. Raises ConfigError when a stage-1 task could never be placed on the cluster;
    KeyboardInterrupt passes through (finished entries stay cached)."""
    check_fits(ctx.resources)
    entries = plan_entries(trial_settings)
    compute_entries(entries, settle_cached(entries, ctx, settled), ctx, settled, stop)
    return entries


def settle_cached(entries: dict[str, Stage1Entry], ctx: Stage1Context,
                  settled: Callable[[Stage1Entry], None]) -> list[Stage1Entry]:
    """Settles every entry the cache holds (checked without reading its tensors, recorded in MLflow);
    returns the entries still to compute."""
    missing = []
    for entry in entries.values():
        info = _cached_info(ctx.cache_dir, entry)
        if info is None:
            missing.append(entry)
        else:
            entry.source = "cache"
            entry.run_id = _finished_run(ctx, entry.key) or _record(ctx, entry, {"info": info, "log": [],
                                                                                  "started": time.time(),
                                                                                  "ended": time.time()})
            settled(entry)
    return missing


def compute_entries(entries: dict[str, Stage1Entry], missing: list[Stage1Entry], ctx: Stage1Context,
                    settled: Callable[[Stage1Entry], None], stop: Optional[threading.Event] = None) -> None:
    """Computes the `missing` entries as Ray tasks (resources.stage1 each, at most max_concurrent at once),
    settling each as it ends."""
    import ray

    if not missing:
        return
    start = time.time()
    ctx.say(f"[{ctx.sweep}] stage 1: {len(entries)} distinct entr{'y' if len(entries) == 1 else 'ies'}, "
            f"{len(entries) - len(missing)} in the cache, {len(missing)} to compute ({ctx.resources.cpu:g} CPU + "
            f"{ctx.resources.gpu:g} GPU each); each trial starts once its entry is ready")
    task = ray.remote(compute_entry)
    window = ctx.max_concurrent or len(missing)
    queue, running = list(missing), {}
    failed = 0
    last_print = 0.0
    while queue or running:
        if stop is not None and stop.is_set():
            for ref in running:
                ray.cancel(ref, force=True)
            ctx.say(f"[{ctx.sweep}] stage 1: stopped with {len(running) + len(queue)} entr"
                    f"{'y' if len(running) + len(queue) == 1 else 'ies'} unfinished (rerun to compute them)")
            break
        while queue and len(running) < window:
            entry = queue.pop(0)
            running[task.options(num_cpus=ctx.resources.cpu, num_gpus=ctx.resources.gpu, name=f"stage1-{entry.key}",
                                 max_retries=ctx.max_failures, retry_exceptions=True)
                    .remote(entry.settings, ctx.cache_dir)] = entry
        if time.time() - last_print >= PROGRESS_EVERY_S:
            ctx.say(_progress(ctx, len(entries) - len(queue) - len(running), len(entries), running, failed, start))
            last_print = time.time()
        ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
        for ref in ready:
            entry = running.pop(ref)
            result = _result_of(ref, ctx.max_failures)
            entry.source = "computed" if result.get("computed") else "cache"
            entry.failure = result.get("failure", "")
            failed += bool(entry.failure)
            entry.run_id = _record(ctx, entry, result)
            settled(entry)
            what = f"FAILED: {entry.failure[:200]}" if entry.failure else \
                f"ready ({_scores(result.get('info', {}))}; {result['ended'] - result['started']:.0f}s)"
            ctx.say(f"  stage 1 {entry.key} {what}; used by {', '.join(entry.users[:4])}"
                    f"{' +' + str(len(entry.users) - 4) if len(entry.users) > 4 else ''}")
            last_print = 0.0   # a line after every finished entry
    ctx.say(_progress(ctx, len(entries), len(entries), {}, failed, start))


def _progress(ctx: Stage1Context, done: int, total: int, running: dict, failed: int, start: float) -> str:
    from sweep.progress import _clock

    placed = min(len(running), _slots(ctx.resources))
    waiting = len(running) - placed
    return (f"[{ctx.sweep}] stage 1: {done}/{total} done, {placed} running"
            f"{f', {waiting} queued' if waiting else ''}{f', {failed} failed' if failed else ''} | "
            f"{_clock(time.time() - start)} elapsed")


def _slots(resources: Resources) -> int:
    """How many stage-1 tasks the cluster runs at once (tasks past that wait in Ray's queue)."""
    import ray

    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0) // resources.cpu)]
    if resources.gpu:
        fits.append(int(total.get("GPU", 0) // resources.gpu))
    return max(1, min(fits))


def check_fits(resources: Resources) -> None:
    import ray

    total = ray.cluster_resources()
    for key, need in (("CPU", resources.cpu), ("GPU", resources.gpu)):
        if need > total.get(key, 0.0):
            raise ConfigError(f"a stage-1 task asks for {need:g} {key} (resources.stage1, default the trial "
                              f"resources) but the Ray cluster has {total.get(key, 0.0):g} in all; lower it")


def _result_of(ref, max_failures: int) -> dict:
    """The task's result; a task Ray gave up on (retries spent) becomes a failure with the error's last line."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        now = time.time()
        return {"computed": False, "info": {}, "log": lines[-50:], "started": now, "ended": now,
                "failure": f"stage-1 task crashed ({max_failures + 1} attempt(s)): {lines[-1] if lines else err}"[:2000]}


def _cached_info(cache_dir: str, entry: Stage1Entry) -> Optional[dict]:
    """The entry's info when the cache holds a verified copy, else None (read under the entry's lock)."""
    cache = Stage1Cache(cache_dir)
    with cache.lock(entry.key):
        meta = cache.verified_meta(entry.key, (entry.settings.get("data") or {}).get("labels"))
    return None if meta is None else {str(k): str(v) for k, v in meta.get("info", {}).items()}


def _scores(info: dict) -> str:
    parts = [f"{m} dev wF1 {info[f'{m}_dev_wf1']}" for m in MODALITIES if info.get(f"{m}_dev_wf1") not in (None, "nan")]
    return ", ".join(parts) or "no dev scores"


# ---- MLflow ------------------------------------------------------------------------------------------

def newest_entry_run(client, experiment_id: str, key: str, statuses=("FINISHED",)):
    """The newest stage-1 run of this entry in the experiment with one of `statuses` (None when none)."""
    runs = [r for r in tracking.search_all(client, experiment_id, f"tags.{CACHE_KEY_TAG} = '{key}'")
            if r.info.status in statuses]
    return max(runs, key=lambda r: r.info.start_time or 0, default=None)


def _finished_run(ctx: Stage1Context, key: str) -> str:
    """The newest FINISHED stage-1 run of this entry ('' when none): a rerun links its trials to the run
    that computed the entry instead of writing a second one."""
    run = newest_entry_run(ctx.client, ctx.experiment_id, key)
    return run.info.run_id if run else ""


def epoch_metrics(log_lines: list[str]) -> list[tuple[str, float, int]]:
    """(metric, value, epoch) for every per-epoch line model.stage1.fit logged."""
    out = []
    for line in log_lines:
        match = _EPOCH_LINE.match(line)
        if not match:
            continue
        epoch, modality = int(match["epoch"]), match["modality"]
        for name in ("train_loss", "dev_wf1", "dev_acc", "test_wf1", "test_acc"):
            value = _number(match[name])
            if value is not None:
                out.append((f"{modality}_{name}", value, epoch))
    return out


def selected_metrics(info: dict) -> dict[str, float]:
    """The kept (best dev) epoch's scores per modality, and the times, from the entry's info."""
    out = {}
    for m in MODALITIES:
        for key, name in ((f"{m}_dev_wf1", f"selected_{m}_dev_wf1"), (f"{m}_dev_acc", f"selected_{m}_dev_acc"),
                          (f"{m}_test_wf1", f"selected_{m}_test_wf1"), (f"{m}_test_acc", f"selected_{m}_test_acc"),
                          (f"{m}_best_epoch", f"selected_{m}_epoch"), (f"{m}_seconds", f"{m}_seconds")):
            value = _number(info.get(key))
            if value is not None:
                out[name] = value
    seconds = _number(info.get("seconds"))
    if seconds is not None:
        out["stage1_seconds"] = seconds
    return out


def _number(text: Any) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _record(ctx: Stage1Context, entry: Stage1Entry, result: dict) -> str:
    """One MLflow run for the entry (see the module docstring); returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    cfg = trial_config({"trial": entry.settings})
    data = entry.settings.get("data") or {}
    info = result.get("info") or {}
    tags = {RUN_KIND_TAG: "stage1", CACHE_KEY_TAG: entry.key, "sweep": ctx.sweep, "git_commit": ctx.git_commit,
            "dataset": data.get("name", cfg.data.name), "dataset_fingerprint": data.get("fingerprint", ""),
            "stage1_hash": cfg.stage1_hash(), "stage1_source": entry.source or "computed",
            "device": info.get("device", ""), "host": result.get("host", ""),
            "precision": info.get("precision", ""), "gpu_ids": str(result.get("gpu_ids", "")),
            "gpu_share": f"{result.get('gpu_share', 0.0):g}",
            **{f"encoder.{m}": info.get(f"{m}_encoder_id", "") for m in MODALITIES},
            "used_by": ", ".join(entry.users)[:5000], "rows": ", ".join(entry.rows())[:5000]}
    if entry.failure:
        tags["failure_reason"] = entry.failure
    run = tracking.retrying(ctx.client.create_run, ctx.experiment_id, start_time=int(result["started"] * 1000),
                            tags=tags, run_name=entry.run_name())
    run_id = run.info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in cfg.flat().items() if k.startswith(("stage1.", "data."))]
    params.append(Param("stage1_seed", str(cfg.stage1_seed)))
    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, epoch) for name, value, epoch in epoch_metrics(result.get("log") or [])]
    metrics += [Metric(name, value, now, 0) for name, value in selected_metrics(info).items()]
    metrics.append(Metric("wall_seconds", float(result["ended"] - result["started"]), now, 0))
    for start in range(0, max(len(params), len(metrics)), 100):   # MLflow takes at most 100 per batch
        tracking.retrying(ctx.client.log_batch, run_id, params=params[start:start + 100],
                          metrics=metrics[start:start + 100], tags=[] if start else [RunTag("stage1_epochs",
                                                                                            str(cfg.stage1.epochs))])
    if result.get("log"):
        tracking.retrying(ctx.client.log_text, run_id, "\n".join(result["log"]) + "\n", "stage1.log")
    tracking.retrying(ctx.client.set_terminated, run_id, status="FAILED" if entry.failure else "FINISHED",
                      end_time=int(result["ended"] * 1000))
    return run_id


def stage1_runs(client, experiment_id: str) -> dict[str, Any]:
    """run id -> the stage-1 runs of an experiment (reports show their scores beside the rows)."""
    return {r.info.run_id: r for r in tracking.search_all(client, experiment_id, f"tags.{RUN_KIND_TAG} = 'stage1'")}
