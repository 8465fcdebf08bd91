"""An ablation's trials go to Tune as their stage-1 entries become ready, while stage 1 goes on.

    gate = Stage1Gate(pending, context)       # cache hits settle now; stage 1 goes on in a driver thread
    tune.TuneConfig(search_alg=gate.searcher(tracking_uri), num_samples=len(pending))
    tuner.fit()
    gate.close()                              # cancels what is still computing (an interrupted sweep)

Tune asks its searcher for a trial whenever it could start one. `Stage1ReadySearcher` answers with
the first trial of the plan whose entry is settled (ready; or failed, and the trial then fails at
once with the reason), and with "nothing yet" while every remaining trial's entry is still being
computed. The trials of the first ready entry train while the other entries are computed, so slots
are neither held waiting for stage 1 nor left idle behind a barrier.

Resume: Tune saves the searcher's queue (`save`, JSON) and pickles the searcher without its board. A
restored searcher (the engine computes or finds every entry first, then restores) reads each entry's
run id or failure from the sweep's MLflow experiment instead.
"""
from __future__ import annotations

import json
import threading
from typing import Optional

from ray.tune.search import Searcher

from sweep import tracking
from sweep.stage1_plan import (TRIAL_LINK_TAG, Stage1Context, Stage1Entry, compute_entries, entry_of,
                               newest_entry_run, plan_entries, settle_cached)
from sweep.trainable import STAGE1_FAILURE


class Stage1Board:
    """Which entries are settled, as (run id, failure); written by the stage-1 thread, read by Tune's loop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._settled: dict[str, tuple[str, str]] = {}

    def settle(self, entry: Stage1Entry) -> None:
        with self._lock:
            self._settled[entry.key] = (entry.run_id, entry.failure)

    def fail(self, keys, reason: str) -> None:
        """Settles every key not settled yet as failed (the stage-1 thread itself broke)."""
        with self._lock:
            for key in keys:
                self._settled.setdefault(key, ("", reason))

    def get(self, key: str) -> Optional[tuple[str, str]]:
        with self._lock:
            return self._settled.get(key)


class Stage1Gate:
    """Settles the cached entries at once, then computes the rest (`compute_entries`) in a driver thread,
    filling a board. Cached entries settle before Tune first asks for a trial: Tune sleeps a second after
    an empty answer, and the first trials would wait for it."""

    def __init__(self, pending: list[dict], ctx: Stage1Context):
        self.pending, self.ctx = pending, ctx
        self.board = Stage1Board()
        self._stop = threading.Event()
        self.entries = plan_entries(pending)
        self.missing = self._guarded(settle_cached, self.entries, ctx, self.board.settle)
        self._thread = threading.Thread(target=self._run, name="stage1-schedule", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self.missing:
                self._guarded(compute_entries, self.entries, self.missing, self.ctx, self.board.settle, self._stop)
        finally:
            if self._stop.is_set():   # stopped: what never settled must not start a trial either
                self.board.fail(self.entries, "the sweep was interrupted before this stage-1 entry was ready")

    def _guarded(self, fn, *args):
        try:
            return fn(*args)
        except Exception as err:   # a trial must never wait forever on a broken stage 1
            self.ctx.say(f"[{self.ctx.sweep}] stage 1 scheduling broke: {type(err).__name__}: {err}")
            self.board.fail(self.entries, f"stage-1 scheduling broke: {type(err).__name__}: {err}"[:2000])
            return None

    def searcher(self, tracking_uri: str) -> "Stage1ReadySearcher":
        return Stage1ReadySearcher(self.pending, self.board, tracking_uri, self.ctx.experiment_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Stage1ReadySearcher(Searcher):
    """Tune's searcher for an ablation: the plan's trials in order, each once its stage-1 entry is settled."""

    def __init__(self, pending: list[dict], board: Optional[Stage1Board], tracking_uri: str, experiment_id: str):
        super().__init__()
        self.queue = [[entry_of(s), s] for s in pending]   # [entry key (None: no stage 1), settings]
        self.board = board
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id

    def suggest(self, trial_id: str):
        if not self.queue:
            return Searcher.FINISHED
        for i, (key, settings) in enumerate(self.queue):
            state = ("", "") if key is None else self._settled(key)
            if state is not None:
                del self.queue[i]
                run_id, failure = state
                settings = dict(settings)
                if run_id:
                    settings[TRIAL_LINK_TAG] = run_id
                if failure:
                    settings[STAGE1_FAILURE] = failure
                return {"trial": settings}
        return None   # every remaining trial's entry is still being computed: Tune asks again

    def _settled(self, key: str) -> Optional[tuple[str, str]]:
        if self.board is not None:
            return self.board.get(key)
        # Restored: the engine settled every entry before restoring, and recorded each in MLflow.
        newest = newest_entry_run(tracking.make_client(self.tracking_uri), self.experiment_id, key, tracking.FINAL)
        if newest is None:
            return "", f"no stage-1 run for entry {key} was found in MLflow"
        failure = newest.data.tags.get("failure_reason", "stage-1 run FAILED") if newest.info.status == "FAILED" else ""
        return newest.info.run_id, failure

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        pass   # an ablation learns nothing from results

    # Tune saves this with every experiment snapshot; the board (a live thread's) is not part of it.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump({"queue": self.queue}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, encoding="utf-8") as f:
            self.queue = json.load(f)["queue"]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["board"] = None
        return state
