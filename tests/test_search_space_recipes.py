"""The `# try:` line of every search-space YAML runs as written on a CPU-only machine.

Each line goes through run_sweep.py's own parser and engine (real Ray, Optuna, MLflow), with tiny data
and model sizes added after its own overrides (later overrides win) and two trials instead of its
--num-samples, so the test takes seconds; everything else is the line as a user copies it.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import TINY_BASE, TINY_DATASET, child_runs

from run_sweep import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
TRY = re.compile(r"^# try: python run_sweep\.py (tune .+)$")


def try_line(path: Path) -> list[str]:
    lines = [m.group(1) for m in map(TRY.match, path.read_text(encoding="utf-8").splitlines()) if m]
    assert len(lines) == 1, f"{path.name} needs one '# try: python run_sweep.py tune {path.parent.name}/{path.name} " \
                            f"...' line that runs on a CPU-only machine"
    return shlex.split(lines[0])


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_try_line_runs_on_a_cpu_only_machine(path, tmp_path, ray_local, stage1_cache, monkeypatch):
    argv = try_line(path)
    assert argv[1] == f"search_spaces/{path.name}"
    # CPU-only as written, whatever this machine has: no GPU asked for, training on the CPU.
    assert argv[argv.index("--gpus-per-trial") + 1] == "0" and "train.device=cpu" in argv
    tiny = ([f"data.{k}={v}" for k, v in TINY_DATASET.items() if k != "name"]
            + [f"{k}={v}" for k, v in {**TINY_BASE, "train.epochs": 2}.items()])
    first_option = next(i for i, token in enumerate(argv) if token.startswith("--"))
    argv = (argv[:first_option] + tiny + argv[first_option:]
            + ["--num-samples", "2", "--output", str(tmp_path / "runs"), "--cache-dir", str(stage1_cache)])
    monkeypatch.chdir(ROOT)  # the line names search_spaces/NAME.yaml from the project root
    assert main(argv) == 0
    name = path.stem
    runs = child_runs(tmp_path / "runs", name)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert (tmp_path / "runs" / "optuna" / f"{name}.db").exists()
