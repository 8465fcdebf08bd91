"""One trial identity and one record: real Ray, real MLflow (SQLite, and a real `mlflow server`), the real
pipeline on tiny configs. A table never mixes plans; a failure stays a failure; two output directories
sharing one tracking server never touch each other's runs."""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from conftest import child_runs, parent_runs, write_ablation
from ray import tune

from reports.store import load_sweep, tracking_uri_for
from reports.table import build_table, history_listing
from sweep.engine import FAILURES_EXIT, INTERRUPTED_EXIT, SweepOptions, run_sweep

pytestmark = pytest.mark.slow
TWO = {"full": {}, "no gate": {"fusion.anchor_gating": False}}


HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
          "Episode", "StartTime", "EndTime"]
LINES = [("I got the job!", "joy"), ("That is awful news.", "sadness"), ("Get out of my apartment!", "anger"),
         ("Wait, what?", "surprise"), ("Okay, sure.", "neutral"), ("Ew, gross.", "disgust"), ("Is someone there?", "fear")]


def _write_meld(directory: Path, dialogues: int = 3, turns: int = 4) -> Path:
    """MELD-shaped CSV files (text only): a few dialogues per split, every label present in train."""
    import csv

    directory.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("train", "dev", "test")):
        rows, n = [HEADER], 0
        for d in range(dialogues):
            for u in range(turns):
                text, label = LINES[(d * turns + u + s) % len(LINES)]
                n += 1
                rows.append([n, text, ("Ross", "Rachel")[u % 2], label, "neutral", d, u, 1, 1, "a", "b"])
        with open(directory / f"{split}_sent_emo.csv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(rows)
    return directory


def _relabel_first_train_utterance(directory: Path) -> None:
    import csv

    path = directory / "train_sent_emo.csv"
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    rows[1][3] = "neutral" if rows[1][3] != "neutral" else "anger"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)


def _cells_run_ids(table) -> set[str]:
    return {run_id for row in table.rows for cell in row.cells.values() for run_id in cell.run_ids}


def test_changed_data_or_code_retrains_and_the_table_shows_the_new_runs_only(tmp_path, ray_local, stage1_cache):
    data = _write_meld(tmp_path / "meld")
    code = tmp_path / "code"  # what the code fingerprint reads, for this test
    code.mkdir()
    (code / "model.py").write_text("SCALE = 1\n")
    spec = write_ablation(tmp_path, "ident", TWO, seeds=(0,), epochs=2)
    overrides = ["data.name=meld", f"data.path={data}", "stage1.allow_random_encoders=true"]  # a smoke test
    opts = SweepOptions(output=tmp_path / "runs", cache_dir=stage1_cache, code_dirs=[code])
    uri = tracking_uri_for(opts.output)

    first = run_sweep("ablate", spec, overrides, opts)
    assert first.status == "finished" and first.trained == 2
    old = {r.info.run_id for r in child_runs(opts.output, "ident")}

    _relabel_first_train_utterance(data)       # one utterance's label: the dataset fingerprint changes
    second = run_sweep("ablate", spec, overrides, opts)
    assert second.status == "finished" and second.trained == 2 and second.skipped == 0
    sweep = load_sweep("ident", uri)
    new = {t.run_id for t in sweep.trials}
    assert len(new) == 2 and not new & old and {t.run_id for t in sweep.superseded} == old
    table = build_table(sweep)
    assert _cells_run_ids(table) == new
    assert any("2 run(s) of earlier plans" in c for c in table.caption)
    assert "changed since: data, stage 1" in history_listing(sweep)

    (code / "model.py").write_text("SCALE = 2\n")  # the code that computes results changed
    third = run_sweep("ablate", spec, overrides, opts)
    assert third.trained == 2 and third.skipped == 0
    sweep = load_sweep("ident", uri)
    assert len(sweep.superseded) == 4 and not {t.run_id for t in sweep.trials} & (old | new)
    assert "changed since: code" in history_listing(sweep)
    # The same command once more trains nothing: every identity of the plan is final.
    assert run_sweep("ablate", spec, overrides, opts).trained == 0
    assert len(parent_runs(opts.output, "ident")) == 1


class _InterruptAfterFirstTrial(tune.Callback):
    """Ctrl-C to this process once a trial completes (Tune saves its state and fit() returns)."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        os.kill(os.getpid(), signal.SIGINT)


def test_an_edited_base_then_an_interrupt_shows_new_cells_or_missing_never_old(tmp_path, ray_local, stage1_cache):
    variants = {"full": {}, "T": {"fusion.modalities": ["text"]}}
    spec = write_ablation(tmp_path, "edit", variants, seeds=(0, 1), epochs=2, max_concurrent=1)
    out = tmp_path / "runs"
    assert run_sweep("ablate", spec, [], SweepOptions(output=out, cache_dir=stage1_cache)).trained == 4
    old = {r.info.run_id for r in child_runs(out, "edit")}

    edited = write_ablation(tmp_path, "edit", variants, seeds=(0, 1), epochs=2, max_concurrent=1,
                            extra_base={"fusion.dropout": 0.3})
    cut = run_sweep("ablate", edited, [], SweepOptions(output=out, cache_dir=stage1_cache,
                                                       callbacks=[_InterruptAfterFirstTrial()]))
    assert cut.status == "interrupted" and cut.exit_code == INTERRUPTED_EXIT

    sweep = load_sweep("edit", tracking_uri_for(out))
    finished = {t.run_id for t in sweep.trials if t.status == "FINISHED"}
    assert 1 <= len(finished) < 4 and not finished & old
    table = build_table(sweep)
    assert _cells_run_ids(table) == finished            # no old value in any cell
    assert "INCOMPLETE" in table.warning and f"{4 - len(finished)} of 4" in table.warning
    assert sum(len(row.missing) for row in table.rows) == 4 - len(finished)
    assert {t.run_id for t in sweep.superseded} == old
    listing = history_listing(sweep)
    assert all(run_id in listing for run_id in old) and "changed since: config" in listing


class _CrashAndInterrupt(tune.Callback):
    """SIGKILLs the worker of variant 'crashy' at each epoch-1 report (a crash that recurs); once Ray gives
    up on it, Ctrl-C to this process: the sweep is interrupted after the trial errored."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.config["trial"]["variant"] == "crashy" and int(result.get("epoch", 0)) == 1:
            os.kill(result["pid"], signal.SIGKILL)

    def on_trial_error(self, iteration, trials, trial, **info):
        os.kill(os.getpid(), signal.SIGINT)


