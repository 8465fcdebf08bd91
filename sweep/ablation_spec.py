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
    seed_bundle: auto               # optional: train up to k seeds of a variant as one batched model (an int
                                    # k >= 1, or auto = all its seeds, at most 8); each seed stays its own run
    expectations:                   # optional: what each row must show, written before the first run
      metric: test_wf1              # the metric they are about (default); the report checks them on it only
      equivalence_margin: 0.05      # for `equivalent` rows, in the metric's units (0.05 = 5 points), at most 0.2
      rows:
        w/o prompt: {must: below, why: "E4: replies are named only by the turn before"}
        T+A: {must: equivalent, why: "E3: video is noise"}
    The report states each row's expectation and whether this run met it (reports/table.py).

Everything is checked here, before Ray starts: YAML syntax (file and line), unknown top-level keys, every
override key of every variant against `core.config` (with the closest valid key suggested), value types
and ranges through the config's own validation, and names that become paths.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from core.config import MAX_SEED, MAGTKDConfig, ConfigError, absolute_path_overrides
from sweep.spec_common import (Resources, base_config, check_int, check_override_keys, check_sweep_name,
                               check_variant_name, coerce_numbers, dataset_overrides, flatten_overrides,
                               parse_cli_overrides, replace_checked, resources_from, short_hash, slugify)
from sweep.seed_members import bundle_size
from sweep.yaml_lines import check_keys, load_yaml_mapping

_ABLATION_KEYS = ("name", "description", "dataset", "base", "variants", "seeds", "resources", "max_concurrent",
                  "max_failures", "stage1_seed", "stage1_shared_seed", "expectations", "seed_bundle")
MUST = ("below", "equivalent")      # significantly below the baseline (Holm) | equivalent within +-margin (TOST, Holm)
EXPECTATIONS_CHARS = 6000           # they travel as one MLflow tag (8000 characters at most)


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
    # {"metric": key, "equivalence_margin": m, "rows": {variant: {"must": "below"|"equivalent", "why": text}}};
    # {} when none
    expectations: dict = field(default_factory=dict)
    seed_bundle: int = 1               # seeds of a variant trained as one bundle (sweep/seed_members.py); 1 = off

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
    if "seed" in cli:
        raise ConfigError(f"<command line>: 'seed={cli['seed']}' cannot be set for an ablation: its seeds are the "
                          f"spec's 'seeds' list ({lines.at('seeds')}); edit that list instead")

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
        if "seed" in over:
            raise ConfigError(f"{lines.at('variants', vname, 'seed')}: variant '{vname}' sets 'seed'; an ablation "
                              f"takes its seeds from the spec's 'seeds' list, for every variant")
        clash = sorted(set(over) & set(cli))
        if clash:
            print(f"note: the command line sets {', '.join(clash)}, which variant '{vname}' also sets; "
                  f"the command line wins")
        variants.append(Variant(vname, slug, over, where))

    seeds = check_seeds(data.get("seeds", [0]), len(variants), lines.at("seeds"))

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
        stage1_seed_mode=mode, stage1_shared_seed=shared_seed,
        expectations=_expectations(data.get("expectations"), [v.name for v in variants], lines),
        seed_bundle=_seed_bundle(data.get("seed_bundle", 1), len(seeds), lines.at("seed_bundle")))
    spec.trials()  # validates every variant x seed now, before anything starts
    return spec


MAX_SEEDS = 1000                    # more is a typo (seeds: 20000 validated for minutes, then never ran)
MAX_TRIALS = 5000                   # variants x seeds; validation alone takes about 10 ms per trial


