"""Optional media for real datasets: wav files, video files as released, or pre-extracted frames.

A clip that is not there masks that modality for that utterance (the reference stays None and
`DialogueDataset.coverage` counts it); `attach_media` says so in ONE warning per load that counts
the missing clips, and the same counts go into `dataset.notes`. A clip that is there but cannot be
read is an error naming the file and the transcript line: never silent zeros.

Every clip is decoded once into the media store (`dialogue_data.media_store`) and the utterance
holds a reference (`core.schema.MediaRef`), never the arrays.

Accepted forms:
- audio: PCM wav (8, 16, 24 or 32 bit, any channels, any rate; mixed to mono, resampled to the
  dataset's sample rate with scipy's polyphase filter), or, without a wav, the audio track of the
  utterance's video file (MELD's mp4s; `dialogue_data.decode`, resampled by FFmpeg).
- video: an mp4/avi/mkv/mov file (decoded with PyAV, cut to the utterance's time range when the
  mapping names start/end columns, with a margin around it), a folder of images (png/jpg/jpeg/bmp,
  sorted by name), or a `.npy` array (T, 3, H, W) or (T, H, W, 3) of uint8 or floats in [0, 1].
  Frames are sampled evenly to `frames` and resized to `frame_size` square.
"""
from __future__ import annotations

import os
import warnings
import wave
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from core.schema import SPLITS, DataError, Dialogue, Utterance
from dialogue_data.decode import CLIP_SUFFIXES
from dialogue_data.media_store import MediaRequest, MediaStore

# scipy, PIL and PyAV are imported inside the readers that use them: a text-only dataset needs none of them.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SCAN_NOTE = "media store (scanned read-only)"   # opens attach_media's note on a scan_only load


class MediaWarning(UserWarning):
    """Some utterances have no clip for a modality; that modality is masked for them."""


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at `sample_rate`."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as err:
        raise DataError(f"{path}: not a PCM wav file ({err}); convert it, e.g. "
                        f"ffmpeg -i IN -acodec pcm_s16le OUT.wav") from None
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 8388608.0
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise DataError(f"{path}: unsupported sample width {width} bytes")
    if channels > 1:
        x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    if len(x) == 0:
        raise DataError(f"{path}: the wav file has no samples")
    if rate != sample_rate:
        from scipy.signal import resample_poly
        g = gcd(rate, sample_rate)
        x = resample_poly(x, sample_rate // g, rate // g).astype(np.float32)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _sample_indices(n: int, frames: int) -> np.ndarray:
    return np.linspace(0, n - 1, frames).round().astype(int)


def _resize(video: np.ndarray, size: int) -> np.ndarray:
    """(T, 3, H, W) -> (T, 3, size, size) by nearest pixel (cheap, no dependency)."""
    h, w = video.shape[-2:]
    ys = np.minimum((np.arange(size) + 0.5) * h / size, h - 1).astype(int)
    xs = np.minimum((np.arange(size) + 0.5) * w / size, w - 1).astype(int)
    return video[:, :, ys][:, :, :, xs]


def read_frames_dir(path: Path, frames: int, size: int) -> Optional[np.ndarray]:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return None
    out = []
    for i in _sample_indices(len(files), frames):
        try:
            with Image.open(files[i]) as img:
                img = img.convert("RGB").resize((size, size), Image.BILINEAR)
                out.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)  # (3, H, W)
        except OSError as err:
            raise DataError(f"{files[i]}: cannot read the image ({err})") from None
    return np.stack(out).astype(np.float32)                                  # (T, 3, H, W)


