"""Optuna search with ASHA on Ray Tune (real Optuna, real Ray, real MLflow), then an ablation from its
best config (`--from-tune`)."""
from __future__ import annotations

import csv
import io
import json

import optuna
import pytest
from mlflow.tracking import MlflowClient
from conftest import child_runs, parent_runs, write_ablation, write_search

from reports.report import make_report
from reports.store import tracking_uri_for
from sweep.engine import SweepOptions, run_sweep

pytestmark = pytest.mark.slow

PARAMS = {
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 0.3, "log": True},
    "fusion.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "width_heads": {"type": "categorical", "choices": [{"fusion.width": 8, "fusion.heads": 2},
                                                       {"fusion.width": 12, "fusion.heads": 3}]},
    "fusion.anchor_gating": {"type": "categorical", "choices": [True, False]},
    "fusion.layers": {"type": "int", "low": 1, "high": 2, "when": {"fusion.anchor_gating": True}},
}


def test_optuna_asha_search_then_ablation_from_its_best(tmp_path, ray_local, stage1_cache):
    # One trial at a time and a seeded sampler: the proposals and ASHA's decisions are reproducible.
    spec = write_search(tmp_path, "search", PARAMS, num_samples=8, epochs=4, max_concurrent=1, sampler_seed=3,
                        asha={"metric": "dev_wf1", "grace_period": 1, "reduction_factor": 2})
    opts = SweepOptions(output=tmp_path / "runs", cache_dir=stage1_cache)
    outcome = run_sweep("tune", spec, [], opts)
    assert outcome.status == "finished" and outcome.trained == 8

    runs = child_runs(opts.output, "search")
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    early = [r for r in runs if "stopped_early" in r.data.tags]
    assert early, "ASHA stopped no trial"
    assert len(early) < 8
    for run in early:  # stopped runs hold the epochs they trained, no more
        assert run.data.params["train.epochs"] == "4" and int(run.data.metrics["selected_epoch"]) <= 3
    for run in runs:
        over = json.loads(run.data.tags["overrides"])
        assert set(over) >= {"train.lr", "fusion.dropout", "fusion.width", "fusion.heads", "fusion.anchor_gating"}
        assert ("fusion.layers" in over) == over["fusion.anchor_gating"]
        assert float(run.data.params["train.lr"]) == pytest.approx(over["train.lr"])
    (parent,) = parent_runs(opts.output, "search")
    assert parent.data.tags["sweep_kind"] == "tune" and parent.data.tags["metric"] == "selected_dev_wf1"
    assert json.loads(parent.data.tags["search_params"])[0] == "train.lr"

    # The Optuna study holds every trial: those ASHA stopped as PRUNED with one intermediate value per epoch
    # they trained (dev_wf1, ASHA's metric), the value being the last of them; the others COMPLETE.
    storage = f"sqlite:///{opts.output / 'optuna' / 'search.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert len(study.trials) == 8
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    client = MlflowClient(f"sqlite:///{opts.output / 'mlflow.db'}")
    for run in runs:
        ot = by_ray_id[run.data.tags["trial_id"]]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "dev_wf1")}
        assert ot.intermediate_values == pytest.approx(history)
        if "stopped_early" in run.data.tags:
            assert ot.state == optuna.trial.TrialState.PRUNED and max(history) < 4
            assert ot.value == pytest.approx(history[max(history)])
        else:
            assert ot.state == optuna.trial.TrialState.COMPLETE and max(history) == 4
            assert ot.value == pytest.approx(run.data.metrics["selected_dev_wf1"])
    complete = [r for r in runs if "stopped_early" not in r.data.tags]
    assert study.best_value == pytest.approx(max(r.data.metrics["selected_dev_wf1"] for r in complete))

    # The report answers "what next": every trial best first, one column per searched parameter (width and
    # heads as the parts of their grouped choice), fusion.layers blank where gating was off (not active),
    # trials ASHA stopped marked with the epoch they reached.
    report = make_report("search", tracking_uri_for(opts.output), tmp_path / "report", formats=("md", "csv"), top=0)
    rows = list(csv.DictReader(io.StringIO(report.paths["csv"].read_text(encoding="utf-8"))))
    scores = [float(r["selected_dev_wf1"]) for r in rows]
    assert len(rows) == 8 and scores == sorted(scores, reverse=True)
    head = [c.strip() for c in report.markdown.splitlines()[2].strip("|").split("|")]
    assert head[3:9] == ["train.lr", "fusion.dropout", "fusion.width", "fusion.heads", "fusion.anchor_gating",
                         "fusion.layers"]
    by_trial_id = {r.data.tags["trial_id"]: r for r in runs}
    for row in rows:
        run = by_trial_id[row["trial_id"]]
        over = json.loads(run.data.tags["overrides"])
        assert (row["fusion.layers"] == "") == (not over["fusion.anchor_gating"])
        assert float(row["train.lr"]) == pytest.approx(over["train.lr"])
        assert row["state"].startswith("stopped at epoch") == ("stopped_early" in run.data.tags)

    # The same command again: nothing trains, no run is added.
    again = run_sweep("tune", spec, [], opts)
    assert again.trained == 0 and len(child_runs(opts.output, "search")) == 8

    # An ablation from the best config found.
    best = max(runs, key=lambda r: r.data.metrics["selected_dev_wf1"])
    best_over = json.loads(best.data.tags["overrides"])
    abl = write_ablation(tmp_path, "from-best", {"full": {}, "T": {"fusion.modalities": ["text"]}}, seeds=(0,),
                         epochs=2)
    result = run_sweep("ablate", abl, [], SweepOptions(output=opts.output, cache_dir=stage1_cache,
                                                        from_tune="search"))
    assert result.status == "finished" and result.trained == 2
    for run in child_runs(opts.output, "from-best"):
        assert float(run.data.params["train.lr"]) == pytest.approx(best_over["train.lr"])
        assert run.data.params["fusion.width"] == str(best_over["fusion.width"])
        assert run.data.params["train.epochs"] == "2"        # the ablation's own settings stay its own
    (aparent,) = parent_runs(opts.output, "from-best")
    assert aparent.data.tags["from_tune"] == "search"
    # ... and its report says which tune sweep and trial it started from.
    markdown = make_report("from-best", tracking_uri_for(opts.output), tmp_path / "abl", formats=("md",)).markdown
    caption = next(part for part in markdown.split("\n\n") if part.startswith("Details: "))   # under the table
    assert f"starts from the best trial of tune sweep 'search': trial {best.data.tags['trial_id']}, run " \
           f"{best.info.run_id}" in caption
