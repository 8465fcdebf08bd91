"""MELD (Poria et al., ACL 2019) from its `*_sent_emo.csv` transcripts.

    dataset = read_meld("../shared/data/meld")                  # text only
    dataset = read_meld("/data/MELD.Raw", media_dir="/data/MELD.Raw")  # with clips where they exist

Files accepted in the directory, per split: `train_sent_emo.csv` / `dev_sent_emo.csv` /
`test_sent_emo.csv` (the official release) or the authors' `train_meld_emo.csv` / ... names.
Dialogues are ordered by Dialogue_ID and utterances by Utterance_ID (numerically: the official
ids have gaps). Text is cleaned (smart quotes, stray cp1252 bytes and mojibake, CRLF; see
`dialogue_data.textio`).

Media (optional, `data.media_dir`): for each utterance `dia{D}_utt{U}.mp4` as released (its
frames and its AAC audio track), or `dia{D}_utt{U}.wav` for audio and, for video, the first of
`dia{D}_utt{U}/` (a folder of frame images), `dia{D}_utt{U}.npy`, `dia{D}_utt{U}.mp4`.
StartTime/EndTime are times in the episode, not in the clip: the clips are read whole. They are looked up in a per-split folder under
media_dir: `train/` or `train_splits/`, `dev/` or `dev_splits_complete/`, `test/` or
`output_repeated_splits_test/` (the release's folder names); media_dir itself when none exists.
Missing clips mask that modality for those utterances, with one warning that counts them.
"""
from __future__ import annotations

from pathlib import Path

from dialogue_data.csv_reader import CsvSpec, read_csv_dataset
from core.schema import DialogueDataset

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]

SPEC = CsvSpec(
    name="meld",
    labels=LABELS,
    label_map={label: label for label in LABELS},
    columns={"text": "Utterance", "speaker": "Speaker", "label": "Emotion",
             "dialogue_id": "Dialogue_ID", "utterance_id": "Utterance_ID"},
    files={split: [f"{split}_sent_emo.csv", f"{split}_meld_emo.csv"] for split in ("train", "dev", "test")},
    order_by="utterance_id",
    media_pattern="dia{dialogue_id}_utt{utterance_id}",
    media_split_dirs={"train": ["train", "train_splits"], "dev": ["dev", "dev_splits_complete"],
                      "test": ["test", "output_repeated_splits_test"]},
)


def read_meld(path: str | Path, media_dir: str | Path = "", sample_rate: int = 16000, frames: int = 8,
              frame_size: int = 32, media_store: str | Path = "", media_workers: int = 0, scan_only: bool = False) -> DialogueDataset:
    return read_csv_dataset(path, SPEC, media_dir, sample_rate, frames, frame_size, media_store, media_workers, scan_only)
