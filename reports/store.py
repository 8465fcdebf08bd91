"""Read one sweep back from MLflow: the parent run's tags and the child runs (the schema in the README, What MLflow holds).

Reports read nothing else: no Ray results, no trial directories, no YAML on disk. Everything a table
needs must therefore be in the store, which is what makes a table regenerable in seconds.

    sweep = load_sweep("demo", tracking_uri_for("./runs"))
    sweep.variants, sweep.seeds, [t.run_id for t in sweep.trials]
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sweep.identity import plan_of, representative
from sweep.tracking import check_store, search_all

# MLflow is imported inside the functions that read the store: it costs seconds to import.

PARENT_TAG = "mlflow.parentRunId"
STATES = ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")


class ReportError(Exception):
    """A report cannot be made (unknown sweep, empty store, bad option); the message says what to do."""


@dataclass
class Trial:
    run_id: str
    variant: str
    seed: str                       # as the child's `seed` tag holds it (a string in MLflow)
    status: str                     # FINISHED | FAILED | KILLED | RUNNING | SCHEDULED
    start_time: int                 # ms since the epoch (0 when unknown)
    end_time: int
    metrics: dict[str, float]       # the latest value of every metric
    params: dict[str, str]
    tags: dict[str, str]
    artifact_uri: str = ""
    seed_runs: list["Trial"] = field(default_factory=list)   # a search trial of several seeds: one run each

    @property
    def masked_modalities(self) -> list[str]:
        return [m.strip() for m in self.tags.get("masked_modalities", "").split(",") if m.strip()]


@dataclass
class Sweep:
    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_ids: list[str]       # the one parent whose plan this report shows
    tags: dict[str, str]            # that parent's tags
    start_time: int
    variants: list[str]             # table order: the parent's `variants`, then unlisted ones found in children
    seeds: list[str]                # the parent's `seeds`, then unlisted ones found in children
    trials: list[Trial] = field(default_factory=list)        # runs of the current plan only
    unlisted_variants: list[str] = field(default_factory=list)
    stage1_runs: dict[str, Trial] = field(default_factory=dict)   # run id -> a stage-1 run (trials' stage1_run_id)
    superseded: list[Trial] = field(default_factory=list)    # runs of earlier plans (other config, data or code)
    plan: Optional[list[str]] = None                         # the plan's identities (None: not recorded)

    def missing_from_plan(self) -> list[str]:
        """Identities of the plan without a FINISHED run."""
        done = {t.tags.get("trial_identity") for t in self.trials if t.status == "FINISHED"}
        return [i for i in (self.plan or []) if i not in done]

    @property
    def kind(self) -> str:
        return self.tags.get("sweep_kind", "ablate")

    @property
    def baseline(self) -> str:
        return self.tags.get("baseline") or (self.variants[0] if self.variants else "")

    def artifact_labels(self) -> list[str]:
        """Label order from the first finished trial's per_class_report.json (the sweep writes the
        dataset's order there; metric names carry no order). [] when there is none."""
        from mlflow.tracking import MlflowClient

        for trial in self.trials:
            if trial.status != "FINISHED":
                continue
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    client = MlflowClient(self.tracking_uri)
                    path = client.download_artifacts(trial.run_id, "per_class_report.json", tmp)
                    labels = json.loads(Path(path).read_text(encoding="utf-8")).get("labels")
            except Exception:  # no such artifact, unreadable store location: fall back to sorted names
                return []
            return [str(v) for v in labels] if isinstance(labels, list) else []
        return []

    def by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        return counts


def tracking_uri_for(output: str | Path) -> str:
    """The project's default store: sqlite:///<absolute output>/mlflow.db."""
    return f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        # MLflow would silently create an empty database: say where we looked instead.
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.exists():
            raise ReportError(f"no MLflow store at {path} (tracking URI {tracking_uri}); run a sweep first "
                              f"or pass --output DIR / --tracking-uri URI")
    check_store(tracking_uri)  # a bad URI, a server that does not answer, a damaged file: one clear line
    return MlflowClient(tracking_uri=tracking_uri)


