"""Search spaces (`search_spaces/*.yaml`): Optuna parameters, ASHA settings, and the define-by-run
function handed to OptunaSearch.

    space = load_search_space("search_spaces/fusion.yaml")
    OptunaSearch(space=space.define_by_run(constants), metric=space.metric, mode=space.mode)

A search-space file (see search_spaces/fusion.yaml) has name, dataset, base, seed, metric, mode,
num_samples, max_concurrent, max_failures, time_budget_s, resources, sampler_seed,
seeds, seed_objective, asha {metric, grace_period, reduction_factor, max_t} and params, each
    train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}      # int likewise (step optional)
    fusion.anchor_gating: {type: categorical, choices: [true, false]}
    fusion.layers: {type: int, low: 1, high: 2, when: {fusion.anchor_gating: true}}   # conditional
    width_heads: {type: categorical, choices: [{fusion.width: 256, fusion.heads: 4}, ...]}  # grouped

Checked here, before Ray starts, like an ablation (sweep/ablation_spec.py); the space is also sampled
(exhaustively when it is small) so that a combination the config refuses, e.g. heads that do not
divide the width, fails now with the offending values rather than as a crashed trial an hour into the sweep.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from core.config import ConfigError, MAGTKDConfig, parse_value, suggest
from sweep.spec_common import (Resources, base_config, check_int, check_number, check_override_keys,
                               check_sweep_name, coerce_numbers, dataset_overrides, flatten_overrides,
                               parse_cli_overrides, replace_checked, resources_from, short_hash)
from sweep.seed_members import BUNDLE_LIMIT, MEMBERS, robust_key
from sweep.yaml_lines import YamlLines, check_keys, load_yaml_mapping

# The per-epoch report (README: What MLflow holds): what a tune metric or an ASHA metric may name.
EPOCH_METRICS = ("train_loss", "dev_loss", "dev_wf1", "dev_acc", "dev_mf1",
                 "test_loss", "test_wf1", "test_acc", "test_mf1")
SELECTED_METRICS = ("selected_epoch", "selected_dev_wf1", "selected_dev_acc", "selected_dev_mf1",
                    "selected_test_wf1", "selected_test_acc", "selected_test_mf1")
TUNABLE_METRICS = tuple(m for m in EPOCH_METRICS + SELECTED_METRICS if "test" not in m and m != "selected_epoch")

_SEARCH_KEYS = ("name", "description", "dataset", "base", "seed", "metric", "mode", "num_samples",
                "max_concurrent", "max_failures", "time_budget_s", "resources", "sampler_seed", "seeds",
                "seed_objective", "asha", "params")
SEED_OBJECTIVES = ("mean", "mean-std")
_PARAM_KEYS = ("type", "key", "low", "high", "log", "step", "choices", "when")
_ASHA_KEYS = ("metric", "grace_period", "reduction_factor", "max_t")


@dataclass(frozen=True)
class Param:
    """One searched parameter. `name` is the Optuna parameter name; `key` the config key it sets
    (None for a grouped categorical whose choices are mappings of several keys)."""
    name: str
    type: str                          # float | int | categorical
    key: Optional[str] = None
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()
    labels: tuple = ()                 # Optuna-visible labels for grouped choices
    when: tuple = ()                   # ((key, value), ...): only sampled when all hold

    def active(self, chosen: Mapping[str, Any], base_flat: Mapping[str, Any]) -> bool:
        return all(_current(k, chosen, base_flat) == v for k, v in self.when)

    def suggest(self, trial) -> dict[str, Any]:
        """Ask Optuna (or anything with suggest_* methods) for a value; return the overrides it sets."""
        if self.type == "float":
            value = trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        elif self.type == "int":
            value = trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                      step=int(self.step or 1))
        elif self.labels:
            label = trial.suggest_categorical(self.name, list(self.labels))
            return dict(self.choices[self.labels.index(label)])
        else:
            value = trial.suggest_categorical(self.name, list(self.choices))
        return {self.key: value}


def _current(key: str, chosen: Mapping[str, Any], base_flat: Mapping[str, Any]) -> Any:
    value = chosen[key] if key in chosen else base_flat.get(key)
    return ",".join(map(str, value)) if isinstance(value, list) else value


def define_by_run(trial, params: tuple, base_flat: dict, constants: tuple) -> dict:
    """The define-by-run space handed to OptunaSearch (module level + functools.partial: it pickles).

    Parameters are asked in file order; one with `when` is asked only if the keys it names already
    hold those values (from earlier parameters or the base config). Returns the trial's settings
    under "trial" (the same shape as an ablation trial's): the constants plus `overrides`, the config
    keys this trial sets. `constants` holds one settings dict per seed: with several (`seeds: k`), the
    trial is a seed bundle (sweep/seed_members.py) whose members share the sampled overrides."""
    chosen: dict[str, Any] = {}
    for param in params:
        if param.active(chosen, base_flat):
            chosen.update(param.suggest(trial))
    per_seed = [{**c, "overrides": dict(chosen)} for c in constants]
    if len(per_seed) == 1:
        return {"trial": per_seed[0]}
    return {"trial": {**per_seed[0], MEMBERS: per_seed}}


@dataclass
class AshaSettings:
    metric: str = "dev_wf1"
    grace_period: int = 1
    reduction_factor: float = 3.0
    max_t: int = 0                     # 0 = train.epochs


@dataclass
class SearchSpec:
    path: Path
    text: str
    name: str
    description: str
    base_overrides: dict[str, Any]
    base: MAGTKDConfig
    cli_overrides: dict[str, Any]
    metric: str
    mode: str
    num_samples: int
    max_concurrent: int
    max_failures: int
    time_budget_s: float               # 0 = no budget
    resources: Resources
    sampler_seed: int
    asha: AshaSettings
    params: tuple[Param, ...]
    kind: str = "tune"
    seeds: int = 1                     # seeds per trial, trained as one bundle; the objective is over them
    seed_objective: str = "mean"       # mean | mean-std (mean - std for max, mean + std for min)

    @property
    def seed(self) -> int:
        return self.base.seed

    @property
    def trial_seeds(self) -> list[int]:
        """The seeds every trial trains: the spec's seed and the next seeds-1."""
        return [self.seed + i for i in range(self.seeds)]

    @property
    def objective(self) -> str:
        """The result key Optuna optimises: the metric (a bundle reports its mean over the seeds), or its
        pessimistic side with `seed_objective: mean-std`."""
        return robust_key(self.metric, self.mode) if self.seed_objective == "mean-std" else self.metric

    @property
    def searched_keys(self) -> list[str]:
        keys: list[str] = []
        for p in self.params:
            for k in ([p.key] if p.key else [k for c in p.choices for k in dict(c)]):
                if k not in keys:
                    keys.append(k)
        return keys

    def define_by_run(self, constants: Mapping | list[Mapping]) -> functools.partial:
        """`constants`: the settings every trial shares, or a list of them, one per seed of `trial_seeds`."""
        per_seed = [constants] if isinstance(constants, Mapping) else list(constants)
        return functools.partial(define_by_run, params=self.params, base_flat=self.base.flat(),
                                 constants=tuple(dict(c) for c in per_seed))

    def plan_key(self) -> str:
        seeds = {"seeds": self.seeds, "seed_objective": self.seed_objective} if self.seeds > 1 else {}
        return short_hash({"base": self.base.flat(), "params": [dataclasses.asdict(p) for p in self.params],
                      "metric": self.metric, "mode": self.mode, "num_samples": self.num_samples,
                      "sampler_seed": self.sampler_seed, "asha": dataclasses.asdict(self.asha), **seeds})

    def config_for(self, overrides: Mapping[str, Any]) -> MAGTKDConfig:
        return replace_checked(self.base, overrides, f"{self.path}: sampled parameters {dict(overrides)}")


def _param(name: str, raw: Any, lines: YamlLines) -> Param:
    where = lines.at("params", name)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: parameter '{name}' must be a mapping with at least 'type'")
    check_keys(raw, _PARAM_KEYS, f"parameter '{name}'", lines, "params", name)
    kind = raw.get("type")
    if kind not in ("float", "int", "categorical"):
        raise ConfigError(f"{where}: parameter '{name}': type must be float, int or categorical, got {kind!r}")
    when_raw = raw.get("when") or {}
    if not isinstance(when_raw, Mapping):
        raise ConfigError(f"{where}: parameter '{name}': 'when' must be a mapping {{config.key: value}}")
    check_override_keys(when_raw, lambda key: f"{lines.at('params', name, 'when', key)}: parameter '{name}' when")
    when = tuple((k, ",".join(map(str, v)) if isinstance(v, list) else v) for k, v in when_raw.items())

    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: parameter '{name}': categorical needs a non-empty list 'choices'")
        if all(isinstance(c, Mapping) for c in choices):  # grouped: each choice sets several keys at once
            if raw.get("key"):
                raise ConfigError(f"{where}: parameter '{name}': grouped choices (mappings) set their own keys; "
                                  f"drop 'key'")
            groups = tuple(tuple(coerce_numbers(flatten_overrides(c, where)).items()) for c in choices)
            for g in groups:
                check_override_keys(dict(g), lambda key: f"{where}: parameter '{name}' choice")
            labels = tuple(",".join(f"{k}={v}" for k, v in g) for g in groups)
            if len(set(labels)) != len(labels):
                raise ConfigError(f"{where}: parameter '{name}': a choice is listed twice")
            return Param(name, kind, None, choices=groups, labels=labels, when=when)
        if any(isinstance(c, (Mapping, list)) for c in choices):
            raise ConfigError(f"{where}: parameter '{name}': choices must all be plain values or all mappings")
        key = raw.get("key", name)
        check_override_keys({key: None}, lambda k: f"{where}: parameter '{name}'")
        choices = [parse_value(c) if isinstance(c, str) and re.fullmatch(r"[-+]?[0-9.]+[eE][-+]?[0-9]+", c)
                   else c for c in choices]
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: parameter '{name}': a choice is listed twice")
        return Param(name, kind, key, choices=tuple(choices), when=when)

    key = raw.get("key", name)
    check_override_keys({key: None}, lambda k: f"{where}: parameter '{name}'")
    if "low" not in raw or "high" not in raw:
        raise ConfigError(f"{where}: parameter '{name}': {kind} needs 'low' and 'high'")
    low, high = check_number(raw["low"], "low", where), check_number(raw["high"], "high", where)
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: parameter '{name}': 'log' must be true or false")
    step = raw.get("step")
    if step is not None:
        step = check_number(step, "step", where)
        if step <= 0 or log:
            raise ConfigError(f"{where}: parameter '{name}': 'step' must be > 0 and cannot be combined with log")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise ConfigError(f"{where}: parameter '{name}': int bounds must be whole numbers, got {low}, {high}")
    if not low < high:
        raise ConfigError(f"{where}: parameter '{name}': needs low < high, got low={low}, high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: parameter '{name}': a log scale needs low > 0, got {low}")
    return Param(name, kind, key, low=float(low), high=float(high), log=log, step=step, when=when)


# How much of a space is tried before a sweep starts: every categorical combination when there are at most
# this many, each with all numbers at their low and then at their high end; then random draws.
MAX_COMBINATIONS = 2000
RANDOM_DRAWS = 200


def _number_end(param: Param, end: str) -> float | int:
    """The lowest or highest value Optuna can suggest (a stepped range's top rounds down to a step, as Optuna's)."""
    value = param.low if end == "low" else param.high
    if end == "high" and param.step:
        value = param.low + math.floor((param.high - param.low) / param.step) * param.step
    return int(value) if param.type == "int" else value


def _fixed_assignments(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    """Parameter values (Optuna names) for every categorical combination x both number ends; [] when too many."""
    categorical = [p for p in params if p.type == "categorical"]
    numbers = [p for p in params if p.type != "categorical"]
    if math.prod(len(p.choices) for p in categorical) > MAX_COMBINATIONS:
        return []
    out = []
    for combo in itertools.product(*[p.labels or p.choices for p in categorical]):
        picks = dict(zip([p.name for p in categorical], combo))
        out += [{**picks, **{p.name: _number_end(p, end) for p in numbers}} for end in ("low", "high")]
    return out


def _probe_trials(params: tuple[Param, ...]):
    """Optuna trials to run the real define-by-run function on: FixedTrials for the enumerated assignments
    (a parameter that `when` switches off is simply not asked), then a seeded random sampler's trials from an
    in-memory study."""
    import optuna  # seconds to import: only search spaces need it

    for values in _fixed_assignments(params):
        yield optuna.trial.FixedTrial(values)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for a throwaway study
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _ in range(RANDOM_DRAWS):
        trial = study.ask()
        yield trial
        study.tell(trial, 0.0)


def _check_space(spec: SearchSpec, lines: YamlLines) -> None:
    """Every combination a small space can produce (numbers at both ends), plus a random sample, must be a
    valid config; the error names the parameter and the values."""
    base_flat = spec.base.flat()
    for trial in _probe_trials(spec.params):
        over = define_by_run(trial, spec.params, base_flat, ({},))["trial"]["overrides"]
        try:
            spec.base.replace(over, source="x")
        except ConfigError as err:
            reason = str(err).split(": ", 1)[-1]
            named = re.findall(r"key '([^']+)'", reason)
            param = next((p for p in spec.params if p.key in named or any(k in named for k, _ in p.when)
                          or any(k in named for c in p.choices if p.labels for k, _ in c)), None)
            where = lines.at("params", param.name) if param else lines.at("params")
            shown = ", ".join(f"{k}={v}" for k, v in over.items())
            raise ConfigError(f"{where}: the search space can produce an invalid config ({shown}): {reason}. "
                              f"Tie parameters together with 'when' or grouped categorical choices.") from None


def load_search_space(path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()) -> SearchSpec:
    path, text, data, lines = load_yaml_mapping(path)
    check_keys(data, _SEARCH_KEYS, "", lines)
    name = check_sweep_name(data.get("name", path.stem), lines.at("name"))
    cli = dict(overrides) if isinstance(overrides, Mapping) else parse_cli_overrides(overrides)
    base_over = {**dataset_overrides(data.get("dataset"), lines.at("dataset")),
                 **flatten_overrides(data.get("base"), lines.at("base"))}
    if "seed" in data:
        base_over["seed"] = check_int(data["seed"], "seed", lines.at("seed"))
    base_over = coerce_numbers(base_over)
    check_override_keys(base_over, lambda key: lines.at("base", key) if ("base", key) in lines.lines
                         else lines.at("dataset"))
    base = base_config(base_over, {}, cli, lines)

    metric = data.get("metric", "selected_dev_wf1")
    mode = data.get("mode", "max")
    for key, value in (("metric", metric),):
        if value not in TUNABLE_METRICS:
            extra = " (tuning on the test split would leak it into model selection)" if "test" in str(value) else ""
            raise ConfigError(f"{lines.at(key)}: '{key}' must be one of {', '.join(TUNABLE_METRICS)}, "
                              f"got {value!r}{extra}.{suggest(str(value), TUNABLE_METRICS)}")
    if mode not in ("max", "min"):
        raise ConfigError(f"{lines.at('mode')}: 'mode' must be max or min, got {mode!r}")

    asha_raw = data.get("asha") or {}
    if not isinstance(asha_raw, Mapping):
        raise ConfigError(f"{lines.at('asha')}: 'asha' must be a mapping of {', '.join(_ASHA_KEYS)}")
    check_keys(asha_raw, _ASHA_KEYS, "asha", lines, "asha")
    asha = AshaSettings(metric=asha_raw.get("metric", "dev_wf1"),
                        grace_period=check_int(asha_raw.get("grace_period", 1), "asha.grace_period", lines.at("asha"), 1),
                        reduction_factor=check_number(asha_raw.get("reduction_factor", 3), "asha.reduction_factor",
                                                 lines.at("asha")),
                        max_t=check_int(asha_raw.get("max_t", 0), "asha.max_t", lines.at("asha")))
    if asha.metric not in TUNABLE_METRICS:
        raise ConfigError(f"{lines.at('asha', 'metric')}: 'asha.metric' must be one of {', '.join(TUNABLE_METRICS)}"
                          f", got {asha.metric!r}.{suggest(str(asha.metric), TUNABLE_METRICS)}")
    if asha.reduction_factor <= 1:
        raise ConfigError(f"{lines.at('asha')}: 'asha.reduction_factor' must be > 1")
    if asha.max_t and asha.max_t > base.train.epochs:
        raise ConfigError(f"{lines.at('asha')}: 'asha.max_t' ({asha.max_t}) exceeds train.epochs ({base.train.epochs})")

    raw_params = data.get("params")
    if not isinstance(raw_params, Mapping) or not raw_params:
        raise ConfigError(f"{lines.at('params')}: 'params' must be a non-empty mapping of parameter name -> "
                          f"{{type: float|int|categorical, ...}}")
    params = tuple(_param(str(n), raw, lines) for n, raw in raw_params.items())
    budget = check_number(data.get("time_budget_s", 0) or 0, "time_budget_s", lines.at("time_budget_s"))
    if budget < 0:
        raise ConfigError(f"{lines.at('time_budget_s')}: 'time_budget_s' must be >= 0 (0 = no budget)")

    spec = SearchSpec(
        path=path, text=text, name=name, description=str(data.get("description", "") or ""),
        base_overrides={**base_over, **cli}, base=base, cli_overrides=cli, metric=metric, mode=mode,
        num_samples=check_int(data.get("num_samples", 10), "num_samples", lines.at("num_samples"), 1),
        max_concurrent=check_int(data.get("max_concurrent", 0), "max_concurrent", lines.at("max_concurrent")),
        max_failures=check_int(data.get("max_failures", 2), "max_failures", lines.at("max_failures")),
        time_budget_s=float(budget), resources=resources_from(data.get("resources"), "", lines),
        sampler_seed=check_int(data.get("sampler_seed", 0), "sampler_seed", lines.at("sampler_seed")),
        asha=asha, params=params,
        seeds=check_int(data.get("seeds", 1), "seeds", lines.at("seeds"), 1),
        seed_objective=str(data.get("seed_objective", "mean")))
    check_seeds(spec, lines.at("seeds"), lines.at("seed_objective"))
    _check_space(spec, lines)
    return spec


def check_seeds(spec: SearchSpec, where_seeds: str = "--seeds", where_objective: str = "--seed-objective") -> None:
    """Seeds per trial: 1 to BUNDLE_LIMIT, trained as one bundle, which only the anchor model has."""
    if spec.seeds > BUNDLE_LIMIT:
        raise ConfigError(f"{where_seeds}: 'seeds' is at most {BUNDLE_LIMIT} per trial (one bundle; the range "
                          f"benchmarks/seed_bundle.py measured), got {spec.seeds}")
    if spec.seed_objective not in SEED_OBJECTIVES:
        raise ConfigError(f"{where_objective}: 'seed_objective' must be one of {', '.join(SEED_OBJECTIVES)}, "
                          f"got {spec.seed_objective!r}")
    if spec.seed_objective == "mean-std" and spec.seeds < 2:
        raise ConfigError(f"{where_objective}: 'seed_objective: mean-std' needs seeds >= 2 (one seed has no spread)")
    if spec.seeds > 1 and (spec.base.fusion.mode != "anchor" or "fusion.mode" in spec.searched_keys):
        raise ConfigError(f"{where_seeds}: seeds > 1 trains each trial's seeds as one bundle, which only "
                          f"fusion.mode=anchor has (model/seed_bundle.py); this search uses or searches another "
                          f"fusion.mode")
