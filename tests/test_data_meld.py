"""MELD from the real transcripts (MAGTKD_MELD, e.g. ../shared/data/meld), its optional media, and `run_sweep.py data`."""
import argparse
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from dialogue_data import cli
from dialogue_data.media import MediaWarning
from dialogue_data.meld import LABELS, read_meld
from core.schema import DataError
from conftest import HAS_MELD, MELD_DIR, MELD_SKIP_REASON

ROOT = Path(__file__).resolve().parents[1]
MELD = MELD_DIR
needs_meld = pytest.mark.skipif(not HAS_MELD, reason=MELD_SKIP_REASON)


@pytest.fixture(scope="module")
def meld():
    return read_meld(MELD)


@needs_meld
def test_counts_labels_and_order(meld):
    assert meld.labels == LABELS and len(LABELS) == 7
    assert [len(meld.splits[s]) for s in ("train", "dev", "test")] == [1038, 114, 280]
    assert [meld.coverage(s)["utterances"] for s in ("train", "dev", "test")] == [9989, 1109, 2610]
    for split in ("train", "dev", "test"):
        ids = [int(d.dialogue_id) for d in meld.splits[split]]
        assert ids == sorted(ids)
        for dialogue in meld.splits[split]:
            utt = [int(u.utterance_id) for u in dialogue.utterances]
            assert utt == sorted(utt) and len(set(utt)) == len(utt)
    first = meld.splits["train"][0].utterances
    assert first[0].speaker == "Chandler" and first[1].speaker == "The Interviewer"
    assert first[0].text.startswith("also I was the point person on my company's transition")  # ’ -> '
    assert meld.coverage("train")["audio"] == 0 and any("media_dir" in n for n in meld.notes)


@needs_meld
def test_text_is_clean_ascii_punctuation(meld):
    texts = [u.text for s in ("train", "dev", "test") for u in meld.utterances(s)]
    joined = "".join(texts)
    for bad in ("\u2019", "\u2018", "\u201c", "\u201d", "\u2026", "\u2014", "\r", "\u00e2\u20ac"):
        assert bad not in joined
    assert "\u00e9" in joined  # real accents are kept


def _write_wav(path: Path, seconds=0.1, rate=8000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    if channels == 2:
        x = np.stack([x, x], 1).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())


def _tiny_meld(tmp_path: Path) -> Path:
    data = tmp_path / "meld"
    data.mkdir()
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\r\n"
    for split in ("train", "dev", "test"):
        rows = ["1,Hi there.,Ross,joy,positive,0,0,1,1,a,b", "2,Hello.,Rachel,neutral,neutral,0,1,1,1,a,b",
                "3,Bye.,Ross,sadness,negative,1,0,1,1,a,b"]
        (data / f"{split}_sent_emo.csv").write_text(header + "\r\n".join(rows) + "\r\n", encoding="utf-8")
    return data


def test_media_dir_loads_clips_and_masks_missing_ones_with_one_warning(tmp_path):
    from PIL import Image

    data = _tiny_meld(tmp_path)
    media = tmp_path / "media"
    (media / "train").mkdir(parents=True)
    _write_wav(media / "train" / "dia0_utt0.wav", rate=8000)
    _write_wav(media / "train" / "dia0_utt1.wav", rate=16000, channels=2)
    frames = media / "train" / "dia0_utt0"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 24, 3), 40 * i, dtype=np.uint8)).save(frames / f"{i:03d}.png")
    np.save(media / "train" / "dia1_utt0.npy", np.random.default_rng(0).random((5, 12, 12, 3)).astype(np.float32))
    with pytest.warns(MediaWarning) as caught:
        dataset = read_meld(data, media_dir=media, sample_rate=16000, frames=4, frame_size=8,
                            media_store=tmp_path / "store", media_workers=1)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "audio missing for 1/3 train utterances" in message and "video missing for 1/3 train" in message
    assert "audio missing for 3/3 dev utterances" in message
    u0, u1 = dataset.splits["train"][0].utterances
    # The dataset holds references into the media store; the arrays are read from there
    assert u0.waveform is None and u0.audio_ref.shape == (1600,)           # 0.1 s at 8 kHz -> 16 kHz
    assert u0.audio_ref.load().dtype == np.float32 and u1.audio_ref.shape == (1600,)
    frames0 = u0.video_ref.load()
    assert frames0.shape == (4, 3, 8, 8) and 0 <= frames0.min() and frames0.max() <= 1
    assert u1.video_ref is None                                              # masked, not zeros
    assert dataset.splits["train"][1].utterances[0].video_ref.shape == (4, 3, 8, 8)
    assert dataset.coverage("train") == {"utterances": 3, "text": 3, "audio": 2, "video": 2}
    assert any("video missing for 1/3 train" in n for n in dataset.notes)


def test_bad_wav_names_the_file(tmp_path):
    data = _tiny_meld(tmp_path)
    (tmp_path / "media" / "train").mkdir(parents=True)
    (tmp_path / "media" / "train" / "dia0_utt0.wav").write_bytes(b"RIFF1234WAVEjunk")
    with pytest.raises(DataError, match="dia0_utt0.wav"):
        read_meld(data, media_dir=tmp_path / "media", media_store=tmp_path / "store")


def test_missing_split_file_lists_the_names_tried(tmp_path):
    data = _tiny_meld(tmp_path)
    (data / "dev_sent_emo.csv").unlink()
    with pytest.raises(DataError) as err:
        read_meld(data)
    assert "dev_sent_emo.csv" in str(err.value) and "dev_meld_emo.csv" in str(err.value)


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@needs_meld
def test_data_command_prints_the_must_show_counts(capsys):
    assert _run_cli(["data", "meld", "--path", str(MELD)]) == 0
    out = capsys.readouterr().out
    assert "meld: 7 labels (anger, disgust, fear, joy, neutral, sadness, surprise)" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip().split()[:1] in (["train"], ["dev"], ["test"])}
    assert lines["train"][1:3] == ["1038", "9989"]
    assert lines["dev"][1:3] == ["114", "1109"]
    assert lines["test"][1:3] == ["280", "2610"]
    assert "utterance ids in order: 0, 1, 2, 3" in out
    assert "neutral" in out and "4710 (47.2%)" in out


def test_data_command_accepts_overrides_and_synthetic(capsys):
    assert _run_cli(["data", "synthetic", "synthetic_dialogues=8", "data.max_dialogues=2", "data.frames=2"]) == 0
    out = capsys.readouterr().out
    assert "synthetic: 6 labels" in out and "max_dialogues=2" in out
    assert out.count("100.0%") == 9  # text, audio, video for each split


@needs_meld
def test_run_sweep_entry_point(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "run_sweep.py", "data", "meld", "--path", str(MELD)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1038" in proc.stdout and "9989" in proc.stdout and "2610" in proc.stdout
    bad = subprocess.run([sys.executable, "run_sweep.py", "data", "meld", "--path", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "train_sent_emo.csv" in bad.stderr
