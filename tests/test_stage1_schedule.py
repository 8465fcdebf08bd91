"""Stage 1 as scheduled work (sweep/stage1_plan.py) with real Ray (2 CPUs), real MLflow (SQLite) and the
real pipeline on the tiny synthetic config: each distinct entry computed once before its trials, recorded
as an MLflow run with metrics, linked from every trial; a failing entry fails its trials once; Tune's
searcher (sweep/stage1_gate.py) releases a trial only once its entry is settled, and an interrupt while an
entry computes resumes into the same plan."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import child_runs, write_ablation
from mlflow.tracking import MlflowClient
from ray import tune

from sweep.engine import FAILURES_EXIT, SweepOptions, run_sweep as sweep_run
from sweep.stage1_plan import CACHE_KEY_TAG, RUN_KIND_TAG, epoch_metrics

pytestmark = pytest.mark.slow

# Two stage-1 epochs so the teacher and students have per-epoch scores to record.
STAGE1_BASE = {"stage1.epochs": 2}


def _stage1_runs(output: Path, sweep: str) -> list:
    client = MlflowClient(f"sqlite:///{output.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(sweep)
    return client.search_runs([exp.experiment_id], f"tags.{RUN_KIND_TAG} = 'stage1'", max_results=1000)


def test_two_variants_share_an_entry_one_has_its_own_each_computed_once_before_its_trials(tmp_path, ray_local,
                                                                                         capsys):
    variants = {"full": {}, "w/o anchor gating": {"fusion.anchor_gating": False},   # one stage-1 entry
                "w/o prompt": {"stage1.prompt": False}}                               # its own entry
    spec = write_ablation(tmp_path, "plan", variants, seeds=(0,), epochs=2, extra_base=STAGE1_BASE)
    opts = SweepOptions(output=tmp_path / "runs", cache_dir=tmp_path / "cache")   # cold cache
    outcome = sweep_run("ablate", spec, [], opts)
    assert outcome.status == "finished" and outcome.trained == 3
    printed = capsys.readouterr().out
    assert "stage 1: 2 distinct entries, 0 in the cache, 2 to compute" in printed
    assert "[plan] stage 1: 2/2 done, 0 running" in printed

    stage1 = _stage1_runs(opts.output, "plan")
    assert len(stage1) == 2 and {r.info.status for r in stage1} == {"FINISHED"}
    assert {r.data.tags["stage1_source"] for r in stage1} == {"computed"}   # each computed once, by its task
    assert len({r.data.tags[CACHE_KEY_TAG] for r in stage1}) == 2
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.safetensors")) == \
        sorted(f"{r.data.tags[CACHE_KEY_TAG]}.safetensors" for r in stage1)
    client = MlflowClient(f"sqlite:///{opts.output.resolve() / 'mlflow.db'}")
    by_id = {r.info.run_id: r for r in stage1}
    for run in stage1:
        tags, metrics = run.data.tags, run.data.metrics
        assert len(tags["dataset_fingerprint"]) == 16 and tags["dataset"] == "synthetic" and tags["git_commit"]
        assert tags["device"] == "cpu" and run.data.params["stage1.epochs"] == "2"
        assert tags[CACHE_KEY_TAG] == f"{tags['dataset_fingerprint']}-{tags['stage1_hash']}"
        for modality in ("text", "audio", "video"):   # the teacher and both students, per epoch
            for name in ("train_loss", "dev_wf1", "dev_acc", "test_wf1", "test_acc"):
                history = client.get_metric_history(run.info.run_id, f"{modality}_{name}")
                assert [m.step for m in history] == [1, 2], (modality, name)
            assert 0 <= metrics[f"selected_{modality}_dev_wf1"] <= 1 and metrics[f"selected_{modality}_epoch"] in (1, 2)
            # the test score at the kept epoch is that epoch's point of the per-epoch test history
            test_history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{modality}_test_wf1")}
            assert metrics[f"selected_{modality}_test_wf1"] == pytest.approx(
                test_history[int(metrics[f"selected_{modality}_epoch"])], abs=1e-4)
        assert metrics["wall_seconds"] > 0 and metrics["stage1_seconds"] > 0
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["stage1.log"]

    trials = child_runs(opts.output, "plan")
    assert len(trials) == 3 and {r.info.status for r in trials} == {"FINISHED"}
    links = {r.data.tags["variant"]: r.data.tags["stage1_run_id"] for r in trials}
    assert set(links.values()) == set(by_id)                              # every trial links to an entry's run
    assert links["full"] == links["w/o anchor gating"] != links["w/o prompt"]
    assert by_id[links["w/o prompt"]].data.params["stage1.prompt"] == "False"
    for trial in trials:   # no trial started before its entry was ready (one clock: this machine's)
        assert trial.info.start_time >= by_id[trial.data.tags["stage1_run_id"]].info.end_time

    # The table's caption shows the stage-1 scores behind each row.
    from reports.store import load_sweep
    from reports.table import build_table

    caption = " ".join(build_table(load_sweep("plan", f"sqlite:///{opts.output.resolve() / 'mlflow.db'}")).caption)
    assert "Stage 1 behind each row" in caption
    for run_id in set(links.values()):   # rows that share an entry share one entry of the caption
        rows = [v for v in variants if links[v] == run_id]
        run = by_id[run_id]   # dev / test wF1 of the teacher at its kept epoch, as percentages
        dev, test = (100 * run.data.metrics[f"selected_text_{split}_wf1"] for split in ("dev", "test"))
        assert f"{', '.join(rows)}: text {dev:.2f} / {test:.2f}" in caption and run_id[:8] in caption
        # In the MLflow UI the stage-1 run is named after the rows that use it.
        assert run.data.tags["rows"] == ", ".join(rows)
        assert run.data.tags["mlflow.runName"].startswith(f"stage 1 for {', '.join(rows)} (")

    # Resume/extend: a second seed needs the same two entries: both reused from the cache, no new
    # stage-1 run, the new trials link to the runs that computed them.
    more = write_ablation(tmp_path, "plan", variants, seeds=(0, 1), epochs=2, extra_base=STAGE1_BASE)
    again = sweep_run("ablate", more, [], opts)
    assert again.status == "finished" and again.trained == 3
    assert "2 in the cache, 0 to compute" not in capsys.readouterr().out   # nothing to compute: said nothing
    assert {r.info.run_id for r in _stage1_runs(opts.output, "plan")} == set(by_id)
    assert {r.data.tags["stage1_run_id"] for r in child_runs(opts.output, "plan")} == set(by_id)


def test_a_diverging_stage1_fails_its_trials_once_with_the_reason(tmp_path, ray_local, stage1_cache):
    variants = {"full": {}, "diverges": {"stage1.lr": 1.0e30}}
    spec = write_ablation(tmp_path, "s1fail", variants, seeds=(0,), epochs=2, extra_base=STAGE1_BASE,
                          max_failures=2)
    opts = SweepOptions(output=tmp_path / "runs", cache_dir=stage1_cache)
    outcome = sweep_run("ablate", spec, [], opts)
    assert outcome.status == "failures" and outcome.exit_code == FAILURES_EXIT  # finished, with a FAILED trial
    (bad,) = [r for r in _stage1_runs(opts.output, "s1fail") if r.info.status == "FAILED"]
    assert "FloatingPointError" in bad.data.tags["failure_reason"]
    # Deterministic: run once, not retried (one 'failed' line in its log).
    log = MlflowClient(f"sqlite:///{opts.output.resolve() / 'mlflow.db'}").download_artifacts(
        bad.info.run_id, "stage1.log", str(tmp_path))
    assert Path(log).read_text().count("stage1: failed") == 1
    trials = {(r.data.tags["variant"], r.data.tags["seed"]): r for r in child_runs(opts.output, "s1fail")}
    for seed in ("0",):
        failed = trials[("diverges", seed)]
        assert failed.info.status == "FAILED" and failed.data.tags["stage1_run_id"] == bad.info.run_id
        assert failed.data.tags["failure_reason"].startswith("stage 1 failed: FloatingPointError")
        assert trials[("full", seed)].info.status == "FINISHED"


def test_epoch_lines_of_stage1_fit_become_metrics():
    lines = ["stage1 text: epoch 1/2 train loss 1.5000 dev wF1 0.2500 acc 0.5000 test wF1 0.2000 acc 0.4000 (0.1s)",
             "stage1 audio student (KD from text): epoch 2/2 train loss 0.7500 (0.2s)",
             "stage1 text: kept epoch 1 (dev wF1 0.2500)"]
    assert epoch_metrics(lines) == [("text_train_loss", 1.5, 1), ("text_dev_wf1", 0.25, 1), ("text_dev_acc", 0.5, 1),
                                    ("text_test_wf1", 0.2, 1), ("text_test_acc", 0.4, 1),
                                    ("audio_train_loss", 0.75, 2)]


def test_resources_stage1_is_read_and_checked_like_trial_resources(tmp_path):
    from core.config import ConfigError
    from sweep.ablation_spec import load_ablation

    spec = write_ablation(tmp_path, "res", {"full": {}}, resources={"cpu": 1, "gpu": 0, "stage1": {"cpu": 2}})
    resources = load_ablation(spec).resources
    assert (resources.cpu, resources.stage1.cpu, resources.stage1.gpu) == (1.0, 2.0, 0.0)
    assert load_ablation(write_ablation(tmp_path, "res", {"full": {}})).resources.stage1 is None
    bad = write_ablation(tmp_path, "res", {"full": {}}, resources={"cpu": 1, "stage1": {"cpu": -1}})
    with pytest.raises(ConfigError, match=r"res.yaml:\d+: resources.stage1.cpu must be a finite number >= 0"):
        load_ablation(bad)
    typo = write_ablation(tmp_path, "res", {"full": {}}, resources={"cpu": 1, "stage1": {"gpus": 1}})
    with pytest.raises(ConfigError, match=r"unknown key 'gpus' in resources.stage1.*Did you mean 'gpu'"):
        load_ablation(typo)


def test_the_searcher_hands_tune_each_trial_once_its_entry_is_settled_and_resumes_from_mlflow(tmp_path):
    """sweep/stage1_gate.py on a real plan, a real board and a real MLflow store (no Ray needed)."""
    import copy

    from ray.tune.search import Searcher

    from sweep.engine import prepare
    from sweep.stage1_gate import Stage1Board, Stage1ReadySearcher
    from sweep.stage1_plan import Stage1Entry, entry_of

    variants = {"full": {}, "w/o anchor gating": {"fusion.anchor_gating": False}, "w/o prompt": {"stage1.prompt": False}}
    plan = prepare("ablate", write_ablation(tmp_path, "gate", variants, seeds=(0,), epochs=2), [],
                   SweepOptions(output=tmp_path / "runs"))
    pending = plan.trial_settings
    key_of = {s["variant"]: entry_of(s) for s in pending}
    assert key_of["full"] == key_of["w/o anchor gating"] != key_of["w/o prompt"]
    board = Stage1Board()
    searcher = Stage1ReadySearcher(pending, board, plan.tracking_uri, "0")
    assert searcher.suggest("t1") is None                    # nothing settled: Tune asks again later
    board.settle(Stage1Entry(key_of["w/o prompt"], {}, run_id="run-prompt-off"))
    first = searcher.suggest("t2")["trial"]                  # jumps the queue: its entry is the one ready
    assert first["variant"] == "w/o prompt" and first["stage1_run_id"] == "run-prompt-off"
    assert "stage1_failure" not in first and searcher.suggest("t3") is None

    saved = tmp_path / "searcher.json"
    searcher.save(str(saved))
    restored = copy.deepcopy(searcher)                       # what Tune's pickle keeps: the queue, not the board
    assert restored.board is None and searcher.board is board
    restored.queue = []
    restored.restore(str(saved))
    assert [s["variant"] for _, s in restored.queue] == [s["variant"] for s in pending if s["variant"] != "w/o prompt"]

    board.settle(Stage1Entry(key_of["full"], {}, run_id="run-shared", failure="FloatingPointError: NaN loss"))
    rest = [searcher.suggest("t4")["trial"], searcher.suggest("t5")["trial"]]
    assert sorted(t["variant"] for t in rest) == ["full", "w/o anchor gating"]
    assert {(t["stage1_run_id"], t["stage1_failure"]) for t in rest} == {("run-shared", "FloatingPointError: NaN loss")}
    assert searcher.suggest("t6") == Searcher.FINISHED

    # A restored searcher reads the entries from the sweep's MLflow experiment (the engine settled them first).
    client = MlflowClient(plan.tracking_uri)
    exp = client.create_experiment("gate")
    restored.experiment_id = exp
    ok = client.create_run(exp, tags={CACHE_KEY_TAG: key_of["full"]}).info.run_id
    client.set_terminated(ok)
    by_variant = {t["variant"]: t for t in (restored.suggest("r1")["trial"], restored.suggest("r2")["trial"])}
    assert by_variant["full"]["stage1_run_id"] == by_variant["w/o anchor gating"]["stage1_run_id"] == ok
    assert "stage1_failure" not in by_variant["full"]
    assert restored.suggest("r3") == Searcher.FINISHED


def test_a_trial_tune_lost_with_a_killed_driver_takes_its_run_up_by_identity(tmp_path):
    """The searcher hands trials out one by one, so a SIGKILLed driver can lose a trial started after Tune's
    last snapshot; resumed, it comes back under a new trial id and must continue its run, not open a second."""
    from sweep import tracking

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("lost")
    parent = client.create_run(exp).info.run_id
    tags = {"trial_identity": "id-1", "mlflow.runName": "full s0"}
    first, _ = tracking.open_trial_run(client, exp, parent, "trial-a", {**tags, "trial_id": "trial-a"}, {})
    client.log_metric(first, "dev_wf1", 0.5, step=1)
    assert tracking.close_stale_runs(client, exp, parent) == 1          # the next driver finds it RUNNING
    again, steps = tracking.open_trial_run(client, exp, parent, "trial-b", {**tags, "trial_id": "trial-b"}, {})
    run = client.get_run(again)
    assert again == first and steps == {1} and run.info.status == "RUNNING" and run.data.tags["trial_id"] == "trial-b"
    other, _ = tracking.open_trial_run(client, exp, parent, "trial-c", {**tags, "trial_identity": "id-2",
                                                                        "trial_id": "trial-c"}, {})
    assert other != first                                               # another identity gets its own run


class _InterruptAtFirstTrialStart(tune.Callback):
    """Ctrl-C to this process as soon as the first trial starts (Tune stops; stage 1 is still computing).
    Once only: a restored Tuner brings its pickled callbacks back, and the marker file says it fired."""

    def __init__(self, marker: Path):
        self.marker = marker

    def on_trial_start(self, iteration, trials, trial, **info):
        if not self.marker.exists():
            self.marker.write_text("fired")
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupt_while_an_entry_computes_then_the_rerun_computes_it_and_links_every_trial(
        tmp_path, ray_local, capsys):
    # `full` has a quick entry (2 epochs, ~9 s) and starts while the other entry (200 epochs) is computed. With 30
    # epochs, on a loaded machine (two busy processes beside the test), the entries' fixed start-up cost
    # dominated: 119 s and 126 s, and the slow one was ready before the first trial started.
    variants = {"full": {}, "slow stage 1": {"stage1.prompt": False, "stage1.epochs": 200}}
    spec = write_ablation(tmp_path, "cut", variants, seeds=(0,), epochs=2, extra_base=STAGE1_BASE)
    out, cache = tmp_path / "runs", tmp_path / "cache"
    first = sweep_run("ablate", spec, [], SweepOptions(output=out, cache_dir=cache,
                                                       callbacks=[_InterruptAtFirstTrialStart(tmp_path / "fired")]))
    assert first.status == "interrupted"
    printed = capsys.readouterr().out
    assert "stage 1: stopped with 1 entry unfinished" in printed        # the slow entry, cancelled
    assert [r.data.tags["variant"] for r in child_runs(out, "cut")] == ["full"]          # the slow one never began

    again = sweep_run("ablate", spec, [], SweepOptions(output=out, cache_dir=cache))
    assert again.status == "finished" and again.trained == 2
    assert "resuming sweep" in capsys.readouterr().out
    stage1 = {r.info.run_id: r for r in _stage1_runs(out, "cut")}
    assert sorted(r.info.status for r in stage1.values()) == ["FINISHED", "FINISHED"]   # one run per entry
    assert len(child_runs(out, "cut")) == 2                                   # `full` took its run up again
    trials = {r.data.tags["variant"]: r for r in child_runs(out, "cut")}
    assert {v: r.info.status for v, r in trials.items()} == {"full": "FINISHED", "slow stage 1": "FINISHED"}
    for trial in trials.values():                   # the restored searcher linked the slow trial from MLflow
        entry = stage1[trial.data.tags["stage1_run_id"]]
        assert entry.data.params["stage1.prompt"] == trial.data.params["stage1.prompt"]
        assert trial.info.start_time >= entry.info.end_time
