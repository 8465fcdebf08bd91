"""Sweep specs: `ablations/*.yaml` (variants x seeds) and `search_spaces/*.yaml` (Optuna spaces).

    spec = load_ablation("ablations/demo.yaml", overrides=["train.epochs=2"])
    [(t.variant, t.seed, t.cfg.content_hash()) for t in spec.trials()]

    space = load_search_space("search_spaces/fusion.yaml")
    OptunaSearch(space=space.define_by_run(constants), metric=space.metric, mode=space.mode)

An ablation file (see ablations/demo.yaml):
    name: demo                      # sweep name = MLflow experiment = OUTPUT/ray/<name>; a plain slug
    dataset: {name: synthetic}      # data.* keys (or just a dataset name)
    base: {train.epochs: 6}         # dotted config keys for every variant
    variants:                       # table order; the first is the baseline
      full: {}
      w/o prompt: {stage1.prompt: false}
    seeds: [0, 1]
    resources: {cpu: 1, gpu: 0.5}   # per trial; fractional GPUs are shared
    max_concurrent: 2               # 0 = as many as the resources allow
    max_failures: 2                 # retries of a crashed trial, from its last checkpoint
    stage1_seed: per-seed           # or shared (+ stage1_shared_seed: N): every seed reuses one stage 1

A search-space file (see search_spaces/fusion.yaml) has name, dataset, base, seed, metric, mode,
num_samples, max_concurrent, max_failures, time_budget_s, resources, sampler_seed,
asha {metric, grace_period, reduction_factor, max_t} and params, each
    train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}      # int likewise (step optional)
    fusion.anchor_gating: {type: categorical, choices: [true, false]}
    fusion.layers: {type: int, low: 1, high: 2, when: {fusion.anchor_gating: true}}   # conditional
    width_heads: {type: categorical, choices: [{fusion.width: 256, fusion.heads: 4}, ...]}  # grouped

Everything is checked here, before Ray starts: YAML syntax (file and line), unknown top-level keys,
every override key of every variant and every searched key against `core.config` (with the closest
valid key suggested), value types and ranges through the config's own validation, and names that
become paths (a sweep called `../../x` is refused). A search space is also sampled (exhaustively when
it is small) so that a combination the config refuses, e.g. heads that do not divide the width, fails
now with the offending values rather than as a crashed trial an hour into the sweep.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml

from core.config import (absolute_path_overrides, suggest, unknown_key_message, ConfigError, MAGTKDConfig, default_config, parse_value, read_yaml,
                          valid_keys)

# The per-epoch report (README: What MLflow holds): what a tune metric or an ASHA metric may name.
EPOCH_METRICS = ("train_loss", "dev_loss", "dev_wf1", "dev_acc", "dev_mf1",
                 "test_loss", "test_wf1", "test_acc", "test_mf1")
SELECTED_METRICS = ("selected_epoch", "selected_dev_wf1", "selected_dev_acc", "selected_dev_mf1",
                    "selected_test_wf1", "selected_test_acc", "selected_test_mf1")
TUNABLE_METRICS = tuple(m for m in EPOCH_METRICS + SELECTED_METRICS if "test" not in m and m != "selected_epoch")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ABLATION_KEYS = ("name", "description", "dataset", "base", "variants", "seeds", "resources", "max_concurrent",
                  "max_failures", "stage1_seed", "stage1_shared_seed")
_SEARCH_KEYS = ("name", "description", "dataset", "base", "seed", "metric", "mode", "num_samples",
                "max_concurrent", "max_failures", "time_budget_s", "resources", "sampler_seed", "asha", "params")
_PARAM_KEYS = ("type", "key", "low", "high", "log", "step", "choices", "when")
_ASHA_KEYS = ("metric", "grace_period", "reduction_factor", "max_t")


# ---- names that become paths ---------------------------------------------------------------------

def check_sweep_name(name: Any, where: str) -> str:
    """A sweep name names directories under --output and an MLflow experiment: a plain slug only."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ConfigError(f"{where}: sweep name {name!r} may only use letters, digits, '.', '_' and '-' "
                          f"(at most 100, no '..'): it names directories under --output")
    return name


