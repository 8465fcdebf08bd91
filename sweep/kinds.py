"""What differs between the two kinds of sweep, one class each: an ablation (`AblationKind`: every variant x seed,
known before it runs) and a search (`SearchKind`: Optuna proposes trials while it runs).

    kind = sweep_kind("ablate")     # AblationKind() | SearchKind()

The engine (sweep/engine.py) runs both the same way and asks its sweep's kind wherever they differ:
  plan      load_spec, configs, starting_point, plan      (engine.prepare, before anything runs)
  restore   backlog: what this run trains, given what MLflow already holds
  stage 1   stage1_beside_trials, stage1_settings
  fit       trial_count, progress_target, tuner, errored_early
  record    not_started, runs_of_plan, print_summary
A kind holds no state: what one run learns (its `Backlog`) stays with the run.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from core.config import ConfigError, stable_hash
from model.encoder_ids import describe_encoders
from sweep import tracking
from sweep.ablation_spec import AblationSpec, load_ablation
from sweep.plan import SweepPlan, ablation_plan, data_key, search_plan
from sweep.search_space import SearchSpec, load_search_space
from sweep.seed_members import bundle_trials, seed_groups, seed_summary
from sweep.spec_common import check_sweep_name
from sweep.sync import SyncReport, errored_with_retries_left
from sweep.trainable import trial_config

if TYPE_CHECKING:
    from sweep.engine import Sweep, SweepOptions


@dataclass
class PlanInputs:
    """What engine.prepare has validated, from which a kind builds its plan."""
    data: dict[str, dict]                  # per dataset (plan.data_key): fingerprint, labels, name, coverage
    cache_dir: Path
    code: str                              # code fingerprint (sweep.identity)
    tracking_uri: str
    device_type: Callable                  # cfg -> cuda | cpu | mps: the device a trial of cfg runs on
    opts: "SweepOptions"
    starting_note: str = ""                # where an ablation's base came from (--from-tune), for its report


@dataclass
class Backlog:
    """What one run of a sweep trains, once MLflow has said what of its plan is already final."""
    complete: bool                         # every trial of the plan is final in MLflow: nothing to train
    settings: list[dict]                   # what Tune's trials and stage 1 are built from: an ablation's trials
                                           # not yet final, one each; a search's settings that every trial
                                           # Optuna proposes shares, one per seed of a trial


class AblationKind:
    """An ablation: its plan is the ordered list of trial identities; each trains until it has a final run."""
    name = "ablate"

    # ---- plan ----
    def load_spec(self, spec_path, overrides: dict, extra_base: Optional[dict]) -> AblationSpec:
        return load_ablation(spec_path, overrides, extra_base=extra_base)

    def configs(self, spec: AblationSpec) -> list:
        """Every trial's config."""
        return [t.cfg for t in spec.trials()]

    def starting_point(self, opts: "SweepOptions", tracking_uri: str) -> Optional[tuple[dict, str]]:
        """(overrides, where they came from) of the best trial of the tune sweep --from-tune names; None without it."""
        if not opts.from_tune:
            return None
        return best_of_tune(check_sweep_name(opts.from_tune, "--from-tune"), tracking_uri)

    def plan(self, spec: AblationSpec, given: PlanInputs) -> tuple[list[dict], str, dict[str, str]]:
        """(trial settings in launch order, plan key, parent tags)."""
        common = {"sweep": spec.name, "cache_dir": str(given.cache_dir), "code_fingerprint": given.code}
        settings, identities, parent_tags = ablation_plan(spec, given.data, common, given.device_type)
        # The plan key names the Ray experiment: the identities, and the store (a restored Tune callback
        # writes to the store it was pickled with).
        plan_key = stable_hash([identities, given.tracking_uri])
        for s in settings:
            s["plan_key"] = plan_key
            s["encoders"] = describe_encoders(trial_config({"trial": s}).stage1)
        parent_tags.update({"from_tune": given.opts.from_tune or "",
                            "from_tune_source": given.starting_note})  # the ablation report's caption names the trial
        return settings, plan_key, parent_tags

    # ---- restore ----
    def backlog(self, sweep: "Sweep") -> Backlog:
        """The trials of the plan whose identity has no final run yet, one settings dict each."""
        plan = sweep.plan
        to_train = self.not_final(sweep)
        sweep.outcome.skipped = len(plan.trial_settings) - len(to_train)
        if sweep.outcome.skipped and to_train:
            sweep.say(f"{sweep.outcome.skipped} of {len(plan.trial_settings)} trials of this plan are already final "
                      f"in MLflow (same config, data, code and stage-1 key): skipped")
        return Backlog(complete=not to_train, settings=to_train)

    @staticmethod
    def not_final(sweep: "Sweep") -> list[dict]:
        """The trial settings whose identity has no final run under this parent."""
        final = tracking.representatives(tracking.child_runs(sweep.client, sweep.experiment_id, sweep.parent_id))
        return [s for s in sweep.plan.trial_settings if s["identity"] not in final]

    # ---- stage 1 ----
    def stage1_beside_trials(self, spec: AblationSpec) -> bool:
        """A trial can start once its own entry is ready, unless it bundles seeds (it needs every seed's entry)."""
        return spec.seed_bundle <= 1

    def stage1_settings(self, sweep: "Sweep", backlog: Backlog) -> Optional[list[dict]]:
        return backlog.settings

    # ---- fit ----
    def trial_count(self, spec: AblationSpec, backlog: Backlog) -> int:
        return len(self.tune_trials(spec, backlog))

    @staticmethod
    def tune_trials(spec: AblationSpec, backlog: Backlog) -> list[dict]:
        """Seeds of a variant as one trial each k (sweep/seed_members.py); 1: as they are."""
        return bundle_trials(backlog.settings, spec.seed_bundle)

    def progress_target(self, spec: AblationSpec) -> tuple[str, str, float]:
        return "selected_dev_wf1", "max", 0.0

    def tuner(self, plan: SweepPlan, trainable, run_config, backlog: Backlog, gate, opts: "SweepOptions"):
        """The plan as one grid, or, with a stage-1 gate, each trial handed to Tune once its entry is ready."""
        from ray import tune

        trials = self.tune_trials(plan.spec, backlog)
        if gate is not None:
            space, order = {}, {"search_alg": gate.searcher(plan.tracking_uri), "num_samples": len(trials)}
        else:
            space, order = {"trial": tune.grid_search(trials)}, {}
        return tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(reuse_actors=True,
                                                      max_concurrent_trials=plan.max_concurrent or None,
                                                      trial_dirname_creator=trial_dirname, **order),
                          run_config=run_config)

    def errored_early(self, plan: SweepPlan, exp_path: Path, total: int, say) -> list[str]:
        """The MLflow trial ids (one per seed of a bundle) of the trials Ray ended ERROR with retries left
        (`sync.errored_with_retries_left`: Tune counts an actor lost while its trial starts as two failures),
        to be resumed once. Only when every ERROR trial is one of them: resuming ERROR trials resumes them all,
        and a trial that used its retries must stay FAILED."""
        early, errored = errored_with_retries_left(exp_path, plan.max_failures, total)
        if not early:
            return []
        why = "Tune counts an actor lost while its trial starts as two failures"
        if len(early) < errored:
            say(f"warning: Ray ended {len(early)} trial(s) ERROR before their {plan.max_failures} retries were used "
                f"({why}); they stay FAILED because other trials failed for good in the same experiment")
            return []
        say(f"Ray ended {len(early)} trial(s) ERROR before their {plan.max_failures} retries were used ({why}); "
            f"resuming them once from their last checkpoint")
        return [member for members in early.values() for member in members]

    # ---- record ----
    def not_started(self, sweep: "Sweep", report: SyncReport, elapsed: float) -> str:
        left = len(self.not_final(sweep))
        return f"{left} of {len(sweep.plan.trial_settings)} trial(s) not started" if left else ""

    def runs_of_plan(self, plan: SweepPlan, runs: list) -> list:
        """Per identity of the plan, its representative run."""
        chosen = tracking.representatives(runs)
        return [chosen[i] for i in plan.identities if i in chosen]

    def print_summary(self, plan: SweepPlan, runs: list) -> None:
        """Nothing: an ablation's table is printed by the command line (run_sweep.py)."""


    # ---- describe (--dry-run, sweep/dry_run.py) ----
    def describe_trials(self, plan: SweepPlan) -> str:
        variants = list(dict.fromkeys(s["variant"] for s in plan.trial_settings))
        seeds = sorted({s["seed"] for s in plan.trial_settings})
        return (f"  trials: {len(plan.trial_settings)} = {len(variants)} variant(s) x {len(seeds)} seed(s) {seeds}; "
                f"variants: {', '.join(variants)}")

    def planned_stage1(self, plan: SweepPlan) -> Optional[list[dict]]:
        """The settings stage 1's entries come from (None: searched keys change stage 1, so no plan of it)."""
        return plan.trial_settings

    def results_at(self, plan: SweepPlan) -> str:
        return f"tables: {plan.output / 'reports' / plan.spec.name} (python run_sweep.py report {plan.spec.name})"


