"""Driver-side Tune callback that writes every trial into MLflow (the schema in the README, What MLflow holds).

Trials never touch MLflow: results come to the driver anyway, and one writer per sweep means
concurrent trials cannot race on the store (the `setup_mlflow`-inside-trials way left runs of
ASHA-stopped trials RUNNING and raced on experiment creation; see ENVIRONMENT.md).

- a trial's first start opens its child run (params = the resolved config flattened, tags);
  a trial resumed after an interrupt takes up its old run again instead of opening a second one;
- each result's metrics are logged with step = epoch (Ray's bookkeeping filtered out): a trial's first
  result at once, later ones at most every LIVE_INTERVAL_S per trial (the results in between wait in
  the trial's buffer). A write to a SQLite store costs the driver about 20 ms, and on a small machine
  the driver shares the cores with the trials: one write per epoch of a demo-sized trial (under a
  second each) was a quarter of the driver's CPU time (benchmarks/RESULTS.md, Sweep overhead);
- every write runs on one writer thread, in the order Tune reported: the hooks only queue it, so Tune's
  loop (which starts the next trial, and hands each running trial its next epoch) never waits on the
  store. Each write took the loop 60-90 ms on a local SQLite store (more against a remote server), once
  at a trial's start and once at its end. Tune's `on_experiment_end`, called when a fit ends (finished,
  interrupted or raising), waits for the queue to empty, so the engine reads a complete store after it;
- on completion any epoch the run is missing (written while MLflow was away, or before a resume) is
  filled in from the trial's latest checkpoint, then the selected_* figures, the artifacts and
  FINISHED; a trial that reported `failed` or errored becomes FAILED with tag `failure_reason`.

Ray pickles callbacks (into the experiment's tuner.pkl) and `Tuner.restore` brings them back: only
the plain `SweepRecord` is pickled (the Ray experiment's name includes a hash of the tracking URI, so
a restored record always points at this run's store), the client and the per-trial bookkeeping are
rebuilt on first use from what MLflow holds (`open_trial_run` finds a trial's run again). A failing MLflow write never
stops the sweep: the trial is noted, and `sync` (run at the end of every sweep, or by hand as
`run_sweep.py sync NAME`) writes it from Ray's storage later.
"""
from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from ray import tune

from sweep import tracking
from sweep.seed_members import member_result, members
from sweep.sync import error_reason
from sweep.trainable import (FAILED, FAILURE_REASON, read_history, read_predictions_file, trial_config,
                             trial_settings)

PREDICTIONS_KEY = "predictions_csv"   # the checkpoint's predictions.csv text, beside its history

# After a failed write, leave the store alone this long: every Tune event would otherwise wait out
# the client's retries against a store that is down.
RETRY_AFTER_S = 30.0

# Live metrics: at most one write per trial this often (the trial's last epochs come with its close).
LIVE_INTERVAL_S = 10.0


@dataclass
class SweepRecord:
    """What the callback needs to know about the sweep: plain data, pickled with the callback."""
    sweep: str
    kind: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    git_commit: str


@dataclass
class _TrialRun:
    run_id: Optional[str]              # None: already recorded (FINISHED/FAILED) before this driver started
    logged: set = field(default_factory=set)
    closed: bool = False
    waiting: list = field(default_factory=list)   # results not written yet (LIVE_INTERVAL_S)
    # time.monotonic() of the last write; -inf so that the first result is written at once (monotonic time
    # starts near 0 at boot: with 0.0 a machine up for less than live_interval_s held back the first epoch)
    written_at: float = -math.inf


@dataclass
class _TrialView:
    """What the writes read of a Tune trial, taken when Tune calls the hook (the trial object moves on)."""
    trial_id: str
    config: dict
    checkpoint: object
    last_result: dict
    seed: Optional[int] = None         # a seed of a bundle trial (sweep/seed_members.py): its own record

    @classmethod
    def of(cls, trial) -> list["_TrialView"]:
        """One view per seed the trial trains (one for a plain trial)."""
        last = dict(trial.last_result or {})
        return [cls(member_id, config, getattr(trial, "checkpoint", None), member_result(last, seed), seed)
                for member_id, config, seed in members(trial.trial_id, dict(trial.config))]


