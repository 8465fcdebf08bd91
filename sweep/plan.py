"""What a sweep will run, built per spec kind: trial settings, the plan (trial identities), parent tags.

    plan = engine.prepare("ablate", "ablations/demo.yaml", [], SweepOptions())
    plan.trial_settings[0]["identity"], plan.exp_name, plan.parent_tags["plan_key"]

An ablation's plan is known before it runs (every variant x seed, `ablation_plan`); a search's trials
are proposed while it runs, so its plan is its spec, data and code (`search_plan` and the plan key).
"""
from __future__ import annotations

import hashlib
import json
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from core.config import ConfigError
from sweep.identity import plan_tags, trial_identity
from sweep.ablation_spec import AblationSpec
from sweep.search_space import SearchSpec, check_seeds
from sweep.trainable import trial_config


def stage1_first_order(plans: list) -> list:
    """Launch order: one trial of each distinct stage-1 config first (round robin), so concurrent
    trials compute different stage-1 entries instead of queueing on one cache lock."""
    groups: dict[str, list] = {}
    for plan in plans:
        groups.setdefault(plan.cfg.stage1_hash(), []).append(plan)
    order = []
    for rank in range(max(len(g) for g in groups.values())):
        order += [g[rank] for g in groups.values() if rank < len(g)]
    return order


def data_key(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)


@dataclass
class SweepPlan:
    """Everything validated, ready to run. Each spec kind builds its own part (`ablation_plan`, `search_plan`)."""
    spec: Any                               # AblationSpec | SearchSpec
    kind: str
    output: Path
    tracking_uri: str
    cache_dir: Path
    resources: Any
    max_concurrent: int
    max_failures: int
    trial_settings: list[dict]              # ablate: one per variant x seed, each with its `identity`
    plan_key: str                           # names the Ray experiment: same plan (and store) -> resume it
    parent_tags: dict[str, str]
    data_info: dict[str, dict]
    code: str                               # code fingerprint (sweep.identity)
    notes: list[str]

    @property
    def exp_name(self) -> str:
        # Ray stages driver files under /tmp/ray/session_*/artifacts/<start second>/<this name>, so two sweeps
        # started in the same second on one cluster must not share it: the sweep name and the output
        # directory are part of it (the same plan in two outputs would otherwise swap trials).
        output = hashlib.sha256(str(Path(self.output).resolve()).encode()).hexdigest()[:6]
        return f"{self.spec.name}-{self.kind}-{self.plan_key}-{output}"

    @property
    def identities(self) -> list[str]:
        return [s["identity"] for s in self.trial_settings]


def ablation_plan(spec: AblationSpec, data: dict, common: dict,
                  device_type=lambda cfg: "cpu") -> tuple[list[dict], list[str], dict[str, str]]:
    """Trial settings (launch order), the plan (identities) and parent tags of an ablation;
    `device_type(cfg)` is the kind of device each trial runs on (part of its identity)."""
    plans = spec.trials()
    base = spec.base.to_dict()
    settings = []
    for p in stage1_first_order(plans):
        info = data[data_key(p.cfg)]
        settings.append({**common, "variant": p.variant, "slug": f"{p.slug}-s{p.seed}",
                         "run_name": f"{p.variant} s{p.seed}", "seed": p.seed, "base": base,
                         "overrides": p.overrides, "data": info, "config_hash": p.config_hash,
                         "device_type": device_type(p.cfg),
                         "identity": trial_identity(p.cfg, info["fingerprint"], common["code_fingerprint"],
                                                    device_type(p.cfg))})
    for s in settings:  # the trainable rebuilds each config from base + overrides: it must be the same one
        if trial_config({"trial": s}).content_hash() != s["config_hash"]:
            raise AssertionError(f"trial settings do not reproduce the config of {s['run_name']}")
    identities = [s["identity"] for s in settings]
    tags = {"dataset": spec.base.data.name, "variants": json.dumps([v.name for v in spec.variants]),
            "seeds": json.dumps(spec.seeds), "baseline": spec.baseline, "stage1_seed_mode": spec.stage1_seed_mode,
            "selection_rule": ",".join(sorted({p.cfg.train.select_on for p in plans})),
            "expectations": json.dumps(spec.expectations), **plan_tags(identities)}
    return settings, identities, tags


def search_plan(spec: SearchSpec, num_samples: Optional[int], time_budget: Optional[float],
                seeds: Optional[int] = None, seed_objective: Optional[str] = None) -> dict[str, str]:
    """Parent tags of an Optuna search (its trials are proposed while it runs; the plan is its spec)."""
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}")
        spec.seeds = seeds
    if seed_objective is not None:
        spec.seed_objective = seed_objective
    check_seeds(spec)
    if num_samples is not None:
        if num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
        spec.num_samples = num_samples
    if time_budget is not None:
        if time_budget < 0:
            raise ConfigError(f"--time-budget must be >= 0 seconds, got {time_budget}")
        spec.time_budget_s = float(time_budget)
    bad = [k for k in spec.searched_keys if k.startswith("data.")]
    if bad:
        raise ConfigError(f"{spec.path}: a search space may not search data.* keys ({', '.join(bad)}): "
                          f"the dataset is fixed for a search")
    return {"dataset": spec.base.data.name, "variants": json.dumps([]), "seeds": json.dumps(spec.trial_seeds),
            "seeds_per_trial": str(spec.seeds), "seed_objective": spec.seed_objective, "objective": spec.objective,
            "baseline": "", "metric": spec.metric, "mode": spec.mode, "selection_rule": spec.base.train.select_on,
            "stage1_seed_mode": "shared" if spec.base.stage1.shared_seed >= 0 else "per-seed",
            "search_params": json.dumps(spec.searched_keys), "num_samples": str(spec.num_samples)}
