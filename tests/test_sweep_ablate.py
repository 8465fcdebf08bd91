"""Ablation sweeps end to end: real Ray (one local session for the module), real MLflow SQLite, the real
MAGTKD pipeline on a tiny synthetic config (stage 1 cached once for the session)."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import tempfile
from pathlib import Path

import pytest
from conftest import child_runs, parent_runs, write_ablation
from mlflow.tracking import MlflowClient
from ray import tune

import run_sweep
from sweep.engine import FAILURES_EXIT, SweepOptions, run_sweep as sweep_run
from sweep.trainable import CheckpointCadence, read_history

pytestmark = pytest.mark.slow

EPOCH_KEYS = {"train_loss", "dev_loss", "dev_wf1", "dev_acc", "dev_mf1", "test_loss", "test_wf1", "test_acc",
              "test_mf1"}
RAY_NOISE = {"training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "pid", "time_since_restore",
             "iterations_since_restore", "done", "epoch"}
CHILD_TAGS = {"sweep", "variant", "seed", "config_hash", "dataset_fingerprint", "git_commit", "selection_rule",
              "masked_modalities", "trial_id", "mlflow.parentRunId", "trial_identity", "code_fingerprint",
              "stage1_key", "plan_key"}


def _opts(tmp_path, cache, **kw) -> SweepOptions:
    return SweepOptions(output=tmp_path / "runs", cache_dir=cache, **kw)


def _client(output: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{output.resolve() / 'mlflow.db'}")


def test_ablation_parent_children_tags_metrics_then_rerun_trains_nothing(tmp_path, ray_local, stage1_cache):
    variants = {"full": {}, "w/o anchor gating": {"fusion.anchor_gating": False}, "T": {"fusion.modalities": ["text"]}}
    spec = write_ablation(tmp_path, "abl", variants, seeds=(0, 1), epochs=3)
    out = _opts(tmp_path, stage1_cache)
    outcome = sweep_run("ablate", spec, [], out)
    assert outcome.status == "finished" and outcome.trained == 6 and outcome.exit_code == 0

    parents = parent_runs(out.output, "abl")
    assert len(parents) == 1
    ptags = parents[0].data.tags
    assert ptags["sweep"] == "abl" and ptags["sweep_kind"] == "ablate" and ptags["dataset"] == "synthetic"
    assert json.loads(ptags["variants"]) == ["full", "w/o anchor gating", "T"] and ptags["baseline"] == "full"
    assert json.loads(ptags["seeds"]) == [0, 1] and ptags["stage1_seed_mode"] == "shared"
    assert ptags["selection_rule"] == "dev" and ptags["git_commit"] and ptags["spec_path"] == str(spec)
    assert parents[0].info.status == "FINISHED"
    client = _client(out.output)
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id)] == ["sweep.yaml"]

    children = child_runs(out.output, "abl")
    assert len(children) == 6 and {r.info.status for r in children} == {"FINISHED"}
    assert {(r.data.tags["variant"], r.data.tags["seed"]) for r in children} == \
        {(v, s) for v in variants for s in ("0", "1")}
    for run in children:
        tags = run.data.tags
        assert CHILD_TAGS <= set(tags) and tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["masked_modalities"] == "" and len(tags["dataset_fingerprint"]) == 16
        assert run.data.params["train.epochs"] == "3" and run.data.params["seed"] == tags["seed"]
        assert not RAY_NOISE & set(run.data.metrics), "Ray's bookkeeping leaked into MLflow"
        for key in EPOCH_KEYS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
        assert {"selected_dev_wf1", "selected_test_wf1", "selected_epoch"} <= set(run.data.metrics)
        assert any(k.startswith("selected_test_f1_") for k in run.data.metrics)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == \
            {"config.yaml", "confusion_matrix.csv", "per_class_report.json", "predictions.csv"}
        # Per-utterance predictions at the selected epoch: every dev and test utterance, with ids and probabilities.
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(run.info.run_id, "predictions.csv", tmp)).read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        test_rows = [r for r in rows if r["split"] == "test"]
        assert {r["split"] for r in rows} == {"dev", "test"} and test_rows[0]["utterance_id"] == "test0_u0"
        assert sum(r["gold"] == r["predicted"] for r in test_rows) / len(test_rows) == \
            pytest.approx(run.data.metrics["selected_test_acc"])
        assert sum(float(v) for k, v in test_rows[0].items() if k.startswith("p_")) == pytest.approx(1.0, abs=1e-3)
    t_runs = [r for r in children if r.data.tags["variant"] == "T"]
    assert all(r.data.params["fusion.modalities"] == "text" for r in t_runs)

    # The same command again trains nothing and opens no run.
    again = sweep_run("ablate", spec, [], out)
    assert again.status == "finished" and again.trained == 0
    assert any("nothing to train" in m for m in again.messages)
    assert len(child_runs(out.output, "abl")) == 6 and len(parent_runs(out.output, "abl")) == 1

    # One more seed: only the three new (config, seed) pairs train; the six are skipped, and said so.
    more = write_ablation(tmp_path, "abl", variants, seeds=(0, 1, 2), epochs=3)
    grown = sweep_run("ablate", more, [], out)
    assert grown.trained == 3 and grown.skipped == 6
    assert any("6 of 9 trials of this plan are already final in MLflow" in m for m in grown.messages)
    children = child_runs(out.output, "abl")
    assert len(children) == 9 and {r.info.status for r in children} == {"FINISHED"}
    assert len(parent_runs(out.output, "abl")) == 1


def test_a_diverging_trial_is_failed_with_its_reason_and_the_sweep_goes_on(tmp_path, ray_local, stage1_cache):
    spec = write_ablation(tmp_path, "nan", {"full": {}, "diverges": {"train.lr": 1.0e30}}, seeds=(0,), epochs=3)
    outcome = sweep_run("ablate", spec, [], _opts(tmp_path, stage1_cache))
    assert outcome.status == "failures" and outcome.exit_code == FAILURES_EXIT
    runs = {r.data.tags["variant"]: r for r in child_runs(tmp_path / "runs", "nan")}
    assert runs["full"].info.status == "FINISHED"
    failed = runs["diverges"]
    assert failed.info.status == "FAILED"
    assert "DivergedError" in failed.data.tags["failure_reason"] and "nan" in failed.data.tags["failure_reason"]
    # Not retried: a diverging loss diverges again (one trial directory, reported once as failed).
    trial_dirs = [p for p in (tmp_path / "runs" / "ray" / "nan").glob("*/diverges-*") if p.is_dir()]
    assert len(trial_dirs) == 1 and not (trial_dirs[0] / "error.txt").exists()


class _Concurrency(tune.Callback):
    """Records the most trials seen RUNNING at once."""
    most = 0

    def on_step_end(self, iteration, trials, **info):
        _Concurrency.most = max(_Concurrency.most, sum(t.status == "RUNNING" for t in trials))


def test_eight_concurrent_trials_lose_no_metric(tmp_path, ray_local, stage1_cache):
    variants = {f"v{i}": {"fusion.dropout": 0.1 * i} for i in range(4)}
    # the default checkpoint cadence: only the last epoch carries a checkpoint, the others report metrics alone
    spec = write_ablation(tmp_path, "eight", variants, seeds=(0, 1), epochs=3, max_concurrent=8,
                          extra_base={"train.checkpoint_interval_s": 300})
    _Concurrency.most = 0
    outcome = sweep_run("ablate", spec, [], _opts(tmp_path, stage1_cache, cpus_per_trial=0.25,
                                                  callbacks=[_Concurrency()]))
    assert outcome.status == "finished" and outcome.trained == 8
    assert _Concurrency.most == 8
    client = _client(tmp_path / "runs")
    children = child_runs(tmp_path / "runs", "eight")
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
    counted = sum(len(client.get_metric_history(r.info.run_id, key)) for r in children for key in EPOCH_KEYS)
    assert counted == 8 * 3 * len(EPOCH_KEYS)
    trial_dirs = list((tmp_path / "runs" / "ray" / "eight").glob("*/v*-s*-*"))
    assert len(trial_dirs) == 8
    for trial_dir in trial_dirs:  # one checkpoint kept per trial: the last epoch's, holding every epoch
        (checkpoint,) = trial_dir.glob("checkpoint_*")
        assert [e["epoch"] for e in read_history(checkpoint)["epochs"]] == [1.0, 2.0, 3.0]


def test_checkpoint_cadence_saves_the_last_epoch_and_at_most_once_per_interval():
    now = [0.0]
    cadence = CheckpointCadence(interval_s=10.0, last_epoch=6, clock=lambda: now[0])
    saved = []
    for epoch, seconds in enumerate([4, 4, 4, 4, 12, 1], start=1):
        now[0] += seconds
        if cadence.due(epoch):
            saved.append(epoch)
            cadence.saved()
    assert saved == [3, 5, 6]  # 12 s after the start, 12 s after epoch 3, and the last epoch
    every_epoch = CheckpointCadence(interval_s=0.0, last_epoch=3, clock=lambda: 0.0)
    assert all(every_epoch.due(e) for e in (1, 2, 3))


class _KillWorkerOnce(tune.Callback):
    """SIGKILLs the worker process of the first trial that reports epoch 2 (it is ours: this test's Ray).
    Tune registers a result's checkpoint after the callbacks have seen it, so the latest checkpoint the
    retry can start from is epoch 1's."""
    killed: list = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not _KillWorkerOnce.killed and int(result.get("epoch", 0)) == 2:
            _KillWorkerOnce.killed.append(result["pid"])
            os.kill(result["pid"], signal.SIGKILL)


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path, ray_local, stage1_cache):
    spec = write_ablation(tmp_path, "killw", {"full": {}}, seeds=(0,), epochs=6)
    _KillWorkerOnce.killed = []
    outcome = sweep_run("ablate", spec, [], _opts(tmp_path, stage1_cache, callbacks=[_KillWorkerOnce()]))
    assert outcome.status == "finished" and _KillWorkerOnce.killed
    (run,) = child_runs(tmp_path / "runs", "killw")
    assert run.info.status == "FINISHED"
    client = _client(tmp_path / "runs")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "dev_wf1")) == [1, 2, 3, 4, 5, 6]
    (trial_dir,) = (tmp_path / "runs" / "ray" / "killw").glob("*/full-s0-*")
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    epochs = [int(r["epoch"]) for r in rows]
    # Ray may rewrite result.json when the trial restarts (the killed attempt's rows are then gone), so
    # the check is on the retry's own rows: its first result comes after a restore, at an epoch past 1,
    # and it never goes back to epoch 1. (MLflow's history above has each step once: nothing was redone.)
    restored_at = next((i for i, r in enumerate(rows)
                        if r["iterations_since_restore"] == 1 and int(r["epoch"]) > 1), None)
    assert restored_at is not None, f"no result after a restore from a checkpoint: {epochs}"
    assert 1 not in epochs[restored_at:], f"the retry started over instead of from the checkpoint: {epochs}"
    assert (trial_dir / "error.txt").exists()  # Ray recorded the lost worker