def slugify(text: str) -> str:
    """A path-safe form of a display name ('w/o prompt' -> 'w-o-prompt')."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    return re.sub(r"\.{2,}", ".", slug)[:60] or "x"


def check_variant_name(name: Any, where: str) -> str:
    """Variant names are table labels ('w/o prompt', 'T+A'), only ever used on disk as slugs; still, a
    name that reads as a path escape or carries control characters is refused outright."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: a variant name must be a non-empty string, got {name!r}")
    parts = re.split(r"[/\\]", name)
    if len(name) > 80 or any(p in ("..", ".") for p in parts) or name[0] in "/\\~" or \
            any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ConfigError(f"{where}: variant name {name!r} is refused: at most 80 printable characters, "
                          f"not starting with '/', '\\' or '~', and no '.' or '..' path parts")
    return name


def within(root: Path, *parts: str) -> Path:
    """root/parts, refusing anything that resolves outside root (belt and braces after the name checks)."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(f"path {path} would be outside the output directory {root}")
    return path


# ---- YAML with line numbers ----------------------------------------------------------------------

class _Lines:
    """Line numbers of the keys of a YAML document, by key path; refuses duplicate keys (PyYAML would
    silently keep the last one, dropping e.g. a variant listed twice)."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: dict[tuple, int] = {}
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            root = None  # read_yaml already reported syntax errors with their line
        if root is not None:
            self._walk(root, ())

    def _walk(self, node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"{self.path}:{line}: duplicate key '{key}' (first at line {seen[key]})"
                                      f"{' under ' + '.'.join(map(str, prefix)) if prefix else ''}")
                seen[key] = line
                self.lines[prefix + (key,)] = line
                self._walk(value_node, prefix + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[prefix + (i,)] = item.start_mark.line + 1
                self._walk(item, prefix + (i,))

    def at(self, *keys) -> str:
        """'file:line' of the deepest known prefix of keys."""
        for n in range(len(keys), 0, -1):
            line = self.lines.get(tuple(keys[:n]))
            if line:
                return f"{self.path}:{line}"
        return str(self.path)


def _load(path: str | Path) -> tuple[Path, str, dict, _Lines]:
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (name, variants, seeds, ...)")
    text = path.read_text(encoding="utf-8")
    return path, text, data, _Lines(path, text)


def _check_keys(data: Mapping, allowed: Iterable[str], where: str, lines: _Lines, *prefix) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{lines.at(*prefix, key)}: unknown key '{key}'{' in ' + where if where else ''}. "
                              f"Valid keys: {', '.join(allowed)}.{suggest(str(key), allowed)}")


# ---- overrides ------------------------------------------------------------------------------------

def flatten_overrides(value: Any, where: str) -> dict[str, Any]:
    """{'fusion.width': 32} or {'fusion': {'width': 32}} -> {'fusion.width': 32}; None -> {}."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of dotted config keys to values, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, val in value.items():
        key = str(key)
        if isinstance(val, Mapping) and "." not in key:  # a section written nested
            for sub, subval in val.items():
                out[f"{key}.{sub}"] = subval
        else:
            out[key] = val
    return out


def _check_override_keys(overrides: Mapping[str, Any], where_of) -> None:
    """Every key must be a config key; the message names the file:line and suggests the closest key."""
    keys = set(valid_keys() + ["seed"])
    for key in overrides:
        if key not in keys:
            raise ConfigError(f"{where_of(key)}: {unknown_key_message(key)}")


def _coerce_numbers(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads '1e-5' as a string: numbers written that way become numbers, as on the command line."""
    return {k: parse_value(v) if isinstance(v, str) and re.fullmatch(r"[-+]?[0-9.]+[eE][-+]?[0-9]+", v) else v
            for k, v in overrides.items()}


def parse_cli_overrides(items: Iterable[str]) -> dict[str, Any]:
    """['train.epochs=3', 'fusion.modalities=text,audio'] -> {'train.epochs': 3, ...}, keys checked."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"<command line>: override '{item}' must be key=value, e.g. train.lr=3e-4")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    _check_override_keys(out, lambda key: "<command line>")
    return out


def _replace(cfg: MAGTKDConfig, overrides: Mapping[str, Any], where: str) -> MAGTKDConfig:
    return cfg.replace(dict(overrides), source=where) if overrides else cfg


def _base_config(base_over: dict, extra: dict, cli: dict, lines: "_Lines") -> MAGTKDConfig:
    """Defaults + the spec's dataset/base + extra (a tune sweep's best) + the command line, validated
    together: a key required by the spec (data.path for MELD) may come from the command line.
    File paths in base_over and cli are made absolute in place (trials run in their own directories)."""
    for over in (base_over, cli):
        over.update(absolute_path_overrides(over))
    parts = ["base"] + (["the best config of the tune sweep"] if extra else []) + (["the command line"] if cli else [])
    return _replace(default_config(), {**base_over, **extra, **cli}, f"{lines.at('base')}: {' + '.join(parts)}")


def _dataset_overrides(value: Any, where: str) -> dict[str, Any]:
    """`dataset: meld` or `dataset: {name: meld, path: ...}` -> data.* overrides."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"data.name": value}
    if isinstance(value, Mapping):
        return {(k if str(k).startswith("data.") else f"data.{k}"): v for k, v in value.items()}
    raise ConfigError(f"{where}: 'dataset' must be a dataset name or a mapping of data.* keys")