class MLflowSweepCallback(tune.Callback):
    """`client`: the driver's MlflowClient for this store (a new one is built when None, e.g. after a
    restore); `live_interval_s`: how often a running trial's metrics are written at most."""

    def __init__(self, record: SweepRecord, client=None, live_interval_s: float = LIVE_INTERVAL_S):
        self.record = record
        self.live_interval_s = live_interval_s
        self._client = client
        self._runs: dict[str, _TrialRun] = {}
        self.unsynced: set[str] = set()   # trial ids whose MLflow record is incomplete (sync fills them in)
        self._warned = False
        self._down_until = 0.0
        self._writer: Optional[ThreadPoolExecutor] = None   # one thread: writes stay in Tune's order

    # Pickle only the plain record: the client and the bookkeeping are per process.
    def __getstate__(self) -> dict:
        return {"record": self.record}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["record"])

    # ---- Tune hooks: each queues its write and returns ------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        for view in _TrialView.of(trial):
            self._queue(self._open, view)

    def on_trial_restore(self, iteration, trials, trial, **info):
        for view in _TrialView.of(trial):
            self._queue(self._open, view)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for view in _TrialView.of(trial):
            own = member_result(dict(result), view.seed)
            if own:   # a bundle's seed that stopped (failed) has nothing more to report
                self._queue(self._result, view, own)

    def on_trial_complete(self, iteration, trials, trial, **info):
        for view in _TrialView.of(trial):
            self._queue(self._close, view, view.last_result, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = error_reason(trial)
        for view in _TrialView.of(trial):
            self._queue(self._close, view, view.last_result, reason)

    def on_experiment_end(self, trials, **info):
        self.drain()

    def drain(self) -> None:
        """Return once every queued write is done (the next hook starts a new writer thread)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _queue(self, fn, view: _TrialView, *args) -> None:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
        self._writer.submit(self._guard, view, fn, view, *args)

    # ---- work (on the writer thread) ---------------------------------------------------------------------
    def _guard(self, trial: _TrialView, fn, *args) -> None:
        if time.time() < self._down_until:  # the store failed a moment ago: do not stall the sweep on it
            self.unsynced.add(trial.trial_id)
            return
        try:
            fn(*args)
        except Exception as err:  # the sweep goes on; its results stay in Ray's storage
            self.unsynced.add(trial.trial_id)
            self._down_until = time.time() + RETRY_AFTER_S
            if not self._warned:
                self._warned = True
                print(f"warning: MLflow write failed ({type(err).__name__}: {str(err)[:300]}); training goes on, "
                      f"results stay in Ray's storage and are written to MLflow by `run_sweep.py sync "
                      f"{self.record.sweep}` (tried again at the end of this sweep)", file=sys.stderr, flush=True)

    def _client_(self):
        if self._client is None:
            self._client = tracking.make_client(self.record.tracking_uri)
        return self._client

    def _open(self, trial) -> _TrialRun:
        state = self._runs.get(trial.trial_id)
        if state is not None:
            return state
        client = self._client_()
        config = dict(trial.config)
        cfg = trial_config(config)
        tags = tracking.child_tags(trial_settings(config), cfg, trial.trial_id, self.record.git_commit)
        run_id, logged = tracking.open_trial_run(client, self.record.experiment_id, self.record.parent_run_id,
                                                 trial.trial_id, tags, cfg.flat())
        state = _TrialRun(run_id, logged)
        self._runs[trial.trial_id] = state
        return state

    def _result(self, trial, result: dict) -> None:
        state = self._open(trial)
        if state.run_id is None or state.closed:
            return
        if result.get(FAILED):
            self._close(trial, result, str(result.get(FAILURE_REASON) or "failed"))
            return
        state.waiting.append(result)
        if time.monotonic() - state.written_at >= self.live_interval_s:
            self._flush(state)

    def _flush(self, state: _TrialRun) -> None:
        tracking.log_epochs(self._client_(), state.run_id, state.waiting, state.logged)
        state.waiting, state.written_at = [], time.monotonic()

    def _close(self, trial, last: dict, reason: Optional[str]) -> None:
        state = self._open(trial)
        if state.run_id is None or state.closed:
            return
        client = self._client_()
        config = dict(trial.config)
        cfg = trial_config(config)
        history = _checkpoint_history(trial)
        # The checkpoint holds every epoch of a finished trial; a failed one may have reported epochs after it.
        tracking.log_epochs(client, state.run_id, history.get("epochs", []) + state.waiting, state.logged)
        state.waiting = []
        if last.get(FAILED) or history.get(FAILURE_REASON):
            reason = reason or str(last.get(FAILURE_REASON) or history.get(FAILURE_REASON))
        final = dict(history["epochs"][-1]) if history.get("epochs") else dict(last)
        extra = {}
        epochs = int(final.get("epoch", 0) or 0)
        if not reason and epochs < cfg.train.epochs:
            extra["stopped_early"] = f"after epoch {epochs} of {cfg.train.epochs} (scheduler)"
        labels = (trial_settings(config).get("data") or {}).get("labels")
        tracking.finish_trial_run(client, state.run_id, cfg, None if reason else final,
                                  "FAILED" if reason else "FINISHED", labels, reason=reason, extra_tags=extra,
                                  predictions=history.get(PREDICTIONS_KEY, ""))
        state.closed = True
        self.unsynced.discard(trial.trial_id)


def _checkpoint_history(trial) -> dict:
    """The trial's record from its latest checkpoint (every epoch so far, or its failure)."""
    checkpoint = getattr(trial, "checkpoint", None)
    if checkpoint is None:
        return {"epochs": [], FAILURE_REASON: None}
    try:
        with checkpoint.as_directory() as directory:
            return {**read_history(directory, trial.seed), PREDICTIONS_KEY: read_predictions_file(directory, trial.seed)}
    except (OSError, ValueError):
        return {"epochs": [], FAILURE_REASON: None}
