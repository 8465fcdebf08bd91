"""Audio and frames from a video file as released (mp4/avi/mkv/mov), with PyAV.

    clip = open_clip(path, where="train_sent_emo.csv: line 12")
    audio = clip.audio(16000, start=2.0, end=4.0)             # (samples,) float32 mono in [-1, 1]
    frames = clip.frames(8, 224, start=1.0, end=5.0)           # (8, 3, 224, 224) uint8
    clip.close()

PyAV (the `av` wheel carries its own FFmpeg, so nothing is needed from the system) was chosen over
torchcodec, whose wheel links against the system's FFmpeg libraries (libavcodec 4-9), which a fresh
machine need not have (see the README's Data section).

Only what is needed is decoded: audio is resampled by FFmpeg's resampler (libswresample, through
`av.AudioResampler`) to the target rate, channels averaged to mono; for frames the decoder seeks to
the sampled times when they are far apart (an IEMOCAP utterance inside a session video) and
otherwise decodes forward, converting and scaling only the sampled frames (FFmpeg's swscale, bilinear).
The frames are taken at the centres of `frames` equal parts of [start, end].

Every error is a `DataError` naming the file and `where` (the transcript's file and line).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from core.schema import DataError

CLIP_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
# A target this far past the last decoded frame is reached by seeking (to the key frame before it)
# rather than by decoding every frame in between.
SEEK_AHEAD_S = 2.0
# A range may end this much past the file's last timestamp (container durations are rounded).
END_TOLERANCE_S = 0.1


def _av():
    try:
        import av
    except ImportError:  # a dependency of the project (pyproject.toml); said plainly if it is missing
        raise DataError("decoding video files needs PyAV: pip install av (a pinned dependency of this project)") from None
    return av


class Clip:
    """One open video file. Use as a context manager or call close()."""

    def __init__(self, path: Path, where: str = "", threads: int = 0):
        av = _av()
        self.path = Path(path)
        self.set_where(where)
        try:
            self.container = av.open(str(self.path))
        except Exception as err:  # PyAV's own error family (InvalidDataError, FileNotFoundError, ...)
            raise DataError(f"{self._label}: cannot open the file as video ({err})") from None
        for stream in self.container.streams.video:
            # 0: FFmpeg's frame and slice threads (one process alone); 1 in a pool of processes, which
            # already keeps every core busy. Set before the decoder opens.
            stream.thread_type = "AUTO" if threads != 1 else "NONE"
            if threads:
                stream.thread_count = threads

    def set_where(self, where: str) -> None:
        """The transcript line that asks for the next read (errors name it with the file)."""
        self.where = where
        self._label = f"{where}: {self.path}" if where else str(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.container.close()

    def fail(self, message: str) -> DataError:
        return DataError(f"{self._label}: {message}")

    @property
    def duration(self) -> float:
        """Seconds, from the container (or the longest stream when the container does not say)."""
        if self.container.duration is not None:
            return self.container.duration / 1_000_000
        spans = [float(s.duration * s.time_base) for s in self.container.streams if s.duration and s.time_base]
        if not spans:
            raise self.fail("the file does not say how long it is")
        return max(spans)

    def check_range(self, start: Optional[float], end: Optional[float]) -> tuple[float, float]:
        """(start, end) in seconds, the whole file when None; a range outside the file is an error."""
        duration = self.duration
        lo = 0.0 if start is None else float(start)
        hi = duration if end is None else float(end)
        if hi < lo:
            raise self.fail(f"range {lo:.3f}-{hi:.3f} s ends before it starts")
        if lo < 0 or hi > duration + END_TOLERANCE_S:
            raise self.fail(f"range {lo:.3f}-{hi:.3f} s lies outside the file (0-{duration:.3f} s)")
        return lo, min(hi, duration)

    # ---- audio ------------------------------------------------------------------------------------
    def audio(self, sample_rate: int, start: Optional[float] = None, end: Optional[float] = None) -> np.ndarray:
        """The audio track from start to end, mono float32 at sample_rate."""
        av = _av()
        if not self.container.streams.audio:
            raise self.fail("the file has no audio track")
        lo, hi = self.check_range(start, end)
        stream = self.container.streams.audio[0]
        # Keep the layout (averaged below, exactly like a wav's channels); change only the rate.
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        chunks, first_time = [], None
        try:
            # Always seek, also to 0: frames() (or an earlier request on this clip) may have moved the demuxer
            # past the range, and decoding from there gave only the tail of the track.
            self.container.seek(int(lo / stream.time_base), stream=stream, backward=True)
            stream.codec_context.flush_buffers()   # a decoder drained by an earlier read keeps its end state
            for frame in self.container.decode(stream):
                if first_time is None:
                    first_time = float(frame.time or 0.0)
                chunks += [out.to_ndarray().mean(axis=0) for out in resampler.resample(frame)]
                if frame.time is not None and frame.time > hi:
                    break
            chunks += [out.to_ndarray().mean(axis=0) for out in resampler.resample(None)]
        except DataError:
            raise
        except Exception as err:
            raise self.fail(f"cannot decode the audio track ({err})") from None
        if not chunks:
            raise self.fail("the audio track has no samples")
        samples = np.concatenate(chunks).astype(np.float32)
        offset = max(0, int(round((lo - first_time) * sample_rate)))
        samples = samples[offset: offset + int(round((hi - lo) * sample_rate))]
        if not len(samples):
            raise self.fail(f"no audio samples in {lo:.3f}-{hi:.3f} s")
        return np.clip(samples, -1.0, 1.0)

    # ---- frames -----------------------------------------------------------------------------------
    def frames(self, count: int, size: int, start: Optional[float] = None, end: Optional[float] = None,
               margin: float = 0.0) -> np.ndarray:
        """`count` frames (count, 3, size, size) uint8 from [start - margin, end + margin] (kept in the file)."""
        if not self.container.streams.video:
            raise self.fail("the file has no video track")
        lo, hi = self.check_range(start, end)
        lo, hi = max(0.0, lo - margin), min(self.duration, hi + margin)
        targets = lo + (np.arange(count) + 0.5) * (hi - lo) / count        # centres of `count` equal parts
        stream = self.container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        half_frame = 0.5 / rate
        out: list[np.ndarray] = []
        frames_iter, current = None, None
        try:
            for target in targets:
                # Seek for the first target (the audio pass may have moved the file position) and for
                # one far ahead; the seek lands on the key frame before it and we decode forward from there.
                if frames_iter is None or (current is not None and target - current.time > SEEK_AHEAD_S):
                    self.container.seek(int(max(0.0, target - half_frame) / stream.time_base),
                                        stream=stream, backward=True)
                    frames_iter, current = self.container.decode(stream), None
                while current is None or current.time + half_frame < target:
                    nxt = next(frames_iter, None)
                    if nxt is None:                  # past the last frame: keep the last one
                        break
                    current = nxt
                if current is None:
                    raise self.fail(f"no video frames in {lo:.3f}-{hi:.3f} s")
                picture = current.to_ndarray(format="rgb24", width=size, height=size)   # (size, size, 3)
                out.append(picture.transpose(2, 0, 1))                                  # (3, size, size)
        except DataError:
            raise
        except Exception as err:
            raise self.fail(f"cannot decode the video track ({err})") from None
        return np.ascontiguousarray(np.stack(out), dtype=np.uint8)                       # (T, 3, H, W)


def open_clip(path: Path, where: str = "", threads: int = 0) -> Clip:
    return Clip(path, where, threads)