class SearchKind:
    """An Optuna search with ASHA: its plan is its spec, data and code; Optuna proposes the trials."""
    name = "tune"

    # ---- plan ----
    def load_spec(self, spec_path, overrides: dict, extra_base: Optional[dict]) -> SearchSpec:
        return load_search_space(spec_path, overrides)

    def configs(self, spec: SearchSpec) -> list:
        """The base config (every trial is it plus Optuna's overrides)."""
        return [spec.base]

    def starting_point(self, opts: "SweepOptions", tracking_uri: str) -> None:
        return None

    def plan(self, spec: SearchSpec, given: PlanInputs) -> tuple[list[dict], str, dict[str, str]]:
        """(no trial settings: they are proposed while it runs, plan key, parent tags)."""
        opts = given.opts
        parent_tags = search_plan(spec, opts.num_samples, opts.time_budget, opts.seeds, opts.seed_objective)
        parent_tags["device_type"] = given.device_type(spec.base)
        plan_key = stable_hash([spec.plan_key(), given.data[data_key(spec.base)]["fingerprint"], given.code,
                                given.tracking_uri, parent_tags["device_type"]])
        return [], plan_key, parent_tags

    # ---- restore ----
    def backlog(self, sweep: "Sweep") -> Backlog:
        """Complete once a run of this plan finished (its parent tag `completed_plan`). The settings are those
        every trial shares, one per seed a trial trains (`tune --seeds k`: k, trained as one bundle)."""
        plan = sweep.plan
        done = tracking.retrying(sweep.client.get_run, sweep.parent_id).data.tags.get("completed_plan")
        return Backlog(complete=done == plan.plan_key, settings=self.shared_settings(plan))

    @staticmethod
    def shared_settings(plan: SweepPlan) -> list[dict]:
        spec: SearchSpec = plan.spec
        shared = {"sweep": spec.name, "variant": "tune", "slug": "trial",
                  "base": spec.base.to_dict(), "cache_dir": str(plan.cache_dir),
                  "data": plan.data_info[data_key(spec.base)], "code_fingerprint": plan.code,
                  "plan_key": plan.plan_key, "device_type": plan.parent_tags["device_type"],
                  "encoders": describe_encoders(spec.base.stage1)}
        return [{**shared, "seed": seed} for seed in spec.trial_seeds]

    # ---- stage 1 ----
    def stage1_beside_trials(self, spec: SearchSpec) -> bool:
        """No: the entries are computed before the search starts (its trials are not known in advance)."""
        return False

    def stage1_settings(self, sweep: "Sweep", backlog: Backlog) -> Optional[list[dict]]:
        """The shared settings (seeds sharing a stage 1 share its entry), or None when the search changes stage-1
        keys: each trial then computes its own entry."""
        from sweep.stage1_plan import fixed_stage1

        if fixed_stage1(sweep.spec.searched_keys, sweep.spec.base.stage1.shared_seed):
            return backlog.settings
        sweep.say(f"sweep '{sweep.sweep}' searches stage-1 keys: each stage-1 entry is computed by the first "
                  f"trial that needs it")
        return None

    # ---- fit ----
    def trial_count(self, spec: SearchSpec, backlog: Backlog) -> int:
        return spec.num_samples

    def progress_target(self, spec: SearchSpec) -> tuple[str, str, float]:
        return spec.metric, spec.mode, spec.time_budget_s

    def tuner(self, plan: SweepPlan, trainable, run_config, backlog: Backlog, gate, opts: "SweepOptions"):
        """Optuna's TPE proposes each trial (the shared settings plus its overrides); ASHA stops the weak ones."""
        import optuna
        from ray import tune

        from sweep.optuna_search import PruningAwareOptunaSearch, asha_scheduler, intermediate_metric

        spec: SearchSpec = plan.spec
        optuna.logging.set_verbosity(optuna.logging.INFO if opts.verbose else optuna.logging.WARNING)
        optuna_dir = plan.output / "optuna"
        optuna_dir.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{optuna_dir / (spec.name + '.db')}")
        searcher = PruningAwareOptunaSearch(  # ASHA-stopped trials reach the study as PRUNED (sweep/optuna_search.py)
            space=spec.define_by_run(backlog.settings), metric=spec.objective, mode=spec.mode,
            sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed), storage=storage, study_name=plan.exp_name,
            intermediate_metric=intermediate_metric(spec.metric, spec.mode, spec.asha.metric),
            budget_epochs=spec.base.train.epochs, max_t=spec.asha.max_t)
        scheduler = asha_scheduler(spec.asha, spec.base.train.epochs)
        return tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=spec.num_samples,
            max_concurrent_trials=plan.max_concurrent or None, time_budget_s=spec.time_budget_s or None,
            # No actor reuse: a trial ASHA stops keeps training until its epoch ends, and Ray gives a reused actor
            # 2 s for that (TUNE_FUNCTION_THREAD_TIMEOUT_S) before failing the next trial (sweep/optuna_search.py).
            reuse_actors=False, trial_dirname_creator=trial_dirname),
            run_config=run_config)

    def errored_early(self, plan: SweepPlan, exp_path: Path, total: int, say) -> list[str]:
        """None resumed: Optuna has already been told those trials failed."""
        return []

    # ---- record ----
    def not_started(self, sweep: "Sweep", report: SyncReport, elapsed: float) -> str:
        spec: SearchSpec = sweep.spec
        if spec.time_budget_s and elapsed >= spec.time_budget_s * 0.95:
            return ""  # the budget ran out: trials cut short stay as they are
        started = len(report.trials)
        return f"{started} of {spec.num_samples} trial(s) started" if started < spec.num_samples else ""

    def runs_of_plan(self, plan: SweepPlan, runs: list) -> list:
        """Every run launched under this plan key."""
        return [r for r in runs if r.data.tags.get("plan_key") == plan.plan_key]

    def print_summary(self, plan: SweepPlan, runs: list) -> None:
        """The best trial, and how to ablate from it."""
        spec: SearchSpec = plan.spec
        best = best_search_trial(runs, spec.objective, spec.metric, spec.mode)
        if best is None:
            return
        score, group = best
        seeds = f" (mean over seeds {','.join(r.data.tags.get('seed', '?') for r in group)})" if len(group) > 1 else ""
        print(f"best trial: {_trial_name(group)} {spec.objective} {score:.4f}{seeds} with "
              f"{group[0].data.tags.get('overrides')}\n"
              f"ablate from it: python run_sweep.py ablate ablations/FILE.yaml --from-tune {spec.name}", flush=True)

    # ---- describe (--dry-run, sweep/dry_run.py) ----
    def describe_trials(self, plan: SweepPlan) -> str:
        spec: SearchSpec = plan.spec
        budget = f", time budget {spec.time_budget_s:g} s" if spec.time_budget_s else ""
        return (f"  trials: {spec.num_samples} proposed by Optuna (TPE){budget}, ASHA on {spec.asha.metric}; "
                f"searched: {', '.join(spec.searched_keys)}")

    def planned_stage1(self, plan: SweepPlan) -> Optional[list[dict]]:
        """The base's stage-1 entry (None: searched keys change stage 1, so each trial's is its own)."""
        from sweep.stage1_plan import fixed_stage1

        spec: SearchSpec = plan.spec
        if not fixed_stage1(spec.searched_keys, spec.base.stage1.shared_seed):
            return None
        return [{"base": spec.base.to_dict(), "seed": spec.seed, "overrides": {},
                 "data": plan.data_info[data_key(spec.base)], "run_name": "trials"}]

    def results_at(self, plan: SweepPlan) -> str:
        return f"Optuna study: {plan.output / 'optuna' / (plan.spec.name + '.db')}"


