"""The sweep engine: an ablation (variants x seeds) or an Optuna search, on Ray Tune, into MLflow.

    outcome = run_sweep("ablate", "ablations/demo.yaml", ["train.epochs=2"], SweepOptions(output=Path("runs")))

validate -> lock -> parent run -> Ray start -> stage 1 -> fit -> record -> finish:
 1. validate (bad input costs a second and leaves nothing behind): output and cache directories writable,
    tracking URI usable and its store reachable and intact, the spec and every trial's config (seeds in
    torch's range), every dataset loadable, resources and devices possible (`sweep/preflight.py`).
    Each trial gets its identity (sweep.identity: config, data, code and stage-1 key); an ablation's
    plan is the ordered list of them, and the plan names the Ray experiment.
 2. lock this output directory's sweep; open the MLflow experiment and this output's parent run, whose
    tags record the plan (a report shows exactly the runs of that plan). A new SQLite store is built
    while Ray starts (steps 2-3 in a thread beside it); with an existing store Ray starts after step 3.
 3. record what Ray's storage holds and MLflow lacks; an ablation trains only the identities that have
    no final run (FINISHED or FAILED) yet; nothing left -> nothing to train.
 4. stage 1 (`sweep/stage1_plan.py`): the distinct entries the trials still to train need and the cache lacks
    are computed as Ray tasks of their own, each recorded as an MLflow run the trials link to. In a
    fresh ablation this runs in a driver thread beside Tune, whose searcher (`sweep/stage1_gate.py`)
    starts each trial once its entry is ready; a search or a resumed experiment computes them first.
    Either way no trial slot waits on stage 1.
 5. fit: the same plan's Ray experiment present -> `Tuner.restore` (trials that failed stay failed),
    else a fresh one. One that Ray cannot restore (a driver killed after tuner.pkl, before the first
    snapshot: `sync.restorable`) is set aside under ray/NAME/.unrestorable and started afresh. After the
    fit, an ablation's trials that Ray ended ERROR with retries left (Tune counts one actor lost under a
    PENDING trial twice: `sync.errored_with_retries_left`) have their runs reopened and are resumed once.
 6. record: how each trial ended comes from Ray's results (`sync.ray_trials`) into MLflow; an
    unfinished plan is "interrupted" (rerun the same command to resume).
 7. finish: duplicates closed, the parent FINISHED, the table; exit code 0, or FAILURES_EXIT when
    some trials FAILED.

Both kinds run through these same steps; where an ablation and a search differ, the engine asks the sweep's
kind, one object each in `sweep/kinds.py`: `AblationKind` and `SearchKind` load the spec and build the plan
(step 1), say what a run still trains (step 3: its `Backlog`), what stage 1 is computed from (step 4), which
Tuner fits it and what the progress line reports (step 5), whether trials Ray ended early are resumed, when
the plan counts as started, which runs stand for it and what is printed at the end (steps 6-7). In code:
`prepare` (step 1), `run_sweep` (the lock), then `Sweep.run`: `open_records` (steps 2-3, beside `_ray_init`),
`stage1_gate` or `schedule_stage1` (step 4), `fit` and `tuner` (step 5), `record_fit` (step 6), `finish` (7).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from filelock import FileLock, Timeout

from core.config import ConfigError, absolute_path_overrides, random_encoder_problem
from core.schema import DataError
from core.environment import worker_env
from dialogue_data.media import SCAN_NOTE
from dialogue_data.media_store import TO_DECODE
from dialogue_data.registry import load_dataset
from sweep import tracking
from sweep.identity import code_fingerprint
from sweep.kinds import Backlog, PlanInputs, sweep_kind
from sweep.plan import SweepPlan, data_key
from sweep.preflight import check_cluster_devices, check_devices, check_finite, device_notes
from sweep.ray_start import cluster_address, describe, probe, start_ray
from sweep.spec_common import check_resources, parse_cli_overrides, within
from sweep.sync import SyncReport, ray_trials, restorable, set_aside_unrestorable, sync_trials
from sweep.tracking import SweepError
from sweep.trainable import train_trial
from model.encoder_ids import describe_encoders

# torch, Ray, MLflow and Optuna are imported inside the functions that use them: each costs seconds, and a
# bad spec or output directory must fail before any of that.

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Exit codes (README, Exit codes): 0 every trial FINISHED; 2 bad input, nothing started (run_sweep.py);
# 1 a problem outside the config (tracking store, lock, MLflow failing at the end).
FAILURES_EXIT = 3                 # finished, but some trials FAILED (the table is written; footnote says why)
INTERRUPTED_EXIT = 130            # interrupted: rerun the same command to resume


@dataclass
class SweepOptions:
    output: Path = Path("runs")
    tracking_uri: Optional[str] = None
    address: Optional[str] = None          # join a running Ray cluster ("auto" or host:port)
    max_concurrent: Optional[int] = None
    cpus_per_trial: Optional[float] = None
    gpus_per_trial: Optional[float] = None
    max_failures: Optional[int] = None
    num_samples: Optional[int] = None      # tune only
    time_budget: Optional[float] = None    # tune only, seconds
    seeds: Optional[int] = None            # tune only: seeds per trial, trained as one bundle
    seed_objective: Optional[str] = None   # tune only: mean | mean-std over a trial's seeds
    from_tune: Optional[str] = None        # ablate only: start from the best config of this tune sweep
    cache_dir: Optional[Path] = None       # stage-1 feature cache (default <output>/cache)
    num_cpus: Optional[int] = None         # CPUs of a local Ray (default: all)
    num_gpus: Optional[float] = None       # GPUs of a local Ray (default: those torch sees); logical ones work:
                                           # Ray schedules by the count, a trial with train.device=cpu never uses them
    dry_run: bool = False                  # check and print the plan; start nothing, write nothing
    verbose: bool = False
    strict: bool = False                   # refuse data with a label that has no training examples
    callbacks: Sequence[Any] = ()          # extra Tune callbacks (tests inject faults; a resume keeps the first's)
    code_dirs: Optional[Sequence[Path]] = None  # what the code fingerprint hashes (default: sweep.identity)
    stage1_barrier: bool = False           # all of stage 1 before any trial (benchmarks compare it; default overlaps)


@dataclass
class SweepOutcome:
    name: str
    kind: str
    status: str                            # finished | failures | interrupted | unrecorded (MLflow failed at the end)
                                           # | planned, refused (--dry-run: the plan printed; problems found)
    trained: int = 0                       # trials run by this invocation
    skipped: int = 0                       # trials of the plan already final (FINISHED/FAILED) in MLflow
    experiment_id: str = ""
    parent_run_id: str = ""
    ray_path: str = ""
    messages: list = field(default_factory=list)
    output: Path = Path("runs")             # where the sweep wrote, and the store the report reads
    tracking_uri: str = ""

    @property
    def exit_code(self) -> int:
        return {"finished": 0, "failures": FAILURES_EXIT, "interrupted": INTERRUPTED_EXIT, "planned": 0,
                "refused": 2}.get(self.status, 1)


# ---- validation before anything is created ---------------------------------------------------------

def check_output_dir(output: Path, flag: str = "--output") -> Path:
    """The output directory (or the nearest existing parent, when it does not exist yet) must be a
    writable directory. Nothing is created here. `flag` names the option in messages (--cache-dir too)."""
    output = output.expanduser().resolve()
    probe = output
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {output}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {output}: {probe} is not writable")
    try:  # access() says yes on read-only mounts and to root: really try
        fd, path = tempfile.mkstemp(prefix=".magtkd-write-test-", dir=probe)
        os.close(fd)
        os.unlink(path)
    except OSError as err:
        raise ConfigError(f"{flag} {output}: cannot write in {probe} ({err.strerror})") from None
    return output


def check_options(opts: SweepOptions) -> None:
    """Numeric options: finite (nan, inf refused) and in range; resources are checked with the spec's."""
    check_finite("--cpus-per-trial", opts.cpus_per_trial)
    check_finite("--gpus-per-trial", opts.gpus_per_trial)
    check_finite("--time-budget", opts.time_budget, minimum=0)