def check_seeds(seeds: Any, variants: int, where: str) -> list[int]:
    """The spec's `seeds`: distinct integers in [0, 2**64) (torch.manual_seed's range), at most MAX_SEEDS,
    and at most MAX_TRIALS trials with the variants; checked before any trial's config is built."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or
                                                       not 0 <= s < MAX_SEED for s in seeds):
        shown = seeds if not isinstance(seeds, list) or len(seeds) <= 20 else f"{seeds[:20]} ..."
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers in [0, 2**64) (torch.manual_seed's "
                          f"range), got {shown!r}")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"{where}: 'seeds' lists {len(seeds)} seeds; at most {MAX_SEEDS} are accepted "
                          f"(every seed trains every variant once)")
    if len(seeds) * variants > MAX_TRIALS:
        raise ConfigError(f"{where}: {len(seeds)} seeds x {variants} variants = {len(seeds) * variants} trials; at "
                          f"most {MAX_TRIALS} are accepted in one ablation: split it into several")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: 'seeds' lists a seed twice: {seeds}")
    return seeds

def _seed_bundle(value, seeds: int, where: str) -> int:
    """`seed_bundle`: an int >= 1 or auto -> the bundle size (1 = every seed its own trial)."""
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{where}: 'seed_bundle' must be an integer >= 1 (seeds of a variant trained as one "
                          f"batched model) or auto, got {value!r}")
    return bundle_size(value, seeds)


EXPECTATION_METRICS = ("test_wf1", "test_acc", "test_mf1", "dev_wf1", "dev_acc", "dev_mf1")
MAX_MARGIN = 0.2                    # a wider margin on a metric in [0, 1] makes `equivalent` close to automatic


def _expectations(raw, variants: list[str], lines) -> dict:
    """The spec's `expectations`, checked: known rows (not the baseline), a known `must`, a reason, a margin."""
    if raw is None:
        return {}
    where = lines.at("expectations")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: 'expectations' must be a mapping with 'rows' (and 'equivalence_margin')")
    check_keys(raw, ("metric", "equivalence_margin", "rows"), "expectations", lines, "expectations")
    rows = raw.get("rows")
    if not isinstance(rows, Mapping) or not rows:
        raise ConfigError(f"{lines.at('expectations', 'rows')}: 'expectations.rows' must map variant names to "
                          f"{{must: {' | '.join(MUST)}, why: ...}}")
    metric = raw.get("metric", "test_wf1")
    if metric not in EXPECTATION_METRICS:
        raise ConfigError(f"{lines.at('expectations', 'metric')}: expectations.metric must be one of "
                          f"{', '.join(EXPECTATION_METRICS)}, got {metric!r}")
    out: dict[str, dict] = {}
    for variant, row in rows.items():
        at = lines.at("expectations", "rows", variant)
        if variant not in variants:
            raise ConfigError(f"{at}: expectations.rows names '{variant}', which is not a variant; variants: "
                              f"{', '.join(variants)}")
        if variant == variants[0]:
            raise ConfigError(f"{at}: '{variant}' is the baseline; an expectation is about a row against it")
        if not isinstance(row, Mapping):
            raise ConfigError(f"{at}: expectations.rows.{variant} must be {{must: ..., why: ...}}, got {row!r}")
        check_keys(row, ("must", "why"), f"expectations.rows.{variant}", lines, "expectations", "rows", variant)
        must, why = row.get("must"), row.get("why")
        if must not in MUST:
            raise ConfigError(f"{lines.at('expectations', 'rows', variant, 'must')}: expectations.rows.{variant}.must "
                              f"must be one of {', '.join(MUST)}, got {must!r}")
        if not isinstance(why, str) or not why.strip():
            raise ConfigError(f"{at}: expectations.rows.{variant} needs 'why': the mechanism that makes this the "
                              f"right answer, written before the run")
        out[variant] = {"must": must, "why": " ".join(why.split())}
    margin = raw.get("equivalence_margin")
    equivalent = [v for v, r in out.items() if r["must"] == "equivalent"]
    margin_at = lines.at("expectations", "equivalence_margin")
    if margin is not None and not equivalent:
        raise ConfigError(f"{margin_at}: expectations.equivalence_margin is given but no row is 'equivalent'")
    if equivalent and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                       or not 0 < margin <= MAX_MARGIN):
        raise ConfigError(f"{margin_at}: 'equivalent' rows ({', '.join(equivalent)}) need "
                          f"expectations.equivalence_margin, a number in (0, {MAX_MARGIN}] in the metric's units "
                          f"(0.05 = 5 points), got {margin!r}")
    result = {"metric": metric, "equivalence_margin": float(margin) if margin is not None else None, "rows": out}
    if len(json.dumps(result)) > EXPECTATIONS_CHARS:
        raise ConfigError(f"{where}: the expectations take {len(json.dumps(result))} characters as JSON; keep them "
                          f"under {EXPECTATIONS_CHARS} (they are stored as one MLflow tag): shorten the 'why' texts")
    return result
