"""IEMOCAP (authors' layout), the generic CSV reader with a YAML mapping, text clean-up, and bad input.

Every reader error must name the file and the line (as an editor shows it; header = line 1) or column.
"""
from pathlib import Path

import pytest

from dialogue_data.csv_reader import load_mapping, read_csv_dataset
from dialogue_data.iemocap import LABELS as IEMOCAP_LABELS
from dialogue_data.iemocap import read_iemocap
from dialogue_data.meld import read_meld
from dialogue_data.registry import load_dataset
from core.schema import DataError
from dialogue_data.textio import clean_text
from core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
IEMOCAP_HEADER = "Utterance,Speaker,Dialogue_ID,Start_Time,End_Time,Wav_Path,Video_Path,Emotion,Utterance_ID"


def _iemocap(tmp_path: Path, names=("train_iemocap_emo.csv", "dev_iemocap_emo.csv", "test_iemocap_emo.csv")) -> Path:
    rows = [  # deliberately not in time order: the F turns come first, as IEMOCAP's ids list them
        "I'm so frustrated.,F,Ses01F_impro01,5.2,7.0,a.wav,a.mp4,fru,Ses01F_impro01_F001",
        "Hi.,F,Ses01F_impro01,0.5,1.2,b.wav,b.mp4,neu,Ses01F_impro01_F000",
        "\"Well, hello.\",M,Ses01F_impro01,2.0,3.1,c.wav,c.mp4,hap,Ses01F_impro01_M000",
        "Great news!,M,Ses01F_impro02,1.0,2.0,d.wav,d.mp4,exc,Ses01F_impro02_M000",
    ]
    for name in names:
        (tmp_path / name).write_text(IEMOCAP_HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path


def test_iemocap_authors_layout_orders_by_start_time(tmp_path):
    dataset = read_iemocap(_iemocap(tmp_path))
    assert dataset.labels == IEMOCAP_LABELS == ["ang", "exc", "fru", "hap", "neu", "sad"]
    dialogue = dataset.splits["train"][0]
    assert dialogue.dialogue_id == "Ses01F_impro01"
    assert [u.text for u in dialogue.utterances] == ["Hi.", "Well, hello.", "I'm so frustrated."]
    assert [dataset.labels[u.label] for u in dialogue.utterances] == ["neu", "hap", "fru"]
    assert [len(dataset.splits[s]) for s in ("train", "dev", "test")] == [2, 2, 2]


def test_iemocap_accepts_documented_alternative_names(tmp_path):
    dataset = read_iemocap(_iemocap(tmp_path, names=("train.csv", "valid.csv", "test.csv")))
    assert len(dataset.splits["dev"]) == 2


def test_iemocap_through_the_registry(tmp_path):
    cfg = load_config(None, ["data.name=iemocap", f"data.path={_iemocap(tmp_path)}", "data.max_dialogues=1"])
    dataset = load_dataset(cfg.data)
    assert [len(dataset.splits[s]) for s in ("train", "dev", "test")] == [1, 1, 1]


def test_example_mapping_reads_meld_shaped_files(tmp_path):
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}_sent_emo.csv").write_text(
            header + "\n1,Hello.,Joey,JOY,positive,3,1,1,1,a,b\n2,Hi!,Monica,joy,positive,3,0,1,1,a,b\n", encoding="utf-8")
    spec = load_mapping(ROOT / "dialogue_data" / "mappings" / "example.yaml")
    dataset = read_csv_dataset(tmp_path, spec)
    assert dataset.name == "meld-via-mapping"
    assert [u.speaker for u in dataset.splits["train"][0].utterances] == ["Monica", "Joey"]  # by Utterance_ID
    assert dataset.splits["train"][0].utterances[1].label == dataset.labels.index("joy")      # case-insensitive


def test_single_file_mapping_with_split_column_and_label_map(tmp_path):
    (tmp_path / "all.tsv").write_text(
        "conv\tturn\twho\tsays\temo\tpart\n"
        "c1\t2\tA\tfine then\tangry\ttrain\n"
        "c1\t1\tB\twhatever\txxx\ttrain\n"
        "c1\t10\tB\tno way\tmad\ttrain\n"
        "c2\t1\tA\thello\tcalm\tval\n"
        "c3\t1\tA\tbye\tcalm\ttest\n", encoding="utf-8")
    (tmp_path / "map.yaml").write_text(
        "name: mine\nfile: all.tsv\ndelimiter: \"\\t\"\n"
        "columns: {text: says, speaker: who, label: emo, dialogue_id: conv, utterance_id: turn, split: part}\n"
        "labels: {angry: anger, mad: anger, calm: neutral, xxx: null}\n"
        "split_values: {dev: [val]}\norder_by: utterance_id\n", encoding="utf-8")
    cfg = load_config(None, ["data.name=csv", f"data.path={tmp_path}", f"data.mapping={tmp_path / 'map.yaml'}"])
    dataset = load_dataset(cfg.data)
    assert dataset.labels == ["anger", "neutral"]
    train = dataset.splits["train"][0]
    assert [u.text for u in train.utterances] == ["fine then", "no way"]   # turn 2 before 10 (numeric), xxx dropped
    assert any("skipped 1 utterance" in n for n in dataset.notes)
    assert len(dataset.splits["dev"]) == 1
    same = read_csv_dataset(tmp_path / "all.tsv", load_mapping(tmp_path / "map.yaml"))  # data.path may be the file
    assert same.fingerprint() == dataset.fingerprint()