def _data_info(cfgs, strict: bool = False, cache_dir: Optional[Path] = None, scan_only: bool = False) -> dict[str, dict]:
    """Load each distinct dataset once (errors here name the file and line, before Ray starts) and keep
    what the trials' MLflow tags need: name, fingerprint, label order and the modalities the data carry.
    Clips are decoded here, once, into the media store under `cache_dir` (dialogue_data.media_store);
    trials then find them there. With `scan_only` (--dry-run) nothing is decoded or written: "media_scan"
    says what the store holds and what a launch would decode, and a fingerprint over clips still to
    decode is provisional (their content is not hashed). A label without training examples is a
    warning, or an error with --strict."""

    out: dict[str, dict] = {}
    for cfg in cfgs:
        key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
        if key in out:
            continue
        dataset = load_dataset(cfg.data, cache_dir, scan_only=scan_only)
        for warning in dataset.label_warnings():
            if strict:
                raise ConfigError(f"{warning} (--strict)")
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        coverage = dataset.coverage("train")
        out[key] = {"fingerprint": dataset.fingerprint(), "labels": list(dataset.labels),
                    "available": [m for m in ("text", "audio", "video") if coverage.get(m, 0) > 0],
                    "name": dataset.name, "source": dataset.source,
                    "media_coverage": media_coverage(dataset) if cfg.data.media_dir else "",
                    "coverage": {split: dataset.coverage(split) for split in dataset.splits}}
        if scan_only:
            out[key]["media_scan"] = next((n for n in dataset.notes if n.startswith(SCAN_NOTE)), "")
            out[key]["fingerprint_provisional"] = any(
                ref is not None and ref.identity.startswith(TO_DECODE) for split in dataset.splits
                for u in dataset.utterances(split) for ref in (u.audio_ref, u.video_ref))
    return out


