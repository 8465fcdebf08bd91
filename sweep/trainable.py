"""The Ray Tune function trainable: one MAGTKD trial through `pipeline.trial.run_trial`.

Every stage-2 epoch is reported with `tune.report`. A checkpoint directory goes with the report
after the last epoch and otherwise at most every `train.checkpoint_interval_s` seconds (0: every
epoch); the sweep keeps one per trial. It holds
  state.pt      the pipeline's resume state (torch.save; read back with weights_only=True)
  history.json  {"epochs": [every epoch's metrics so far], "failure_reason": null}
  predictions.csv  the selected epoch's per-utterance dev/test predictions (core/predictions.py)
so a retried or resumed trial continues from its last checkpointed epoch, and the driver (MLflow
callback, `sync`) can rebuild a trial's whole record from its final checkpoint alone. At width 768
a checkpoint is about 0.4 GB (model + AdamW moments), so saving every epoch cost disk and I/O
out of proportion (benchmarks/RESULTS.md: Checkpoints).

A trial that cannot succeed whatever the retries (a NaN loss in stage 1 or stage 2, a config or
data problem) is not raised to Ray, which would retry it `max_failures` times (recomputing stage 1
under the cache lock each time): it reports one last result with `failed=1` and `failure_reason` (metrics NaN, so Optuna records the trial as failed and ASHA ignores
it) and returns. Anything else (a crash, a killed worker) raises and Ray retries from the checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from core.config import ConfigError, MAGTKDConfig, from_dict
from core.predictions import PREDICTIONS_FILE
from core.schema import DataError
from sweep.seed_members import MEMBERS, bundle_result, is_bundle, member_file

HISTORY = "history.json"
STATE = "state.pt"
FAILED = "failed"
FAILURE_REASON = "failure_reason"
STAGE1_FAILURE = "stage1_failure"   # in a trial's settings: why the driver's stage-1 task for its entry failed

# Keys a failure report carries as NaN, so that schedulers and searchers that expect them find them.
_METRIC_KEYS = ("train_loss", "dev_loss", "dev_wf1", "dev_acc", "dev_mf1", "test_loss", "test_wf1", "test_acc",
                "test_mf1", "selected_dev_wf1", "selected_dev_acc", "selected_dev_mf1", "selected_test_wf1",
                "selected_test_acc", "selected_test_mf1")


def trial_settings(config: Mapping[str, Any]) -> dict:
    """A trial's settings from its Ray config. Both kinds of sweep put them under "trial": the sweep
    name, variant, run name, seed, the sweep's base config (nested dict), the trial's overrides, the
    cache directory and what the driver found in the data (fingerprint, labels, modalities)."""
    return dict(config["trial"])


def trial_config(config: Mapping[str, Any]) -> MAGTKDConfig:
    """The resolved MAGTKD config of a trial from its Ray config: the sweep base plus the trial's overrides.

    Used on the worker (to train) and on the driver (tags, params, hashes): both see the same config."""
    settings = trial_settings(config)
    where = f"trial {settings.get('run_name', '')}"
    cfg = from_dict(settings["base"], source=where)
    overrides = dict(settings.get("overrides") or {})
    overrides["seed"] = int(settings["seed"])
    return cfg.replace(overrides, source=f"{where} overrides")


class CheckpointCadence:
    """Decides which epochs carry a checkpoint: the last one, and any epoch at least `interval_s`
    seconds after the previous save (or after the trial started)."""

    def __init__(self, interval_s: float, last_epoch: int, clock=time.monotonic):
        self.interval_s, self.last_epoch, self.clock = interval_s, last_epoch, clock
        self.last_save = clock()

    def due(self, epoch: int) -> bool:
        return epoch >= self.last_epoch or self.clock() - self.last_save >= self.interval_s

    def saved(self) -> None:
        self.last_save = self.clock()


def read_history(checkpoint_dir: str | Path, seed: Optional[int] = None) -> dict:
    """{"epochs": [...], "failure_reason": ...} of the trial, or of seed `seed` of a bundle trial."""
    path = Path(checkpoint_dir) / member_file(HISTORY, seed)
    if not path.exists():
        return {"epochs": [], FAILURE_REASON: None}
    return json.loads(path.read_text())


def read_predictions_file(checkpoint_dir: str | Path, seed: Optional[int] = None) -> str:
    """The checkpoint's predictions.csv text (of seed `seed` of a bundle trial), '' when it has none."""
    path = Path(checkpoint_dir) / member_file(PREDICTIONS_FILE, seed)
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _failure_reason(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 2000 else text[:1997] + "..."


def ray_share() -> float:
    """The share of a GPU Ray gave this worker (0 without one)."""
    import ray

    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def place_on_ray_worker(cfg: MAGTKDConfig, log=None) -> tuple[MAGTKDConfig, list, float]:
    """This Ray worker's device for `cfg`, from the GPUs Ray gave it: (cfg with train.device resolved, the
    GPU ids, the GPU share). `auto` with no GPU given is the CPU (and CUDA_VISIBLE_DEVICES is emptied:
    Ray 2.60 leaves the node's GPUs visible there); `cuda:N` is refused; a fraction of a GPU caps this
    process's share of its memory. `data.media_workers` (decode processes, stage 1's DataLoader workers)
    is capped at the CPUs Ray gave this worker. Trials and stage-1 tasks both call this."""
    import ray
    import torch

    from dialogue_data.registry import media_workers
    from model.runtime import cap_gpu_memory, hide_gpus_unless_given, worker_device

    gpu_ids = list(ray.get_gpu_ids())
    assigned = ray.get_runtime_context().get_assigned_resources()
    share = ray_share()
    workers = media_workers(cfg.data, float(assigned.get("CPU", 0.0)))
    if workers != cfg.data.media_workers:
        cfg = cfg.replace({"data.media_workers": workers})
    device = worker_device(cfg.train.device, gpu_ids)
    hide_gpus_unless_given(gpu_ids)
    if device != cfg.train.device:
        cfg = cfg.replace({"train.device": device})
    capped = cap_gpu_memory(torch.device(device), share)
    if log is not None:
        log(f"device {device} (Ray gave GPU ids {gpu_ids or 'none'}, share {share:g}"
            f"{f', memory capped at {capped:.0%}' if capped else ''}); {workers} media worker(s) for "
            f"{float(assigned.get('CPU', 0.0)):g} CPU(s)")
    return cfg, gpu_ids, share


def out_of_memory_reason(err: BaseException, cfg: MAGTKDConfig, share: float, stage: str) -> str:
    """An out-of-memory as a failure that names what to lower (a retry would fail at the same point)."""
    if stage == "stage 1":
        what = (f"lower stage1.batch_size (now {cfg.stage1.batch_size}; evaluation batches are "
                f"{cfg.stage1.batch_size}x8, audio at most 160 s of padded waveform, video at most 32 frames of "
                f"224x224), use stage1.precision=bf16, or "
                f"give stage-1 tasks a whole GPU (resources.stage1.gpu)")
    else:
        what = (f"lower train.batch_size (now {cfg.train.batch_size}), use train.precision=bf16, or give each "
                f"trial a larger share of a GPU (resources.gpu / --gpus-per-trial, now {share:g})")
    first = str(err).splitlines()[0][:300] if str(err) else ""
    return f"out of GPU memory in {stage}: {what}. ({type(err).__name__}: {first})"


SCRATCH_PREFIX = "magtkd-ckpt-"


def _checkpoint_scratch() -> tempfile.TemporaryDirectory:
    """Where a checkpoint is written before Tune copies it into the trial's storage: the trial's own working
    directory, not /tmp. A trial stopped while Tune holds its report (ASHA, a lost node, a killed driver) never
    leaves the `with`; in /tmp each such trial left its state behind for good (at width 768, tens of MB)."""
    from ray import tune

    return tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=tune.get_context().get_trial_dir())


