"""`tune --seeds k`: every Optuna trial trains k seeds of its config as one seed bundle (real Ray, Optuna and
MLflow, synthetic data). Optuna's study holds the mean over the seeds (or mean - std with
`--seed-objective mean-std`), ASHA reads the per-epoch mean, every seed is its own MLflow run, and the
search report shows mean +- std per trial."""
from __future__ import annotations

import csv
import io
import json
import statistics

import optuna
import pytest
from mlflow.tracking import MlflowClient
from conftest import child_runs, parent_runs, write_search

from core.config import ConfigError
from reports.report import make_report
from reports.runs import best_listing
from reports.store import tracking_uri_for
from sweep.engine import SweepOptions, run_sweep

pytestmark = pytest.mark.slow

PARAMS = {"train.lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
          "fusion.dropout": {"type": "float", "low": 0.0, "high": 0.5}}


def _study(output, name):
    storage = f"sqlite:///{output / 'optuna' / (name + '.db')}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _by_bundle(runs) -> dict[str, list]:
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(run.data.tags["bundle_trial"], []).append(run)
    return groups


def test_tune_seeds_optimises_the_mean_and_reports_mean_std(tmp_path, ray_local, stage1_cache):
    # ASHA's grace period is the last epoch: no trial is stopped, so every trial is COMPLETE with its objective.
    spec = write_search(tmp_path, "seeded", PARAMS, num_samples=3, epochs=3, max_concurrent=1, sampler_seed=2,
                        asha={"metric": "dev_wf1", "grace_period": 3, "reduction_factor": 2})
    opts = SweepOptions(output=tmp_path / "runs", cache_dir=stage1_cache, seeds=3)
    outcome = run_sweep("tune", spec, [], opts)
    assert outcome.status == "finished" and outcome.trained == 9   # three Ray trials of three seeds each

    runs = child_runs(opts.output, "seeded")
    assert len(runs) == 9 and {r.info.status for r in runs} == {"FINISHED"}
    groups = _by_bundle(runs)
    assert len(groups) == 3
    client = MlflowClient(f"sqlite:///{opts.output / 'mlflow.db'}")
    study = _study(opts.output, "seeded")
    assert len(study.trials) == 3
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    spread = []
    for bundle_id, seeds in groups.items():
        # every seed is its own run: seeds 0, 1, 2 of one sampled config, trial ids <ray id>-s<seed>
        assert sorted(r.data.tags["seed"] for r in seeds) == ["0", "1", "2"]
        assert {r.data.tags["trial_id"] for r in seeds} == {f"{bundle_id}-s{s}" for s in range(3)}
        assert len({r.data.tags["overrides"] for r in seeds}) == 1
        assert len({r.data.tags["trial_identity"] for r in seeds}) == 3
        # Optuna's trial holds the mean over the seeds, and per epoch the mean dev wF1 (ASHA's metric)
        trial = by_ray_id[bundle_id]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        values = [r.data.metrics["selected_dev_wf1"] for r in seeds]
        assert trial.value == pytest.approx(statistics.mean(values))
        histories = [{m.step: m.value for m in client.get_metric_history(r.info.run_id, "dev_wf1")} for r in seeds]
        assert trial.intermediate_values == pytest.approx(
            {epoch: statistics.mean(h[epoch] for h in histories) for epoch in (1, 2, 3)})
        assert trial.params["train.lr"] == pytest.approx(json.loads(seeds[0].data.tags["overrides"])["train.lr"])
        spread.append(len({json.dumps(h) for h in histories}))
    assert max(spread) > 1, "the seeds of every bundle trained identically: seeds are not applied"
    (parent,) = parent_runs(opts.output, "seeded")
    assert parent.data.tags["seeds_per_trial"] == "3" and json.loads(parent.data.tags["seeds"]) == [0, 1, 2]

    # The report: one row per trial (not per seed), its scores mean +- std over the seeds, best first.
    report = make_report("seeded", tracking_uri_for(opts.output), tmp_path / "report", formats=("md", "csv"), top=0)
    rows = list(csv.DictReader(io.StringIO(report.paths["csv"].read_text(encoding="utf-8"))))
    assert len(rows) == 3 and [r["seeds"] for r in rows] == ["3", "3", "3"]
    for row in rows:
        values = [r.data.metrics["selected_dev_wf1"] for r in groups[row["trial_id"]]]
        assert float(row["selected_dev_wf1"]) == pytest.approx(statistics.mean(values))
        assert float(row["selected_dev_wf1_std"]) == pytest.approx(statistics.stdev(values))
        assert set(row["seed_run_ids"].split()) == {r.info.run_id for r in groups[row["trial_id"]]}
    assert [float(r["selected_dev_wf1"]) for r in rows] == sorted((float(r["selected_dev_wf1"]) for r in rows),
                                                                   reverse=True)
    best = rows[0]
    shown = f"{100 * float(best['selected_dev_wf1']):.2f} ± {100 * float(best['selected_dev_wf1_std']):.2f}"
    assert shown in report.markdown and "as one bundle" in report.markdown
    # `runs --best`: the same trial first, ranked by its mean over its three seeds, every seed's run listed.
    listing = best_listing("seeded", tracking_uri_for(opts.output), 1)
    first = next(line for line in listing.splitlines() if line.startswith("#1"))
    assert f"dev_wf1 {shown} over 3 seeds" in first and "the 1 best of 3 trials" in listing
    assert set(first.split("runs ", 1)[1].split()) == set(best["seed_run_ids"].split())


def test_tune_seed_objective_mean_minus_std(tmp_path, ray_local, stage1_cache):
    spec = write_search(tmp_path, "robust", PARAMS, num_samples=2, epochs=2, max_concurrent=1, sampler_seed=4,
                        seeds=2, seed_objective="mean-std",
                        asha={"metric": "dev_wf1", "grace_period": 2, "reduction_factor": 2})
    opts = SweepOptions(output=tmp_path / "runs", cache_dir=stage1_cache)
    assert run_sweep("tune", spec, [], opts).status == "finished"
    groups = _by_bundle(child_runs(opts.output, "robust"))
    study = _study(opts.output, "robust")
    assert len(groups) == 2 and len(study.trials) == 2
    for trial in study.trials:
        values = [r.data.metrics["selected_dev_wf1"] for r in groups[trial.user_attrs["ray_trial_id"]]]
        assert trial.value == pytest.approx(statistics.mean(values) - statistics.stdev(values))
    (parent,) = parent_runs(opts.output, "robust")
    assert parent.data.tags["objective"] == "selected_dev_wf1_mean_minus_std"


@pytest.mark.parametrize("top, message", [
    ({"seeds": 9}, "at most 8"),
    ({"seeds": 1, "seed_objective": "mean-std"}, "needs seeds >= 2"),
    ({"seeds": 2, "seed_objective": "median"}, "must be one of mean, mean-std"),
    ({"seeds": 2, "base": {"fusion.mode": "concat"}}, "fusion.mode=anchor"),
])
def test_bad_seed_settings_are_refused_before_anything_runs(tmp_path, top, message):
    from sweep.search_space import load_search_space

    base = top.pop("base", None)
    spec = write_search(tmp_path, "bad", PARAMS, **top)
    if base:
        import yaml

        data = yaml.safe_load(spec.read_text())
        data["base"].update(base)
        spec.write_text("# python run_sweep.py tune bad.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=message) as err:
        load_search_space(spec)
    assert str(spec) in str(err.value)
