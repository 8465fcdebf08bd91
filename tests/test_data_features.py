"""The authors' first-stage feature pickles: restricted unpickling, shape checks, conversion, caching."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dialogue_data.features_import import (cached_author_features, load_author_features, safe_load)
from dialogue_data.registry import load_dataset
from core.schema import DataError
from core.config import load_config

KEYS = ("text", "audio", "video", "audio_kd", "video_kd")


def _split_dict(rng, n_dialogues, width=768, classes=7, offset=0):
    vids = list(range(offset, offset + n_dialogues))
    lengths = {v: int(rng.integers(2, 6)) for v in vids}
    d = {k: {v: [rng.standard_normal(width).astype(np.float32) for _ in range(lengths[v])] for v in vids} for k in KEYS}
    d["speakers"] = {v: [int(x) for x in rng.integers(0, 3, lengths[v])] for v in vids}
    d["labels"] = {v: [int(x) for x in rng.integers(0, classes, lengths[v])] for v in vids}
    d["vids"] = vids
    d["dia2utt"] = {v: list(range(lengths[v])) for v in vids}
    return d


def _authors_dir(tmp_path: Path, **kw) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "feature"
    folder.mkdir()
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        with open(folder / f"first_stage_{split}_features.pkl", "wb") as f:
            pickle.dump(_split_dict(rng, n, **kw), f)
    return folder


def _cfg(path, *extra):
    return load_config(None, ["data.name=features", f"data.path={path}", *extra])


def test_imports_the_authors_layout_with_kd_vectors_by_default(tmp_path):
    folder = _authors_dir(tmp_path)
    dataset, features = load_author_features(folder, _cfg(folder))
    assert features.labels[:2] == ["anger", "disgust"] and len(features.labels) == 7   # 7 classes: MELD
    assert features.dims() == {"text": 768, "audio": 768, "video": 768}
    raw = safe_load(folder / "first_stage_train_features.pkl")   # our own fixture, read the safe way too
    train = features.splits["train"]
    first = len(raw["labels"][0])
    assert torch.equal(train.vectors["audio"][:first], torch.from_numpy(np.stack(raw["audio_kd"][0])))
    assert torch.equal(train.vectors["text"][:first], torch.from_numpy(np.stack(raw["text"][0])))
    assert train.dialogue_lengths == [len(raw["labels"][v]) for v in raw["vids"]]
    assert train.labels.tolist() == [x for v in raw["vids"] for x in raw["labels"][v]]
    assert features.available() == ["text", "audio", "video"]
    assert dataset.fingerprint() == features.info["fingerprint"]
    assert [len(dataset.splits[s]) for s in ("train", "dev", "test")] == [4, 2, 2]


def test_kd_off_or_audio_only_picks_the_plain_vectors(tmp_path):
    folder = _authors_dir(tmp_path)
    raw = safe_load(folder / "first_stage_train_features.pkl")
    _, iemocap_style = load_author_features(folder, _cfg(folder, "stage1.kd_modalities=audio"))
    video = iemocap_style.splits["train"].vectors["video"][:len(raw["labels"][0])]
    assert torch.equal(video, torch.from_numpy(np.stack(raw["video"][0])))                # raw video, like IEMOCAP
    _, plain = load_author_features(folder, _cfg(folder, "stage1.kd=false"))
    assert torch.equal(plain.splits["train"].vectors["audio"][:2], torch.from_numpy(np.stack(raw["audio"][0][:2])))
    _, few = load_author_features(folder, _cfg(folder, "data.max_dialogues=1"))
    assert len(few.splits["train"].dialogue_lengths) == 1


def test_single_file_with_vids_per_split(tmp_path):
    rng = np.random.default_rng(1)
    parts = [_split_dict(rng, 2, width=16, classes=6, offset=o) for o in (0, 10, 20)]
    merged = {k: {} for k in (*KEYS, "speakers", "labels", "dia2utt")}
    for part in parts:
        for k in merged:
            merged[k].update(part[k])
    merged["vids"] = {"train": parts[0]["vids"], "dev": parts[1]["vids"], "test": parts[2]["vids"]}
    path = tmp_path / "iemocap_features.pkl"
    path.write_bytes(pickle.dumps(merged, protocol=2))            # an old protocol: bytes via _codecs.encode
    _, features = load_author_features(path, _cfg(path))
    assert features.labels == ["ang", "exc", "fru", "hap", "neu", "sad"]   # from the file name
    assert features.dims()["text"] == 16 and len(features.splits["dev"].dialogue_lengths) == 2


def test_os_system_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = _authors_dir(tmp_path)
    evil = folder / "first_stage_dev_features.pkl"
    d = safe_load(evil)
    d["text"][d["vids"][0]] = Payload()                          # buried inside a real-looking payload
    evil.write_bytes(pickle.dumps(d))
    with pytest.raises(DataError) as err:
        load_author_features(folder, _cfg(folder))
    message = str(err.value)
    assert str(evil) in message and "system" in message and ("posix" in message or "os" in message)
    assert "nothing was run" in message
    assert not marker.exists()
    with pytest.raises(DataError):
        safe_load(evil)
    assert not marker.exists()


def test_other_globals_and_torch_files_are_refused(tmp_path):
    path = tmp_path / "t.pkl"
    path.write_bytes(pickle.dumps({"f": Path("/etc/passwd")}))
    with pytest.raises(DataError, match="refused to unpickle global 'pathlib"):
        safe_load(path)
    (tmp_path / "tensor.pkl").write_bytes(pickle.dumps({"text": torch.zeros(2)}))
    with pytest.raises(DataError, match="tensor.pkl: refused to unpickle global 'torch"):
        safe_load(tmp_path / "tensor.pkl")
    folder = tmp_path / "pt"
    folder.mkdir()
    for split in ("train", "dev", "test"):  # a legacy torch.save file starts with a bare magic-number pickle
        torch.save({"text": torch.zeros(2)}, folder / f"{split}.pkl", _use_new_zipfile_serialization=False)
    with pytest.raises(DataError, match="train.pkl: expected a dict"):
        load_author_features(folder, _cfg(folder))
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match="junk.pkl"):
        safe_load(tmp_path / "junk.pkl")


def _corrupt(folder: Path, mutate) -> str:
    path = folder / "first_stage_train_features.pkl"
    original = path.read_bytes()
    d = safe_load(path)
    mutate(d)
    path.write_bytes(pickle.dumps(d))
    with pytest.raises(DataError) as err:
        load_author_features(folder, _cfg(folder))
    path.write_bytes(original)
    message = str(err.value)
    assert str(path) in message
    return message


def test_wrong_width_names_file_key_and_dialogue(tmp_path):
    def mutate(d):
        d["audio_kd"][2][1] = np.zeros(512, dtype=np.float32)
    message = _corrupt(_authors_dir(tmp_path), mutate)
    assert "'audio_kd'" in message and "dialogue 2" in message


def test_wrong_count_and_missing_keys(tmp_path):
    folder = _authors_dir(tmp_path)

    def fewer(d):
        d["text"][1] = d["text"][1][:-1]
    assert "'text', dialogue 1" in _corrupt(folder, fewer)

    def no_speakers(d):
        del d["speakers"]
    assert "missing key 'speakers'" in _corrupt(folder, no_speakers)

    def bad_label(d):
        d["labels"][0][0] = -1
    assert "'labels', dialogue 0" in _corrupt(folder, bad_label)

    def no_video_kd_in_train_only(d):
        del d["video_kd"]
    assert "missing key 'video_kd' (video), which the dev split has" in _corrupt(folder, no_video_kd_in_train_only)

    def empty(d):
        d["labels"][3] = []
    assert "dialogue 3: empty dialogue" in _corrupt(folder, empty)


def test_registry_points_features_to_the_import_path(tmp_path):
    folder = _authors_dir(tmp_path)
    with pytest.raises(DataError, match="cached_author_features"):
        load_dataset(_cfg(folder).data)


def test_cached_import_unpickles_once(tmp_path):
    folder = _authors_dir(tmp_path)
    cfg = _cfg(folder)
    messages = []
    fp1, first, notes = cached_author_features(cfg, tmp_path / "cache", log=messages.append)
    fp2, second, _ = cached_author_features(cfg, tmp_path / "cache", log=messages.append)
    assert fp1 == fp2 and "miss" in messages[0] and "hit" in messages[1]
    assert torch.equal(first.splits["test"].vectors["video"], second.splits["test"].vectors["video"])
    assert second.splits["train"].dialogue_lengths == first.splits["train"].dialogue_lengths
    assert any("audio<-audio_kd" in n for n in notes)
    fp3, _, _ = cached_author_features(_cfg(folder, "stage1.kd=false"), tmp_path / "cache", log=messages.append)
    assert "miss" in messages[2] and fp3 != fp1
