"""Ray's OptunaSearch, telling the study what ASHA did: a trial ASHA stops early is PRUNED, not COMPLETE.

Ray's own `OptunaSearch` (ray/tune/search/optuna/optuna_search.py, Ray 2.60) tells every trial that
ends with a result as COMPLETE with the objective of its last result. A trial that ASHA stopped after
two of ten epochs therefore enters the study as a finished trial with a two-epoch score, and TPE learns
"this configuration scores low" when the truth is "this configuration had not finished". TPE is then
biased towards configurations that learn fast.

This subclass makes the study look as if Optuna had pruned the trial itself:

- every epoch, the ASHA metric (the number ASHA ranks trials on) is reported to the Optuna trial as an
  intermediate value at step = epoch (Ray reports the objective at step = training_iteration instead);
- a trial that ends before its full budget (its last epoch < min(train.epochs, asha.max_t)) without a
  failure is told as PRUNED. Optuna then sets its value to the last intermediate value, and TPE ranks
  pruned trials below every complete one, ordered by how far they got and by that value (the same
  treatment as a trial pruned by an Optuna pruner);
- a trial that reports `failed` (a diverged loss, a bad config: see sweep/trainable.py) is told as FAIL;
- a trial that trained its whole budget is COMPLETE with the objective (e.g. selected_dev_wf1), as before.

How the end of a trial is seen (Ray 2.60, TuneController): when ASHA answers STOP, the searcher's
`on_trial_result` is *not* called for that last result, and `on_trial_complete(trial_id, result)` gets
it instead (the trial's last_result). A trial that runs to its end also arrives in
`on_trial_complete` with its last result. Neither carries a "stopped by the scheduler" flag, so the
epoch reached decides: short of the budget and no failure means stopped. Trials cut short by
`--time-budget` are truncated in the same way and are PRUNED too.

Actors are not reused in a search (sweep/engine.py): when ASHA stops a trial, its function keeps running
until its next report (the end of the epoch), and Ray fails the next trial put on that actor if the thread
has not ended within TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s); seen on a loaded 2-core machine, where the
sweep then ended as 'interrupted'. With real epochs of minutes it would happen after nearly every stop.

Why no switch back to Ray's behaviour: telling a truncated score as a finished one is the bias this
class removes; nothing in the project relies on it. Importances and the report's plots use COMPLETE
trials only, like Optuna's.

The intermediate values must follow the study's direction (TPE orders pruned trials by them). When
the ASHA metric runs the other way (asha.metric dev_loss with mode max), the objective's per-epoch
value is reported instead.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional

from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


def asha_mode(metric: str) -> str:
    """ASHA's direction for a per-epoch metric: losses go down, scores go up."""
    return "min" if "loss" in metric else "max"


def intermediate_metric(objective: str, mode: str, asha_metric: str) -> str:
    """What each epoch reports to the Optuna trial: the ASHA metric, unless it runs against the study."""
    return asha_metric if asha_mode(asha_metric) == mode else objective


def asha_scheduler(asha, epochs: int):
    """Ray's ASHA on the epoch counter, from a search space's `asha` settings (sweep/search_space.py AshaSettings).

    A grace period at or past the last epoch (e.g. `train.epochs=3` on a file with grace_period 5) means
    ASHA has no rung to stop a trial at; Ray would refuse it with an assertion, so it is capped and said."""
    from ray.tune.schedulers import ASHAScheduler

    max_t = asha.max_t or epochs
    grace = asha.grace_period
    if grace >= max_t:
        print(f"note: asha.grace_period {grace} is not before the last epoch ({max_t}): ASHA will stop no trial",
              flush=True)
        grace = max_t
    return ASHAScheduler(time_attr="epoch", metric=asha.metric, mode=asha_mode(asha.metric), max_t=max_t,
                         grace_period=grace, reduction_factor=asha.reduction_factor)


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch whose study holds per-epoch intermediate values and tells ASHA-stopped trials PRUNED.

    Extra arguments:
      intermediate_metric  the per-epoch result key reported as Optuna intermediate values
      budget_epochs        train.epochs of the sweep's base config (a trial that searches train.epochs
                           uses its own value)
      max_t                asha.max_t (0: none); a trial's budget is min(its train.epochs, max_t)
    """

    def __init__(self, *args, intermediate_metric: str, budget_epochs: int, max_t: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._intermediate_metric = intermediate_metric
        self._budget_epochs = int(budget_epochs)
        self._max_t = int(max_t)
        self._trial_budget: Dict[str, int] = {}   # per trial: the last epoch of a full run
        self._reported: Dict[str, set] = {}   # steps told per trial: a retried epoch is not told twice

    # Ray's suggest, plus each trial's own budget (train.epochs may be a searched parameter).
    def suggest(self, trial_id: str) -> Optional[Dict]:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # the study names Ray's trial id, as MLflow's tag trial_id does
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        overrides = ((config or {}).get("trial") or {}).get("overrides") or {}
        self._trial_budget[trial_id] = self._budget(int(overrides.get("train.epochs", self._budget_epochs)))
        return config

    def _budget(self, epochs: int) -> int:
        return min(epochs, self._max_t) if self._max_t else epochs

    def _report_epoch(self, trial_id: str, result: Dict[str, Any]) -> None:
        value, epoch = result.get(self._intermediate_metric), result.get("epoch")
        if result.get("failed") or value is None or epoch is None or not math.isfinite(float(value)):
            return
        steps = self._reported.setdefault(trial_id, set())
        if int(epoch) not in steps:
            self._ot_trials[trial_id].report(float(value), int(epoch))
            steps.add(int(epoch))

    def on_trial_result(self, trial_id: str, result: Dict):
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return super().on_trial_result(trial_id, result)
        self._report_epoch(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False):
        from optuna.trial import TrialState

        if error or not result or isinstance(self.metric, list) or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        if result.get("failed"):
            state = TrialState.FAIL
        else:
            self._report_epoch(trial_id, result)  # ASHA's STOP result never reached on_trial_result
            budget = self._trial_budget.get(trial_id) or self._budget(self._budget_epochs)
            if int(result.get("epoch") or 0) >= budget:
                return super().on_trial_complete(trial_id, result, error)  # COMPLETE with the objective
            state = TrialState.PRUNED
        try:
            self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
        except Exception as exc:  # as Ray does: a study that refuses must not stop the sweep
            logger.warning(exc)
        self._completed_trials.add(trial_id)
