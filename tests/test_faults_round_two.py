"""Hostile and broken input, round two (issue 27): each case is refused before Ray starts, with a message
naming the file, key or option, the README's exit code, and nothing written under --output. The killed-driver
windows (item 1) are in tests/test_sweep_interrupt.py."""
from __future__ import annotations

import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_ablation, write_search

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


_run = run_cli


@pytest.fixture
def out(tmp_path):
    return tmp_path / "runs"


def _nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.rglob('*'))}"


def _clean(text: str) -> None:
    assert "Traceback" not in text, text


# item 2
def test_resources_ray_cannot_represent_are_refused_before_ray(tmp_path, out, capsys):
    from sweep.spec_common import check_resources

    spec = write_ablation(tmp_path, "prec", {"full": {}})
    code, text = _run(["ablate", str(spec), "--output", str(out), "--cpus-per-trial", "0.00001"], capsys)
    assert code == 2 and "0.0001" in text and "more than 4 decimals" in text, text
    spec.write_text(spec.read_text().replace("resources:\n  cpu: 1", "resources:\n  cpu: 0.33333"))
    code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
    assert code == 2 and f"{spec}:" in text and "resources.cpu" in text, text
    _nothing_written(out)
    assert check_resources(0.0001, 0.25, "x").cpu == 0.0001   # the finest step Ray keeps is accepted


# item 3
BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path, out, capsys):
    from core.config import ConfigError, load_config

    spec = write_ablation(tmp_path, "bomb", {"full": {}})
    # Nine levels of ten aliases: a billion nodes once expanded; 1 KB on disk.
    spec.write_text(spec.read_text() + 'l0: &l0 ["lol"]\n' + BOMB)
    code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
    assert code == 2 and f"{spec}: line " in text and "alias" in text and "refused before expanding" in text, text
    _nothing_written(out)
    config = tmp_path / "config.yaml"
    config.write_text('l0: &l0 ["lol"]\n' + BOMB)
    with pytest.raises(ConfigError, match="alias"):
        load_config(config)
    loop = tmp_path / "loop.yaml"           # an alias inside its own anchor: a recursive structure
    loop.write_text("name: loop\nvariants: &v {full: {}, again: *v}\n")
    code, text = _run(["ablate", str(loop), "--output", str(out)], capsys)
    assert code == 2 and "recursive" in text, text
    # Ordinary anchors and aliases still work.
    fine = write_ablation(tmp_path, "anchors", {"full": {}})
    fine.write_text(fine.read_text().replace("variants:\n  full: {}", "shared: &s {fusion.width: 8}\n"
                                             "variants:\n  full: *s\n  again: *s").replace("shared:", "description:"))
    from sweep.ablation_spec import load_ablation

    assert [v.name for v in load_ablation(fine).variants] == ["full", "again"]


# item 4
def test_a_spec_path_that_is_not_a_regular_file_or_too_large(tmp_path, out, capsys):
    for path, expected in (("/dev/zero", "not a regular file"), (str(tmp_path), "is a directory")):
        code, text = _run(["ablate", path, "--output", str(out)], capsys)
        assert code == 2 and f"{path}: {expected}" in text, text
        _clean(text)
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * 200_000)
    code, text = _run(["tune", str(big), "--output", str(out)], capsys)
    assert code == 2 and f"{big}:" in text and "at most 1048576 bytes" in text, text
    _nothing_written(out)


