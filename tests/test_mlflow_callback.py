"""The driver's MLflow callback on a real SQLite store: live metrics at most every LIVE_INTERVAL_S per
trial, every epoch in the run once the trial ends, and writes off Tune's loop (the Tune trial is a plain
stand-in: the callback reads only its id, config, checkpoint and last result)."""
import threading
from types import SimpleNamespace

from core.config import load_config
from sweep import tracking
from sweep.mlflow_callback import MLflowSweepCallback, SweepRecord

EPOCHS = 5


def _trial(trial_id: str) -> SimpleNamespace:
    settings = {"sweep": "cb", "variant": "full", "run_name": f"full {trial_id}", "slug": "full", "seed": 0,
                "base": load_config(None, [f"train.epochs={EPOCHS}"]).to_dict(), "overrides": {},
                "data": {"name": "synthetic", "fingerprint": "f" * 16, "labels": ["a", "b"]},
                "code_fingerprint": "c" * 16}
    return SimpleNamespace(trial_id=trial_id, config={"trial": settings}, checkpoint=None, last_result=None)


def _epoch(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "dev_wf1": 0.1 * epoch, "test_wf1": 0.05 * epoch,
            "training_iteration": epoch, "time_this_iter_s": 0.1}


def _run_trial(callback: MLflowSweepCallback, trial) -> list[set[int]]:
    """Feeds EPOCHS results, then completes the trial; -> the steps MLflow held after each result, and at the end."""
    client = callback._client_()
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    callback.drain()                                  # the hooks queue their writes: wait for each
    run_id = callback._runs[trial.trial_id].run_id
    seen = []
    for epoch in range(1, EPOCHS + 1):
        trial.last_result = _epoch(epoch)
        callback.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=trial.last_result)
        callback.drain()
        seen.append(tracking.logged_steps(client, run_id))
    callback.on_trial_complete(iteration=EPOCHS, trials=[trial], trial=trial)
    callback.on_experiment_end(trials=[trial])        # what Tune calls when a fit ends: waits for the writes
    seen.append(tracking.logged_steps(client, run_id))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not callback.unsynced                      # no write failed
    return seen


def _store(tmp_path):
    """A real SQLite store with the sweep's experiment and parent run; -> (client, the callback's record)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.make_client(uri)
    experiment = client.create_experiment("cb", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    return client, SweepRecord("cb", "ablate", uri, experiment, parent, "0" * 40)


def test_live_metrics_are_throttled_per_trial_and_complete_when_the_trial_ends(tmp_path):
    client, record = _store(tmp_path)

    # A long interval: the first epoch is written at once, the others wait for the trial's end.
    throttled = _run_trial(MLflowSweepCallback(record, client, live_interval_s=3600), _trial("t1"))
    assert throttled[:EPOCHS] == [{1}] * EPOCHS
    assert throttled[-1] == set(range(1, EPOCHS + 1))

    # No interval: every epoch is in MLflow as soon as it is reported (and the callback builds its own client).
    live = _run_trial(MLflowSweepCallback(record, live_interval_s=0), _trial("t2"))
    assert live[:EPOCHS] == [set(range(1, e + 1)) for e in range(1, EPOCHS + 1)]
    assert live[-1] == set(range(1, EPOCHS + 1))


def test_tune_hooks_return_while_the_store_is_busy_and_the_writes_land_in_order(tmp_path, monkeypatch):
    client, record = _store(tmp_path)
    callback = MLflowSweepCallback(record, client, live_interval_s=0)

    # The store answers only once `answer` is set: opening the trial's run waits on it, on the writer thread.
    answer, open_run = threading.Event(), tracking.open_trial_run
    monkeypatch.setattr(tracking, "open_trial_run", lambda *a, **k: (answer.wait(30), open_run(*a, **k))[1])
    trial = _trial("t1")
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epoch in range(1, EPOCHS + 1):
        trial.last_result = _epoch(epoch)
        callback.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=trial.last_result)
    callback.on_trial_complete(iteration=EPOCHS, trials=[trial], trial=trial)
    assert not answer.is_set() and trial.trial_id not in callback._runs   # every hook returned before any write

    answer.set()
    callback.on_experiment_end(trials=[trial])
    run = client.get_run(callback._runs[trial.trial_id].run_id)
    assert run.info.status == "FINISHED"
    assert tracking.logged_steps(client, run.info.run_id) == set(range(1, EPOCHS + 1))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_wf1")] == list(range(1, EPOCHS + 1))
