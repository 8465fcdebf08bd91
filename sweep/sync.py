"""Write into MLflow whatever Ray's storage holds and MLflow does not (`run_sweep.py sync NAME`).

Trial outcomes come from Ray's public results API (`tune.ExperimentAnalysis` over the experiment
directory `<output>/ray/<sweep>/<experiment>`): a trial's status, its config (the settings under
"trial") and its latest checkpoint, whose `history.json` holds every epoch's metrics or the trial's
own failure. When the tracking server was away for part of a sweep, or a driver died between a
trial's end and its MLflow write, this brings MLflow up to date. It is also run at the start and the
end of every sweep, so nothing is left half-written. A trial whose run is already FINISHED or FAILED
is left alone; one that is still unfinished (the sweep will resume it) is skipped.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout

from sweep import tracking
from sweep.identity import plan_of
from sweep.seed_members import members
from sweep.spec_common import check_sweep_name, within
from sweep.trainable import FAILURE_REASON, read_history, read_predictions_file, trial_config, trial_settings


@dataclass
class StoredTrial:
    path: str
    trial_id: str
    config: dict                      # Ray config (settings under "trial")
    epochs: list[dict]
    status: Optional[str]             # FINISHED | FAILED | None (unfinished)
    reason: Optional[str] = None
    stopped_early: bool = False
    predictions: str = ""             # the last checkpoint's predictions.csv text ('' when none)


@dataclass
class SyncReport:
    written: int = 0
    already: int = 0
    unfinished: list = field(default_factory=list)   # StoredTrial
    trials: list = field(default_factory=list)       # every StoredTrial seen

    def summary(self) -> str:
        return (f"{self.written} trial(s) written to MLflow, {self.already} already there, "
                f"{len(self.unfinished)} unfinished")


# ---- reading Ray's results ---------------------------------------------------------------------

def restorable(experiment_path: Path) -> bool:
    """Ray Tune can resume this experiment: its tuner.pkl AND at least one experiment snapshot
    (experiment_state-*.json). `Tuner.can_restore` looks at tuner.pkl only, which Tune writes seconds
    before its first snapshot (all of stage 1, in a fresh ablation): a driver killed in between left a
    directory that every rerun failed on ("No experiment snapshot file")."""
    path = Path(experiment_path)
    return (path / "tuner.pkl").is_file() and any(path.glob("experiment_state-*.json"))


def set_aside_unrestorable(experiment_path: Path) -> Optional[Path]:
    """A first launch killed before its first snapshot: nothing in it can be resumed (Ray recorded no trial),
    so it is moved to <sweep>/.unrestorable/ (kept for inspection; the caller holds the sweep's lock) and
    the sweep starts the experiment afresh. Trials it finished are in MLflow and are not trained again.
    Returns where it went, or None when there was nothing to set aside."""
    path = Path(experiment_path)
    if not path.exists() or restorable(path) or not (path / "tuner.pkl").exists():
        return None
    target = path.parent / ".unrestorable" / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    return target


def ray_trials(experiment_path: Path) -> list[StoredTrial]:
    """Every trial of one Ray experiment, as Ray last saved it. TERMINATED is FINISHED (FAILED when
    the trial reported its own failure); ERROR is FAILED: Ray gave up after its retries, and a rerun
    restores the trial as ERROR without running it, so it stays FAILED; anything else is unfinished."""
    from ray import tune

    if not restorable(experiment_path):
        return []
    analysis = tune.ExperimentAnalysis(str(experiment_path))
    out = []
    for trial in analysis.trials:
        if "trial" not in (trial.config or {}):
            continue
        # A trial that never reported has no checkpoint to look up. Checkpoints are saved every
        # train.checkpoint_interval_s and after the last epoch, so a finished trial's holds every epoch.
        reported = (trial.last_result or {}).get("epoch") is not None
        checkpoint = analysis.get_last_checkpoint(trial) if reported else None
        for member_id, config, seed in members(trial.trial_id, dict(trial.config)):  # each seed of a bundle
            out.append(_stored(trial, member_id, config, seed, checkpoint))
    return out


def errored_with_retries_left(experiment_path: Path, max_failures: int, total: int) -> tuple[dict[str, list[str]], int]:
    """({Ray trial id: its MLflow trial ids (one per seed of a bundle)} of the trials Ray ended ERROR before
    they used their max_failures retries, how many trials ended ERROR), for an experiment whose `total` trials
    all ended (none while it was interrupted: ({}, 0)).

    Ray Tune 2.x counts one lost node twice when the node dies while a trial's actor is still starting on
    it: the actor's first task fails at once with ActorUnavailableError, Tune requeues the trial (failure 1),
    then handles the same task's error again while the trial is PENDING and ends it ERROR (failure 2), with
    retries left (`TuneController._process_trial_failure`). Ray's own record shows it: num_failures at most
    max_failures. A trial that really used its retries ends with max_failures + 1."""
    from ray import tune

    if not restorable(experiment_path):
        return {}, 0
    trials = tune.ExperimentAnalysis(str(experiment_path)).trials
    if len(trials) < total or any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        return {}, 0
    errored = [t for t in trials if t.status == "ERROR"]
    early = {t.trial_id: [member_id for member_id, _, _ in members(t.trial_id, dict(t.config or {}))]
             for t in errored if 0 < int(getattr(t.run_metadata, "num_failures", 0)) <= max_failures}
    return early, len(errored)


def _stored(trial, trial_id: str, config: dict, seed, checkpoint) -> StoredTrial:
    history, predictions = {"epochs": [], FAILURE_REASON: None}, ""
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            history, predictions = read_history(directory, seed), read_predictions_file(directory, seed)
    stored = StoredTrial(trial.path, trial_id, config, list(history["epochs"]), None, predictions=predictions)
    if trial.status == "ERROR":
        stored.status, stored.reason = "FAILED", error_reason(trial)
    elif trial.status == "TERMINATED":
        stored.status, stored.reason = ("FAILED", history[FAILURE_REASON]) if history.get(FAILURE_REASON) \
            else ("FINISHED", None)
        last = int(stored.epochs[-1]["epoch"]) if stored.epochs else 0
        stored.stopped_early = stored.status == "FINISHED" and last < trial_config(config).train.epochs
    return stored


def error_reason(trial) -> str:
    """The last line of Ray's error trace for the trial (the exception itself), with the attempts made."""
    attempts = getattr(trial.run_metadata, "num_failures", "?")
    try:
        text = trial.get_error() or ""
    except Exception:  # the trace is a convenience; the status is what matters
        text = ""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    last = lines[-1] if lines else "the trial errored"
    return f"{last} (after {attempts} attempt(s); full trace in {trial.error_file or 'the trial directory'})"[:2000]


# ---- writing ---------------------------------------------------------------------------------------

def sync_trials(client, experiment_id: str, parent_id: str, git: str, trials: list[StoredTrial]) -> SyncReport:
    report = SyncReport(trials=list(trials))
    for trial in trials:
        if trial.status is None:
            report.unfinished.append(trial)
            continue
        settings = trial_settings(trial.config)
        cfg = trial_config(trial.config)
        tags = tracking.child_tags(settings, cfg, trial.trial_id, git)
        run_id, logged = tracking.open_trial_run(client, experiment_id, parent_id, trial.trial_id, tags, cfg.flat())
        if run_id is None:
            report.already += 1
            continue
        tracking.log_epochs(client, run_id, trial.epochs, logged)
        extra = {"synced_from": str(trial.path)}
        if trial.stopped_early:
            extra["stopped_early"] = f"after epoch {int(trial.epochs[-1]['epoch']) if trial.epochs else 0} of " \
                                     f"{cfg.train.epochs} (scheduler)"
        last = trial.epochs[-1] if trial.epochs and trial.status == "FINISHED" else None
        tracking.finish_trial_run(client, run_id, cfg, last, trial.status,
                                  (settings.get("data") or {}).get("labels"), reason=trial.reason, extra_tags=extra,
                                  predictions=trial.predictions)
        report.written += 1
    return report


def sync_sweep(name: str, output: Path, tracking_uri: str) -> SyncReport:
    """`run_sweep.py sync NAME`: bring MLflow up to date with Ray's storage of sweep NAME."""
    check_sweep_name(name, "sync")
    sweep_root = within(output, "ray", name)
    if not sweep_root.exists():
        known = sorted(p.name for p in (output / "ray").iterdir() if p.is_dir()) if (output / "ray").exists() else []
        raise tracking.SweepError(f"no Ray storage for sweep '{name}' under {output / 'ray'}; "
                                  f"known sweeps there: {', '.join(known) or 'none'}")
    lock = FileLock(str(sweep_root / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise tracking.SweepError(f"sweep '{name}' is running right now; its driver writes MLflow itself "
                                  f"(and syncs at its end)") from None
    try:
        return _sync_locked(name, output, tracking_uri, sweep_root)
    finally:
        lock.release()


def _sync_locked(name: str, output: Path, tracking_uri: str, sweep_root: Path) -> SyncReport:
    tracking.check_store(tracking_uri)
    client = tracking.make_client(tracking_uri)
    experiment = tracking.retrying(client.get_experiment_by_name, name)
    parent = tracking.find_parent(client, experiment.experiment_id, str(output)) if experiment else None
    if parent is None:
        raise tracking.SweepError(f"sweep '{name}' from {output} has no parent run in {tracking_uri}; run the "
                                  f"sweep's command again instead (it records what Ray's storage holds)")
    tags = parent.data.tags
    report = sync_trials(client, experiment.experiment_id, parent.info.run_id, tags.get("git_commit", "unknown"),
                         ray_trials(sweep_root / tags.get("ray_experiment", "")))
    tracking.deduplicate(client, experiment.experiment_id, parent.info.run_id)
    tracking.end_parent(client, parent.info.run_id, "FINISHED" if plan_complete(client, experiment.experiment_id,
                                                                                parent, report) else "KILLED")
    return report


def plan_complete(client, experiment_id: str, parent, report: SyncReport) -> bool:
    """Nothing unfinished in Ray's storage and (for a plan of identities) every one of them final in MLflow."""
    plan = plan_of(parent.data.tags)
    if report.unfinished:
        return False
    if plan is None:
        return True
    done = tracking.representatives(tracking.child_runs(client, experiment_id, parent.info.run_id))
    return all(identity in done for identity in plan)