@pytest.mark.parametrize("yaml_text, key", [
    ("files: {train: a.csv, dev: b.csv, test: c.csv}\ncolumns: {text: t, speaker: s, label: l}\nlabels: [x]\n", "columns.dialogue_id"),
    ("files: {train: a.csv, dev: b.csv, test: c.csv}\ncolumns: {text: t, speaker: s, label: l, dialogue_id: d}\nlabels: 3\n", "labels"),
    ("files: {train: a.csv}\ncolumns: {text: t, speaker: s, label: l, dialogue_id: d}\nlabels: [x]\n", "files"),
    ("colums: {}\n", "colums"),
    ("file: a.csv\ncolumns: {text: t, speaker: s, label: l, dialogue_id: d}\nlabels: [x]\n", "columns.split"),
    ("files: {train: a.csv, dev: b.csv, test: c.csv}\ncolumns: {text: t, speaker: s, label: l, dialogue_id: d, mood: m}\nlabels: [x]\n", "columns.mood"),
])
def test_mapping_errors_name_the_file_and_key(tmp_path, yaml_text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_mapping(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)


# ---- text clean-up ----------------------------------------------------------------------------

def test_clean_text_repairs_quotes_mojibake_and_crlf():
    assert clean_text("It\u2019s \u201cfine\u201d\u2026 \u2014 ok\r") == "It's \"fine\"... - ok"
    assert clean_text("don\u00e2\u20ac\u2122t") == "don't"          # UTF-8 read as cp1252: 'â€™'
    assert clean_text("caf\u00c3\u00a9") == "caf\u00e9"              # 'Ã©' -> 'é'
    assert clean_text("na\u00efve  caf\u00e9") == "na\u00efve caf\u00e9"  # real accents stay


def _meld_dir(tmp_path: Path, train_rows: list[str], raw: bytes = b"") -> Path:
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
    good = header + "\r\n1,Hi.,Ross,joy,positive,0,0,1,1,a,b\r\n"
    for split in ("dev", "test"):
        (tmp_path / f"{split}_sent_emo.csv").write_text(good, encoding="utf-8")
    body = (header + "\r\n" + "\r\n".join(train_rows) + "\r\n").encode("utf-8") if not raw else raw
    (tmp_path / "train_sent_emo.csv").write_bytes(body)
    return tmp_path


def test_stray_cp1252_bytes_are_repaired_and_noted(tmp_path):
    header = b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\r\n"
    raw = header + b"1,I don\x92t know \x93this\x94,Ross,joy,positive,0,0,1,1,a,b\r\n"
    dataset = read_meld(_meld_dir(tmp_path, [], raw))
    assert dataset.splits["train"][0].utterances[0].text == "I don't know \"this\""
    assert any("repaired 3 stray cp1252" in n for n in dataset.notes)


# ---- bad input: file + line or column -----------------------------------------------------------

def _error(tmp_path, rows=None, raw=b"") -> str:
    with pytest.raises(DataError) as err:
        read_meld(_meld_dir(tmp_path, rows or [], raw))
    message = str(err.value)
    assert "train_sent_emo.csv" in message
    return message


def test_missing_column(tmp_path):
    raw = b"Sr No.,Utterance,Speaker,Sentiment,Dialogue_ID,Utterance_ID\r\n1,Hi.,Ross,positive,0,0\r\n"
    message = _error(tmp_path, raw=raw)
    assert "line 1" in message and "'Emotion'" in message


def test_unknown_label_lists_valid_ones(tmp_path):
    message = _error(tmp_path, ["1,Hi.,Ross,joy,positive,0,0,1,1,a,b", "2,Grr.,Ross,angry,negative,0,1,1,1,a,b"])
    assert "line 3" in message and "'Emotion'" in message and "'angry'" in message
    assert "anger, disgust, fear, joy, neutral, sadness, surprise" in message


def test_duplicate_utterance_id(tmp_path):
    message = _error(tmp_path, ["1,Hi.,Ross,joy,positive,0,0,1,1,a,b", "2,Yo.,Joey,joy,positive,0,1,1,1,a,b",
                                "3,Hey.,Ross,joy,positive,0,1,1,1,a,b"])
    assert "line 4" in message and "duplicate utterance id '1'" in message and "first on line 3" in message


def test_empty_dialogue(tmp_path):
    message = _error(tmp_path, ["1,Hi.,Ross,joy,positive,0,0,1,1,a,b", "2,,Joey,joy,positive,7,0,1,1,a,b",
                                "3,  ,Ross,neutral,neutral,7,1,1,1,a,b"])
    assert "lines 3-4" in message and "dialogue '7' is empty" in message


def test_empty_dialogue_id(tmp_path):
    message = _error(tmp_path, ["1,Hi.,Ross,joy,positive,,0,1,1,a,b"])
    assert "line 2" in message and "'Dialogue_ID'" in message and "empty dialogue id" in message


def test_undecodable_text_names_line_and_column(tmp_path):
    header = b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\r\n"
    raw = header + b"1,Hi.,Ross,joy,positive,0,0,1,1,a,b\r\n2,caf\xe9 \xff,Ross,joy,positive,0,1,1,1,a,b\r\n"
    message = _error(tmp_path, raw=raw)
    assert "line 3, column 6" in message and "0xe9" in message and "UTF-8" in message


def test_wrong_number_of_fields_and_multiline_records_keep_editor_line_numbers(tmp_path):
    message = _error(tmp_path, ["1,\"two\nlines\",Ross,joy,positive,0,0,1,1,a,b", "2,Short,Ross"])
    assert "line 4" in message and "3 fields" in message
