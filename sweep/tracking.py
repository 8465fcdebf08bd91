"""MLflow writes of the sweep, in the schema the README describes (What MLflow holds): experiment, parent run, child runs.

Only the driver writes (the Tune callback in `mlflow_callback.py` while a sweep runs, `sync.py`
afterwards from Ray's storage), through one explicit `MlflowClient` per process: no fluent global
state, so nothing here depends on which thread or trial is current. The helpers that record a trial
(`open_trial_run`, `log_epochs`, `finish_trial_run`) are the same for both writers, so a run written
live and a run written by `sync` look alike.
"""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from filelock import FileLock

from core.config import ConfigError
from sweep import identity

# MLflow is imported inside the functions that use it: it costs seconds, and specs, plans and reports
# that never touch a store should not pay for it.

PARENT_TAG = "mlflow.parentRunId"
FINAL = ("FINISHED", "FAILED")
DRIVER_STOPPED = "the sweep's driver stopped while it ran"   # killed_reason of a run a gone driver left RUNNING
# Ray's bookkeeping in every result (ray.tune.result AUTO_RESULT_KEYS / DEBUG_METRICS and friends): never metrics.
RAY_KEYS = frozenset({"training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp",
                      "timesteps_total", "timesteps_since_restore", "episodes_total", "iterations_since_restore",
                      "pid", "hostname", "node_ip", "date", "config", "trial_id", "experiment_id", "experiment_tag",
                      "done", "should_checkpoint", "checkpoint_dir_name", "warmup_time", "__duplicate__"})
NOT_EPOCH_METRICS = frozenset({"epoch", "failed"})


class SweepError(RuntimeError):
    """A problem outside the config (tracking server, storage, a sweep already running): one clear line."""


# ---- the store ----------------------------------------------------------------------------------

def default_tracking_uri(output: str | Path) -> str:
    return f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Optional[Path]:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in a second, before any training, when a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (user-given server)
                if response.status >= 400:
                    raise SweepError(f"MLflow tracking server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise SweepError(f"MLflow tracking server {uri} is unreachable ({reason}). Start it, or drop "
                             f"--tracking-uri to use the local store under --output. Nothing was trained.") from None
    elif not uri.startswith("sqlite:///") and "://" in uri and not uri.startswith("file:"):
        pass  # databricks, postgresql, ...: MLflow itself reports problems at the first call below


# Schemes MLflow 3.17 takes as a tracking store; anything else (a bare word, ftp://) is bad input.
STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "file")
SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(SweepError):
    """A tracking store that exists but cannot be used (damaged, not an MLflow store): exit 1."""