def _seed_key(seed: str) -> tuple:
    """Numeric seeds in numeric order, anything else after them in text order."""
    try:
        return (0, int(seed), "")
    except ValueError:
        return (1, 0, seed)


def _json_list(text: str | None, what: str, sweep: str) -> list[str]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ReportError(f"sweep '{sweep}': parent tag '{what}' is not JSON: {text!r}") from None
    if not isinstance(value, list):
        raise ReportError(f"sweep '{sweep}': parent tag '{what}' must be a JSON list, got {text!r}")
    return [str(v) for v in value]


def known_sweeps(tracking_uri: str) -> list[str]:
    """Names of the experiments that hold a sweep's parent run, sorted."""
    client = _client(tracking_uri)
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments]
    if not ids:
        return []
    parents = search_all(client, ids, "tags.sweep_kind != ''")
    with_parent = {r.info.experiment_id for r in parents if PARENT_TAG not in r.data.tags}
    return sorted(e.name for e in experiments if e.experiment_id in with_parent)


def _trial(run) -> Trial:
    tags = dict(run.data.tags)
    return Trial(run_id=run.info.run_id,
                 variant=tags.get("variant", ""),
                 seed=tags.get("seed", run.data.params.get("seed", "")),
                 status=run.info.status,
                 start_time=int(run.info.start_time or 0),
                 end_time=int(run.info.end_time or 0),
                 metrics=dict(run.data.metrics),
                 params=dict(run.data.params),
                 tags=tags,
                 artifact_uri=run.info.artifact_uri or "")


def load_sweep(name: str, tracking_uri: str, output: str | Path | None = None) -> Sweep:
    """The sweep called `name`, as its current plan stands; ReportError listing the known sweeps when
    there is none. With several parents (output directories sharing one store) the one of `output` is
    used when there is one, else the latest."""
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = search_all(client, [experiment.experiment_id]) if experiment is not None else []
    parents = [r for r in runs if PARENT_TAG not in r.data.tags and "sweep_kind" in r.data.tags]
    if not parents:
        known = known_sweeps(tracking_uri)
        listing = ", ".join(known) if known else "none"
        raise ReportError(f"unknown sweep '{name}' in {tracking_uri}; known sweeps: {listing}")
    parents.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    mine = [r for r in parents if output is not None and r.data.tags.get("output") == str(Path(output).resolve())]
    latest = (mine or parents)[-1]
    tags = dict(latest.data.tags)
    stage1_runs = {r.info.run_id: _trial(r) for r in runs if r.data.tags.get("magtkd_run") == "stage1"}
    children = [_trial(r) for r in runs if r.data.tags.get(PARENT_TAG) == latest.info.run_id]
    plan = plan_of(tags)
    trials, superseded = split_by_plan(children, plan, tags.get("plan_key", ""))

    if tags.get("sweep_kind") == "tune":
        _name_tune_rows(trials)
    listed = _json_list(tags.get("variants"), "variants", name)
    # Variants the spec does not list (tune trials, a relaunch with a new variant) follow in launch order.
    first_seen: dict[str, tuple] = {}
    for t in sorted(trials, key=lambda t: (t.start_time, t.run_id)):
        first_seen.setdefault(t.variant, (t.start_time, t.run_id))
    unlisted = sorted(set(first_seen) - set(listed), key=lambda v: first_seen[v])
    seeds = _json_list(tags.get("seeds"), "seeds", name)
    extra_seeds = sorted({t.seed for t in trials} - set(seeds), key=_seed_key)
    variant_pos = {v: i for i, v in enumerate(listed + unlisted)}
    seed_pos = {s: i for i, s in enumerate(seeds + extra_seeds)}
    # One stable order for everything downstream: table order, then seed order, then time, then id.
    trials.sort(key=lambda t: (variant_pos[t.variant], seed_pos[t.seed], t.start_time, t.run_id))
    return Sweep(name=name, tracking_uri=tracking_uri, experiment_id=latest.info.experiment_id,
                 parent_run_ids=[latest.info.run_id], tags=tags, superseded=superseded, plan=plan, start_time=int(latest.info.start_time or 0),
                 variants=listed + unlisted, seeds=seeds + extra_seeds, trials=trials,
                 # In a tune sweep every row is found in the runs; flagging them all would be noise.
                 unlisted_variants=unlisted if tags.get("sweep_kind") != "tune" else [], stage1_runs=stage1_runs)


