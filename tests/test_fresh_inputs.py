"""Inputs a new user meets first: corpora laid out differently (composite dialogue ids, list-valued
speakers, a mapping's own dataset name), numbers that are not finite, a label the training split lacks,
empty or broken YAML, and a sweep's traces in MLflow (experiment kind, dataset input, names)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_BASE, child_runs, parent_runs

import run_sweep
from core.config import ConfigError, load_config
from core.schema import DataError
from dialogue_data.csv_reader import load_mapping, read_csv_dataset

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "list_speakers"
MAPPING = ROOT / "dialogue_data" / "mappings" / "composite_id.yaml"


def _run(argv, capsys):
    code = run_sweep.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- mappings for real-world layouts ------------------------------------------------------------

def test_composite_dialogue_id_and_list_speakers():
    dataset = read_csv_dataset(SAMPLE, load_mapping(MAPPING))
    assert dataset.name == "tv-scenes"
    train = dataset.splits["train"]
    # scene 1 of episode 1 and scene 1 of episode 2 are different dialogues (scene numbers restart)
    assert sorted(d.dialogue_id for d in train) == ["1_1_1", "1_1_2", "1_2_1", "2_1_1"]
    first = next(d for d in train if d.dialogue_id == "1_1_1")
    speakers = [u.speaker for u in first.utterances]
    # a list with one name is that name; two names are one speaker, joined in the order written
    assert speakers == ["Monica Geller", "Ross Geller", "Monica Geller & Rachel Green"]
    pair = next(d for d in train if d.dialogue_id == "2_1_1").utterances[0]
    assert pair.speaker == "Monica Geller & Rachel Green"  # the same pair is the same speaker
    assert len({u.speaker for u in first.utterances}) == 3
    # the reversed pair in the test split is written in another order: another speaker, by the stated rule
    assert dataset.splits["test"][0].utterances[2].speaker == "Rachel Green & Monica Geller"


def test_a_speaker_cell_that_is_not_a_list_names_the_line(tmp_path):
    data = tmp_path / "d"
    shutil.copytree(SAMPLE, data)
    train = data / "train.csv"
    lines = train.read_text().splitlines()
    lines[3] = lines[3].replace("\"['Monica Geller', 'Rachel Green']\"", "\"['Monica Geller', \"")
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_csv_dataset(data, load_mapping(MAPPING))
    assert f"{train}: line 4, column 'Speaker'" in str(err.value) and "not a list literal" in str(err.value)


def test_a_list_dialogue_id_is_refused_for_other_roles_and_checked(tmp_path):
    text = MAPPING.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("text: Utterance", "text: [Utterance, Speaker]"))
    with pytest.raises(DataError, match="key 'columns.text' must be a column header"):
        load_mapping(bad)
    bad.write_text(text.replace("speaker_format: list", "speaker_format: tuple"))
    with pytest.raises(DataError, match="key 'speaker_format' must be plain or list"):
        load_mapping(bad)
    bad.write_text(text.replace("[Season, Episode, Scene_ID]", "[Season, Episod, Scene_ID]"))
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) 'Episod' \(dialogue_id\)"):
        read_csv_dataset(SAMPLE, load_mapping(bad))


def test_unknown_labels_are_listed_as_the_mapping_spells_them(tmp_path):
    data = tmp_path / "d"
    shutil.copytree(SAMPLE, data)
    (data / "dev.csv").write_text((data / "dev.csv").read_text().replace(",Mad,", ",Angry,"))
    with pytest.raises(DataError) as err:
        read_csv_dataset(data, load_mapping(MAPPING))
    assert "unknown label 'Angry'; valid labels: Joyful, Mad, Neutral, Peaceful, Powerful, Sad, Scared" in str(err.value)


def test_the_mapping_name_is_the_dataset_name_in_mlflow_reports_and_runs(tmp_path, capsys, stage1_cache):
    spec = tmp_path / "named.yaml"
    # tiny random encoders on a real (csv) dataset must be asked for: a deliberate smoke test
    base = {**TINY_BASE, "train.epochs": 1, "stage1.shared_seed": 0, "stage1.allow_random_encoders": True}
    spec.write_text("# python run_sweep.py ablate named.yaml\n" + json.dumps({
        "name": "named", "dataset": {"name": "csv", "path": str(SAMPLE), "mapping": str(MAPPING)},
        "base": base, "variants": {"full": {}}, "seeds": [0], "resources": {"cpu": 1}}))
    out = tmp_path / "runs"
    code, stdout, stderr = _run(["ablate", str(spec), "--output", str(out), "--cache-dir", str(stage1_cache)], capsys)
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    (parent,) = parent_runs(out, "named")
    (child,) = child_runs(out, "named")
    assert parent.data.tags["dataset"] == "tv-scenes" and child.data.tags["dataset"] == "tv-scenes"
    # the dataset as an MLflow dataset input: the UI's Dataset column
    (dataset_input,) = child.inputs.dataset_inputs
    assert dataset_input.dataset.name == "tv-scenes"
    assert dataset_input.dataset.digest == child.data.tags["dataset_fingerprint"]
    # the experiment opens on the runs table in the UI
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_experiment_by_name("named")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "on dataset tv-scenes" in (out / "reports" / "named" / "table.md").read_text()
    code, stdout, _ = _run(["runs", "--output", str(out)], capsys)
    assert code == 0 and "tv-scenes" in stdout and " csv " not in stdout
    code, stdout, _ = _run(["ui", "--output", str(out), "--dry-run"], capsys)
    assert code == 0
    assert f"named: http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in stdout


# ---- numbers, labels, YAML ----------------------------------------------------------------------

@pytest.mark.parametrize("override,key", [("train.lr=.inf", "train.lr"), ("stage1.lr=1e999", "stage1.lr"),
                                          ("fusion.dropout=.nan", "fusion.dropout"),
                                          ("fusion.kd_audio_weight=-.inf", "fusion.kd_audio_weight")])
def test_non_finite_numbers_are_refused_with_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}' must be a finite number"):
        load_config(None, [override])


def test_non_finite_lr_on_the_command_line_fails_before_anything(tmp_path, capsys):
    from conftest import write_ablation

    spec = write_ablation(tmp_path, "inf", {"full": {}})
    code, _, stderr = _run(["ablate", str(spec), "train.lr=.inf", "--output", str(tmp_path / "runs")], capsys)
    assert code == 2 and "train.lr" in stderr and "finite" in stderr
    assert not (tmp_path / "runs").exists()


def _without_label(tmp_path: Path, label: str) -> Path:
    data = tmp_path / "nosad"
    shutil.copytree(SAMPLE, data)
    train = data / "train.csv"
    train.write_text("\n".join(line for line in train.read_text().splitlines() if f",{label}," not in line) + "\n")
    return data


def test_a_label_without_training_examples_warns_in_data_and_strict_refuses(tmp_path, capsys):
    data = _without_label(tmp_path, "Sad")
    args = ["data", "csv", "--path", str(data), "--mapping", str(MAPPING)]
    code, stdout, _ = _run(args, capsys)
    assert code == 0 and "label 'Sad' has no examples in the train split" in stdout
    code, _, stderr = _run([*args, "--strict"], capsys)
    assert code == 2 and "label 'Sad' has no examples in the train split" in stderr


def test_a_label_without_training_examples_at_sweep_launch(tmp_path, capsys):
    data = _without_label(tmp_path, "Sad")
    spec = tmp_path / "nosad.yaml"
    spec.write_text("# python run_sweep.py ablate nosad.yaml\n" + json.dumps({
        "name": "nosad", "dataset": {"name": "csv", "path": str(data), "mapping": str(MAPPING)},
        "base": {**TINY_BASE, "train.epochs": 1}, "variants": {"full": {}}, "seeds": [0]}))
    out = tmp_path / "runs"
    code, _, stderr = _run(["ablate", str(spec), "--output", str(out), "--strict"], capsys)
    assert code == 2 and "label 'Sad' has no examples in the train split" in stderr and "--strict" in stderr
    assert not out.exists()


def test_an_empty_sweep_file_says_it_is_empty(tmp_path, capsys):
    spec = tmp_path / "empty.yaml"
    spec.write_text("# python run_sweep.py ablate empty.yaml\n\n")
    code, _, stderr = _run(["ablate", str(spec), "--output", str(tmp_path / "runs")], capsys)
    assert code == 2 and f"{spec}: empty file" in stderr


def test_a_yaml_syntax_error_keeps_pyyamls_context(tmp_path, capsys):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: broken\nbase: {train.epochs: 2,\n  train.lr: 0.001\nvariants:\n  full: {}\n")
    code, _, stderr = _run(["ablate", str(spec), "--output", str(tmp_path / "runs")], capsys)
    assert code == 2 and f"{spec}: line 4" in stderr
    assert "while parsing a flow mapping that starts at line 2" in stderr