def check_store(uri: str) -> None:
    """Before anything is written: the tracking URI must be one MLflow takes (else ConfigError, exit 2), a
    server must answer, and an existing SQLite store must be an intact MLflow database (else StoreError,
    exit 1; MLflow itself would fail later with a raw SQLAlchemy traceback)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in STORE_SCHEMES or not uri.split("://", 1)[1]:
        raise ConfigError(f"--tracking-uri {uri!r}: not a tracking store MLflow can use (schemes: "
                          f"{', '.join(STORE_SCHEMES)}). Give http://HOST:PORT for a tracking server or "
                          f"sqlite:////ABSOLUTE/PATH.db, or leave --tracking-uri out for OUTPUT/mlflow.db")
    check_reachable(uri)
    db = sqlite_path(uri)
    if db is not None:
        check_sqlite_store(db)


def check_sqlite_store(db: Path) -> None:
    """An SQLite store that exists must be a regular file holding an intact SQLite database with MLflow's
    tables (or none yet). Nothing is created; only SQLite's own recovery of a killed writer's journal runs."""
    import sqlite3

    if not db.exists():
        return  # MLflow builds a new store there
    fix = (f"Move it aside (e.g. mv {db} {db}.broken) to start a new store, or restore it from a backup; "
           f"Ray's storage under --output still holds the trials (`run_sweep.py sync NAME` writes them again)")
    if not db.is_file():
        raise StoreError(f"MLflow store {db} is not a regular file. {fix}")
    try:
        with open(db, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as err:
        raise StoreError(f"MLflow store {db} cannot be read ({err.strerror})") from None
    if not header:
        return  # an empty file: SQLite treats it as a new database
    if header != SQLITE_HEADER:
        raise StoreError(f"MLflow store {db} is not an SQLite database (damaged, or another file). {fix}")
    try:
        # mode=rw (never create): a writer killed mid-transaction leaves a hot journal, which SQLite rolls back
        # on the next read-write open, as MLflow's own connection would; read-only it reads as "readonly".
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
        try:
            check = connection.execute("PRAGMA quick_check").fetchall()
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.Error as err:
        if any(word in str(err).lower() for word in ("locked", "readonly", "read-only")):
            return  # being written right now, or a read-only copy (`report` on it still works): not damaged
        raise StoreError(f"MLflow store {db} is damaged ({err}). {fix}") from None
    if check != [("ok",)]:
        raise StoreError(f"MLflow store {db} is damaged (SQLite quick_check: {check[0][0] if check else '?'}). {fix}")
    if tables and "experiments" not in tables:
        raise StoreError(f"{db} is an SQLite database but not an MLflow store (no 'experiments' table); point "
                         f"--output or --tracking-uri elsewhere")


def retrying(fn: Callable, *args, attempts: int = 8, idempotent: bool = True, **kwargs):
    """Call an MLflow client method, retrying SQLite lock contention (two sweeps on one store: the
    write did not happen, so trying again is safe) with a growing pause. A connection error is retried
    once, and only for calls that are harmless to repeat (`idempotent`): a create call that timed out
    may have succeeded, and repeating it would make a second run (see `open_trial_run`)."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            text = str(err).lower()
            locked = any(s in text for s in ("database is locked", "database table is locked"))
            # A server that does not answer has had MLflow's own retries already: one more try only.
            unreachable = idempotent and attempt < 1 and any(s in text for s in ("connection", "timed out",
                                                                                   "temporarily"))
            if not (locked or unreachable) or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def make_client(uri: str):
    """An MlflowClient; for SQLite the first use (schema creation) is serialised by a file lock, so two
    sweeps starting at once on a fresh store do not both migrate it."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    with FileLock(str(db) + ".lock"):  # the client builds (and migrates) the store right away
        client = retrying(MlflowClient, tracking_uri=uri)
        retrying(client.search_experiments, max_results=1)
    return client


# The MLflow UI (3.x) opens an experiment on its GenAI overview (traces) unless told that it holds model
# training runs; this experiment tag and value make it open the runs table instead.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(client, name: str, artifact_root: Optional[Path]) -> str:
    """The experiment called `name` (created with artifacts under artifact_root/name for a local store),
    marked as a model-training experiment for the UI."""
    exp = retrying(client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise SweepError(f"MLflow experiment '{name}' exists but is deleted; restore it in the MLflow UI "
                             f"or choose another sweep name")
        experiment_id = exp.experiment_id
    else:
        location = (artifact_root / name).resolve().as_uri() if artifact_root is not None else None
        try:
            experiment_id = retrying(client.create_experiment, name, artifact_location=location)
        except Exception:
            exp = retrying(client.get_experiment_by_name, name)  # another process created it meanwhile
            if exp is None:
                raise
            experiment_id = exp.experiment_id
    mark_model_training(client, experiment_id)
    return experiment_id


def mark_model_training(client, experiment_id: str) -> None:
    """Set EXPERIMENT_KIND unless it is set. Two sweeps starting at once on one tracking server can both
    find it unset; the server's insert of the second then fails on the tag's unique key
    ("UNIQUE constraint failed: experiment_tags..."), which is harmless when the tag now holds our value."""
    key, value = EXPERIMENT_KIND
    if retrying(client.get_experiment, experiment_id).tags.get(key) == value:
        return
    try:
        retrying(client.set_experiment_tag, experiment_id, key, value)
    except Exception:
        if retrying(client.get_experiment, experiment_id).tags.get(key) != value:
            raise


def search_all(client, experiment_ids: str | list[str], filter_string: str = "") -> list:
    """Every active run of the experiment(s) matching the filter, page by page."""
    from mlflow.entities import ViewType

    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    runs, token = [], None
    while True:
        page = retrying(client.search_runs, ids, filter_string=filter_string,
                        run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def git_commit(root: Path) -> str:
    """HEAD of the project checkout, '+dirty' when it has uncommitted changes; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        if not head:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---- the parent run ---------------------------------------------------------------------------------