def media_coverage(dataset) -> str:
    """'train audio 100% video 100%, dev ...': the share of each split's utterances that carry a clip."""
    parts = []
    for split in dataset.splits:
        cov = dataset.coverage(split)
        shares = " ".join(f"{m} {100.0 * cov[m] / max(cov['utterances'], 1):.0f}%" for m in ("audio", "video"))
        parts.append(f"{split} {shares} (of {cov['utterances']})")
    return f"{dataset.name}: " + ", ".join(parts)


def _media_coverage(data_info: dict[str, dict]) -> str:
    return "; ".join(sorted({info["media_coverage"] for info in data_info.values()} - {""}))


def _dataset_names(data_info: dict[str, dict]) -> str:
    """The datasets' own names (a CSV mapping's `name`, not 'csv'), for the parent run's `dataset` tag."""
    return ", ".join(sorted({info["name"] for info in data_info.values()}))


def _check_local_paths(cfgs) -> None:
    """Data files and encoder checkpoints must exist here (a typo would otherwise fail every trial after
    Ray started). Loading a spec file does not check them (it validates without the data); launching does.
    Named encoders ('tiny', 'minilm', 'features') are the stage-1 code's business."""
    for cfg in cfgs:
        absolute_path_overrides(cfg.flat())  # raises "key 'data.path': ... does not exist"
        for key in ("text_encoder", "audio_encoder", "video_encoder"):
            value = getattr(cfg.stage1, key)
            if ("/" in value or value.startswith(("~", "."))) and not Path(value).expanduser().exists():
                raise ConfigError(f"stage1.{key}: {value} does not exist (a local checkpoint directory is "
                                  f"expected; nothing is downloaded)")