def _clear_stale_scratch() -> None:
    """A trial's earlier attempt (retried, resumed) may have left its scratch checkpoints: no other process
    writes in this trial's directory, so whatever is there is stale."""
    import shutil

    from ray import tune

    for stale in Path(tune.get_context().get_trial_dir()).glob(SCRATCH_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)


def train_trial(config: dict) -> None:
    """Ray Tune function trainable (module level: Ray pickles it by reference)."""
    # torch, Ray and the pipeline are imported in the worker only: the driver plans and records, never trains.
    import torch
    from ray import tune

    from model.train import DivergedError
    from pipeline.trial import run_trial

    _clear_stale_scratch()
    if is_bundle(config):
        _train_bundle(config)
        return
    history: list[dict] = []
    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            record = read_history(ckpt_dir)
            history = list(record["epochs"])
            if record.get(FAILURE_REASON):  # restored after a recorded failure: report it again, train nothing
                _report_failure(record[FAILURE_REASON], history)
                return
            if (Path(ckpt_dir) / STATE).exists():
                # weights_only: a checkpoint is data, never code (the pipeline keeps its state to tensors and
                # plain Python values for exactly this reason).
                resume_state = torch.load(Path(ckpt_dir) / STATE, map_location="cpu", weights_only=True)  # noqa: TID251 (weights_only)

    def on_epoch(metrics: dict, state: dict) -> None:
        history.append(dict(metrics))
        predictions = state.pop("predictions_csv", "")   # never inside state.pt: a file beside it
        if "model" not in state:   # stage 2 copies the model to the host only when cadence.due said so
            tune.report(dict(metrics))
            return
        with _checkpoint_scratch() as tmp:
            torch.save(state, os.path.join(tmp, STATE))
            if predictions:  # the selected epoch's per-utterance predictions (core/predictions.py)
                Path(tmp, PREDICTIONS_FILE).write_text(predictions, encoding="utf-8")
            _write_history(tmp, history, None)
            tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(tmp))
        cadence.saved()

    stage1_failure = trial_settings(config).get(STAGE1_FAILURE)
    if stage1_failure:  # the driver's stage-1 task for this trial's entry failed for good: say why, once
        _report_failure(f"stage 1 failed: {stage1_failure}", history)
        return
    cfg, share = None, 0.0
    try:
        cfg = trial_config(config)
        if history and int(history[-1]["epoch"]) >= cfg.train.epochs:
            return  # restored from the final epoch's checkpoint: the trial is already complete
        cfg, _, share = place_on_ray_worker(cfg, _log)
        cadence = CheckpointCadence(cfg.train.checkpoint_interval_s, cfg.train.epochs)
        _record_span("start")
        run_trial(cfg, trial_settings(config)["cache_dir"], on_epoch=on_epoch, resume_state=resume_state, log=_log,
                  checkpoint_due=lambda epoch: cadence.due(epoch))
        _record_span("end")
    except torch.OutOfMemoryError as err:   # the same batch fails the same way on a retry: report it, with the fix
        _report_failure(out_of_memory_reason(err, cfg, share, "stage 2"), history)
    except (DivergedError, FloatingPointError, ConfigError, DataError) as err:  # would recur on every retry
        _report_failure(_failure_reason(err), history)


