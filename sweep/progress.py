"""A progress line a person can follow, in place of Ray's tables (which stay off unless -v):

    [demo] 5/24 done, 2 running (full s1 ep 4/6, T s0 ep 2/6), 0 failed | best selected_dev_wf1 0.612 (full s0) | 1m42s elapsed, ~6m left

plus one line per finished trial. On a terminal the line is redrawn in place; in a log file it is
printed every 30 s and whenever a trial ends.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Optional

from ray import tune

from sweep.trainable import FAILED, FAILURE_REASON


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def trial_label(trial) -> str:
    settings = (trial.config or {}).get("trial") or {}
    return str(settings.get("run_name") or trial.trial_id)


class ProgressCallback(tune.Callback):
    def __init__(self, sweep: str, total: int, metric: str, mode: str = "max", time_budget_s: float = 0.0,
                 epochs: int = 0, interval_s: float = 30.0):
        self.sweep, self.total, self.metric, self.mode = sweep, total, metric, mode
        self.time_budget_s, self.epochs, self.interval_s = time_budget_s, epochs, interval_s
        self._reset()

    def _reset(self) -> None:
        self._start = time.time()
        self._last_print = 0.0
        self._failed: set[str] = set()
        self._ended: dict[str, float] = {}     # trial id -> its training seconds (for the estimate)
        self._before: Optional[set] = None     # trials already ended when this driver started (a resume)
        self._best: Optional[tuple[float, str]] = None
        self._width = 0

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("sweep", "total", "metric", "mode", "time_budget_s", "epochs",
                                               "interval_s")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # ---- hooks -------------------------------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(FAILED):
            self._failed.add(trial.trial_id)
            return
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = self._best is None or (value > self._best[0] if self.mode == "max" else value < self._best[0])
            if better:
                self._best = (float(value), trial_label(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        self._ended[trial.trial_id] = float(last.get("time_total_s", 0.0) or 0.0)
        if trial.trial_id in self._failed or last.get(FAILED):
            self._line(f"  FAILED   {trial_label(trial)}: {last.get(FAILURE_REASON, '')}"[:300])
        else:
            epoch = int(last.get("epoch", 0) or 0)
            early = f", stopped early at epoch {epoch}" if self.epochs and epoch < self.epochs else ""
            self._line(f"  finished {trial_label(trial)}: dev wF1 {_fmt(last.get('selected_dev_wf1'))}, "
                       f"test wF1 {_fmt(last.get('selected_test_wf1'))} (epoch {_fmt(last.get('selected_epoch'), 0)} "
                       f"selected{early}; {_clock(last.get('time_total_s', 0))})")
        self._status(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed.add(trial.trial_id)
        self._ended[trial.trial_id] = 0.0
        self._line(f"  FAILED   {trial_label(trial)}: errored after {trial.run_metadata.num_failures} attempt(s)")
        self._status(trials, force=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(f"  retrying {trial_label(trial)} from its last checkpoint "
                   f"(failure {trial.run_metadata.num_failures})")

    def on_step_begin(self, iteration, trials, **info):
        if self._before is None:
            self._before = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}

    def on_step_end(self, iteration, trials, **info):
        self._status(trials)

    def on_experiment_end(self, trials, **info):
        self._status(trials, force=True)
        if self._tty():
            sys.stdout.write("\n")
            sys.stdout.flush()

    # ---- output ------------------------------------------------------------------------------------
    def _tty(self) -> bool:
        return sys.stdout.isatty()

    def _line(self, text: str) -> None:
        prefix = "\r" + " " * self._width + "\r" if self._tty() and self._width else ""
        sys.stdout.write(prefix + text + "\n")
        sys.stdout.flush()
        self._width = 0

    def _status(self, trials, force: bool = False) -> None:
        now = time.time()
        interval = 1.0 if self._tty() else self.interval_s
        if not force and now - self._last_print < interval:
            return
        self._last_print = now
        text = self.status_text(trials, now)
        if self._tty():
            sys.stdout.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def status_text(self, trials, now: Optional[float] = None) -> str:
        now = now or time.time()
        running = [t for t in trials if t.status == "RUNNING" and t.trial_id not in self._ended]
        # Ray marks trials cut short by an interrupt TERMINATED too: count only those seen to end.
        ended = [t for t in trials if t.trial_id in self._ended or t.trial_id in (self._before or ())]
        failed = sum(1 for t in ended if t.trial_id in self._failed or t.status == "ERROR"
                     or (t.last_result or {}).get(FAILED))
        total = max(self.total, len(trials))
        shown = ", ".join(f"{trial_label(t)} ep {int((t.last_result or {}).get('epoch', 0) or 0)}"
                          f"{'/' + str(self.epochs) if self.epochs else ''}" for t in running[:3])
        more = f" +{len(running) - 3}" if len(running) > 3 else ""
        best = f"best {self.metric} {self._best[0]:.3f} ({self._best[1]})" if self._best else "no result yet"
        elapsed = now - self._start
        return (f"[{self.sweep}] {len(ended)}/{total} done, {len(running)} running"
                f"{' (' + shown + more + ')' if running else ''}, {failed} failed | {best} | "
                f"{_clock(elapsed)} elapsed{self._left(total - len(ended), len(running), elapsed)}")

    def _left(self, remaining: int, running: int, elapsed: float) -> str:
        budget_left = self.time_budget_s - elapsed if self.time_budget_s else math.inf
        durations = [d for d in self._ended.values() if d > 0]
        if remaining <= 0:
            return ""
        if durations:
            per_trial = sum(durations) / len(durations)
            estimate = per_trial * math.ceil(remaining / max(1, running))
            return f", ~{_clock(min(estimate, budget_left))} left"
        return f", {_clock(budget_left)} of budget left" if math.isfinite(budget_left) else ""


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "-"