def read_frames_npy(path: Path, frames: int, size: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)  # noqa: TID251  (allow_pickle=False: arrays only)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a plain numpy array file ({err})") from None
    if arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[3]):
        raise DataError(f"{path}: expected frames of shape (T, 3, H, W) or (T, H, W, 3), got {arr.shape}")
    if arr.shape[1] != 3:
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    else:
        arr = arr.astype(np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise DataError(f"{path}: float frames must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")
    return _resize(arr[_sample_indices(arr.shape[0], frames)], size).astype(np.float32)


def find_video(stem: Path) -> Optional[Path]:
    """The first of `stem/` (frames), `stem.npy`, `stem.mp4`, ... that exists."""
    for candidate in (stem, stem.with_name(stem.name + ".npy"),
                      *(stem.with_name(stem.name + s) for s in CLIP_SUFFIXES)):
        if candidate.exists():
            return candidate
    return None


@dataclass(frozen=True)
class ClipPlace:
    """Where one utterance's media are: files (None: none given) and the utterance's range in them."""
    audio: Optional[Path]            # a wav, or None (then the video file's audio track, if it is a clip)
    video: Optional[Path]            # a video file, a frames folder or a .npy of frames
    where: str                       # the transcript's file and line, for messages
    start: Optional[float] = None    # seconds in the video file (None: the whole file)
    end: Optional[float] = None
    margin: float = 0.0              # seconds of video added around the range (authors: 1 s)


def default_store() -> Path:
    """Where decoded media go when no sweep output names a place: the user's cache directory."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "magtkd" / "media"


def media_requests(place: ClipPlace, sample_rate: int, frames: int, frame_size: int):
    """(audio request or None, video request or None) for one utterance; None where nothing is there."""
    video = place.video if place.video is not None and place.video.exists() else None
    is_clip = video is not None and video.is_file() and video.suffix.lower() in CLIP_SUFFIXES
    if video is not None and not (video.is_dir() or is_clip or video.suffix.lower() == ".npy"):
        raise DataError(f"{place.where}: {video}: unknown video format '{video.suffix}' "
                        f"(use a frames folder, .npy, or {'/'.join(s[1:] for s in CLIP_SUFFIXES)})")
    ranged = dict(start=place.start, end=place.end) if is_clip else {}
    audio_request = None
    if place.audio is not None and place.audio.is_file():          # a wav is one utterance: read whole
        audio_request = MediaRequest("audio", str(place.audio.resolve()), place.where, sample_rate=sample_rate)
    elif is_clip:                                                  # MELD: the audio track of the mp4
        audio_request = MediaRequest("audio", str(video.resolve()), place.where, sample_rate=sample_rate, **ranged)
    video_request = None
    if video is not None:
        video_request = MediaRequest("video", str(video.resolve()), place.where, frames=frames,
                                     frame_size=frame_size, margin=place.margin if is_clip else 0.0, **ranged)
    return audio_request, video_request


def attach_media(splits: dict[str, list[Dialogue]], locate: Callable, sample_rate: int, frames: int,
                 frame_size: int, source: str, store: str | Path = "", workers: int = 0,
                 scan_only: bool = False) -> list[str]:
    """Decode each utterance's clips into the media store (once) and give the utterance references.

    `locate(split, dialogue, utterance)` -> ClipPlace. Returns the notes (one line per split and
    modality with missing clips) and warns once. With `scan_only` (`--dry-run`) nothing is decoded or
    written: MediaStore.scan checks the files' headers, clips not yet decoded get placeholder references,
    and the first note (starting with SCAN_NOTE) says what the store holds and what a load would decode.
    """
    notes: list[str] = []
    wanted: list[tuple[Utterance, Optional[MediaRequest], Optional[MediaRequest]]] = []
    for split in SPLITS:
        total, missing = 0, {"audio": 0, "video": 0}
        for dialogue in splits.get(split, []):
            for utt in dialogue.utterances:
                total += 1
                audio_request, video_request = media_requests(locate(split, dialogue, utt), sample_rate, frames,
                                                              frame_size)
                missing["audio"] += audio_request is None
                missing["video"] += video_request is None
                wanted.append((utt, audio_request, video_request))
        for modality, count in missing.items():
            if count:
                notes.append(f"{modality} missing for {count}/{total} {split} utterances: masked")
    requests = [r for _, a, v in wanted for r in (a, v) if r is not None]
    scanned = ""
    if requests and scan_only:
        media_store = MediaStore(store or default_store())
        refs, counts = media_store.scan(requests)
        scanned = (f"{SCAN_NOTE} {media_store.root}: {counts['held']} of {len(requests)} clip(s) held; "
                   f"{counts['to_decode']} to decode from {counts['files']} file(s) (headers checked, nothing decoded)")
    elif requests:
        refs = MediaStore(store or default_store()).build(requests, workers)
    if requests:
        for utt, audio_request, video_request in wanted:
            utt.audio_ref = refs[audio_request] if audio_request is not None else None
            utt.video_ref = refs[video_request] if video_request is not None else None
    if notes:
        warnings.warn(f"{source}: " + "; ".join(notes), MediaWarning, stacklevel=3)
    return [scanned] + notes if scanned else notes
