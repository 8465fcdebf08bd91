"""Real encoded media (H.264 + AAC mp4s, MPEG-4 avi sessions made here with PyAV): read as released,
cut by time ranges, decoded once into the media store, errors that name the file and the line, and a
store build killed mid-way that resumes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core.schema import DataError
from dialogue_data.clipgen import colour_at, dominant_tone, tone_at, write_clip
from dialogue_data.iemocap import read_iemocap
from dialogue_data.meld import read_meld

RATE = 16000
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
MELD_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def meld_layout(root: Path, utterances: int = 2, seconds: float = 2.0, noise: int = 0,
                dialogues: int = 1, size: tuple[int, int] = (160, 120)) -> tuple[Path, Path]:
    """MELD.Raw as released: per-split transcripts, one dia{D}_utt{U}.mp4 per utterance, no wav. Without
    noise every clip has the same content (and is stored once); with it each clip is its own."""
    data, media = root / "meld", root / "MELD.Raw"
    data.mkdir(parents=True)
    for split, folder in MELD_DIRS.items():
        rows = []
        for d in range(dialogues):
            for u in range(utterances):
                # StartTime/EndTime are episode times, far past the clip's length: they must not cut it
                rows.append(f"{len(rows) + 1},Line {d} {u}.,{'Ross' if u % 2 else 'Rachel'},"
                            f"{('neutral', 'joy', 'sadness')[(d + u) % 3]},positive,{d},{u},1,1,"
                            f"\"00:10:0{u},000\",\"00:10:0{u},900\"")
                write_clip(media / folder / f"dia{d}_utt{u}.mp4", seconds=seconds, noise=noise, size=size,
                           seed=100 * len(split) + 10 * d + u)
        (data / f"{split}_sent_emo.csv").write_text(MELD_HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return data, media


def test_meld_mp4_read_whole_audio_and_frames_match_what_was_encoded(tmp_path):
    data, media = meld_layout(tmp_path, utterances=1, seconds=2.0)
    store = tmp_path / "store"
    dataset = read_meld(data, media_dir=media, frames=4, frame_size=16, media_store=store, media_workers=1)
    for split in ("train", "dev", "test"):
        assert dataset.coverage(split) == {"utterances": 1, "text": 1, "audio": 1, "video": 1}
    utt = dataset.splits["train"][0].utterances[0]
    assert utt.waveform is None and utt.frames is None          # references only, no arrays in the dataset
    audio = utt.audio_ref.load()
    assert audio.shape == (2 * RATE,) and 0.45 < np.abs(audio).max() < 0.55     # stereo 48 kHz -> mono 16 kHz
    for second in range(2):                                      # the tone encoded in each second
        middle = audio[second * RATE + 2000: (second + 1) * RATE - 2000]
        assert abs(dominant_tone(middle, RATE) - tone_at(second)) < 5
    frames = utt.video_ref.load_raw()
    assert frames.shape == (4, 3, 16, 16) and frames.dtype == np.uint8
    for i, second in enumerate((0, 0, 1, 1)):                    # centres 0.25, 0.75, 1.25, 1.75 s
        assert np.abs(frames[i, :, 8, 8].astype(int) - colour_at(second)).max() <= 6
    # A second load decodes nothing and gives the same references (and fingerprint)
    before = sorted(p.name for p in (store / "items").rglob("*.npy"))
    again = read_meld(data, media_dir=media, frames=4, frame_size=16, media_store=store, media_workers=1)
    assert again.fingerprint() == dataset.fingerprint()
    # the three splits' clips have the same content: one audio and one video item serve them all
    assert sorted(p.name for p in (store / "items").rglob("*.npy")) == before and len(before) == 2
    # Other decode settings are other items; the fingerprint changes with them
    other = read_meld(data, media_dir=media, frames=2, frame_size=16, media_store=store, media_workers=1)
    assert other.fingerprint() != dataset.fingerprint()


IEMOCAP_HEADER = "Utterance,Speaker,Dialogue_ID,Start_Time,End_Time,Wav_Path,Video_Path,Emotion,Utterance_ID\n"


def iemocap_layout(root: Path, ranges: list[tuple[float, float]], session_seconds: float = 12.0) -> tuple[Path, Path]:
    data, media = root / "iemocap", root / "IEMOCAP"
    data.mkdir(parents=True)
    write_clip(media / "Session1" / "Ses01F_impro01.avi", seconds=session_seconds, codec="mpeg4", fps=10)
    rows = [f"Turn {i}.,{'M' if i % 2 else 'F'},Ses01F_impro01,{start},{end},,Session1/Ses01F_impro01.avi,"
            f"{('neu', 'ang', 'sad')[i % 3]},Ses01F_impro01_F00{i}" for i, (start, end) in enumerate(ranges)]
    for split in ("train", "dev", "test"):
        (data / f"{split}.csv").write_text(IEMOCAP_HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return data, media


def test_iemocap_session_ranges_give_each_utterance_its_own_frames_and_audio(tmp_path):
    ranges = [(1.0, 3.0), (5.0, 7.0), (9.0, 11.0)]
    data, media = iemocap_layout(tmp_path, ranges)
    dataset = read_iemocap(data, media_dir=media, frames=4, frame_size=16, media_store=tmp_path / "store",
                           media_workers=1)
    utterances = dataset.splits["train"][0].utterances
    assert [u.utterance_id for u in utterances] == [f"Ses01F_impro01_F00{i}" for i in range(3)]
    for utt, (start, end) in zip(utterances, ranges):
        audio = utt.audio_ref.load()                          # no wav: the session's track, start..end
        assert audio.shape == (int((end - start) * RATE),)
        for second in range(int(start), int(end)):
            offset = (second - int(start)) * RATE
            assert abs(dominant_tone(audio[offset + 2000: offset + RATE - 2000], RATE) - tone_at(second)) < 5
        # frames: 4 centres of [start - 1, end + 1] (the authors' 1 s margin), 1 s apart
        frames = utt.video_ref.load_raw()
        for i in range(4):
            second = int(start - 1 + (i + 0.5))
            assert np.abs(frames[i, :, 8, 8].astype(int) - colour_at(second)).max() <= 10, (utt.utterance_id, i)
    assert len({u.video_ref.identity for u in utterances}) == 3


def _store_arrays(store: Path) -> list[Path]:
    return sorted(store.rglob("*.npy")) + sorted(store.rglob("*.tmp"))


def test_corrupt_clip_is_an_error_naming_file_and_line_and_writes_nothing(tmp_path):
    data, media = meld_layout(tmp_path, utterances=2, seconds=1.0)
    bad = media / "train_splits" / "dia0_utt1.mp4"
    bad.write_bytes(bad.read_bytes()[:300])                      # a truncated download
    store = tmp_path / "store"
    with pytest.raises(DataError) as err:
        read_meld(data, media_dir=media, frames=2, frame_size=16, media_store=store, media_workers=1)
    message = str(err.value)
    assert "dia0_utt1.mp4" in message and "train_sent_emo.csv: line 3" in message
    assert not [p for p in _store_arrays(store) if "tmp" in p.name]
    manifest = (store / "manifest.jsonl").read_text() if (store / "manifest.jsonl").exists() else ""
    assert "dia0_utt1.mp4" not in manifest                      # nothing of the bad clip is recorded


def test_clip_without_audio_track_is_an_error_naming_file_and_line(tmp_path):
    data, media = meld_layout(tmp_path, utterances=1, seconds=1.0)
    write_clip(media / "dev_splits_complete" / "dia0_utt0.mp4", seconds=1.0, audio=False)
    store = tmp_path / "store"
    with pytest.raises(DataError) as err:
        read_meld(data, media_dir=media, frames=2, frame_size=16, media_store=store, media_workers=1)
    assert "dev_splits_complete/dia0_utt0.mp4" in str(err.value) and "no audio track" in str(err.value)
    assert "dev_sent_emo.csv: line 2" in str(err.value)
    assert not any("dev_splits_complete" in line for line in (store / "manifest.jsonl").read_text().splitlines())


def test_range_past_the_end_or_backwards_is_an_error_before_decoding(tmp_path):
    data, media = iemocap_layout(tmp_path, [(1.0, 2.0), (8.0, 14.5)], session_seconds=10.0)
    store = tmp_path / "store"
    with pytest.raises(DataError) as err:
        read_iemocap(data, media_dir=media, frames=2, frame_size=16, media_store=store, media_workers=1)
    message = str(err.value)
    assert "train.csv: line 3" in message and "8.000-14.500 s" in message and "Ses01F_impro01.avi" in message
    assert _store_arrays(store) == []                            # checked before anything was decoded
    backwards = tmp_path / "b"
    data, media = iemocap_layout(backwards, [(3.0, 2.0)], session_seconds=4.0)
    with pytest.raises(DataError, match=r"line 2, columns 'Start_Time'/'End_Time': range 3.000-2.000 s ends before"):
        read_iemocap(data, media_dir=media, media_store=store)


BUILD_SCRIPT = textwrap.dedent("""
    import sys
    from dialogue_data.meld import read_meld
    read_meld(sys.argv[1], media_dir=sys.argv[2], frames=4, frame_size=32, media_store=sys.argv[3], media_workers=1)
