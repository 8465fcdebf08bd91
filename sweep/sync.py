"""Write into MLflow whatever Ray's storage holds and MLflow does not (`run_sweep.py sync NAME`).

Ray's storage under `<output>/ray/<sweep>/<experiment>/<trial>/` is the sweep's ground truth:
`params.json` (the trial's settings), `result.json` (every report) and the latest
`checkpoint_*/history.json` (every epoch's metrics, or the trial's failure). When the tracking server
was away for part of a sweep, or a driver died between a trial's end and its MLflow write, this
brings MLflow up to date. It is also run at the end of every sweep, so nothing is left half-written.
A trial whose run is already FINISHED or FAILED is left alone; one that is still unfinished (the
sweep will resume it) is skipped.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from filelock import FileLock, Timeout

from core.config import ConfigError
from sweep import tracking
from sweep.spec_common import check_sweep_name, within
from sweep.trainable import FAILED, FAILURE_REASON, HISTORY, read_predictions_file, trial_config, trial_settings

STATE_FILE = "sweep_state.json"


@dataclass
class StoredTrial:
    path: Path
    trial_id: str
    config: dict                      # Ray config (settings under "trial")
    epochs: list[dict]
    status: Optional[str]             # FINISHED | FAILED | None (unfinished)
    reason: Optional[str] = None
    stopped_early: bool = False


@dataclass
class SyncReport:
    written: int = 0
    already: int = 0
    unfinished: list = field(default_factory=list)   # StoredTrial
    trials: list = field(default_factory=list)       # every StoredTrial seen

    def summary(self) -> str:
        return (f"{self.written} trial(s) written to MLflow, {self.already} already there, "
                f"{len(self.unfinished)} unfinished")


# ---- the sweep's own state next to Ray's experiments ------------------------------------------

def read_state(sweep_root: Path) -> dict:
    path = sweep_root / STATE_FILE
    if not path.exists():
        return {"experiments": {}}
    return json.loads(path.read_text())


def write_state(sweep_root: Path, state: dict) -> None:
    sweep_root.mkdir(parents=True, exist_ok=True)
    tmp = sweep_root / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str))
    tmp.replace(sweep_root / STATE_FILE)


# ---- reading Ray's storage -----------------------------------------------------------------------

def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a killed driver
    return rows


def _latest_history(trial_dir: Path) -> dict:
    checkpoints = sorted(trial_dir.glob("checkpoint_*"), key=lambda p: p.name)
    for checkpoint in reversed(checkpoints):
        path = checkpoint / HISTORY
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
    return {"epochs": [], FAILURE_REASON: None}


def _latest_predictions(trial_dir: Path) -> str:
    """The latest checkpoint's predictions.csv ('' when none has one)."""
    for checkpoint in sorted(trial_dir.glob("checkpoint_*"), key=lambda p: p.name, reverse=True):
        text = read_predictions_file(checkpoint)
        if text:
            return text
    return ""


def read_trial(trial_dir: Path, errors_are_final: bool) -> Optional[StoredTrial]:
    """What one trial directory says about the trial; None if it never got its settings."""
    params = trial_dir / "params.json"
    if not params.exists():
        return None
    config = json.loads(params.read_text())
    if "trial" not in config:
        return None
    rows = _results(trial_dir)
    trial_id = next((r["trial_id"] for r in rows if r.get("trial_id")), trial_dir.name.rsplit("-", 1)[-1])
    history = _latest_history(trial_dir)
    # Epochs: the checkpoint's history, completed by result rows (dedup by epoch, later wins).
    by_epoch = {int(r["epoch"]): r for r in rows if not r.get(FAILED) and r.get("epoch")}
    by_epoch.update({int(r["epoch"]): r for r in history.get("epochs", [])})
    epochs = [by_epoch[e] for e in sorted(by_epoch)]
    cfg = trial_config(config)
    failed_row = next((r for r in reversed(rows) if r.get(FAILED)), None)
    reason = history.get(FAILURE_REASON) or (failed_row or {}).get(FAILURE_REASON)
    trial = StoredTrial(trial_dir, trial_id, config, epochs, None)
    last_epoch = int(epochs[-1]["epoch"]) if epochs else 0
    error_file = trial_dir / "error.txt"
    if reason:
        trial.status, trial.reason = "FAILED", str(reason)
    elif last_epoch >= cfg.train.epochs:
        trial.status = "FINISHED"
    elif rows and rows[-1].get("done") and not rows[-1].get(FAILED):
        trial.status, trial.stopped_early = "FINISHED", True   # stopped by the scheduler (ASHA)
    elif errors_are_final and error_file.exists():
        lines = [ln for ln in error_file.read_text(errors="replace").splitlines() if ln.strip()]
        trial.status = "FAILED"
        trial.reason = f"{lines[-1].strip() if lines else 'the trial errored'} (full trace: {error_file})"
    return trial


def stored_trials(sweep_root: Path, errored: Iterable[Path] = ()) -> list[StoredTrial]:
    """Every trial in the sweep's Ray storage. A trial with an error trace counts as FAILED once its
    experiment is complete, or when it is in `errored` (Ray gave up on it: retries exhausted)."""
    state = read_state(sweep_root)
    errored = {Path(p).resolve() for p in errored}
    out = []
    for exp_dir in sorted(p for p in sweep_root.iterdir() if p.is_dir()) if sweep_root.exists() else []:
        complete = state.get("experiments", {}).get(exp_dir.name, {}).get("status") == "complete"
        for trial_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
            try:
                trial = read_trial(trial_dir, complete or trial_dir.resolve() in errored)
            except (ConfigError, KeyError, ValueError) as err:  # e.g. written by an older, different config
                print(f"warning: skipping {trial_dir}: {err}", file=sys.stderr)
                continue
            if trial is not None:
                out.append(trial)
    return out


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
                                  predictions=_latest_predictions(trial.path))
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
    state = read_state(sweep_root)
    parent = state.get("parent") or {}
    tracking.check_reachable(tracking_uri)
    client = tracking.make_client(tracking_uri)
    artifact_root = output / "mlartifacts" if tracking.sqlite_path(tracking_uri) else None
    experiment_id = tracking.ensure_experiment(client, name, artifact_root)
    parent_id = tracking.ensure_parent(client, experiment_id, name, parent.get("kind", "ablate"),
                                       parent.get("tags", {}), parent.get("spec_text", ""),
                                       parent.get("spec_path", ""))
    report = sync_trials(client, experiment_id, parent_id, parent.get("tags", {}).get("git_commit", "unknown"),
                         stored_trials(sweep_root))
    tracking.deduplicate(client, experiment_id)
    done = all(e.get("status") == "complete" for e in state.get("experiments", {}).values())
    tracking.end_parent(client, parent_id, "FINISHED" if done and not report.unfinished else "KILLED")
    return report