# item 5
def test_seed_on_the_command_line_is_a_clear_error(tmp_path, out, capsys):
    spec = write_ablation(tmp_path, "seeds", {"full": {}})
    for value in ("-3", "3"):
        code, text = _run(["ablate", str(spec), f"seed={value}", "--output", str(out)], capsys)
        assert code == 2 and f"'seed={value}' cannot be set for an ablation" in text and f"{spec}:" in text, text
        _clean(text)
    search = write_search(tmp_path, "sseed", {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    code, text = _run(["tune", str(search), "seed=-3", "--output", str(out)], capsys)
    assert code == 2 and "key 'seed' must be an integer in [0, 2**64)" in text, text
    _nothing_written(out)


# item 6
def test_a_damaged_store_or_a_bad_tracking_uri_is_a_clear_error_and_leaves_no_lock(tmp_path, capsys):
    spec = write_ablation(tmp_path, "store", {"full": {}})
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "mlflow.db").write_bytes(b"this is not a database\n" * 100)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    from sweep.tracking import make_client

    make_client(f"sqlite:///{truncated / 'mlflow.db'}").create_experiment("x")   # a real store, then cut in half
    db = truncated / "mlflow.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    for output, problem in ((garbage, "is not an SQLite database"), (truncated, "is damaged")):
        for argv in (["ablate", str(spec)], ["report", "store"], ["runs"], ["runs", "store"]):
            code, text = _run([*argv, "--output", str(output)], capsys)
            assert code == 1, (argv, text)
            assert f"MLflow store {output / 'mlflow.db'} {problem}" in text and "Move it aside" in text, text
            _clean(text)
        assert not (output / "ray").exists()     # no lock, no sweep directory
    out = tmp_path / "runs"
    for uri in ("not a uri", "ftp://example.org/store"):
        for argv in (["ablate", str(spec), "--output", str(out)], ["runs", "--output", str(out)]):
            code, text = _run([*argv, "--tracking-uri", uri], capsys)
            assert code == 2 and f"--tracking-uri {uri!r}: not a tracking store MLflow can use" in text, text
            _clean(text)
    _nothing_written(out)


# item 7
def test_non_finite_options_and_resources_are_refused(tmp_path, out, capsys):
    spec = write_ablation(tmp_path, "inf", {"full": {}})
    for flag in ("--gpus-per-trial", "--cpus-per-trial"):
        for value in ("inf", "nan"):
            code, text = _run(["ablate", str(spec), "--output", str(out), flag, value], capsys)
            assert code == 2 and f"{flag} must be a finite number, got {value}" in text, text
            _clean(text)
    spec.write_text(spec.read_text().replace("resources:\n  cpu: 1", "resources:\n  cpu: 1\n  gpu: .inf"))
    code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
    assert code == 2 and "resources.gpu must be a finite number" in text and f"{spec}:" in text, text
    _nothing_written(out)


# item 8
def test_a_cache_dir_that_is_a_file_is_refused_before_ray(tmp_path, out, capsys):
    spec = write_ablation(tmp_path, "cache", {"full": {}})
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("a file, not a directory")
    for cache in (not_a_dir, not_a_dir / "below"):
        code, text = _run(["ablate", str(spec), "--output", str(out), "--cache-dir", str(cache)], capsys)
        assert code == 2 and f"--cache-dir {cache}: {not_a_dir} is not a directory" in text, text
    _nothing_written(out)


# item 9
def test_devices_seeds_and_budgets_that_would_fail_late_are_refused_up_front(tmp_path, out, capsys):
    import torch

    from sweep.preflight import device_notes

    spec = write_ablation(tmp_path, "late", {"full": {}})
    if not torch.cuda.is_available():
        code, text = _run(["ablate", str(spec), "train.device=cuda", "--output", str(out)], capsys)
        assert code == 2 and "key 'train.device': cuda but this machine has no CUDA GPU" in text, text
    if not torch.backends.mps.is_available():
        code, text = _run(["ablate", str(spec), "train.device=mps", "--output", str(out)], capsys)
        assert code == 2 and "mps is not available on this machine" in text, text
    from core.config import load_config

    assert device_notes([load_config(None, ["train.device=cuda"])], "auto")   # a cluster: said, checked once joined
    for seeds, expected in (([2 ** 64], "in [0, 2**64)"), ([-1], "in [0, 2**64)"),
                            (list(range(20_000)), "lists 20000 seeds; at most 1000")):
        spec.write_text(spec.read_text().split("seeds:")[0] + f"seeds: {seeds}\nstage1_seed: shared\n")
        code, text = _run(["ablate", str(spec), "--output", str(out)], capsys)
        assert code == 2 and f"{spec}:" in text and expected in text, text[:500]
    search = write_search(tmp_path, "budget", {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    code, text = _run(["tune", str(search), "--output", str(out), "--time-budget", "nan"], capsys)
    assert code == 2 and "--time-budget must be a finite number, got nan" in text, text
    _nothing_written(out)


# item 10
@pytest.mark.slow
def test_ui_exits_non_zero_when_its_server_cannot_come_up(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "reports.cli", "ui", "--output", str(tmp_path / "runs"),
                                 "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "pick another with --port" in result.stderr
    assert "MLflow UI for" not in result.stdout                 # it never says it serves
    result = subprocess.run([sys.executable, "run_sweep.py", "ui", "--output", str(tmp_path / "runs"),
                             "--port", "70000"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--port 70000: a TCP port is 1-65535" in result.stderr, result.stderr


def test_a_server_that_dies_before_answering_is_reported():
    from reports.ui import wait_until_serving

    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert "exited with code 3" in wait_until_serving(dead, "http://127.0.0.1:1", timeout_s=300)


# item 11
def test_the_restricted_unpickler_bounds_what_a_pickle_allocates(tmp_path):
    from core.schema import DataError
    from dialogue_data.features_import import safe_load

    path = tmp_path / "x.pkl"
    bombs = {"bytearray": b"c__builtin__\nbytearray\n(I10000000000\ntR.",               # 30 bytes asking 10 GB
             "bytes": b"c__builtin__\nbytes\n(I10000000000\ntR.",
             "ndarray": b"cnumpy\nndarray\n((I100000\nI100000\nttR.",
             "_reconstruct": b"cnumpy._core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I100000\nI100000\nt"
                             b"C\x01btR."}
    for name, payload in bombs.items():
        path.write_bytes(payload)
        with pytest.raises(DataError, match=f"asks {name}\\(\\) for"):
            safe_load(path)
    genuine = {"text": np.arange(12.0).reshape(3, 4), "raw": bytearray(b"ab"), "ids": [1, 2], "x": np.float32(1)}
    for protocol in (0, 2, 4, 5):
        path.write_bytes(pickle.dumps(genuine, protocol=protocol))
        back = safe_load(path)
        assert np.array_equal(back["text"], genuine["text"]) and back["raw"] == bytearray(b"ab")