""")


def _items(store: Path) -> int:
    manifest = store / "manifest.jsonl"
    return manifest.read_text().count('"kind": "item"') if manifest.exists() else 0


def test_killed_store_build_resumes_where_it_stopped(tmp_path):
    data, media = meld_layout(tmp_path, utterances=12, seconds=2.0, noise=8)     # 36 distinct clips, 72 items
    store = tmp_path / "store"
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(media), str(store)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while _items(store) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the build ended before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    done_before = _items(store)
    assert 4 <= done_before < 72
    dataset = read_meld(data, media_dir=media, frames=4, frame_size=32, media_store=store, media_workers=1)
    # Each item is recorded once: the rerun decoded only what the killed build had not recorded
    assert _items(store) == 72 and len(list((store / "items").rglob("*.npy"))) == 72
    assert not list(store.rglob("*.tmp"))
    for split in ("train", "dev", "test"):
        assert dataset.coverage(split)["audio"] == dataset.coverage(split)["video"] == 12
    for utt in dataset.utterances("train"):                  # every item whole and readable
        assert utt.video_ref.load_raw().shape == (4, 3, 32, 32) and utt.audio_ref.load_raw().shape == (2 * RATE,)


@pytest.mark.slow
def test_sweep_over_meld_layout_clips_has_every_modality_and_says_so_in_the_caption(tmp_path, ray_local):
    """End to end: run_sweep ablate over MELD-layout mp4s (decoded once by the driver into <output>/cache/
    media, read by stage 1 through DataLoader workers), then the report's caption gives the coverage."""
    import yaml
    from conftest import TINY_BASE, child_runs

    from reports.report import make_report
    from reports.store import tracking_uri_for
    from sweep.engine import SweepOptions, run_sweep

    data, media = meld_layout(tmp_path, utterances=3, dialogues=2, seconds=1.0, noise=4, size=(64, 48))
    spec = tmp_path / "meld_media.yaml"
    # tiny random encoders on MELD are refused unless asked for (issue 28): this is a deliberate smoke test
    base = {**TINY_BASE, "stage1.allow_random_encoders": True, "stage1.epochs": 1, "stage1.batch_size": 2,
            "train.epochs": 2, "data.frames": 2,
            "data.frame_size": 16, "data.sample_rate": 8000, "data.media_workers": 2}
    spec.write_text(f"# python run_sweep.py ablate {spec}\n" + yaml.safe_dump(
        {"name": "meldmedia", "dataset": {"name": "meld", "path": str(data), "media_dir": str(media)},
         "base": base, "variants": {"full": {}}, "seeds": [0],
         "stage1_seed": "shared", "resources": {"cpu": 1}, "max_concurrent": 2}, sort_keys=False))
    opts = SweepOptions(output=tmp_path / "runs")
    outcome = run_sweep("ablate", spec, [], opts)
    assert outcome.status == "finished" and outcome.exit_code == 0
    store = tmp_path / "runs" / "cache" / "media"
    assert len(list((store / "items").rglob("*.npy"))) == 2 * 18            # 18 distinct clips, audio + video
    for run in child_runs(opts.output, "meldmedia"):
        assert run.data.tags["masked_modalities"] == ""                     # audio and video reached stage 2
    md = make_report("meldmedia", tracking_uri_for(opts.output), tmp_path / "report", formats=("md",)).markdown
    assert ("Media coverage (utterances with a clip): meld: train audio 100% video 100% (of 6), "
            "dev audio 100% video 100% (of 6), test audio 100% video 100% (of 6).") in md, md


def test_data_command_shows_coverage_and_what_the_store_holds(tmp_path, capsys):
    import run_sweep

    data, media = meld_layout(tmp_path, utterances=2, seconds=1.0, noise=3)
    assert run_sweep.main(["data", "meld", "--path", str(data), "--media-dir", str(media),
                           "--output", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.strip().startswith("train "))
    assert row.split()[-6:] == ["2", "(100.0%)"] * 3                          # text, audio, video
    assert f"media store {tmp_path / 'runs' / 'cache' / 'media'}: 6 audio and 6 video clips decoded" in printed