# ---- shared pieces ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu}


def _resources(value: Any, where: str, lines: _Lines) -> Resources:
    if value is None:
        return Resources()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{lines.at('resources')}: 'resources' must be a mapping like {{cpu: 1, gpu: 0.5}}")
    _check_keys(value, ("cpu", "gpu"), "resources", lines, "resources")
    return check_resources(value.get("cpu", 1.0), value.get("gpu", 0.0), lines.at("resources"))


def check_resources(cpu: Any, gpu: Any, where: str) -> Resources:
    for name, v in (("cpu", cpu), ("gpu", gpu)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isnan(v):
            raise ConfigError(f"{where}: resources.{name} must be a number >= 0, got {v!r}")
    if cpu <= 0:
        raise ConfigError(f"{where}: resources.cpu must be > 0 (fractions such as 0.5 are fine)")
    if gpu > 1 and float(gpu) != int(gpu):
        raise ConfigError(f"{where}: resources.gpu above 1 must be a whole number (Ray shares GPUs only "
                          f"in fractions of one), got {gpu}")
    return Resources(float(cpu), float(gpu))


def _int(value: Any, key: str, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, key: str, where: str) -> float:
    value = parse_value(value) if isinstance(value, str) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    return value


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---- ablations ---------------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    slug: str
    overrides: dict[str, Any]
    where: str                        # file:line, for messages


@dataclass
class TrialPlan:
    """One (variant, seed): the fully resolved config a trial trains."""
    variant: str
    slug: str
    seed: int
    overrides: dict[str, Any]         # beyond the sweep base: the variant's, the shared stage-1 seed, the command line
    cfg: MAGTKDConfig

    @property
    def config_hash(self) -> str:
        return self.cfg.content_hash()


@dataclass
class AblationSpec:
    path: Path
    text: str                          # the file as written (logged as the parent run's sweep.yaml)
    name: str
    description: str
    base_overrides: dict[str, Any]     # dataset + base + command line, as dotted keys
    base: MAGTKDConfig                 # defaults + base_overrides
    cli_overrides: dict[str, Any]
    variants: list[Variant]
    seeds: list[int]
    resources: Resources
    max_concurrent: int                # 0 = as many as the resources allow
    max_failures: int
    stage1_seed_mode: str              # per-seed | shared
    stage1_shared_seed: int
    kind: str = "ablate"

    @property
    def baseline(self) -> str:
        return self.variants[0].name

    def trials(self) -> list[TrialPlan]:
        """Every variant x seed in table order, validated (errors name the file, line and variant)."""
        out = []
        for v in self.variants:
            for seed in self.seeds:
                extra: dict[str, Any] = {"seed": seed}
                if self.stage1_seed_mode == "shared":
                    extra["stage1.shared_seed"] = self.stage1_shared_seed
                where = f"{v.where}: variant '{v.name}' (seed {seed})"
                cfg = _replace(self.base, {**v.overrides, **extra}, where)
                cfg = _replace(cfg, self.cli_overrides, "<command line>")  # the command line has the last word
                overrides = {**v.overrides, **{k: x for k, x in extra.items() if k != "seed"}, **self.cli_overrides}
                out.append(TrialPlan(v.name, v.slug, seed, overrides, cfg))
        return out

    def plan_key(self, trials: Optional[list[TrialPlan]] = None) -> str:
        """Identifies what this sweep computes: the same command gives the same key (and resumes)."""
        trials = trials if trials is not None else self.trials()
        return _hash([[t.variant, t.seed, t.config_hash] for t in trials])


def load_ablation(path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = (),
                  extra_base: Optional[Mapping[str, Any]] = None) -> AblationSpec:
    """Load and validate an ablation spec; `overrides` are command-line dotted overrides and
    `extra_base` (e.g. the best config of a tune sweep) sits between the spec's base and its variants."""
    path, text, data, lines = _load(path)
    _check_keys(data, _ABLATION_KEYS, "", lines)
    name = check_sweep_name(data.get("name", path.stem), lines.at("name"))
    cli = dict(overrides) if isinstance(overrides, Mapping) else parse_cli_overrides(overrides)

    base_over = {**_dataset_overrides(data.get("dataset"), lines.at("dataset")),
                 **flatten_overrides(data.get("base"), lines.at("base"))}
    base_over = _coerce_numbers(base_over)
    _check_override_keys(base_over, lambda key: lines.at("base", key) if ("base", key) in lines.lines
                         else lines.at("dataset"))
    base = _base_config(base_over, dict(extra_base or {}), cli, lines)

    raw_variants = data.get("variants")
    if not isinstance(raw_variants, Mapping) or not raw_variants:
        raise ConfigError(f"{lines.at('variants')}: 'variants' must be a non-empty mapping of variant name -> "
                          f"overrides, in table order (the first is the baseline)")
    variants, slugs = [], {}
    for vname, vover in raw_variants.items():
        where = lines.at("variants", vname)
        check_variant_name(vname, where)
        over = _coerce_numbers(flatten_overrides(vover, f"{where}: variant '{vname}'"))
        over.update(absolute_path_overrides(over))
        _check_override_keys(over, lambda key, v=vname: f"{lines.at('variants', v, key)}: variant '{v}'")
        slug = slugify(vname)
        if slug in slugs:
            raise ConfigError(f"{where}: variant '{vname}' and '{slugs[slug]}' have the same file-safe name "
                              f"'{slug}'; rename one")
        slugs[slug] = vname
        clash = sorted(set(over) & set(cli))
        if clash:
            print(f"note: the command line sets {', '.join(clash)}, which variant '{vname}' also sets; "
                  f"the command line wins")
        variants.append(Variant(vname, slug, over, where))

    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                       for s in seeds):
        raise ConfigError(f"{lines.at('seeds')}: 'seeds' must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{lines.at('seeds')}: 'seeds' lists a seed twice: {seeds}")

    mode = data.get("stage1_seed", "per-seed")
    if mode not in ("per-seed", "shared"):
        raise ConfigError(f"{lines.at('stage1_seed')}: 'stage1_seed' must be per-seed (each seed trains its own "
                          f"stage 1) or shared (every seed reuses one stage 1), got {mode!r}")
    shared_seed = _int(data.get("stage1_shared_seed", seeds[0]), "stage1_shared_seed", lines.at("stage1_shared_seed"))
    if mode == "per-seed" and base.stage1.shared_seed >= 0:
        mode, shared_seed = "shared", base.stage1.shared_seed  # set through the base overrides instead

    spec = AblationSpec(
        path=path, text=text, name=name, description=str(data.get("description", "") or ""),
        base_overrides={**base_over, **dict(extra_base or {}), **cli}, base=base, cli_overrides=cli,
        variants=variants, seeds=list(seeds),
        resources=_resources(data.get("resources"), "", lines),
        max_concurrent=_int(data.get("max_concurrent", 0), "max_concurrent", lines.at("max_concurrent")),
        max_failures=_int(data.get("max_failures", 2), "max_failures", lines.at("max_failures")),
        stage1_seed_mode=mode, stage1_shared_seed=shared_seed)
    spec.trials()  # validates every variant x seed now, before anything starts
    return spec


