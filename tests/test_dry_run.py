"""`--dry-run`: every problem at once (exit 2, no Ray, nothing written, seconds), or the plan; and the
encoders that cannot be random by accident."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HAS_MELD, MELD_DIR, MELD_SKIP_REASON, write_ablation, write_search

ROOT = Path(__file__).resolve().parents[1]
MELD = MELD_DIR


def _cli(*args, cwd=ROOT):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "run_sweep.py", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - started


def test_magtkd_with_three_problems_lists_all_three_and_starts_nothing(tmp_path):
    output = tmp_path / "runs"
    # three problems: no data.path, GPUs asked of a machine without any, random encoders on MELD
    proc, seconds = _cli("ablate", "ablations/magtkd.yaml", "train.epochs=5", "--dry-run", "--output", str(output))
    text = proc.stderr
    assert proc.returncode == 2, proc.stdout + text
    assert "key 'data.path' is required for data.name=meld: pass data.path=DIR" in text
    assert "trials ask for 0.25 GPU each" in text and "stage-1 tasks ask for 1 GPU each" in text
    assert "stage1.text_encoder is 'tiny'" in text and "stage1.allow_random_encoders=true" in text
    assert text.index("data.path") < text.index("GPU each")   # the data.path problem comes first
    checks = float(text.split("nothing was started or written (")[1].split(" s)")[0])
    assert checks < 10, checks              # the checks themselves (seconds counts Python's start and imports too)
    print(f"\ndry run of magtkd.yaml: checks {checks:.1f} s, command {seconds:.1f} s")
    assert not output.exists()                                 # nothing written
    assert "Ray:" not in proc.stdout and "ray" not in text.lower().replace("array", "")


def test_every_problem_is_collected_in_process(tmp_path):
    import ray

    from sweep.engine import Problems, Refused, SweepOptions, prepare

    was_running = ray.is_initialized()
    problems = Problems()
    with pytest.raises(Refused):
        prepare("ablate", ROOT / "ablations" / "magtkd.yaml", ["train.device=cuda:1"],
                SweepOptions(output=tmp_path / "runs", max_failures=-1), problems)
    messages = [str(e) for e in problems.errors]
    # the missing data.path does not hide the checks after it: the spec is loaded without it
    assert "pass data.path=DIR" in messages[0]
    assert any("cuda:1 is refused in a sweep" in m for m in messages)
    assert any("--max-failures must be >= 0" in m for m in messages)
    assert any("0.25 GPU each" in m for m in messages)
    assert any("stage1.text_encoder is 'tiny'" in m for m in messages)
    assert len(messages) == len(set(messages)) >= 5
    assert ray.is_initialized() == was_running and not (tmp_path / "runs").exists()


def test_a_valid_spec_prints_the_plan(tmp_path):
    spec = write_ablation(tmp_path, "plan", {"full": {}, "w/o prompt": {"stage1.prompt": False}}, seeds=[0, 1],
                          resources={"cpu": 0.5, "gpu": 0.25, "stage1": {"cpu": 1, "gpu": 1}}, max_concurrent=0)
    output = tmp_path / "runs"
    proc, seconds = _cli("ablate", str(spec), "--dry-run", "--output", str(output), "--num-gpus", "2")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "trials: 4 = 2 variant(s) x 2 seed(s) [0, 1]" in out
    assert "stage 1: 2 distinct entries, 0 in the cache, 2 to compute" in out
    assert "text  tiny (random-initialised)" in out and "precision: stage 1 fp32, stage 2 fp32" in out
    assert "synthetic" in out and "train" in out and "audio" in out
    assert "per trial: 0.5 CPU + 0.25 GPU; per stage-1 task: 1 CPU + 1 GPU" in out
    assert "8 trial(s), 2 stage-1 task(s)" in out or "trial(s)" in out
    assert f"MLflow: sqlite:///{output.resolve()}/mlflow.db" in out and "stage-1 cache:" in out
    assert not output.exists() and seconds < 30


def test_tune_dry_run_plans_a_search(tmp_path):
    spec = write_search(tmp_path, "search", {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    proc, _ = _cli("tune", str(spec), "--dry-run", "--output", str(tmp_path / "runs"))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "proposed by Optuna" in proc.stdout and "searched: train.lr" in proc.stdout
    assert "Optuna study:" in proc.stdout and not (tmp_path / "runs").exists()


def test_random_encoders_on_a_real_dataset_are_refused_unless_allowed(tmp_path):
    from core.config import default_config, random_encoder_problem

    meld = default_config().replace({"data.name": "meld", "data.path": "/data/meld"})
    problem = random_encoder_problem(meld)
    assert "stage1.text_encoder=minilm|/path/to/checkpoint" in problem
    assert "stage1.audio_encoder=/path/to/checkpoint" in problem and "stage1.video_encoder" in problem
    assert random_encoder_problem(meld, ["text"]).count("/path/to/checkpoint") == 1   # no media: text only
    assert random_encoder_problem(meld.replace({"stage1.allow_random_encoders": True})) == ""
    assert random_encoder_problem(meld.replace({"stage1.text_encoder": "minilm"}), ["text"]) == ""
    assert random_encoder_problem(default_config()) == ""                            # synthetic: made for them
    assert meld.content_hash() == meld.replace({"stage1.allow_random_encoders": True}).content_hash()


@pytest.mark.skipif(not HAS_MELD, reason=MELD_SKIP_REASON)
def test_meld_text_with_the_bundled_minilm_still_plans_and_tiny_text_is_refused(tmp_path):
    ok, _ = _cli("ablate", "ablations/meld_text.yaml", f"data.path={MELD}", "--dry-run", "--output", str(tmp_path / "a"))
    assert ok.returncode == 0, ok.stderr
    assert "all-MiniLM-L6-v2 (bundled), weights sha256:" in ok.stdout
    bad, _ = _cli("ablate", "ablations/meld_text.yaml", f"data.path={MELD}", "stage1.text_encoder=tiny", "--dry-run",
                  "--output", str(tmp_path / "b"))
    assert bad.returncode == 2 and "stage1.text_encoder is 'tiny'" in bad.stderr


def test_the_help_example_names_real_encoders():
    proc, _ = _cli("ablate", "--help")
    example = [line for line in proc.stdout.splitlines() if "ablations/magtkd.yaml" in line]
    assert example and all("stage1.text_encoder=" in line for line in example)


def test_trial_tags_and_the_table_caption_name_the_encoders(tmp_path):
    from reports.store import Sweep, Trial
    from reports.table import _encoder_caption
    from sweep.engine import SweepOptions, prepare
    from sweep.tracking import child_tags
    from sweep.trainable import trial_config

    spec = write_ablation(tmp_path, "enc", {"full": {}}, seeds=[0])
    settings = prepare("ablate", spec, ["train.precision=bf16"], SweepOptions(output=tmp_path / "runs")).trial_settings[0]
    tags = child_tags(settings, trial_config({"trial": settings}), "t1", "abc")
    assert tags["encoder.text"] == tags["encoder.audio"] == "tiny (random-initialised)"
    assert tags["precision"] == "stage1 fp32, stage2 bf16" and tags["device_type"] == "cpu"

    def trial(variant, text, dataset_masked=""):
        return Trial("r", variant, "0", "FINISHED", 0, 0, {}, {}, {"encoder.text": text, "encoder.audio": "tiny (random-initialised)",
                                                             "encoder.video": "tiny (random-initialised)",
                                                             "masked_modalities": dataset_masked})

    meld = Sweep("s", "", "", [], {"dataset": "meld"}, 0, ["full", "T"], ["0"],
                 trials=[trial("full", "roberta-large, weights sha256:1234", "audio,video"),
                         trial("T", "roberta-large, weights sha256:1234", "audio,video")])
    caption = _encoder_caption(meld)
    assert caption == ("Encoders: text roberta-large, weights sha256:1234, audio none (absent from the data), "
                       "video none (absent from the data).")
    meld.trials[1] = trial("T", "tiny (random-initialised)", "audio,video")
    caption = _encoder_caption(meld)
    assert "text roberta-large, weights sha256:1234 (full); tiny (random-initialised) (T)" in caption
    assert "do not measure MAGTKD's encoders" in caption
