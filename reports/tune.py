"""Optuna's view of a tune sweep, rebuilt in memory from the MLflow child runs.

The searched parameters are the parent's `search_params` (else the params that differ between finished
trials, the seed excepted). A trial's values are those it chose: its `overrides` tag (so a conditional
parameter that was not active for it has no value), else its MLflow params. Each parameter that takes
more than one value among the trials gets a distribution from the values seen (ints -> IntDistribution,
floats -> FloatDistribution, log scale when they span two decades, anything else ->
CategoricalDistribution). The objective is the sweep's objective (parent tags `objective`/`metric` and
`mode`; default the selected dev weighted F1, maximised; never test: tuning on test would leak).

A trial of `tune --seeds k` trained k seeds as one bundle, each seed its own MLflow run (tag
`bundle_trial` names the bundle): `search_trials` makes them one trial again, whose metrics are the
means over its finished seeds, with `_std` (sample std) and the mean -/+ one std beside them, as the
sweep's own Optuna study saw them.

Trials that ran their whole budget are COMPLETE; trials the scheduler stopped early (tag `stopped_early`)
are PRUNED with their truncated score, as the sweep tells its own Optuna study (sweep/optuna_search.py).
Importances and Optuna's plots use the COMPLETE trials only, like Optuna's own functions; importances come
from Optuna's fANOVA evaluator with a fixed seed, so the numbers repeat.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from reports.store import Sweep, Trial
from sweep.seed_members import seed_groups, seed_summary

# Optuna is imported inside the functions that rebuild a study: it costs seconds to import.

OBJECTIVE = "selected_dev_wf1"
# fANOVA's cost grows with the trees' leaves: on a search of 900 complete trials Optuna's default forest took 150 s
# on a loaded 2-core machine, 64 trees of depth 8 took 17 s with the same ranking, 32 of depth 8 about 10 s
# (benchmarks/report_scale.py; RESULTS.md, issue 29).
LARGE_STUDY = 200
LARGE_FOREST = {"n_trees": 16, "max_depth": 8}
NOT_SEARCHED = {"seed"}
_STOPPED = re.compile(r"after epoch (\d+) of (\d+)")


@dataclass
class TuneView:
    objective: str
    points: list[tuple[int, float]]              # (trial number in launch order, objective), finished trials
    direction: str                               # "maximize" or "minimize"
    run_ids: list[str]                           # COMPLETE trials (ran their whole budget), launch order
    searched: list[str]                          # parameters with a distribution (more than one value seen)
    importances: dict[str, float] = field(default_factory=dict)
    evaluator: str = ""
    note: str = ""
    study: Any = None                            # the rebuilt optuna Study (None with under 2 complete trials)


def _parse(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def searched_keys(sweep: Sweep) -> list[str]:
    """The parent's `search_params` (grouped choices appear as their parts), else whatever differs."""
    try:
        listed = [str(k) for k in json.loads(sweep.tags.get("search_params") or "[]")]
    except json.JSONDecodeError:
        listed = []
    if listed:
        return [k for k in listed if k not in NOT_SEARCHED]
    finished = [t for t in sweep.trials if t.status == "FINISHED"]   # per run: the seeds share their params
    keys = sorted({k for t in finished for k in t.params} - NOT_SEARCHED)
    return [k for k in keys if len({t.params.get(k) for t in finished}) > 1]


def chosen_values(trial: Trial, keys: list[str]) -> dict[str, Any]:
    """What the trial chose for each searched key; a key it did not set (inactive) is absent."""
    try:
        overrides = json.loads(trial.tags["overrides"]) if "overrides" in trial.tags else None
    except json.JSONDecodeError:
        overrides = None
    if isinstance(overrides, dict):
        return {k: overrides[k] for k in keys if k in overrides}
    return {k: _parse(trial.params[k]) for k in keys if k in trial.params}


def search_trials(sweep: Sweep) -> list[Trial]:
    """The sweep's trials as Optuna saw them: the seeds of a bundle merged into one trial (`seed_runs`)."""
    return [group[0] if len(group) == 1 else _merged(group) for group in seed_groups(sweep.trials, lambda t: t.tags)]