# ---- search spaces -----------------------------------------------------------------------------------

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


def define_by_run(trial, params: tuple, base_flat: dict, constants: dict) -> dict:
    """The define-by-run space handed to OptunaSearch (module level + functools.partial: it pickles).

    Parameters are asked in file order; one with `when` is asked only if the keys it names already
    hold those values (from earlier parameters or the base config). Returns the trial's settings
    under "trial" (the same shape as an ablation trial's): the constants plus `overrides`, the config
    keys this trial sets."""
    chosen: dict[str, Any] = {}
    for param in params:
        if param.active(chosen, base_flat):
            chosen.update(param.suggest(trial))
    return {"trial": {**constants, "overrides": chosen}}


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

    @property
    def seed(self) -> int:
        return self.base.seed

    @property
    def searched_keys(self) -> list[str]:
        keys: list[str] = []
        for p in self.params:
            for k in ([p.key] if p.key else [k for c in p.choices for k in dict(c)]):
                if k not in keys:
                    keys.append(k)
        return keys

    def define_by_run(self, constants: dict) -> functools.partial:
        return functools.partial(define_by_run, params=self.params, base_flat=self.base.flat(),
                                 constants=dict(constants))

    def plan_key(self) -> str:
        return _hash({"base": self.base.flat(), "params": [dataclasses.asdict(p) for p in self.params],
                      "metric": self.metric, "mode": self.mode, "num_samples": self.num_samples,
                      "sampler_seed": self.sampler_seed, "asha": dataclasses.asdict(self.asha)})

    def config_for(self, overrides: Mapping[str, Any]) -> MAGTKDConfig:
        return _replace(self.base, overrides, f"{self.path}: sampled parameters {dict(overrides)}")


