"""Seed bundles in a sweep: one Ray trial trains k seeds of a variant; MLflow still sees k trials.

    trials = bundle_trials(pending, size=3)        # per-seed settings -> bundle settings (and leftovers)
    for member_id, member_config in members(trial_id, ray_config): ...

A bundle trial's settings are the first member's, plus `members` (the k per-seed settings, each as the
plan made it: its identity, seed, run name and stage-1 link) and a slug and run name of its own. Every
seed keeps what a trial of its own has: its member trial id (`<ray trial id>-s<seed>`), MLflow child
run, identity, metrics, predictions and selected epoch. The bundle's checkpoint holds the whole bundle
(state.pt) and one history and predictions file per seed (`member_file`). A result carries each seed's
metrics under `s<seed>/` and, under the plain keys, their mean over the seeds still training (what the
progress line and a scheduler read). A seed that diverges reports `s<seed>/failed`: its run becomes
FAILED with its reason, and the other seeds go on.

Grouping: seeds of one variant (same overrides) still to train, in plan order, k at a time; a group of
one stays an ordinary trial. Seeds already final in MLflow were dropped before (dedup), so a rerun
bundles only what is left.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

MEMBERS = "members"
FAILED_KEY = "failed"
BUNDLE_ID = "bundle_trial_id"   # in a member's settings: its bundle's Ray trial id (MLflow tag `bundle_trial`)
BUNDLE_LIMIT = 8          # `auto` bundles every seed of a variant, at most this many (the benchmarked range)


def member_prefix(seed: int) -> str:
    return f"s{seed}/"


def member_file(name: str, seed: Optional[int]) -> str:
    """history.json -> history-s3.json for seed 3 of a bundle (the name itself for a plain trial)."""
    if seed is None:
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-s{seed}{dot}{ext}" if dot else f"{name}-s{seed}"


def bundle_size(value, seeds: int) -> int:
    """The spec's seed_bundle (an int or 'auto') as a bundle size; 1 = no bundles."""
    if value == "auto":
        return max(1, min(seeds, BUNDLE_LIMIT))
    return int(value)


def bundle_trials(pending: list[dict], size: int) -> list[dict]:
    """Per-seed trial settings -> trial settings of bundles of at most `size` seeds (same variant)."""
    if size <= 1:
        return list(pending)
    groups: dict[str, list[dict]] = {}
    for settings in pending:
        if settings.get("base", {}).get("fusion", {}).get("mode", "anchor") == "anchor" and \
                (settings.get("overrides") or {}).get("fusion.mode", "anchor") == "anchor":
            groups.setdefault(settings["variant"], []).append(settings)
        # else: only the anchor model is bundled (model/seed_bundle.py: bundle_supported)
    chunk_of: dict[int, list[dict]] = {}   # id(settings) -> its chunk
    for group in groups.values():
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            chunk_of.update({id(s): chunk for s in chunk})
    out = []
    for settings in pending:   # launch order: a bundle where its first seed was
        chunk = chunk_of.get(id(settings), [settings])
        if chunk[0] is settings:
            out.append(settings if len(chunk) == 1 else _bundle(chunk))
    return out


def _bundle(chunk: list[dict]) -> dict:
    seeds = [s["seed"] for s in chunk]
    first = chunk[0]
    base_slug = first["slug"].rsplit("-s", 1)[0]
    return {**first, MEMBERS: [dict(s) for s in chunk], "slug": f"{base_slug}-b{'-'.join(map(str, seeds))}",
            "run_name": f"{first['variant']} s{','.join(map(str, seeds))} (bundle)",
            "identity": "bundle:" + ",".join(s["identity"] for s in chunk)}


def is_bundle(config: dict) -> bool:
    return bool((config.get("trial") or {}).get(MEMBERS))


def members(trial_id: str, config: dict) -> list[tuple[str, dict, Optional[int]]]:
    """(member trial id, Ray config of that member alone, seed or None) for each seed a trial trains."""
    if not is_bundle(config):
        return [(trial_id, config, None)]
    return [(f"{trial_id}-s{m['seed']}", {**config, "trial": {**m, BUNDLE_ID: trial_id}}, int(m["seed"]))
            for m in config["trial"][MEMBERS]]


def member_result(result: dict, seed: Optional[int]) -> dict:
    """One seed's metrics out of a bundle result (a plain trial's result as it is)."""
    if seed is None:
        return dict(result)
    prefix = member_prefix(seed)
    own = {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}
    if own and "epoch" not in own and "epoch" in result:
        own["epoch"] = result["epoch"]
    return own


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value: one seed shows no spread)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def robust_key(metric: str, mode: str) -> str:
    """The result key of a search's pessimistic seed objective: mean - std for a maximised metric, mean + std
    for a minimised one (`tune --seed-objective mean-std`)."""
    return f"{metric}_mean_minus_std" if mode == "max" else f"{metric}_mean_plus_std"


def seed_summary(key: str, values: list[float]) -> dict[str, float]:
    """{key: mean, key_std, key_mean_minus_std, key_mean_plus_std} over the seeds' finite values ({} if none)."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return {}
    mean, std = mean_std(values)
    return {key: mean, f"{key}_std": std, robust_key(key, "max"): mean - std, robust_key(key, "min"): mean + std}


def bundle_result(epoch: int, per_seed: dict[int, dict], failures: dict[int, str],
                  metric_keys: Iterable[str]) -> dict:
    """The result a bundle reports: every seed's metrics under s<seed>/; under the plain keys their mean over
    the seeds still training, with `_std` (sample std) and the mean -/+ one std beside it (what a search's
    objective, a scheduler and the progress line read); a failed seed's failure (once, in the epoch it
    failed); `failed` itself once no seed is left training."""
    result: dict = {"epoch": float(epoch)}
    for seed, metrics in per_seed.items():
        result.update({member_prefix(seed) + k: v for k, v in metrics.items()})
    for seed, reason in failures.items():
        result.update({member_prefix(seed) + FAILED_KEY: 1.0, member_prefix(seed) + "failure_reason": reason,
                       member_prefix(seed) + "epoch": float(epoch)})
    for key in metric_keys:
        result.update(seed_summary(key, [m.get(key) for m in per_seed.values()]))
    if per_seed:
        result["seeds_training"] = float(len(per_seed))
    elif failures:   # every seed has failed: the bundle as a whole (a search tells Optuna FAIL)
        result[FAILED_KEY] = 1.0
        result["failure_reason"] = "; ".join(f"seed {s}: {r}" for s, r in sorted(failures.items()))[:2000]
    return result


def seed_groups(runs: list, tags_of) -> list[list]:
    """Runs grouped by the bundle that trained them (tag `bundle_trial`), in first-seen order; a run of
    no bundle is a group of one. `tags_of(run)` gives a run's tags."""
    groups: dict[str, list] = {}
    for i, run in enumerate(runs):
        groups.setdefault(tags_of(run).get("bundle_trial") or f"\0{i}", []).append(run)
    return list(groups.values())
