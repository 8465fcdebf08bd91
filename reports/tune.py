"""Optuna's view of a tune sweep, rebuilt in memory from the MLflow child runs.

The searched parameters are the parent's `search_params` (else the params that differ between finished
trials, the seed excepted) that take more than one value among the finished trials; each
gets a distribution from the values seen (ints -> IntDistribution, floats -> FloatDistribution, log
scale when they span two decades, anything else -> CategoricalDistribution). The objective is the
sweep's objective (parent tags `objective`/`metric` and `mode`; default the selected dev weighted F1,
maximised; never test: tuning on test would leak). Importances come from
Optuna's own evaluator (fANOVA with a fixed seed, so the numbers repeat).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from reports.store import Sweep, Trial

# Optuna is imported inside the functions that rebuild a study: it costs seconds to import.

OBJECTIVE = "selected_dev_wf1"
NOT_SEARCHED = {"seed"}


@dataclass
class TuneView:
    objective: str
    points: list[tuple[int, float]]              # (trial number in launch order, objective)
    direction: str                               # "maximize" or "minimize"
    run_ids: list[str]
    searched: list[str]
    importances: dict[str, float] = field(default_factory=dict)
    evaluator: str = ""
    note: str = ""


def _parse(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _distributions(trials: list[Trial], searched: list[str] | None = None) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    keys = sorted(set(searched or {k for t in trials for k in t.params}) - NOT_SEARCHED)
    out = {}
    for key in keys:
        raw = [t.params.get(key) for t in trials]
        if any(v is None for v in raw) or len(set(raw)) < 2:
            continue
        values = [_parse(v) for v in raw]
        if all(isinstance(v, int) for v in values):
            out[key] = IntDistribution(min(values), max(values))
        elif all(isinstance(v, (int, float)) for v in values):
            lo, hi = float(min(values)), float(max(values))
            out[key] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)
        else:
            out[key] = CategoricalDistribution(sorted(set(raw)))
    return out


def objective_of(sweep: Sweep) -> tuple[str, str]:
    """(metric, "maximize"|"minimize"): the parent's `objective` (or `metric`) and `mode` tags, else
    selected_dev_wf1, maximised."""
    metric = sweep.tags.get("objective") or sweep.tags.get("metric") or OBJECTIVE
    if not metric.startswith("selected_") and f"selected_{metric}" in {k for t in sweep.trials for k in t.metrics}:
        metric = f"selected_{metric}"
    mode = sweep.tags.get("mode", "max").lower()
    return metric, "minimize" if mode.startswith("min") else "maximize"


def tune_view(sweep: Sweep, objective: str | None = None) -> TuneView:
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tagged, direction = objective_of(sweep)
    objective = objective or tagged
    launched = sorted(sweep.trials, key=lambda t: (t.start_time, t.run_id))
    done = [t for t in launched if t.status == "FINISHED" and math.isfinite(t.metrics.get(objective, math.nan))]
    view = TuneView(objective, [(i, t.metrics[objective]) for i, t in enumerate(launched)
                                if t in done], direction, [t.run_id for t in done], [])
    if len(done) < 2:
        view.note = f"{len(done)} finished trial(s): no importances"
        return view
    # The sweep lists what it searched (parent tag search_params); without it, whatever differs was searched.
    try:
        searched = [str(k) for k in json.loads(sweep.tags.get("search_params") or "[]")]
    except json.JSONDecodeError:
        searched = []
    dists = _distributions(done, searched or None)
    view.searched = list(dists)
    if not dists:
        view.note = "no parameter differs between the finished trials: no importances"
        return view
    study = optuna.create_study(direction=direction, study_name=sweep.name)
    for t in done:
        params = {}
        for key, dist in dists.items():
            raw = t.params[key]
            params[key] = raw if isinstance(dist, CategoricalDistribution) else _parse(raw)
            if not isinstance(dist, CategoricalDistribution):
                params[key] = type(dist.low)(params[key])
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t.metrics[objective],
                                                  user_attrs={"mlflow_run_id": t.run_id}))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    view.evaluator = "Optuna fANOVA, seed 0"
    view.importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    return view