def _param(name: str, raw: Any, lines: _Lines) -> Param:
    where = lines.at("params", name)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: parameter '{name}' must be a mapping with at least 'type'")
    _check_keys(raw, _PARAM_KEYS, f"parameter '{name}'", lines, "params", name)
    kind = raw.get("type")
    if kind not in ("float", "int", "categorical"):
        raise ConfigError(f"{where}: parameter '{name}': type must be float, int or categorical, got {kind!r}")
    when_raw = raw.get("when") or {}
    if not isinstance(when_raw, Mapping):
        raise ConfigError(f"{where}: parameter '{name}': 'when' must be a mapping {{config.key: value}}")
    _check_override_keys(when_raw, lambda key: f"{lines.at('params', name, 'when', key)}: parameter '{name}' when")
    when = tuple((k, ",".join(map(str, v)) if isinstance(v, list) else v) for k, v in when_raw.items())

    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: parameter '{name}': categorical needs a non-empty list 'choices'")
        if all(isinstance(c, Mapping) for c in choices):  # grouped: each choice sets several keys at once
            if raw.get("key"):
                raise ConfigError(f"{where}: parameter '{name}': grouped choices (mappings) set their own keys; "
                                  f"drop 'key'")
            groups = tuple(tuple(_coerce_numbers(flatten_overrides(c, where)).items()) for c in choices)
            for g in groups:
                _check_override_keys(dict(g), lambda key: f"{where}: parameter '{name}' choice")
            labels = tuple(",".join(f"{k}={v}" for k, v in g) for g in groups)
            if len(set(labels)) != len(labels):
                raise ConfigError(f"{where}: parameter '{name}': a choice is listed twice")
            return Param(name, kind, None, choices=groups, labels=labels, when=when)
        if any(isinstance(c, (Mapping, list)) for c in choices):
            raise ConfigError(f"{where}: parameter '{name}': choices must all be plain values or all mappings")
        key = raw.get("key", name)
        _check_override_keys({key: None}, lambda k: f"{where}: parameter '{name}'")
        choices = [parse_value(c) if isinstance(c, str) and re.fullmatch(r"[-+]?[0-9.]+[eE][-+]?[0-9]+", c)
                   else c for c in choices]
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: parameter '{name}': a choice is listed twice")
        return Param(name, kind, key, choices=tuple(choices), when=when)

    key = raw.get("key", name)
    _check_override_keys({key: None}, lambda k: f"{where}: parameter '{name}'")
    if "low" not in raw or "high" not in raw:
        raise ConfigError(f"{where}: parameter '{name}': {kind} needs 'low' and 'high'")
    low, high = _number(raw["low"], "low", where), _number(raw["high"], "high", where)
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: parameter '{name}': 'log' must be true or false")
    step = raw.get("step")
    if step is not None:
        step = _number(step, "step", where)
        if step <= 0 or log:
            raise ConfigError(f"{where}: parameter '{name}': 'step' must be > 0 and cannot be combined with log")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise ConfigError(f"{where}: parameter '{name}': int bounds must be whole numbers, got {low}, {high}")
    if not low < high:
        raise ConfigError(f"{where}: parameter '{name}': needs low < high, got low={low}, high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: parameter '{name}': a log scale needs low > 0, got {low}")
    return Param(name, kind, key, low=float(low), high=float(high), log=log, step=step, when=when)


