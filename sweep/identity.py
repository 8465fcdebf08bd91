"""One identity per trial, and one rule for which MLflow run stands for it.

A trial's identity is a hash of everything that decides its numbers:
  - the resolved config (`cfg.content_hash()`, which covers the seed),
  - the dataset's fingerprint (a content hash: one changed label changes it),
  - the code fingerprint (the source of the packages that compute results, `CODE_PACKAGES`),
  - the stage-1 cache key (`{dataset fingerprint}-{cfg.stage1_hash()}`, as `pipeline.trial` builds it),
  - the kind of device it runs on (cpu, cuda: `engine.device_type`).
It is the child run's `trial_identity` tag. Skipping finished work, resuming, deduplicating and the
report's cells all ask `representative()` which run stands for an identity, so they cannot disagree.

A sweep's *plan* is the ordered list of identities it launched; the parent run records it (`plan`
tags) and a report shows exactly the runs of that plan.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, TypeVar

from core.config import stable_hash

# The packages whose source decides a trial's numbers (the sweep machinery and reports do not).
CODE_PACKAGES = ("core", "model", "dialogue_data", "pipeline")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLAN_TAG = "plan"                 # parent tags plan_chunks, plan.0, plan.1, ...: the JSON list of identities
PLAN_CHUNK = 5000                 # characters per tag (MLflow caps a tag value at 8000)

Run = TypeVar("Run")


def code_fingerprint(directories: Optional[Sequence[Path]] = None) -> str:
    """Hash of every .py file (relative path and bytes) under the given directories (default: the
    project's CODE_PACKAGES). Editing model code changes it; editing the sweep or reports does not."""
    dirs = [Path(d) for d in directories] if directories is not None else [PROJECT_ROOT / p for p in CODE_PACKAGES]
    h = hashlib.sha256()
    for directory in dirs:
        for path in sorted(directory.rglob("*.py")):
            h.update(f"{directory.name}/{path.relative_to(directory).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def stage1_key(cfg, data_fingerprint: str) -> str:
    """The stage-1 feature cache key of a config (the one `pipeline.trial.stage1_features` uses)."""
    return f"{data_fingerprint}-{cfg.stage1_hash()}"


def trial_identity(cfg, data_fingerprint: str, code: str, device_type: str = "cpu") -> str:
    """`device_type` (cpu | cuda | mps): a GPU run and a CPU run of one config are different trials
    (kernels differ, and so do the numbers; train.deterministic makes each repeatable, not equal)."""
    payload = {"config": cfg.content_hash(), "data": data_fingerprint, "code": code,
               "stage1": stage1_key(cfg, data_fingerprint), "device": device_type}
    return stable_hash(payload)


def representative(runs: Iterable[Run], facts: Callable[[Run], tuple[str, int, str]]) -> Optional[Run]:
    """The run that stands for one identity, from `facts(run) = (status, start_time, run_id)`:
    the first FINISHED run to start (a later one trained the same thing again: a duplicate); else the
    last FAILED one (a failure that will recur is final); else None (nothing final yet)."""
    runs = sorted(runs, key=lambda r: facts(r)[1:])
    finished = [r for r in runs if facts(r)[0] == "FINISHED"]
    if finished:
        return finished[0]
    failed = [r for r in runs if facts(r)[0] == "FAILED"]
    return failed[-1] if failed else None


def plan_tags(identities: Sequence[str]) -> dict[str, str]:
    text = json.dumps(list(identities))
    chunks = [text[i:i + PLAN_CHUNK] for i in range(0, len(text), PLAN_CHUNK)] or ["[]"]
    # The count says how many chunks are current: a shorter plan later leaves stale chunks behind.
    return {f"{PLAN_TAG}_chunks": str(len(chunks)), **{f"{PLAN_TAG}.{i}": c for i, c in enumerate(chunks)}}


def plan_of(tags: dict[str, str]) -> Optional[list[str]]:
    """The plan recorded in a parent's tags; None when the parent records none (a tune sweep, an old store)."""
    count = int(tags.get(f"{PLAN_TAG}_chunks") or 0)
    if not count:
        return None
    return [str(v) for v in json.loads("".join(tags.get(f"{PLAN_TAG}.{i}", "") for i in range(count)))]