def _merged(seeds: list[Trial]) -> Trial:
    finished = [t for t in seeds if t.status == "FINISHED"]
    metrics: dict[str, float] = {}
    for key in sorted({k for t in finished for k in t.metrics}):
        metrics.update(seed_summary(key, [t.metrics.get(key, math.nan) for t in finished]))
    first = seeds[0]
    tags = {**first.tags, "trial_id": first.tags.get("bundle_trial") or first.tags.get("trial_id", "")}
    return Trial(run_id=first.run_id, variant=first.variant, seed=",".join(t.seed for t in seeds),
                 status="FINISHED" if finished else first.status, start_time=min(t.start_time for t in seeds),
                 end_time=max(t.end_time for t in seeds), metrics=metrics, params=dict(first.params), tags=tags,
                 artifact_uri=first.artifact_uri, seed_runs=list(seeds))


def stopped_at(trial: Trial) -> tuple[int, int] | None:
    """(epoch reached, epochs planned) of a trial the scheduler stopped early; None otherwise."""
    match = _STOPPED.search(trial.tags.get("stopped_early", ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _distributions(chosen: list[dict[str, Any]], keys: list[str]) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key in keys:
        values = [c[key] for c in chosen if key in c]
        if len({json.dumps(v, sort_keys=True) for v in values}) < 2:
            continue
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = IntDistribution(min(values), max(values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            lo, hi = float(min(values)), float(max(values))
            out[key] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)
        else:
            out[key] = CategoricalDistribution(sorted({_hashable(v) for v in values}, key=str))
    return out


def _hashable(value: Any):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def objective_of(sweep: Sweep) -> tuple[str, str]:
    """(metric, "maximize"|"minimize"): the parent's `objective` (or `metric`) and `mode` tags, else
    selected_dev_wf1, maximised."""
    metric = sweep.tags.get("objective") or sweep.tags.get("metric") or OBJECTIVE
    if not metric.startswith("selected_") and f"selected_{metric}" in {k for t in sweep.trials for k in t.metrics}:
        metric = f"selected_{metric}"
    mode = sweep.tags.get("mode", "max").lower()
    return metric, "minimize" if mode.startswith("min") else "maximize"


def scored(trial: Trial, objective: str) -> bool:
    return trial.status == "FINISHED" and math.isfinite(trial.metrics.get(objective, math.nan))


def tune_view(sweep: Sweep, objective: str | None = None) -> TuneView:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tagged, direction = objective_of(sweep)
    objective = objective or tagged
    launched = sorted(search_trials(sweep), key=lambda t: (t.start_time, t.run_id))
    finished = [t for t in launched if scored(t, objective)]
    complete = [t for t in finished if stopped_at(t) is None]
    finished_ids = {t.run_id for t in finished}   # not `t in finished`: comparing dataclasses is quadratic
    view = TuneView(objective, [(i, t.metrics[objective]) for i, t in enumerate(launched) if t.run_id in finished_ids],
                    direction, [t.run_id for t in complete], [])
    if len(complete) < 2:
        view.note = f"{len(complete)} trial(s) ran their whole budget: no importances"
        return view
    keys = searched_keys(sweep)
    chosen = {t.run_id: chosen_values(t, keys) for t in finished}
    dists = _distributions(list(chosen.values()), keys)
    view.searched = list(dists)
    if not dists:
        view.note = "no parameter differs between the finished trials: no importances"
        return view
    study = optuna.create_study(direction=direction, study_name=sweep.name)
    for t in finished:
        params = {}
        for key, value in chosen[t.run_id].items():
            dist = dists.get(key)
            if dist is not None:
                params[key] = _hashable(value) if isinstance(dist, CategoricalDistribution) else \
                    float(value) if isinstance(dist, FloatDistribution) else int(value)
        state = TrialState.COMPLETE if stopped_at(t) is None else TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=t.metrics[objective], state=state,
            user_attrs={"mlflow_run_id": t.run_id, "trial_id": t.tags.get("trial_id", ""),
                        "seed_run_ids": [r.run_id for r in t.seed_runs]}))
    view.study = study
    if len(complete) <= LARGE_STUDY:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        view.evaluator = "Optuna fANOVA, seed 0"
    else:   # Optuna's default forest (64 trees of depth 64) took 150 s on 900 trials: a smaller one
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0, **LARGE_FOREST)
        view.evaluator = (f"Optuna fANOVA, seed 0, {LARGE_FOREST['n_trees']} trees of depth "
                          f"{LARGE_FOREST['max_depth']} (over {LARGE_STUDY} complete trials)")
    try:
        view.importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError) as err:  # e.g. no parameter that every complete trial has
        view.note = f"no importances: {err}"
    return view