def local_gpus(opts: SweepOptions) -> float:
    """The GPUs a local Ray gets: --num-gpus, else the NVIDIA GPUs this process may see (CUDA_VISIBLE_DEVICES
    when set, else the driver's list), counted as Ray does and without importing torch (seconds)."""
    if opts.num_gpus is not None:
        return float(opts.num_gpus)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return float(len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    listing = Path("/proc/driver/nvidia/gpus")
    return float(len(list(listing.iterdir()))) if listing.is_dir() else 0.0


def _check_local_resources(resources, opts: SweepOptions, problems: Optional["Problems"] = None) -> None:
    """A local Ray has this machine's CPUs and GPUs (or --num-gpus): a trial or a stage-1 task asking for more
    would wait forever. Each shortfall is its own problem (collected when `problems` is given)."""
    if cluster_address(opts.address):
        return  # checked against the cluster once joined
    problems = problems or _Raising()
    cpus = opts.num_cpus or os.cpu_count() or 1
    stage1 = resources.stage1 or resources
    problems.run(_check_here, "each trial asks", resources.cpu, "CPUs", "resources.cpu / --cpus-per-trial", cpus,
                 "lower it (fractions such as 0.5 are fine)")
    problems.run(_check_here, "each stage-1 task asks", stage1.cpu, "CPUs", "resources.stage1.cpu", cpus, "lower it")
    if max(resources.gpu, stage1.gpu) == 0:
        return
    gpus = local_gpus(opts)
    fix = ("use --gpus-per-trial 0 and resources.stage1.gpu 0, or --address to join a cluster with GPUs"
           if gpus == 0 else "lower it")
    problems.run(_check_here, "trials ask", resources.gpu, "GPU each", "resources.gpu / --gpus-per-trial", gpus, fix)
    problems.run(_check_here, "stage-1 tasks ask", stage1.gpu, "GPU each", "resources.stage1.gpu", gpus, fix)


def _check_here(who: str, need: float, unit: str, keys: str, have: float, fix: str) -> None:
    if need > have:
        has = f"{have:g}" if have else "none"
        raise ConfigError(f"{who} for {need:g} {unit} ({keys}) but this machine has {has}; {fix}")


class _Raising:
    """Problems' interface for a caller that wants the first error raised."""

    @staticmethod
    def run(check, *args, **kwargs):
        return check(*args, **kwargs)


class Problems:
    """Every check before a sweep starts is a function whose error is collected here, so that a user
    sees all of them at once (`--dry-run` prints them; a launch refuses with all of them) instead of
    one per try. Checks that need an earlier result (the data need the spec) run only when it exists."""

    def __init__(self):
        self.errors: list[Exception] = []

    def run(self, check, *args, **kwargs):
        """check(*args, **kwargs), or None with its error kept."""
        try:
            return check(*args, **kwargs)
        except (ConfigError, DataError, SweepError) as err:   # RayStartError is a SweepError
            self.add(err)
            return None

    def add(self, err: Exception) -> None:
        if str(err) not in {str(e) for e in self.errors}:   # one message once, however many trials share it
            self.errors.append(err)

    def raise_all(self) -> None:
        """One problem: raised as it is (its type decides the exit code); several: one ConfigError listing all."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigError(f"{len(self.errors)} problems (nothing was started):\n"
                              + "\n".join(f"  {i}. {err}" for i, err in enumerate(self.errors, 1)))


# A stand-in for a data.path the user did not give: the spec still loads, so that every other check runs
# (and reports) in the same try; nothing is read from it.
MISSING_DATA_PATH = "/data.path-not-given"


def _load_spec(sweep_type, spec_path, cli: dict, extra, problems: Problems):
    """The spec with the command line; a missing data.path is reported and the spec loaded without it."""
    def load(overrides):
        return sweep_type.load_spec(spec_path, overrides, extra)

    try:
        return load(cli)
    except ConfigError as err:
        problems.add(err)
        if "'data.path' is required" in str(err) and "data.path" not in cli:
            return problems.run(load, {**cli, "data.path": MISSING_DATA_PATH})
        return None


def _check_tracking_store(tracking_uri: str, output: Path) -> None:
    tracking.check_store(tracking_uri)   # scheme, a server's /health, an intact SQLite store
    db = tracking.sqlite_path(tracking_uri)
    if db is not None and output not in db.resolve().parents:
        check_output_dir(db.parent)  # a store elsewhere must be writable too


def _check_random_encoders(cfg, data: Optional[dict]) -> None:
    """`tiny` encoders on a real dataset are refused unless stage1.allow_random_encoders=true, for the
    modalities the data carry (from the loaded data; without them, text, and media when data.media_dir is set)."""
    if data is not None:
        carried = data[data_key(cfg)]["available"]
    else:
        carried = ["text"] + (["audio", "video"] if cfg.data.media_dir else [])
    problem = random_encoder_problem(cfg, carried)
    if problem:
        raise ConfigError(problem)


def _check_device(cfg, resources) -> None:
    """Inside Ray a worker sees only its own GPUs: cuda:N cannot be honoured, and cuda needs a GPU given."""
    device = cfg.train.device
    if device.startswith("cuda:"):
        raise ConfigError(f"key 'train.device': {device} is refused in a sweep: each Ray worker sees only the GPUs "
                          f"Ray gave it. Use train.device=auto (or cuda) and resources.gpu / --gpus-per-trial")
    stage1_gpu = (resources.stage1 or resources).gpu
    if device == "cuda" and (resources.gpu == 0 or stage1_gpu == 0):
        which = "trials" if resources.gpu == 0 else "stage-1 tasks (resources.stage1.gpu)"
        raise ConfigError(f"key 'train.device': cuda, but the {which} get no GPU: ask for one (resources.gpu / "
                          f"--gpus-per-trial, resources.stage1.gpu) or use train.device=auto")


def _check_counts(max_concurrent: int, max_failures: int) -> None:
    if max_concurrent < 0:
        raise ConfigError(f"--max-concurrent must be >= 0 (0 = as many as fit), got {max_concurrent}")
    if max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {max_failures}")


def device_type(cfg, resources) -> str:
    """cuda | cpu | mps: the kind of device a trial of this config runs on (part of its identity: a GPU
    run and a CPU run of one config give different numbers). `auto` is a GPU only when the trial gets one."""
    device = cfg.train.device
    if device == "auto":
        return "cuda" if resources.gpu > 0 else "cpu"
    return device.split(":")[0]


def prepare(kind: str, spec_path: str | Path, overrides: Sequence[str], opts: SweepOptions,
            problems: Optional[Problems] = None) -> SweepPlan:
    """Step 1: every check that needs neither Ray nor a write. Each check's error is collected: with
    `problems` given (--dry-run) the caller reads them, else they are raised together at the end."""
    own = problems is None
    problems = Problems() if own else problems
    sweep_type = sweep_kind(kind)
    output = problems.run(check_output_dir, Path(opts.output))
    problems.run(check_options, opts)
    tracking_uri = opts.tracking_uri or (tracking.default_tracking_uri(output) if output else "")
    if tracking_uri and output:
        problems.run(_check_tracking_store, tracking_uri, output)
    cli = problems.run(parse_cli_overrides, overrides)
    notes: list[str] = []
    git = tracking.git_commit(PROJECT_ROOT)
    code = code_fingerprint(opts.code_dirs)
    output = output or Path(opts.output).expanduser().resolve()
    cache_dir = Path(opts.cache_dir).expanduser().resolve() if opts.cache_dir else output / "cache"
    if opts.cache_dir:  # a file there, or no write access, would fail stage 1 after Ray started
        problems.run(check_output_dir, cache_dir, "--cache-dir")

    extra, note = None, ""
    best = problems.run(sweep_type.starting_point, opts, tracking_uri) if tracking_uri else None
    if best is not None:
        extra, note = best
        notes.append(f"starting from the {note}")
    spec = _load_spec(sweep_type, spec_path, cli if cli is not None else {}, extra, problems)
    if spec is None:   # _load_spec kept its error
        if own:
            problems.raise_all()
        raise Refused()

    cfgs = sweep_type.configs(spec)
    data_given = [c for c in cfgs if c.data.path != MISSING_DATA_PATH]
    before = len(problems.errors)
    problems.run(_check_local_paths, data_given)
    paths_ok = len(problems.errors) == before
    resources = problems.run(check_resources,
                             opts.cpus_per_trial if opts.cpus_per_trial is not None else spec.resources.cpu,
                             opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpu,
                             "--cpus-per-trial/--gpus-per-trial")
    if resources is not None:
        resources = dataclasses.replace(resources, stage1=spec.resources.stage1)
        _check_local_resources(resources, opts, problems)
        for cfg in cfgs:
            problems.run(_check_device, cfg, resources)
    problems.run(check_devices, cfgs, cluster_address(opts.address))
    notes += device_notes(cfgs, cluster_address(opts.address))
    max_concurrent = opts.max_concurrent if opts.max_concurrent is not None else spec.max_concurrent
    max_failures = opts.max_failures if opts.max_failures is not None else spec.max_failures
    problems.run(_check_counts, max_concurrent, max_failures)
    if output:
        problems.run(within, output, "ray", spec.name)  # the name was checked; this is the belt to its braces
    if cluster_address(opts.address):
        problems.run(probe, cluster_address(opts.address))  # a cluster that is not there: seconds, nothing written
    data = problems.run(_data_info, data_given, opts.strict, cache_dir, opts.dry_run) if paths_ok and len(data_given) == len(cfgs) else None
    for cfg in cfgs:
        problems.run(_check_random_encoders, cfg, data)
    if problems.errors:
        if own:
            problems.raise_all()
        raise Refused()

    settings, plan_key, parent_tags = sweep_type.plan(spec, PlanInputs(
        data, cache_dir, code, tracking_uri, lambda cfg: device_type(cfg, resources), opts, starting_note=note))
    parent_tags.update({"dataset": _dataset_names(data), "media_coverage": _media_coverage(data)})
    encoders = sorted({json.dumps(describe_encoders(cfg.stage1), sort_keys=True) for cfg in cfgs})
    parent_tags["encoders"] = "; ".join(", ".join(f"{m} {d}" for m, d in json.loads(e).items()) for e in encoders)
    plan = SweepPlan(spec, kind, output, tracking_uri, cache_dir, resources, max_concurrent, max_failures,
                     settings, plan_key, parent_tags, data, code, notes)
    parent_tags.update({"git_commit": git, "spec_path": str(spec.path), "dataset_path": spec.base.data.path,
                        "plan_key": plan_key, "code_fingerprint": code, "ray_experiment": plan.exp_name})
    return plan


class Refused(Exception):
    """prepare() with a caller's Problems found some: the caller (--dry-run) reports them."""


# ---- running ---------------------------------------------------------------------------------------

def _ray_init(opts: SweepOptions) -> bool:
    """Start a private local Ray, or join --address / RAY_ADDRESS (sweep/ray_start.py); returns whether
    this call started it (and must stop it)."""
    return start_ray(cluster_address(opts.address), opts.num_cpus, opts.verbose, worker_env(), num_gpus=opts.num_gpus)


def _check_cluster(resources, cfgs) -> None:
    import ray

    total = ray.cluster_resources()
    check_cluster_devices(cfgs, total.get("GPU", 0.0))
    for key, need in (("CPU", resources.cpu), ("GPU", resources.gpu)):
        have = total.get(key, 0.0)
        if need > have:
            raise ConfigError(f"each trial asks for {need:g} {key} but the Ray cluster has {have:g} in all; "
                              f"lower --{key.lower()}s-per-trial")


def _quiet(verbose: bool) -> None:
    """Ray's and MLflow's own chatter only with -v; our progress line says what matters."""
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    import mlflow  # noqa: F401  (MLflow sets its loggers' levels when imported: import first, then quiet them)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def run_sweep(kind: str, spec_path: str | Path, overrides: Sequence[str], opts: SweepOptions) -> SweepOutcome:
    """validate and plan -> lock -> Sweep.run: [parent run, Ray start] -> stage 1 -> fit -> record -> finish."""
    sweep_kind(kind)   # raises ValueError for anything but ablate and tune
    if opts.dry_run:   # checks and the plan only: no Ray, no MLflow, nothing written
        from sweep.dry_run import dry_run

        return dry_run(kind, spec_path, overrides, opts)
    _quiet(opts.verbose)
    plan = prepare(kind, spec_path, overrides, opts)
    for note in plan.notes:
        print(note, flush=True)

    sweep_root = within(plan.output, "ray", plan.spec.name)
    sweep_root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(sweep_root / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepError(f"sweep '{plan.spec.name}' is already running from another command (lock "
                         f"{sweep_root / '.lock'}); wait for it, or give this sweep another name") from None
    try:
        return Sweep(plan, opts, sweep_root).run()
    finally:
        lock.release()


class Sweep:
    """One invocation of a sweep, holding the lock of its output directory. What differs between an ablation
    and a search is asked of its kind (`self.kind`, sweep/kinds.py)."""

    def __init__(self, plan: SweepPlan, opts: SweepOptions, sweep_root: Path):
        self.plan, self.opts, self.sweep_root = plan, opts, sweep_root
        self.kind = sweep_kind(plan.kind)
        self.spec, self.sweep = plan.spec, plan.spec.name
        self.exp_path = sweep_root / plan.exp_name

    def say(self, text: str) -> None:
        self.outcome.messages.append(text)
        print(text, flush=True)

    def run(self) -> SweepOutcome:
        # A new SQLite store takes MLflow seconds to build (its schema migrations: 5 s on 2 cores) and holds no
        # finished trial yet, so Ray starts meanwhile, in the main thread (Ray sets its SIGTERM handler there).
        # With a store that exists, Ray starts only once MLflow says there is something to train.
        aside = set_aside_unrestorable(self.exp_path)   # we hold the lock: its driver is gone
        if aside is not None:
            print(f"note: {self.exp_path} was left by a driver killed before Ray Tune's first snapshot and cannot "
                  f"be resumed; moved to {aside}, the experiment starts afresh (trials final in MLflow are kept)",
                  flush=True)
        early = self._new_store()
        started_ray = False
        try:
            if early:
                with ThreadPoolExecutor(1, thread_name_prefix="mlflow-open") as pool:
                    opened = pool.submit(self.open_records)
                    started_ray = _ray_init(self.opts)
                backlog = opened.result()
            else:
                backlog = self.open_records()
            if backlog.complete:
                self.say(f"sweep '{self.sweep}': nothing to train (every trial of its plan is final in MLflow)")
                return self.finish()
            if not early:
                started_ray = _ray_init(self.opts)
            self.say(f"Ray: {describe(cluster_address(self.opts.address), started_ray)}")
            _check_cluster(self.plan.resources, self.kind.configs(self.spec))
            gate = self.stage1_gate(backlog)
            if gate is None and not self.schedule_stage1(backlog):
                return self.outcome
            return self.fit(backlog, gate)
        finally:
            if started_ray:
                import ray

                ray.shutdown()

    def _new_store(self) -> bool:
        db = tracking.sqlite_path(self.plan.tracking_uri)
        return db is not None and not db.exists()

    def open_records(self) -> Backlog:
        """MLflow's side of the start: the experiment, this output's parent run, what Ray's storage holds
        and MLflow lacks; -> what this run trains (its kind's `backlog`)."""
        plan = self.plan
        self.client = tracking.make_client(plan.tracking_uri)
        artifact_root = plan.output / "mlartifacts" if tracking.sqlite_path(plan.tracking_uri) else None
        self.experiment_id = tracking.ensure_experiment(self.client, self.sweep, artifact_root)
        self.parent_id = tracking.ensure_parent(self.client, self.experiment_id, self.sweep, plan.kind,
                                                plan.parent_tags, self.spec.text, str(self.spec.path),
                                                str(plan.output))
        self.outcome = SweepOutcome(self.sweep, plan.kind, "finished", experiment_id=self.experiment_id,
                                    parent_run_id=self.parent_id, ray_path=str(self.exp_path),
                                    output=plan.output, tracking_uri=plan.tracking_uri)

        # We hold this output's lock, so a child run of its parent still RUNNING belongs to a driver that is gone.
        tracking.close_stale_runs(self.client, self.experiment_id, self.parent_id)
        # Whatever Ray's storage holds and MLflow lacks (a tracking server that was away, a killed driver).
        synced = self.record(ray_trials(self.exp_path))
        if synced.written:
            self.say(f"wrote {synced.written} trial(s) from Ray's storage into MLflow")
        return self.kind.backlog(self)

    def stage1_context(self):
        from sweep.stage1_plan import Stage1Context

        plan = self.plan
        return Stage1Context(self.sweep, self.client, self.experiment_id, plan.parent_tags["git_commit"],
                             str(plan.cache_dir), self.spec.resources.stage1 or plan.resources,
                             plan.max_concurrent, plan.max_failures, self.say)

    def stage1_gate(self, backlog: Backlog):
        """A fresh ablation computes stage 1 beside its trials (sweep/stage1_gate.py): each trial starts as
        soon as its own entry is ready. None when stage 1 goes first instead: a search, a resumed
        experiment (its restored searcher needs every entry settled), or `stage1_barrier`."""
        from sweep.stage1_gate import Stage1Gate
        from sweep.stage1_plan import check_fits

        if not self.kind.stage1_beside_trials(self.spec) or self.opts.stage1_barrier or restorable(self.exp_path):
            return None
        context = self.stage1_context()
        check_fits(context.resources)   # a task that never fits is bad input: exit 2 before anything runs
        return Stage1Gate(backlog.settings, context)

    def schedule_stage1(self, backlog: Backlog) -> bool:
        """Stage 1 before any trial, as Ray tasks of its own (sweep/stage1_plan.py): each distinct entry is
        computed once with resources.stage1, recorded in MLflow, and linked from the trials' settings, so
        every trial finds its entry in the cache and no slot waits. False when interrupted meanwhile
        (finished entries stay cached: the rerun computes only the missing ones)."""
        from sweep.stage1_plan import link_trials, schedule_stage1

        settings = self.kind.stage1_settings(self, backlog)
        if settings is None:   # each trial computes its own entry
            return True
        previous = _sigterm_as_sigint()
        try:
            link_trials(settings, schedule_stage1(settings, self.stage1_context()))
        except KeyboardInterrupt:
            self.outcome.status = "interrupted"
            self.say(f"sweep '{self.sweep}' was interrupted during stage 1. Rerun the same command to resume; "
                     f"finished stage-1 entries are kept in the cache.")
            return False
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return True

    def fit(self, backlog: Backlog, gate=None) -> SweepOutcome:
        """Tune's fit (restored or fresh), then how each trial ended into MLflow, then the end of the sweep."""
        from ray import tune

        trainable = tune.with_resources(train_trial, self.plan.resources.as_ray())
        total = self.kind.trial_count(self.spec, backlog)
        before = {t.trial_id for t in ray_trials(self.exp_path) if t.status}
        tuner = self.tuner(trainable, backlog, total, gate)
        started = time.time()
        completed = _fit(tuner, gate)
        resumed = self.kind.errored_early(self.plan, self.exp_path, total, self.say) if completed else []
        if resumed:
            # Their runs were closed FAILED by the MLflow callback: reopened, the resumed trials take them up again.
            tracking.reopen_trial_runs(self.client, self.experiment_id, self.parent_id, resumed)
            _fit(tune.Tuner.restore(str(self.exp_path), trainable=trainable, resume_unfinished=True,
                                    resume_errored=True), None)
        elapsed = time.time() - started

        trials = ray_trials(self.exp_path)  # what Ray saved: the one record of how each trial ended
        self.outcome.trained = len([t for t in trials if t.status and t.trial_id not in before])
        return self.record_fit(trials, elapsed)

    def tuner(self, trainable, backlog: Backlog, total: int, gate):
        """The same plan's Ray experiment restored, else a fresh one of this sweep's kind."""
        from ray import tune

        # These two import Ray at module level: only a sweep that trains pays for it.
        from sweep.mlflow_callback import MLflowSweepCallback, SweepRecord
        from sweep.progress import ProgressCallback

        plan, spec = self.plan, self.spec
        if restorable(self.exp_path):
            # The callbacks come back from the experiment (Ray pickled them at the first launch); their
            # record names this run's store and parent, which the experiment's name pins down.
            self.say(f"resuming sweep '{self.sweep}' from {self.exp_path} (interrupted trials continue from their "
                     f"last checkpoint; trials that failed stay failed)")
            return tune.Tuner.restore(str(self.exp_path), trainable=trainable, resume_unfinished=True,
                                      resume_errored=False)
        record = SweepRecord(self.sweep, plan.kind, plan.tracking_uri, self.experiment_id, self.parent_id,
                             plan.parent_tags["git_commit"])
        metric, mode, budget = self.kind.progress_target(spec)
        progress = ProgressCallback(self.sweep, total, metric, mode, budget, spec.base.train.epochs)
        run_config = _run_config(plan, self.sweep_root, [MLflowSweepCallback(record, self.client), progress,
                                                         *self.opts.callbacks], self.opts)
        tuner = self.kind.tuner(plan, trainable, run_config, backlog, gate, self.opts)
        self.say(f"sweep '{self.sweep}': {total} trial(s), {plan.resources.cpu:g} CPU + {plan.resources.gpu:g} "
                 f"GPU each{', at most ' + str(plan.max_concurrent) + ' at once' if plan.max_concurrent else ''}"
                 f"; MLflow {plan.tracking_uri}; Ray storage {self.exp_path}")
        return tuner

    def record_fit(self, trials, elapsed: float) -> SweepOutcome:
        """How each trial ended, into MLflow; the sweep finished, or interrupted, or left for `sync`."""
        plan = self.plan
        try:
            report = self.record(trials)
            missing = self.unfinished(report, elapsed)
            if missing:
                tracking.close_stale_runs(self.client, self.experiment_id, self.parent_id)  # taken up on resume
                tracking.end_parent(self.client, self.parent_id, "KILLED")
        except Exception as err:  # the store went away: the results are in Ray's storage, sync writes them later
            self.outcome.status = "unrecorded"
            self.say(f"warning: MLflow ({plan.tracking_uri}) failed at the end of the sweep ({type(err).__name__}: "
                     f"{str(err)[:300]}). Every result is kept in Ray's storage ({self.exp_path}); once the store "
                     f"is back, run: python run_sweep.py sync {self.sweep} --output {plan.output}"
                     + (f" --tracking-uri {self.opts.tracking_uri}" if self.opts.tracking_uri else ""))
            return self.outcome
        if missing:
            self.outcome.status = "interrupted"
            self.say(f"sweep '{self.sweep}' was interrupted ({missing}). Rerun the same command to resume; "
                     f"finished trials are kept.")
            return self.outcome
        return self.finish()

    def record(self, trials) -> SyncReport:
        return sync_trials(self.client, self.experiment_id, self.parent_id, self.plan.parent_tags["git_commit"],
                           trials)

    def unfinished(self, report: SyncReport, elapsed: float) -> str:
        """Why the sweep is not complete ('' when it is): Ray's unfinished trials, then the plan in MLflow."""
        if report.unfinished:
            return f"{len(report.unfinished)} trial(s) unfinished"
        return self.kind.not_started(self, report, elapsed)

    def finish(self) -> SweepOutcome:
        """Record the end: duplicates closed, the parent FINISHED with its plan marked complete, the table."""
        plan, client = self.plan, self.client
        closed = tracking.deduplicate(client, self.experiment_id, self.parent_id)
        if closed:
            self.outcome.messages.append(f"closed {closed} duplicate run(s)")
        runs = self.kind.runs_of_plan(plan, tracking.child_runs(client, self.experiment_id, self.parent_id))
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.info.status] = counts.get(run.info.status, 0) + 1
        tracking.retrying(client.set_tag, self.parent_id, "completed_plan", plan.plan_key)
        tracking.end_parent(client, self.parent_id, "FINISHED")
        text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"sweep '{self.sweep}' complete: {text or 'no runs'} in MLflow experiment '{self.sweep}' "
              f"({plan.tracking_uri})", flush=True)
        self.kind.print_summary(plan, runs)
        failed = [r for r in runs if r.info.status == "FAILED"]
        if failed:
            self.outcome.status = "failures"
            every = "every trial" if len(failed) == len(runs) else f"{len(failed)} of {len(runs)} trial(s)"
            reasons = "; ".join(f"{r.data.tags.get('mlflow.runName', r.info.run_id)}: "
                                f"{r.data.tags.get('failure_reason', 'no reason recorded')[:200]}" for r in failed[:5])
            self.say(f"sweep '{self.sweep}' finished, but {every} FAILED (exit code {FAILURES_EXIT}): {reasons}")
        return self.outcome


