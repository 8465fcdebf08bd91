"""One data model for every dataset: dialogues of utterances, three splits, a label set, a fingerprint.

Readers (synthetic, MELD, IEMOCAP, generic CSV) all return a `DialogueDataset`; stage 1 turns it
into per-utterance vectors (`core.features.Stage1Features`), stage 2 reads those.
A modality that is absent for an utterance is `None` there, and `coverage()` counts it: a missing
clip is a masked modality, never silent zeros.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

SPLITS = ("train", "dev", "test")


class DataError(ValueError):
    """A data problem; the message names the file and the line, column or key."""


@dataclass
class Utterance:
    speaker: str
    text: str
    label: int                                  # index into DialogueDataset.labels
    utterance_id: str = ""
    waveform: Optional[np.ndarray] = None       # (samples,) float32 at DialogueDataset.sample_rate
    frames: Optional[np.ndarray] = None         # (T, C, H, W) float32 in [0, 1]
    audio_features: Optional[np.ndarray] = None  # (D,) pre-extracted vector
    video_features: Optional[np.ndarray] = None  # (D,) pre-extracted vector


@dataclass
class Dialogue:
    dialogue_id: str
    utterances: list[Utterance]

    def speaker_indices(self, max_speakers: int) -> list[int]:
        """Dialogue-local speaker index by order of first appearance, capped at max_speakers - 1."""
        order: dict[str, int] = {}
        return [min(order.setdefault(u.speaker, len(order)), max_speakers - 1) for u in self.utterances]


@dataclass
class DialogueDataset:
    name: str
    labels: list[str]
    splits: dict[str, list[Dialogue]]
    sample_rate: int = 16000
    source: str = ""                            # path or generator settings, for messages
    notes: list[str] = field(default_factory=list)  # e.g. "audio absent for 9989/9989 train utterances"

    def utterances(self, split: str):
        for dialogue in self.splits[split]:
            yield from dialogue.utterances

    def coverage(self, split: str) -> dict[str, int]:
        """How many utterances of a split carry each modality."""
        counts = {"utterances": 0, "text": 0, "audio": 0, "video": 0}
        for u in self.utterances(split):
            counts["utterances"] += 1
            counts["text"] += bool(u.text)
            counts["audio"] += u.waveform is not None or u.audio_features is not None
            counts["video"] += u.frames is not None or u.video_features is not None
        return counts

    def label_warnings(self) -> list[str]:
        """Labels the training split never shows: the model would keep a class it cannot learn (and a
        test set scored on it). One message per label, naming the split."""
        seen = {u.label for u in self.utterances("train")} if "train" in self.splits else set()
        return [f"{self.name}: label '{label}' has no examples in the train split (it is in the label set, so "
                f"the model keeps a class it never sees); drop it in the data or the mapping (drop_labels)"
                for i, label in enumerate(self.labels) if i not in seen]

    def fingerprint(self) -> str:
        """Content hash over labels, text, speakers, ids and media bytes (stable across runs)."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update("\x1f".join(self.labels).encode())
        for split in SPLITS:
            h.update(split.encode())
            for dialogue in self.splits.get(split, []):
                h.update(f"\x1e{dialogue.dialogue_id}".encode())
                for u in dialogue.utterances:
                    h.update(f"\x1d{u.utterance_id}\x1f{u.speaker}\x1f{u.text}\x1f{u.label}".encode())
                    for arr in (u.waveform, u.frames, u.audio_features, u.video_features):
                        h.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]
