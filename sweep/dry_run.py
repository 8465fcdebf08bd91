"""`--dry-run`: every check that needs no training, all problems at once, then the plan.

    python run_sweep.py ablate ablations/magtkd.yaml data.path=/data/MELD.Raw --dry-run

Starts no Ray (with --address it only asks that cluster for its size) and writes nothing: the output
directory, the MLflow store and the cache are only looked at. Exit code 2 with every problem listed, or
0 with the plan: the trials, the stage-1 entries (in the cache or to compute), the encoders of every
modality, the data and how much media they carry, the resources of a trial and of a stage-1 task, how
many run at once, and where everything will be written.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from sweep.engine import Problems, Refused, SweepOptions, SweepOutcome, local_gpus, prepare
from sweep.kinds import sweep_kind
from sweep.plan import SweepPlan
from sweep.ray_start import cluster_address


def dry_run(kind: str, spec_path, overrides: Sequence[str], opts: SweepOptions) -> SweepOutcome:
    started = time.perf_counter()
    problems = Problems()
    try:
        plan = prepare(kind, spec_path, overrides, opts, problems)
    except Refused:
        plan = None
    name = plan.spec.name if plan is not None else Path(str(spec_path)).stem
    if problems.errors:
        n = len(problems.errors)
        print(f"dry run of {spec_path}: {n} problem{'s' if n > 1 else ''}; nothing was started or written "
              f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        for i, err in enumerate(problems.errors, 1):
            print(f"  {i}. {err}", file=sys.stderr)
        return SweepOutcome(name, kind, "refused", output=Path(opts.output))
    print(describe_plan(plan, opts))
    print(f"dry run: no problems found in {time.perf_counter() - started:.1f} s; nothing was started or written. "
          f"Run the same command without --dry-run to launch it.")
    return SweepOutcome(name, kind, "planned", output=plan.output, tracking_uri=plan.tracking_uri)


def describe_plan(plan: SweepPlan, opts: SweepOptions) -> str:
    """The plan in plain lines (see the module docstring)."""
    from model.encoder_ids import describe_encoders
    from sweep.trainable import trial_config

    spec, kind = plan.spec, sweep_kind(plan.kind)
    lines = [f"plan of sweep '{spec.name}' ({plan.kind}, {spec.path})", kind.describe_trials(plan)]
    lines += _stage1_lines(plan, kind.planned_stage1(plan))
    cfgs = [trial_config({"trial": s}) for s in plan.trial_settings] or kind.configs(spec)
    lines.append("  encoders:")
    for described in dict.fromkeys(json.dumps(describe_encoders(c.stage1)) for c in cfgs):
        users = [c for c in cfgs if json.dumps(describe_encoders(c.stage1)) == described]
        for modality, text in json.loads(described).items():
            lines.append(f"    {modality:5s} {text}")
        precisions = sorted({f"stage 1 {c.stage1.precision}, stage 2 {c.train.precision}" for c in users})
        lines.append(f"    precision: {'; '.join(precisions)}; device {', '.join(sorted({c.train.device for c in users}))}"
                     f"{' (deterministic)' if any(c.train.deterministic for c in users) else ''}")
    lines.append("  data:")
    for info in plan.data_info.values():
        lines.append(f"    {info['name']} from {info['source'] or '(generated)'}; labels {', '.join(info['labels'])}; "
                     f"fingerprint {info['fingerprint']}"
                     f"{' (provisional: clips still to decode count by file path, size and mtime)' if info.get('fingerprint_provisional') else ''}")
        for split, counts in (info.get("coverage") or {}).items():
            n = counts.get("utterances", 0)
            media = ", ".join(f"{m} {counts.get(m, 0)}/{n}" for m in ("text", "audio", "video"))
            lines.append(f"      {split:5s} {n} utterances; {media}")
        if info.get("media_scan"):
            lines.append(f"      {info['media_scan']}")
    asked = sorted({m for c in cfgs for m in c.fusion.modalities})
    missing = [m for m in asked if all(m not in info["available"] for info in plan.data_info.values())]
    if missing:
        lines.append(f"    WARNING: fusion asks for {', '.join(missing)}, which the data do not carry: masked")
    lines += _resource_lines(plan, opts)
    lines += _output_lines(plan)
    return "\n".join(lines)


def _stage1_lines(plan: SweepPlan, settings: Optional[list[dict]]) -> list[str]:
    from sweep.stage1_plan import plan_entries

    if settings is None:
        return ["  stage 1: searched keys change it; each entry is computed by the first trial that needs it"]
    entries = plan_entries(settings)
    if not entries:
        return ["  stage 1: none (the data are the authors' released stage-1 features)"]
    cached = [k for k in entries if _in_cache(plan.cache_dir, k)]
    out = [f"  stage 1: {len(entries)} distinct entr{'y' if len(entries) == 1 else 'ies'}, {len(cached)} in the cache, "
           f"{len(entries) - len(cached)} to compute"]
    for key, entry in list(entries.items())[:12]:
        out.append(f"    {key} {'cached' if key in cached else 'to compute'}: used by {'; '.join(entry.users[:3])}"
                   f"{' +' + str(len(entry.users) - 3) if len(entry.users) > 3 else ''}")
    if len(entries) > 12:
        out.append(f"    ... and {len(entries) - 12} more")
    return out


def _in_cache(cache_dir: Path, key: str) -> bool:
    """Looked at only (no lock file is made): both files of the entry present."""
    return (Path(cache_dir) / f"{key}.safetensors").is_file() and (Path(cache_dir) / f"{key}.json").is_file()


def _resource_lines(plan: SweepPlan, opts: SweepOptions) -> list[str]:
    trial = plan.resources
    stage1 = trial.stage1 or trial
    address = cluster_address(opts.address)
    if address:
        cpus, gpus, where = _cluster_size(address)
    else:
        cpus = float(opts.num_cpus or os.cpu_count() or 1)
        gpus = local_gpus(opts) if (trial.gpu or stage1.gpu or opts.num_gpus) else 0.0
        where = f"this machine ({cpus:g} CPUs, {gpus:g} GPUs{' (--num-gpus)' if opts.num_gpus is not None else ''})"
    out = ["  resources:",
           f"    per trial: {trial.cpu:g} CPU + {trial.gpu:g} GPU; per stage-1 task: {stage1.cpu:g} CPU + "
           f"{stage1.gpu:g} GPU"]
    if cpus is None:
        out.append(f"    at once: unknown ({where})")
        return out
    trials = _fits(cpus, gpus, trial, plan.max_concurrent)
    tasks = _fits(cpus, gpus, stage1, plan.max_concurrent)
    cap = f" (--max-concurrent {plan.max_concurrent})" if plan.max_concurrent else ""
    out.append(f"    at once on {where}: {trials} trial(s), {tasks} stage-1 task(s){cap}")
    if trial.gpu and 0 < trial.gpu < 1:
        out.append(f"    each trial may use {trial.gpu:.0%} of its GPU's memory "
                   f"(torch.cuda.set_per_process_memory_fraction)")
    return out


def _fits(cpus: float, gpus: float, resources, cap: int) -> int:
    fits = [math.floor(cpus / resources.cpu + 1e-9)]
    if resources.gpu:
        fits.append(math.floor(gpus / resources.gpu + 1e-9))
    n = min(fits)
    return min(n, cap) if cap else n


def _cluster_size(address: str):
    """(CPUs, GPUs, words) of the cluster at `address`: joined as a client only for the question."""
    import ray

    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        total = ray.cluster_resources()
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
    except Exception as err:   # a dry run says what it could not learn
        return None, None, f"the cluster at {address} could not be asked ({type(err).__name__})"
    finally:
        if ray.is_initialized():
            ray.shutdown()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    return cpus, gpus, f"the cluster at {address} ({nodes} node(s), {cpus:g} CPUs, {gpus:g} GPUs)"


def _output_lines(plan: SweepPlan) -> list[str]:
    output = plan.output
    out = ["  writes:",
           f"    MLflow: {plan.tracking_uri} (experiment '{plan.spec.name}')",
           f"    Ray storage: {output / 'ray' / plan.spec.name / plan.exp_name}",
           f"    stage-1 cache: {plan.cache_dir}"]
    if plan.tracking_uri.startswith("sqlite:///"):
        out.append(f"    MLflow artifacts: {output / 'mlartifacts'}")
    out.append(f"    {sweep_kind(plan.kind).results_at(plan)}")
    return out
