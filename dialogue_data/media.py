"""Optional media for real datasets: wav files, mp4 clips or pre-extracted frames.

A clip that is not there masks that modality for that utterance (the field stays None and
`DialogueDataset.coverage` counts it); `attach_media` says so in ONE warning per load that counts
the missing clips, and the same counts go into `dataset.notes`. A clip that is there but cannot be
read is an error naming the file: never silent zeros.

Accepted forms:
- audio: PCM wav (8, 16, 24 or 32 bit, any channels, any rate; mixed to mono, resampled to the
  dataset's sample rate with scipy's polyphase filter).
- video: a folder of images (png/jpg/jpeg/bmp, sorted by name), a `.npy` array (T, 3, H, W) or
  (T, H, W, 3) of uint8 or floats in [0, 1], or an mp4/avi/mkv clip, which needs PyAV
  (`pip install av`; not a dependency of this project: without it an existing clip is an error
  that says so). Frames are sampled evenly to `frames` and resized to `frame_size` square.
"""
from __future__ import annotations

import warnings
import wave
from math import gcd
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from core.schema import SPLITS, DataError, Dialogue

# scipy, PIL and PyAV are imported inside the readers that use them: a text-only dataset needs none of them.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CLIP_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


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


def read_clip(path: Path, frames: int, size: int) -> np.ndarray:
    try:
        import av  # PyAV: optional, not a project dependency
    except ImportError:
        raise DataError(f"{path}: decoding {path.suffix} clips needs PyAV (pip install av), which is not "
                        f"installed; or extract the frames to a folder '{path.with_suffix('')}/' of images "
                        f"or to '{path.with_suffix('.npy')}'") from None
    from PIL import Image
    try:
        with av.open(str(path)) as container:
            images = [f.to_image() for f in container.decode(video=0)]
    except Exception as err:  # PyAV raises its own error family
        raise DataError(f"{path}: cannot decode the clip ({err})") from None
    if not images:
        raise DataError(f"{path}: the clip has no video frames")
    out = [np.asarray(images[i].convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
           .transpose(2, 0, 1) / 255.0 for i in _sample_indices(len(images), frames)]
    return np.stack(out).astype(np.float32)


def read_video(path: Path, frames: int, size: int) -> Optional[np.ndarray]:
    """Frames from a folder, .npy or clip at `path`; None when there is nothing there."""
    if path.is_dir():
        return read_frames_dir(path, frames, size)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".npy":
        return read_frames_npy(path, frames, size)
    if path.suffix.lower() in CLIP_SUFFIXES:
        return read_clip(path, frames, size)
    raise DataError(f"{path}: unknown video format '{path.suffix}' (use a frames folder, .npy, or mp4/avi/mkv/mov)")


def find_video(stem: Path) -> Optional[Path]:
    """The first of `stem/` (frames), `stem.npy`, `stem.mp4`, ... that exists."""
    for candidate in (stem, stem.with_name(stem.name + ".npy"),
                      *(stem.with_name(stem.name + s) for s in CLIP_SUFFIXES)):
        if candidate.exists():
            return candidate
    return None


def attach_media(splits: dict[str, list[Dialogue]], locate: Callable, sample_rate: int, frames: int,
                 frame_size: int, source: str) -> list[str]:
    """Load each utterance's clips; `locate(split, dialogue, utterance)` -> (wav path|None, video path|None).

    Returns the notes (one line per split and modality with missing clips) and warns once.
    """
    notes: list[str] = []
    for split in SPLITS:
        total, missing = 0, {"audio": 0, "video": 0}
        for dialogue in splits.get(split, []):
            for utt in dialogue.utterances:
                total += 1
                wav_path, video_path = locate(split, dialogue, utt)
                if wav_path is not None and Path(wav_path).is_file():
                    utt.waveform = read_wav(Path(wav_path), sample_rate)
                else:
                    missing["audio"] += 1
                frames_arr = read_video(Path(video_path), frames, frame_size) if video_path is not None else None
                if frames_arr is not None:
                    utt.frames = frames_arr
                else:
                    missing["video"] += 1
        for modality, count in missing.items():
            if count:
                notes.append(f"{modality} missing for {count}/{total} {split} utterances: masked")
    if notes:
        warnings.warn(f"{source}: " + "; ".join(notes), MediaWarning, stacklevel=3)
    return notes