class _KillWorkerAlways(tune.Callback):
    """SIGKILLs the worker of variant 'crashy' at every epoch-1 report: a trial that keeps crashing."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.config["trial"]["variant"] == "crashy" and int(result.get("epoch", 0)) == 1:
            os.kill(result["pid"], signal.SIGKILL)


def test_a_trial_that_keeps_crashing_fails_after_its_retries_and_the_sweep_completes(tmp_path, ray_local,
                                                                                      stage1_cache):
    spec = write_ablation(tmp_path, "crash", {"full": {}, "crashy": {"fusion.dropout": 0.2}}, seeds=(0,), epochs=3,
                          max_failures=1)
    outcome = sweep_run("ablate", spec, [], _opts(tmp_path, stage1_cache, callbacks=[_KillWorkerAlways()]))
    # A failed trial is an outcome, not an interrupt: the sweep completes, with the "failures" exit code.
    assert outcome.status == "failures" and outcome.exit_code == FAILURES_EXIT
    runs = {r.data.tags["variant"]: r for r in child_runs(tmp_path / "runs", "crash")}
    assert runs["full"].info.status == "FINISHED"
    assert runs["crashy"].info.status == "FAILED"
    assert "after 2 attempt(s)" in runs["crashy"].data.tags["failure_reason"]


def test_sync_writes_what_mlflow_lacks_from_ray_storage(tmp_path, ray_local, stage1_cache, capsys):
    spec = write_ablation(tmp_path, "syn", {"full": {}, "T": {"fusion.modalities": ["text"]}}, seeds=(0,), epochs=2)
    out = tmp_path / "runs"
    sweep_run("ablate", spec, [], _opts(tmp_path, stage1_cache))
    client = _client(out)
    before = {r.data.tags["trial_id"]: r for r in child_runs(out, "syn")}
    for run in before.values():  # as if the tracking server had lost them
        client.delete_run(run.info.run_id)
    assert child_runs(out, "syn") == []

    assert run_sweep.main(["sync", "syn", "--output", str(out)]) == 0
    assert "2 trial(s) written to MLflow" in capsys.readouterr().out
    after = {r.data.tags["trial_id"]: r for r in child_runs(out, "syn")}
    assert set(after) == set(before) and {r.info.status for r in after.values()} == {"FINISHED"}
    for trial_id, run in after.items():
        assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_wf1")] == [1, 2]
        assert run.data.metrics["selected_dev_wf1"] == pytest.approx(before[trial_id].data.metrics["selected_dev_wf1"])
        assert run.data.tags["config_hash"] == before[trial_id].data.tags["config_hash"]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == \
            {"config.yaml", "confusion_matrix.csv", "per_class_report.json", "predictions.csv"}
    assert run_sweep.main(["sync", "syn", "--output", str(out)]) == 0
    assert "0 trial(s) written to MLflow, 2 already there" in capsys.readouterr().out
    assert run_sweep.main(["sync", "nosuch", "--output", str(out)]) == 1
    assert "no Ray storage for sweep 'nosuch'" in capsys.readouterr().err