def parent_runs(client, experiment_id: str) -> list:
    return [r for r in search_all(client, experiment_id, "tags.sweep_kind != ''") if PARENT_TAG not in r.data.tags]


def ensure_parent(client, experiment_id: str, sweep: str, kind: str, tags: dict[str, str],
                  spec_text: str, spec_name: str, output: str) -> str:
    """The parent run of this sweep *in this output directory* (tag `output`): reused (set RUNNING again)
    when the sweep is rerun or resumed, its tags (the plan among them) set to the current spec. Two output
    directories sharing a tracking server and a sweep name get two parents, so neither touches the
    other's runs."""
    parents = parent_runs(client, experiment_id)
    other = [r for r in parents if r.data.tags.get("sweep_kind") != kind]
    if other:
        raise SweepError(f"sweep '{sweep}' already exists as a {other[0].data.tags.get('sweep_kind')} sweep in "
                         f"this store; give this {kind} sweep another name")
    mine = sorted((r for r in parents if r.data.tags.get("output") == output), key=lambda r: r.info.start_time or 0)
    if mine:
        run_id = mine[-1].info.run_id
        retrying(client.update_run, run_id, status="RUNNING")
    else:
        run_id = retrying(client.create_run, experiment_id, run_name=sweep, tags={"output": output},
                          idempotent=False).info.run_id
    from mlflow.entities import RunTag

    if "expectations" in tags:   # when the spec's written expectations took their current form (the report
        earlier = mine[-1].data.tags if mine else {}   # says so when that is after results existed)
        same = earlier.get("expectations") == tags["expectations"] and earlier.get("expectations_time")
        tags = {**tags, "expectations_time": earlier["expectations_time"] if same else str(int(time.time() * 1000))}
    retrying(client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in {
        **tags, "sweep": sweep, "sweep_kind": kind, "output": output}.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(f"# {spec_name}\n{spec_text}")
        retrying(client.log_artifact, run_id, str(path))
    return run_id


def find_parent(client, experiment_id: str, output: str):
    """The parent run of this output directory's sweep, or None."""
    mine = [r for r in parent_runs(client, experiment_id) if r.data.tags.get("output") == output]
    return max(mine, key=lambda r: r.info.start_time or 0) if mine else None


def end_parent(client, run_id: str, status: str) -> None:
    retrying(client.set_terminated, run_id, status=status)


# ---- child runs ----------------------------------------------------------------------------------------

def child_runs(client, experiment_id: str, parent_id: Optional[str] = None) -> list:
    """Child runs of the experiment; with parent_id, only that parent's (one output directory's)."""
    if parent_id is not None:
        return search_all(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}'")
    return [r for r in search_all(client, experiment_id) if PARENT_TAG in r.data.tags]


def _run_facts(run) -> tuple[str, int, str]:
    return run.info.status, int(run.info.start_time or 0), run.info.run_id


def representatives(runs) -> dict[str, Any]:
    """identity -> the run that stands for it (sweep.identity.representative), for identities that have one."""
    groups: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get("trial_identity"):
            groups.setdefault(run.data.tags["trial_identity"], []).append(run)
    out = {}
    for identity_, group in groups.items():
        run = identity.representative(group, _run_facts)
        if run is not None:
            out[identity_] = run
    return out


def child_tags(trial_config: dict, cfg, trial_id: str, git: str) -> dict[str, str]:
    """The child-run tags (README: What MLflow holds), from a trial's settings and its resolved MAGTKD config."""
    data = trial_config.get("data") or {}
    fingerprint = data.get("fingerprint", "unknown")
    code = trial_config.get("code_fingerprint", "unknown")
    available = data.get("available")
    masked = [m for m in cfg.fusion.modalities if available is not None and m not in available]
    return {
        "sweep": trial_config.get("sweep", ""),
        "variant": trial_config.get("variant", ""),
        "seed": str(cfg.seed),
        "config_hash": cfg.content_hash(),
        "dataset": data.get("name", cfg.data.name),
        "dataset_fingerprint": fingerprint,
        "code_fingerprint": code,
        "stage1_key": identity.stage1_key(cfg, fingerprint),
        "trial_identity": identity.trial_identity(cfg, fingerprint, code, trial_config.get("device_type", "cpu")),
        "device_type": trial_config.get("device_type", "cpu"),
        "precision": f"stage1 {cfg.stage1.precision}, stage2 {cfg.train.precision}",
        **{f"encoder.{m}": text for m, text in (trial_config.get("encoders") or {}).items()},
        "plan_key": trial_config.get("plan_key", ""),
        "git_commit": git,
        "selection_rule": cfg.train.select_on,
        "masked_modalities": ",".join(masked),
        "trial_id": trial_id,
        "bundle_trial": trial_config.get("bundle_trial_id", ""),   # the Ray trial that trained this seed with others
        "stage1_run_id": trial_config.get("stage1_run_id", ""),   # the MLflow run of its stage-1 entry
        "overrides": json.dumps(trial_config.get("overrides") or {}, sort_keys=True, default=str),
        "mlflow.runName": trial_config.get("run_name") or trial_id,
    }


def open_trial_run(client, experiment_id: str, parent_id: str, trial_id: str, tags: dict[str, str],
                   params: dict[str, Any]) -> tuple[Optional[str], set[int]]:
    """The run that records a trial: (run_id, epochs it already holds), or (None, _) when the trial is
    already recorded FINISHED/FAILED. A run left RUNNING or KILLED by an interrupted driver is taken up
    again (set RUNNING, tagged `resumed`), so a resumed trial stays one run. Creation is looked up first
    (by parent, trial id and identity), and again after a failed create, so it never makes two runs."""
    from mlflow.entities import Param

    def existing() -> list:
        return search_all(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                 f"tags.trial_id = '{trial_id}' and "
                                                 f"tags.trial_identity = '{tags['trial_identity']}'")

    runs = existing()
    if any(r.info.status in FINAL for r in runs):
        return None, set()
    if not runs:
        # A trial that a killed driver had started after Tune's last snapshot: Tune lost it, the searcher
        # hands it out again under a new trial id (sweep/stage1_gate.py); its run is taken up by identity.
        runs = [r for r in search_all(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                             f"tags.trial_identity = '{tags['trial_identity']}'")
                if r.info.status == "KILLED" and r.data.tags.get("killed_reason") == DRIVER_STOPPED]
    if runs:
        runs.sort(key=lambda r: r.info.start_time or 0)
        run = runs[-1]
        run_id = run.info.run_id
        retrying(client.update_run, run_id, status="RUNNING")
        if run.data.tags.get("trial_id") != trial_id:   # taken up by identity: the new trial id from now on
            retrying(client.set_tag, run_id, "trial_id", trial_id)
        resumed = int(run.data.tags.get("resumed", "0")) + 1
        retrying(client.set_tag, run_id, "resumed", str(resumed))
        return run_id, logged_steps(client, run_id)
    run_tags = {PARENT_TAG: parent_id, **{k: v for k, v in tags.items() if k != "mlflow.runName"}}
    try:
        run_id = retrying(client.create_run, experiment_id, tags=run_tags, run_name=tags.get("mlflow.runName"),
                          idempotent=False).info.run_id
    except Exception:
        made = existing()  # the create may have reached the store before the connection failed
        if not made:
            raise
        run_id = made[0].info.run_id
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        retrying(client.log_batch, run_id, params=items[start:start + 100])
    log_dataset_input(client, run_id, tags.get("dataset", ""), tags.get("dataset_fingerprint", ""),
                      params.get("data.path", ""))
    return run_id, set()


def log_dataset_input(client, run_id: str, name: str, fingerprint: str, source: str) -> None:
    """The run's dataset as an MLflow dataset input (the UI's Dataset column): the dataset's name, its
    content fingerprint as the digest, and where it was read from."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if not name:
        return
    dataset = Dataset(name=name, digest=fingerprint or "unknown", source_type="local",
                      source=json.dumps({"uri": source or name}))
    retrying(client.log_inputs, run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])


def logged_steps(client, run_id: str, key: str = "dev_wf1") -> set[int]:
    return {int(m.step) for m in retrying(client.get_metric_history, run_id, key)}


def epoch_metrics(result: dict) -> dict[str, float]:
    """The per-epoch metrics of a report: numbers, without Ray's bookkeeping or the selected_* figures."""
    return {k: float(v) for k, v in result.items()
            if k not in RAY_KEYS and k not in NOT_EPOCH_METRICS and not k.startswith("selected_")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def log_epochs(client, run_id: str, epochs: Iterable[dict], logged: set[int]) -> None:
    """Log each epoch not yet in the run (step = epoch); `logged` is updated in place."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for row in epochs:
        step = int(row.get("epoch", 0))
        if step < 1 or step in logged:
            continue
        batch += [Metric(k, v, now, step) for k, v in epoch_metrics(row).items()]
        logged.add(step)
    for start in range(0, len(batch), 1000):
        retrying(client.log_batch, run_id, metrics=batch[start:start + 1000])


def labels_of(result: dict, fallback: Optional[list[str]] = None) -> list[str]:
    """Class labels in the pipeline's order: the dataset's when known, else the order of the
    selected_test_f1_<label> keys (the pipeline writes them in label order)."""
    if fallback:
        return list(fallback)
    prefix = "selected_test_f1_"
    return [k[len(prefix):] for k in result if k.startswith(prefix)]


def finish_trial_run(client, run_id: str, cfg, last: Optional[dict], status: str, labels: Optional[list[str]],
                     reason: Optional[str] = None, extra_tags: Optional[dict[str, str]] = None,
                     predictions: str = "") -> None:
    """Selected figures, artifacts (config.yaml, confusion_matrix.csv, per_class_report.json and, when the
    trial wrote one, predictions.csv), status."""
    from mlflow.entities import Metric, RunTag

    tags = dict(extra_tags or {})
    if reason:
        tags["failure_reason"] = reason[:5000]
    if last and not last.get("failed"):
        step = int(last.get("epoch", 0))
        now = int(time.time() * 1000)
        selected = [Metric(k, float(v), now, step) for k, v in last.items()
                    if k.startswith("selected_") and isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(float(v))]
        retrying(client.log_batch, run_id, metrics=selected)
    if tags:
        retrying(client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    with tempfile.TemporaryDirectory() as tmp:
        files = {"config.yaml": cfg.to_yaml()}
        if last and not last.get("failed") and "selected_test_confusion" in last:
            names = labels_of(last, labels)
            files["confusion_matrix.csv"] = confusion_csv(last["selected_test_confusion"], names)
            files["per_class_report.json"] = json.dumps(per_class_report(last, names, cfg.train.select_on), indent=2)
            if predictions:
                files["predictions.csv"] = predictions
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            retrying(client.log_artifact, run_id, str(Path(tmp) / name))
    retrying(client.set_terminated, run_id, status=status)


def confusion_csv(confusion: Any, labels: list[str]) -> str:
    matrix = json.loads(confusion) if isinstance(confusion, str) else confusion
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["true \\ predicted"] + labels)
    for label, row in zip(labels, matrix):
        writer.writerow([label] + [int(v) for v in row])
    return out.getvalue()


def per_class_report(last: dict, labels: list[str], select_on: str) -> dict:
    """Per class at the selected epoch: dev and test F1, and test precision, recall, support from the
    confusion matrix (rows = true label)."""
    matrix = json.loads(last["selected_test_confusion"]) if isinstance(last.get("selected_test_confusion"), str) \
        else last.get("selected_test_confusion") or []
    classes = {}
    for i, label in enumerate(labels):
        support = sum(matrix[i]) if i < len(matrix) else 0
        predicted = sum(row[i] for row in matrix if i < len(row))
        hit = matrix[i][i] if i < len(matrix) and i < len(matrix[i]) else 0
        classes[label] = {"dev_f1": last.get(f"selected_dev_f1_{label}"),
                          "test_f1": last.get(f"selected_test_f1_{label}"),
                          "test_precision": hit / predicted if predicted else 0.0,
                          "test_recall": hit / support if support else 0.0,
                          "test_support": int(support)}
    return {"selection": {"rule": f"epoch with the best {select_on} weighted F1", "select_on": select_on,
                          "epoch": int(last.get("selected_epoch", 0))},
            "labels": labels, "classes": classes,
            "summary": {k: last[k] for k in ("selected_dev_wf1", "selected_dev_acc", "selected_dev_mf1",
                                              "selected_test_wf1", "selected_test_acc", "selected_test_mf1")
                        if k in last}}


# ---- housekeeping on resume and at the end --------------------------------------------------------------

def reopen_trial_runs(client, experiment_id: str, parent_id: str, trial_ids: list[str]) -> int:
    """The runs of these trials (this parent's), recorded FAILED when Ray ended them ERROR, become KILLED and
    lose their `failure_reason`, so that resuming the trials takes their runs up again (open_trial_run) and
    each stays one run. Returns how many were reopened."""
    reopened = 0
    for trial_id in trial_ids:
        for run in search_all(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                     f"tags.trial_id = '{trial_id}'"):
            if run.info.status == "FAILED":
                retrying(client.update_run, run.info.run_id, status="KILLED")
                if "failure_reason" in run.data.tags:
                    retrying(client.delete_tag, run.info.run_id, "failure_reason")
                reopened += 1
    return reopened


def close_stale_runs(client, experiment_id: str, parent_id: str) -> int:
    """This parent's child runs still RUNNING when none of its trials runs (an interrupted sweep, or a
    rerun after a driver that is gone: we hold this output's lock) become KILLED. A trial that resumes
    takes its run up again (open_trial_run). Other output directories' runs are never touched."""
    stale = [r for r in child_runs(client, experiment_id, parent_id) if r.info.status == "RUNNING"]
    for run in stale:
        retrying(client.set_tag, run.info.run_id, "killed_reason", DRIVER_STOPPED)
        retrying(client.set_terminated, run.info.run_id, status="KILLED")
    return len(stale)


def deduplicate(client, experiment_id: str, parent_id: str) -> int:
    """Per identity, FINISHED runs other than its representative become KILLED with a `duplicate_of`
    tag (this parent's runs only). Returns how many were closed."""
    runs = child_runs(client, experiment_id, parent_id)
    keep = representatives(runs)
    closed = 0
    for run in runs:
        chosen = keep.get(run.data.tags.get("trial_identity", ""))
        if run.info.status == "FINISHED" and chosen is not None and chosen.info.run_id != run.info.run_id:
            retrying(client.set_tag, run.info.run_id, "duplicate_of", chosen.info.run_id)
            retrying(client.set_terminated, run.info.run_id, status="KILLED")
            closed += 1
    return closed
