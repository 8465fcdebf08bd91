"""benchmarks/gpu_check.sh is ready for a GPU machine: its bash parses, and every part runs on the CPU
(--cpu-smoke: seconds-long measurements, the demo only planned on a logical GPU)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "utterances/s (stage 2 training, width 32): fp32" in out and "bf16/fp32 x" in out
    assert "sequences/s (MiniLM fine-tuning, batch 8): fp32" in out
    assert "per trial: 1 CPU + 0.25 GPU" in out and "demo wall:" in out
    # 4. the seed-bundle part: one row (threads 1, width 64, k 2, separate and bundled s/seed, speed-up)
    assert "Whole trainings on cpu" in out and re.search(r"^ +1 +64 +2 +[0-9.]+ +[0-9.]+ +[0-9.]+$", out, re.M), out
    assert not (tmp_path / "out").exists()      # the demo was only planned


def test_gpu_check_refuses_to_measure_without_a_gpu(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script measures instead of refusing")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no CUDA GPU visible" in proc.stderr
