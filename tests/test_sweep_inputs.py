"""Bad input to `run_sweep.py ablate|tune|sync` fails before Ray starts, with a clear message, and leaves
nothing behind: no output directory, no MLflow store."""
from __future__ import annotations

import socket
import time

import pytest
from conftest import write_ablation, write_search

import run_sweep
from conftest import run_cli


_run = run_cli


@pytest.fixture
def out(tmp_path):
    return tmp_path / "runs"


def _nothing_written(out):
    assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.rglob('*'))}"


def test_unknown_key_in_a_variant(tmp_path, out, capsys):
    spec = write_ablation(tmp_path, "bad", {"full": {}, "no gate": {"fusion.anchor_gatin": False}})
    code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
    assert code == 2
    assert f"{spec}:" in text and "variant 'no gate'" in text and "Did you mean 'fusion.anchor_gating'" in text
    _nothing_written(out)


def test_unknown_key_and_bad_value_on_the_command_line(tmp_path, out, capsys):
    spec = write_ablation(tmp_path, "ok", {"full": {}})
    code, text = _run(["ablate", str(spec), "train.lrate=1e-3", "--output", str(out)], capsys)
    assert code == 2 and "Did you mean 'train.lr'" in text
    code, text = _run(["ablate", str(spec), "train.epochs=0", "--output", str(out)], capsys)
    assert code == 2 and "train.epochs" in text and "must be >= 1" in text
    _nothing_written(out)


def test_yaml_syntax_error_names_the_line(tmp_path, out, capsys):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: broken\nvariants:\n  full: {fusion.width: [32}\n")
    code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
    assert code == 2 and f"{spec}: line 3" in text and "YAML syntax error" in text
    _nothing_written(out)


def test_a_sweep_name_that_escapes_the_output_directory(tmp_path, out, capsys):
    spec = write_ablation(tmp_path, "esc", {"full": {}})
    spec.write_text(spec.read_text().replace("name: esc", "name: ../../x"))
    code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
    assert code == 2 and "sweep name '../../x'" in text
    assert code == 2 and run_sweep.main(["sync", "../../x", "--output", str(out)]) == 2
    _nothing_written(out)
    assert not (tmp_path.parent / "x").exists()


def test_an_output_directory_that_cannot_be_written(tmp_path, capsys):
    spec = write_ablation(tmp_path, "ok", {"full": {}})
    code, text = _run(["ablate", str(spec), "--output", "/proc/magtkd-runs"], capsys)
    assert code == 2 and "--output /proc/magtkd-runs" in text and "cannot write" in text
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, text = _run(["ablate", str(spec), "--output", str(blocker / "runs")], capsys)
    assert code == 2 and "is not a directory" in text


def test_a_missing_dataset_path(tmp_path, out, capsys):
    spec = write_ablation(tmp_path, "meld", {"full": {}})
    spec.write_text(spec.read_text().replace("name: synthetic", "name: meld"))
    code, text = _run(["ablate", str(spec), f"data.path={tmp_path / 'no-such-dir'}", "--output", str(out)], capsys)
    assert code == 2 and "no-such-dir" in text
    code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
    assert code == 2 and "data.path' is required for data.name=meld" in text
    ok = write_ablation(tmp_path, "ok", {"full": {}})
    code, text = _run(["ablate", str(ok), f"stage1.text_encoder={tmp_path / 'no-ckpt'}", "--output", str(out)], capsys)
    assert code == 2 and "stage1.text_encoder" in text and "does not exist" in text
    _nothing_written(out)


def test_an_unreachable_tracking_server_fails_before_training(tmp_path, out, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = write_ablation(tmp_path, "ok", {"full": {}})
    start = time.time()
    code, text = _run(["ablate", str(spec), "--output", str(out), "--tracking-uri", f"http://127.0.0.1:{port}"],
                      capsys)
    assert code == 1 and f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in text
    assert "Nothing was trained" in text and time.time() - start < 120   # seconds idle; generous under load
    _nothing_written(out)


def test_resources_this_machine_cannot_give(tmp_path, out, capsys):
    spec = write_ablation(tmp_path, "ok", {"full": {}})
    code, text = _run(["ablate", str(spec), "--output", str(out), "--cpus-per-trial", "512"], capsys)
    assert code == 2 and "asks for 512 CPUs" in text
    code, text = _run(["ablate", str(spec), "--output", str(out), "--gpus-per-trial", "1.5"], capsys)
    assert code == 2 and "whole number" in text
    import torch

    if not torch.cuda.is_available():
        code, text = _run(["ablate", str(spec), "--output", str(out), "--gpus-per-trial", "0.5"], capsys)
        assert code == 2 and "this machine has none" in text
    _nothing_written(out)


def test_search_space_inputs(tmp_path, out, capsys):
    spec = write_search(tmp_path, "srch", {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    code, text = _run(["tune", str(spec), "--output", str(out), "--num-samples", "0"], capsys)
    assert code == 2 and "--num-samples must be >= 1" in text
    bad = write_search(tmp_path, "srch2", {"data.max_dialogues": {"type": "int", "low": 1, "high": 4}})
    code, text = _run(["tune", str(bad), "--output", str(out)], capsys)
    assert code == 2 and "may not search data.* keys" in text
    code, text = _run(["ablate", str(write_ablation(tmp_path, "ok", {"full": {}})), "--output", str(out),
                       "--from-tune", "nosuch"], capsys)
    assert code == 2 and "--from-tune nosuch" in text
    _nothing_written(out)


def test_the_same_sweep_twice_at_once_is_refused(tmp_path, out, capsys):
    from filelock import FileLock

    spec = write_ablation(tmp_path, "busy", {"full": {}})
    (out / "ray" / "busy").mkdir(parents=True)
    with FileLock(str(out / "ray" / "busy" / ".lock")):  # as if another driver ran this sweep
        code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
        assert code == 1 and "sweep 'busy' is already running" in text
        code, text = _run(["sync", "busy", "--output", str(out)], capsys)
        assert code == 1 and "is running right now" in text
    assert not (out / "mlflow.db").exists()