def _sigterm_as_sigint():
    """A batch system stops jobs with SIGTERM: treat it like Ctrl-C, so Tune saves its state and the sweep
    resumes later. Returns the previous handler (None when not in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


# Ray saves its experiment snapshot (which names each trial's latest checkpoint) at most every 10 s or more, and
# deletes checkpoints beyond num_to_keep as new ones arrive. A driver SIGKILLed between two snapshots resumes
# from the older one, so every checkpoint it may name must still exist: with saves at least this far apart, at
# most one arrives between snapshots and two kept suffice; with faster saves every checkpoint is kept.
KEEP_TWO_CHECKPOINTS_FROM_S = 60.0


def checkpoints_to_keep(kind: str, spec) -> int | None:
    """Ray's num_to_keep for a sweep: 2 when every trial saves at most every KEEP_TWO_CHECKPOINTS_FROM_S
    seconds (train.checkpoint_interval_s, default 300), else None (all kept)."""
    configs = sweep_kind(kind).configs(spec)
    interval = min(cfg.train.checkpoint_interval_s for cfg in configs)
    return 2 if interval >= KEEP_TWO_CHECKPOINTS_FROM_S else None


def _fit(tuner, gate) -> bool:
    """tuner.fit() with SIGTERM as Ctrl-C; False when interrupted (a second Ctrl-C skips Tune's last save; the
    state saved before still resumes). The stage-1 gate, if any, is closed either way."""
    previous = _sigterm_as_sigint()
    try:
        tuner.fit()
        return True
    except KeyboardInterrupt:
        return False
    finally:
        if gate is not None:   # all settled after a complete fit; interrupted: cancel what still computes
            gate.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_config(plan: SweepPlan, sweep_root: Path, callbacks, opts: SweepOptions):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    # With TUNE_DISABLE_AUTO_CALLBACK_LOGGERS (core/environment.py) Tune adds no result files of its own.
    callbacks = [*callbacks, JsonLoggerCallback()]
    return tune.RunConfig(name=plan.exp_name, storage_path=str(sweep_root), callbacks=callbacks,
                          verbose=1 if opts.verbose else 0,
                          # Seen in the resume test with two kept and a save every epoch: the snapshot named a
                          # checkpoint two saves old, already deleted ("Could not recover from checkpoint as
                          # it does not exist on storage anymore").
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(plan.kind, plan.spec)),
                          failure_config=tune.FailureConfig(max_failures=plan.max_failures))