def _write_history(directory: str, history: list[dict], failure: str | None, seed: Optional[int] = None) -> None:
    with open(os.path.join(directory, member_file(HISTORY, seed)), "w") as f:
        json.dump({"epochs": history, FAILURE_REASON: failure}, f)


def _report_failure(reason: str, history: list[dict]) -> None:
    from ray import tune

    _log(f"trial failed: {reason}")
    result = {k: math.nan for k in _METRIC_KEYS}
    result.update({"epoch": float(history[-1]["epoch"]) if history else 0.0, FAILED: 1.0, FAILURE_REASON: reason})
    with _checkpoint_scratch() as tmp:
        _write_history(tmp, history, reason)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


SPAN_LOG_ENV = "MAGTKD_SPAN_LOG"   # a file: each trial appends its start and end (time, pid, GPU ids)


def _record_span(event: str) -> None:
    """With MAGTKD_SPAN_LOG set (the GPU-scheduling test and benchmarks/gpu_check.sh), append one JSON line
    per trial start and end, so that how many trials ran at once is measured from the trials themselves."""
    path = os.environ.get(SPAN_LOG_ENV)
    if not path:
        return
    import ray
    from ray import tune

    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), "gpu_ids": list(ray.get_gpu_ids()),
                       "trial": tune.get_context().get_trial_id()})
    with open(path, "a") as f:
        f.write(line + "\n")