class _ProbeTrial:
    """Stands in for an Optuna trial when checking a space: categoricals as scripted (or random),
    numbers at an extreme (or random)."""

    def __init__(self, rng: random.Random, picks: Optional[dict] = None, extreme: Optional[str] = None):
        self.rng, self.picks, self.extreme = rng, picks or {}, extreme

    def suggest_float(self, name, low, high, log=False, step=None):
        if self.extreme:
            return low if self.extreme == "low" else high
        return math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high)

    def suggest_int(self, name, low, high, log=False, step=1):
        if self.extreme:
            return low if self.extreme == "low" else high
        return self.rng.randrange(low, high + 1, step)

    def suggest_categorical(self, name, choices):
        choices = list(choices)
        return choices[self.picks[name]] if name in self.picks else self.rng.choice(choices)


def _check_space(spec: SearchSpec, lines: _Lines) -> None:
    """Every combination a small space can produce (numbers at both extremes), plus a random sample,
    must be a valid config; the error names the parameter and the values."""
    base_flat = spec.base.flat()
    rng = random.Random(0)
    categorical = [p for p in spec.params if p.type == "categorical"]
    probes: list[_ProbeTrial] = []
    if math.prod(len(p.choices) for p in categorical) <= 2000:
        for combo in itertools.product(*[range(len(p.choices)) for p in categorical]):
            picks = dict(zip([p.name for p in categorical], combo))
            probes += [_ProbeTrial(rng, picks, "low"), _ProbeTrial(rng, picks, "high")]
    probes += [_ProbeTrial(rng) for _ in range(200)]
    for probe in probes:
        over = define_by_run(probe, spec.params, base_flat, {})["trial"]["overrides"]
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
    path, text, data, lines = _load(path)
    _check_keys(data, _SEARCH_KEYS, "", lines)
    name = check_sweep_name(data.get("name", path.stem), lines.at("name"))
    cli = dict(overrides) if isinstance(overrides, Mapping) else parse_cli_overrides(overrides)
    base_over = {**_dataset_overrides(data.get("dataset"), lines.at("dataset")),
                 **flatten_overrides(data.get("base"), lines.at("base"))}
    if "seed" in data:
        base_over["seed"] = _int(data["seed"], "seed", lines.at("seed"))
    base_over = _coerce_numbers(base_over)
    _check_override_keys(base_over, lambda key: lines.at("base", key) if ("base", key) in lines.lines
                         else lines.at("dataset"))
    base = _base_config(base_over, {}, cli, lines)

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
    _check_keys(asha_raw, _ASHA_KEYS, "asha", lines, "asha")
    asha = AshaSettings(metric=asha_raw.get("metric", "dev_wf1"),
                        grace_period=_int(asha_raw.get("grace_period", 1), "asha.grace_period", lines.at("asha"), 1),
                        reduction_factor=_number(asha_raw.get("reduction_factor", 3), "asha.reduction_factor",
                                                 lines.at("asha")),
                        max_t=_int(asha_raw.get("max_t", 0), "asha.max_t", lines.at("asha")))
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
    budget = _number(data.get("time_budget_s", 0) or 0, "time_budget_s", lines.at("time_budget_s"))
    if budget < 0:
        raise ConfigError(f"{lines.at('time_budget_s')}: 'time_budget_s' must be >= 0 (0 = no budget)")

    spec = SearchSpec(
        path=path, text=text, name=name, description=str(data.get("description", "") or ""),
        base_overrides={**base_over, **cli}, base=base, cli_overrides=cli, metric=metric, mode=mode,
        num_samples=_int(data.get("num_samples", 10), "num_samples", lines.at("num_samples"), 1),
        max_concurrent=_int(data.get("max_concurrent", 0), "max_concurrent", lines.at("max_concurrent")),
        max_failures=_int(data.get("max_failures", 2), "max_failures", lines.at("max_failures")),
        time_budget_s=float(budget), resources=_resources(data.get("resources"), "", lines),
        sampler_seed=_int(data.get("sampler_seed", 0), "sampler_seed", lines.at("sampler_seed")),
        asha=asha, params=params)
    _check_space(spec, lines)
    return spec


def load_spec(path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()):
    """An ablation or a search space, told apart by their keys."""
    data = read_yaml(path)
    if isinstance(data, dict) and "params" in data:
        return load_search_space(path, overrides)
    return load_ablation(path, overrides)