def sweep_kind(name: str) -> AblationKind | SearchKind:
    """The kind a sweep command names: 'ablate' or 'tune'."""
    for kind in (AblationKind, SearchKind):
        if kind.name == name:
            return kind()
    raise ValueError(name)


def trial_dirname(trial) -> str:
    """Trial directories are named from slugs only (variant names may hold '/', e.g. 'w/o prompt')."""
    settings = (trial.config or {}).get("trial") or {}
    return f"{settings.get('slug', 'trial')}-{trial.trial_id}"


# ---- a search's best trial (its summary; an ablation's --from-tune) ------------------------------------

def best_of_tune(name: str, tracking_uri: str) -> tuple[dict, str]:
    """Overrides of the best FINISHED trial of tune sweep `name` (by its own metric and mode)."""
    db = tracking.sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise ConfigError(f"--from-tune {name}: there is no MLflow store at {db} yet")
    client = tracking.make_client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    parents = sorted(tracking.parent_runs(client, exp.experiment_id) if exp is not None else [],
                     key=lambda r: r.info.start_time or 0)
    if not parents or parents[-1].data.tags.get("sweep_kind") != SearchKind.name:
        raise ConfigError(f"--from-tune {name}: no tune sweep called '{name}' in {tracking_uri}")
    tags = parents[-1].data.tags
    base, mode = tags.get("metric", "selected_dev_wf1"), tags.get("mode", "max")
    metric = tags.get("objective") or base
    runs = [r for r in tracking.child_runs(client, exp.experiment_id, parents[-1].info.run_id) if "overrides" in r.data.tags]
    best = best_search_trial(runs, metric, base, mode)
    if best is None:
        raise ConfigError(f"--from-tune {name}: the tune sweep has no FINISHED trial with metric {metric}")
    score, group = best
    overrides = json.loads(group[0].data.tags["overrides"])
    seeds = f" over seeds {','.join(r.data.tags.get('seed', '?') for r in group)}" if len(group) > 1 else ""
    return overrides, (f"best trial of tune sweep '{name}': trial {_trial_name(group)}, run "
                       f"{group[0].info.run_id}, {metric} {score:.4f}{seeds}, {overrides}")


def _trial_name(group: list) -> str:
    tags = group[0].data.tags
    return tags.get("bundle_trial") or tags.get("trial_id", "?")


def best_search_trial(runs: list, objective: str, base: str, mode: str) -> Optional[tuple[float, list]]:
    """(score, its runs) of a search's best trial by `objective`, computed from each run's `base` metric: a trial
    of several seeds (tag `bundle_trial`) scores their mean over its FINISHED seeds (or the mean -/+ std the sweep
    optimised, sweep/seed_members.py seed_summary); None when no trial has the metric."""
    scored = []
    for group in seed_groups(runs, lambda r: r.data.tags):
        finished = [r for r in group if r.info.status == "FINISHED" and base in r.data.metrics]
        value = seed_summary(base, [r.data.metrics[base] for r in finished]).get(objective, math.nan)
        if math.isfinite(value):
            scored.append((value, sorted(finished, key=lambda r: int(r.data.tags.get("seed", 0)))))
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda item: item[0])
