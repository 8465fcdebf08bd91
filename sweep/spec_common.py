"""What ablation specs and search spaces share: names that become paths, dotted overrides (from a spec,
the command line or a tune sweep's best) checked against the config, resources, and number checks.
Errors name the file and line (sweep/yaml_lines.py) and suggest the closest valid key."""
from __future__ import annotations

import hashlib
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from core.config import (ConfigError, MAGTKDConfig, absolute_path_overrides, default_config, parse_value,
                         unknown_key_message, valid_keys)
from sweep.yaml_lines import YamlLines, check_keys

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


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


def check_override_keys(overrides: Mapping[str, Any], where_of) -> None:
    """Every key must be a config key; the message names the file:line and suggests the closest key."""
    keys = set(valid_keys() + ["seed"])
    for key in overrides:
        if key not in keys:
            raise ConfigError(f"{where_of(key)}: {unknown_key_message(key)}")


def coerce_numbers(overrides: Mapping[str, Any]) -> dict[str, Any]:
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
    check_override_keys(out, lambda key: "<command line>")
    return out


def replace_checked(cfg: MAGTKDConfig, overrides: Mapping[str, Any], where: str) -> MAGTKDConfig:
    return cfg.replace(dict(overrides), source=where) if overrides else cfg


def base_config(base_over: dict, extra: dict, cli: dict, lines: "YamlLines") -> MAGTKDConfig:
    """Defaults + the spec's dataset/base + extra (a tune sweep's best) + the command line, validated
    together: a key required by the spec (data.path for MELD) may come from the command line.
    File paths in base_over and cli are made absolute in place (trials run in their own directories)."""
    for over in (base_over, cli):
        over.update(absolute_path_overrides(over, must_exist=False))
    parts = ["base"] + (["the best config of the tune sweep"] if extra else []) + (["the command line"] if cli else [])
    return replace_checked(default_config(), {**base_over, **extra, **cli}, f"{lines.at('base')}: {' + '.join(parts)}")


def dataset_overrides(value: Any, where: str) -> dict[str, Any]:
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
    # What one stage-1 task asks for (resources.stage1, e.g. a whole GPU while stage-2 trials share one);
    # None = the same as a trial.
    stage1: Optional["Resources"] = None

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu}


def resources_from(value: Any, where: str, lines: YamlLines) -> Resources:
    if value is None:
        return Resources()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{lines.at('resources')}: 'resources' must be a mapping like {{cpu: 1, gpu: 0.5}}")
    check_keys(value, ("cpu", "gpu", "stage1"), "resources", lines, "resources")
    trial = check_resources(value.get("cpu", 1.0), value.get("gpu", 0.0), lines.at("resources"))
    stage1 = value.get("stage1")
    if stage1 is None:
        return trial
    where = lines.at("resources", "stage1")
    if not isinstance(stage1, Mapping):
        raise ConfigError(f"{where}: 'resources.stage1' must be a mapping like {{cpu: 1, gpu: 1}}")
    check_keys(stage1, ("cpu", "gpu"), "resources.stage1", lines, "resources", "stage1")
    own = check_resources(stage1.get("cpu", trial.cpu), stage1.get("gpu", trial.gpu), where, "resources.stage1")
    return dataclasses.replace(trial, stage1=own)


# Ray keeps resource amounts as fixed-point numbers with four decimals: 0.00001 CPU is refused by Ray only
# once the trial is scheduled, after Ray started.
RAY_RESOURCE_DECIMALS = 4


def check_resources(cpu: Any, gpu: Any, where: str, key: str = "resources") -> Resources:
    for name, v in (("cpu", cpu), ("gpu", gpu)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{where}: {key}.{name} must be a finite number >= 0, got {v!r}")
        scaled = v * 10 ** RAY_RESOURCE_DECIMALS
        if abs(scaled - round(scaled)) > 1e-6 * max(1.0, scaled):
            raise ConfigError(f"{where}: {key}.{name} = {v!r} has more than {RAY_RESOURCE_DECIMALS} decimals; Ray "
                              f"counts resources in steps of 0.0001 (e.g. 0.25 or 0.0001)")
    if cpu <= 0:
        raise ConfigError(f"{where}: {key}.cpu must be > 0 (fractions such as 0.5 are fine)")
    if gpu > 1 and float(gpu) != int(gpu):
        raise ConfigError(f"{where}: {key}.gpu above 1 must be a whole number (Ray shares GPUs only "
                          f"in fractions of one), got {gpu}")
    return Resources(float(cpu), float(gpu))


def check_int(value: Any, key: str, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def check_number(value: Any, key: str, where: str) -> float:
    value = parse_value(value) if isinstance(value, str) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return value


def short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
