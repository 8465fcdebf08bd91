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


@dataclass(frozen=True)
class MediaRef:
    """One utterance's decoded clip in the media store (dialogue_data.media_store), by reference.

    A dataset holds these instead of arrays, so loading MELD costs kilobytes, not gigabytes; only stage 1
    reads the array (memory-mapped, one clip at a time). `identity` names the source file's content and
    the decode settings: it is what the dataset fingerprint covers, never the decoded samples.
    """
    path: str                  # the .npy file: uint8 frames (T, 3, H, W) or int16 audio (samples,)
    identity: str              # sha256 over the source's content hash and the decode settings
    shape: tuple

    def load(self) -> np.ndarray:
        """float32: frames in [0, 1] (T, 3, H, W), audio in [-1, 1] (samples,)."""
        return as_float(self.load_raw())

    def load_raw(self) -> np.ndarray:
        """The stored integers (uint8 frames or int16 audio), copied out of the memory map."""
        return np.array(np.load(self.path, mmap_mode="r", allow_pickle=False))  # noqa: TID251 (no pickle)


def as_float(raw: np.ndarray) -> np.ndarray:
    """Stored integers -> float32: uint8 frames / 255, int16 audio / 32768."""
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.int16:
        return raw.astype(np.float32) / 32768.0
    return raw.astype(np.float32)


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
    audio_ref: Optional["MediaRef"] = None      # decoded audio in the media store (read by stage 1 only)
    video_ref: Optional["MediaRef"] = None      # decoded frames in the media store (read by stage 1 only)

    @property
    def audio(self):
        """The waveform (in memory) or its reference in the media store; None when absent."""
        return self.waveform if self.waveform is not None else self.audio_ref

    @property
    def video(self):
        """The frames (in memory) or their reference in the media store; None when absent."""
        return self.frames if self.frames is not None else self.video_ref


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
            counts["audio"] += u.audio is not None or u.audio_features is not None
            counts["video"] += u.video is not None or u.video_features is not None
        return counts

    def label_warnings(self) -> list[str]:
        """Labels the training split never shows: the model would keep a class it cannot learn (and a
        test set scored on it). One message per label, naming the split."""
        seen = {u.label for u in self.utterances("train")} if "train" in self.splits else set()
        return [f"{self.name}: label '{label}' has no examples in the train split (it is in the label set, so "
                f"the model keeps a class it never sees); drop it in the data or the mapping (drop_labels)"
                for i, label in enumerate(self.labels) if i not in seen]

    def fingerprint(self) -> str:
        """Content hash over labels, text, speakers, ids and media (stable across runs). Media in the store
        count by their identity (source content hash + decode settings), never by decoded samples."""
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
                    for ref in (u.audio_ref, u.video_ref):
                        if ref is not None:                 # absent refs add nothing: old fingerprints hold
                            h.update(f"\x1cref:{ref.identity}".encode())
        return h.hexdigest()[:16]
