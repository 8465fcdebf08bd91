"""IEMOCAP in the MAGTKD authors' CSV layout (IEMOCAP itself may not be redistributed).

Columns: Utterance, Speaker, Dialogue_ID, Start_Time, End_Time, Wav_Path, Video_Path, Emotion,
Utterance_ID. Labels: ang, exc, fru, hap, neu, sad (the authors' six classes, in their order).
Utterances are ordered by Start_Time within a dialogue (IEMOCAP's utterance ids list one
speaker's turns before the other's, so they do not give the conversation order); dialogues keep
the order of their first appearance.

Files accepted in `data.path` (a directory), per split, the first that exists:
`{split}_iemocap_emo.csv`, `{split}_iemocap.csv`, `iemocap_{split}.csv`, `{split}.csv`, where
{split} is train, dev (also `valid`, `val`) or test.

Media (optional, `data.media_dir`): Wav_Path and Video_Path are read relative to media_dir
(absolute paths as they are); Video_Path may be a frames folder, a .npy array or a clip (see
`dialogue_data.media`). When it is a video file (the session's .avi) the utterance is
Start_Time..End_Time in it: its frames come from [start - 1 s, end + 1 s] (the authors' margin, kept
inside the file), and its audio, when there is no wav, from start..end. A range outside the file is
an error naming the CSV line. Without media_dir the data are text only.
"""
from __future__ import annotations

from pathlib import Path

from dialogue_data.csv_reader import CsvSpec, read_csv_dataset
from core.schema import DialogueDataset

LABELS = ["ang", "exc", "fru", "hap", "neu", "sad"]
_ALIASES = {"train": ["train"], "dev": ["dev", "valid", "val"], "test": ["test"]}

SPEC = CsvSpec(
    name="iemocap",
    labels=LABELS,
    label_map={label: label for label in LABELS},
    columns={"text": "Utterance", "speaker": "Speaker", "label": "Emotion", "dialogue_id": "Dialogue_ID",
             "utterance_id": "Utterance_ID", "wav": "Wav_Path", "video": "Video_Path",
             "start": "Start_Time", "end": "End_Time"},
    files={split: [pattern.format(s=alias) for alias in aliases
                   for pattern in ("{s}_iemocap_emo.csv", "{s}_iemocap.csv", "iemocap_{s}.csv", "{s}.csv")]
           for split, aliases in _ALIASES.items()},
    order_by="Start_Time",
    video_margin=1.0,   # the authors' video_feature_extract.py: 8 frames from [start - 1 s, end + 1 s]
)


def read_iemocap(path: str | Path, media_dir: str | Path = "", sample_rate: int = 16000, frames: int = 8,
                 frame_size: int = 32, media_store: str | Path = "", media_workers: int = 0, scan_only: bool = False) -> DialogueDataset:
    return read_csv_dataset(path, SPEC, media_dir, sample_rate, frames, frame_size, media_store, media_workers, scan_only)
