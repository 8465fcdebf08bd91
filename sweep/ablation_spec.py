"""Ablation specs (`ablations/*.yaml`): variants x seeds, every trial's config resolved and validated.

    spec = load_ablation("ablations/demo.yaml", overrides=["train.epochs=2"])
    [(t.variant, t.seed, t.cfg.content_hash()) for t in spec.trials()]

An ablation file (see ablations/demo.yaml):
    name: demo                      # sweep name = MLflow experiment = OUTPUT/ray/<name>; a plain slug
    dataset: {name: synthetic}      # data.* keys (or just a dataset name)
    base: {train.epochs: 6}         # dotted config keys for every variant
    variants:                       # table order; the first is the baseline
      full: {}
      w/o prompt: {stage1.prompt: false}
    seeds: [0, 1]
    resources: {cpu: 1, gpu: 0.5}   # per trial; fractional GPUs are shared
                                    # (+ stage1: {cpu: 1, gpu: 1}: per stage-1 task; default = a trial's)
    max_concurrent: 2               # 0 = as many as the resources allow
    max_failures: 2                 # retries of a crashed trial, from its last checkpoint
    stage1_seed: per-seed           # or shared (+ stage1_shared_seed: N): every seed reuses one stage 1

Everything is checked here, before Ray starts: YAML syntax (file and line), unknown top-level keys, every
override key of every variant against `core.config` (with the closest valid key suggested), value types
and ranges through the config's own validation, and names that become paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from core.config import MAGTKDConfig, ConfigError, absolute_path_overrides
from sweep.spec_common import (Resources, base_config, check_int, check_override_keys, check_sweep_name,
                               check_variant_name, coerce_numbers, dataset_overrides, flatten_overrides,
                               parse_cli_overrides, replace_checked, resources_from, short_hash, slugify)
from sweep.yaml_lines import check_keys, load_yaml_mapping

_ABLATION_KEYS = ("name", "description", "dataset", "base", "variants", "seeds", "resources", "max_concurrent",
                  "max_failures", "stage1_seed", "stage1_shared_seed")


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
                cfg = replace_checked(self.base, {**v.overrides, **extra}, where)
                cfg = replace_checked(cfg, self.cli_overrides, "<command line>")  # the command line has the last word
                overrides = {**v.overrides, **{k: x for k, x in extra.items() if k != "seed"}, **self.cli_overrides}
                out.append(TrialPlan(v.name, v.slug, seed, overrides, cfg))
        return out

    def plan_key(self, trials: Optional[list[TrialPlan]] = None) -> str:
        """Identifies what this sweep computes: the same command gives the same key (and resumes)."""
        trials = trials if trials is not None else self.trials()
        return short_hash([[t.variant, t.seed, t.config_hash] for t in trials])


def load_ablation(path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = (),
                  extra_base: Optional[Mapping[str, Any]] = None) -> AblationSpec:
    """Load and validate an ablation spec; `overrides` are command-line dotted overrides and
    `extra_base` (e.g. the best config of a tune sweep) sits between the spec's base and its variants."""
    path, text, data, lines = load_yaml_mapping(path)
    check_keys(data, _ABLATION_KEYS, "", lines)
    name = check_sweep_name(data.get("name", path.stem), lines.at("name"))
    cli = dict(overrides) if isinstance(overrides, Mapping) else parse_cli_overrides(overrides)

    base_over = {**dataset_overrides(data.get("dataset"), lines.at("dataset")),
                 **flatten_overrides(data.get("base"), lines.at("base"))}
    base_over = coerce_numbers(base_over)
    check_override_keys(base_over, lambda key: lines.at("base", key) if ("base", key) in lines.lines
                         else lines.at("dataset"))
    base = base_config(base_over, dict(extra_base or {}), cli, lines)

    raw_variants = data.get("variants")
    if not isinstance(raw_variants, Mapping) or not raw_variants:
        raise ConfigError(f"{lines.at('variants')}: 'variants' must be a non-empty mapping of variant name -> "
                          f"overrides, in table order (the first is the baseline)")
    variants, slugs = [], {}
    for vname, vover in raw_variants.items():
        where = lines.at("variants", vname)
        check_variant_name(vname, where)
        over = coerce_numbers(flatten_overrides(vover, f"{where}: variant '{vname}'"))
        over.update(absolute_path_overrides(over, must_exist=False))
        check_override_keys(over, lambda key, v=vname: f"{lines.at('variants', v, key)}: variant '{v}'")
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
    shared_seed = check_int(data.get("stage1_shared_seed", seeds[0]), "stage1_shared_seed", lines.at("stage1_shared_seed"))
    if mode == "per-seed" and base.stage1.shared_seed >= 0:
        mode, shared_seed = "shared", base.stage1.shared_seed  # set through the base overrides instead

    spec = AblationSpec(
        path=path, text=text, name=name, description=str(data.get("description", "") or ""),
        base_overrides={**base_over, **dict(extra_base or {}), **cli}, base=base, cli_overrides=cli,
        variants=variants, seeds=list(seeds),
        resources=resources_from(data.get("resources"), "", lines),
        max_concurrent=check_int(data.get("max_concurrent", 0), "max_concurrent", lines.at("max_concurrent")),
        max_failures=check_int(data.get("max_failures", 2), "max_failures", lines.at("max_failures")),
        stage1_seed_mode=mode, stage1_shared_seed=shared_seed)
    spec.trials()  # validates every variant x seed now, before anything starts
    return spec