def split_by_plan(children: list[Trial], plan: Optional[list[str]], plan_key: str) -> tuple[list[Trial], list[Trial]]:
    """(runs of the current plan, superseded runs). An ablation's plan lists identities; a search has a
    plan key; a store written before either was recorded keeps every run."""
    if plan is not None:
        wanted = set(plan)
        return ([t for t in children if t.tags.get("trial_identity") in wanted],
                [t for t in children if t.tags.get("trial_identity") not in wanted])
    if plan_key:
        return ([t for t in children if t.tags.get("plan_key", plan_key) == plan_key],
                [t for t in children if t.tags.get("plan_key", plan_key) != plan_key])
    return children, []


def trial_facts(trial: Trial) -> tuple[str, int, str]:
    """What `sweep.identity.representative` orders by, for a report's Trial."""
    return trial.status, trial.start_time, trial.run_id


def stands_for(trials: list[Trial]) -> Optional[Trial]:
    """The run that stands for one identity (the rule the sweep's dedup and resume use)."""
    return representative(trials, trial_facts)


def _name_tune_rows(trials: list[Trial]) -> None:
    """Tune trials are rows of their own: when one variant tag covers several configs, name rows by trial.

    Seeds of one config (same config_hash) stay in one row, named after its first trial, so repeated
    seeds still give a spread.
    """
    hashes: dict[str, set[str]] = {}
    for t in trials:
        hashes.setdefault(t.variant, set()).add(t.tags.get("config_hash") or t.run_id)
    names: dict[str, str] = {}
    for t in sorted(trials, key=lambda t: (t.start_time, t.run_id)):
        if len(hashes[t.variant]) > 1 or not t.variant:
            key = t.tags.get("config_hash") or t.run_id
            names.setdefault(key, f"trial {t.tags.get('trial_id') or key}")
            t.variant = names[key]


def metric_history(tracking_uri: str, run_ids: list[str], key: str) -> dict[str, list[tuple[int, float]]]:
    """Per run, (step, value) pairs of one metric sorted by step; a step logged twice keeps its last value."""
    client = _client(tracking_uri)
    out: dict[str, list[tuple[int, float]]] = {}
    for run_id in run_ids:
        latest: dict[int, Any] = {}
        for m in client.get_metric_history(run_id, key):
            if m.step not in latest or m.timestamp >= latest[m.step].timestamp:
                latest[m.step] = m
        out[run_id] = [(step, float(latest[step].value)) for step in sorted(latest)]
    return out


def local_artifact(artifact_uri: str, name: str) -> Path | None:
    """The artifact's file when the run's artifacts are on this machine (a plain path or file:// URI, as the
    project's default store writes them); None for a remote artifact store (then MLflow downloads it)."""
    from urllib.parse import unquote, urlparse

    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        root = Path(unquote(parsed.path))
    elif parsed.scheme == "" and artifact_uri.startswith("/"):
        root = Path(artifact_uri)
    else:
        return None
    return root / name


def trial_predictions(tracking_uri: str, run_id: str, artifact_uri: str = "") -> str:
    """The run's predictions.csv artifact (per-utterance predictions, core/predictions.py); '' when it has none.

    Read straight from disk when the artifacts are local: MLflow's download costs a client and a query per run
    (about 0.15 s each; a 39-trial demo spent 6 s of its report there)."""
    from mlflow.tracking import MlflowClient

    local = local_artifact(artifact_uri, "predictions.csv")
    if local is not None:
        try:
            return local.read_text(encoding="utf-8")
        except OSError:   # not there (a run recorded before they existed): the same answer as MLflow's
            return ""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = MlflowClient(tracking_uri).download_artifacts(run_id, "predictions.csv", tmp)
            return Path(path).read_text(encoding="utf-8")
    except Exception:  # no such artifact (a run recorded before they existed), unreadable artifact store
        return ""


def list_sweeps(tracking_uri: str) -> list[Sweep]:
    return [load_sweep(name, tracking_uri) for name in known_sweeps(tracking_uri)]