def _train_bundle(config: dict) -> None:
    """train_trial for a bundle of seeds (sweep/seed_members.py): one model, one checkpoint (state.pt for the
    whole bundle, a history and predictions file per seed), one result per epoch with every seed's metrics."""
    import torch
    from ray import tune

    from model.train import DivergedError
    from pipeline.trial import run_bundle_trial

    members = trial_settings(config)[MEMBERS]
    seeds = [int(m["seed"]) for m in members]
    histories: dict[int, list] = {seed: [] for seed in seeds}
    predictions: dict[int, str] = {}
    failures = {int(m["seed"]): f"stage 1 failed: {m[STAGE1_FAILURE]}" for m in members if m.get(STAGE1_FAILURE)}
    reported: set[int] = set()
    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            for seed in seeds:
                record = read_history(ckpt_dir, seed)
                histories[seed] = list(record["epochs"])
                predictions[seed] = read_predictions_file(ckpt_dir, seed)
                if record.get(FAILURE_REASON):
                    failures[seed] = record[FAILURE_REASON]
                    reported.add(seed)
            if (Path(ckpt_dir) / STATE).exists():
                resume_state = torch.load(Path(ckpt_dir) / STATE, map_location="cpu", weights_only=True)  # noqa: TID251 (weights_only)
    training = [m for m in members if int(m["seed"]) not in failures or
                (resume_state is not None and int(m["seed"]) in resume_state["seeds"])]

    def save_and_report(epoch: int, result: dict, with_state: Optional[dict]) -> None:
        with _checkpoint_scratch() as tmp:
            if with_state is not None:
                torch.save(with_state, os.path.join(tmp, STATE))
            for seed in seeds:
                _write_history(tmp, histories[seed], failures.get(seed), seed)
                if predictions.get(seed):
                    Path(tmp, member_file(PREDICTIONS_FILE, seed)).write_text(predictions[seed], encoding="utf-8")
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))
        reported.update(failures)

    def on_epoch(per_seed: dict, state: dict) -> None:
        epoch = int(state["epoch"])
        failures.update({int(s): r for s, r in state["failures"].items()})
        for seed, metrics in per_seed.items():
            histories[seed].append(dict(metrics))
        predictions.update(state.pop("predictions_csv", {}))
        new = {s: r for s, r in failures.items() if s not in reported}
        result = bundle_result(epoch, per_seed, new, _METRIC_KEYS)
        if new or cadence.due(epoch):
            save_and_report(epoch, result, state)
            cadence.saved()
        else:
            tune.report(result)

    # Each seed's config resolves its device from the GPUs Ray gave this worker, as a single trial's does.
    cfgs = [place_on_ray_worker(trial_config({"trial": m}), _log if i == 0 else None)[0] for i, m in enumerate(training)]
    share = ray_share() if cfgs else 0.0
    epochs = cfgs[0].train.epochs if cfgs else 0
    if not cfgs or all(seed in failures or (histories[seed] and int(histories[seed][-1]["epoch"]) >= epochs)
                       for seed in seeds):
        if failures.keys() - reported:   # nothing to train: every seed failed at stage 1
            save_and_report(0, bundle_result(0, {}, {s: failures[s] for s in failures.keys() - reported}, ()), None)
        return
    cadence = CheckpointCadence(cfgs[0].train.checkpoint_interval_s, epochs)
    try:
        run_bundle_trial(cfgs, trial_settings(config)["cache_dir"], on_epoch=on_epoch, resume_state=resume_state,
                         log=_log)
    except DivergedError:
        return  # every seed diverged: each one's failure was reported with its checkpoint
    except (torch.OutOfMemoryError, FloatingPointError, ConfigError, DataError) as err:  # would recur on a retry
        reason = (out_of_memory_reason(err, cfgs[0], share, "stage 2") if isinstance(err, torch.OutOfMemoryError)
                  else _failure_reason(err))
        failures.update({seed: reason for seed in seeds if seed not in failures})
        new = {s: r for s, r in failures.items() if s not in reported}
        save_and_report(int(max((h[-1]["epoch"] for h in histories.values() if h), default=0)),
                        bundle_result(0, {}, new, ()), None)


def _log(message: str) -> None:
    # Goes to the worker's stdout: shown on the driver's terminal only with -v (log_to_driver).
    print(message, flush=True)