def test_failures_stay_failed_across_an_interrupt_and_a_rerun(tmp_path, ray_local, stage1_cache):
    variants = {"crashy": {"fusion.dropout": 0.2},
                # stage 1 diverges (FloatingPointError): never retried
                "nan stage 1": {"stage1.epochs": 1, "stage1.lr": 1.0e30},
                "full": {}}
    spec = write_ablation(tmp_path, "fails", variants, seeds=(0,), epochs=3, max_failures=1, max_concurrent=1)
    out = tmp_path / "runs"
    first = run_sweep("ablate", spec, [], SweepOptions(output=out, cache_dir=stage1_cache,
                                                       callbacks=[_CrashAndInterrupt()]))
    assert first.status == "interrupted", first.messages

    again = run_sweep("ablate", spec, [], SweepOptions(output=out, cache_dir=stage1_cache))
    assert again.status == "failures" and again.exit_code == FAILURES_EXIT, again.messages
    runs = {r.data.tags["variant"]: r for r in child_runs(out, "fails") if not r.data.tags.get("duplicate_of")}
    assert runs["full"].info.status == "FINISHED"
    assert runs["crashy"].info.status == "FAILED" and "after 2 attempt(s)" in runs["crashy"].data.tags["failure_reason"]
    nan = runs["nan stage 1"]
    assert nan.info.status == "FAILED" and "FloatingPointError" in nan.data.tags["failure_reason"]
    (nan_dir,) = (out / "ray" / "fails").glob("*/nan-stage-1-s0-*")
    assert not (nan_dir / "error.txt").exists()          # reported as failed once, never retried
    assert any("2 of 3 trial(s) FAILED" in m for m in again.messages)

    third = run_sweep("ablate", spec, [], SweepOptions(output=out, cache_dir=stage1_cache))
    assert third.trained == 0 and third.exit_code == FAILURES_EXIT   # still FAILED, nothing retrained


def test_the_same_plan_in_two_outputs_gets_two_ray_experiment_names(tmp_path):
    """Ray stages a driver's files under its session's artifacts/<start second>/<experiment name>: two
    same-name sweeps started in the same second on one cluster once shared that directory and each
    recorded the other's trials (the test below caught it, 1 run in 3). The name carries the output."""
    from sweep.engine import prepare

    spec = write_ablation(tmp_path, "shared", TWO, seeds=(0,), epochs=2)
    store = f"sqlite:///{tmp_path / 'one.db'}"   # one store: the plan key is the same for both
    left, right = (prepare("ablate", spec, [], SweepOptions(output=tmp_path / out, tracking_uri=store))
                   for out in ("left", "right"))
    assert left.plan_key == right.plan_key and left.exp_name != right.exp_name
    assert left.exp_name.startswith(f"shared-ablate-{left.plan_key}-")
    again = prepare("ablate", spec, [], SweepOptions(output=tmp_path / "left", tracking_uri=store))
    assert again.exp_name == left.exp_name   # the same output resumes the same Ray experiment


def test_two_sweeps_on_one_tracking_server_never_touch_each_others_runs(tmp_path, ray_local, stage1_cache):
    import ray
    from mlflow.tracking import MlflowClient
    from test_sweep_interrupt import Driver, MlflowServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = MlflowServer(tmp_path / "server.db", tmp_path / "server-artifacts", port, tmp_path / "server.log")
    try:
        spec = write_ablation(tmp_path, "shared", TWO, seeds=(0,), epochs=2, max_concurrent=1)
        drivers = [Driver(["ablate", str(spec), "--output", str(tmp_path / out), "--cache-dir", str(stage1_cache),
                           "--tracking-uri", server.url, "--address", ray.get_runtime_context().gcs_address],
                          tmp_path / f"{out}.log") for out in ("left", "right")]
        for driver in drivers:
            assert driver.wait(1200) == 0, driver.text()   # a bound: generous for a loaded machine
        client = MlflowClient(server.url)
        runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=100)
        # sweep parents: top-level runs with a sweep_kind (stage-1 runs are top-level too, and have none)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and "sweep_kind" in r.data.tags]
        assert len(parents) == 2 and {p.data.tags["output"] for p in parents} == \
            {str((tmp_path / o).resolve()) for o in ("left", "right")}
        for parent in parents:
            mine = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
            assert sorted(r.data.tags["variant"] for r in mine) == sorted(TWO)
            assert {r.info.status for r in mine} == {"FINISHED"}, [r.data.tags for r in mine]
            assert not any(r.data.tags.get("duplicate_of") or r.data.tags.get("killed_reason") for r in mine)
    finally:
        server.stop()
