"""Write real encoded clips whose content is known, for tests and benchmarks (PyAV, H.264 + AAC).

    write_clip(path, seconds=2.0, size=(160, 120))

Second k of the video is one flat colour, `colour_at(k)`, and of the audio a sine at `tone_at(k)` Hz:
a reader can check that it got the right part of the file. With `codec="mpeg4"` and a .avi name it
writes an AVI like IEMOCAP's session videos (MPEG-4 Part 2, as DivX is).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def colour_at(second: int) -> tuple[int, int, int]:
    """A colour far from its neighbours' (each channel steps by a different amount)."""
    return (40 + 70 * second) % 256, (200 - 50 * second) % 256, (90 + 110 * second) % 256


def tone_at(second: int) -> float:
    return 300.0 + 100.0 * (second % 20)


def write_clip(path: str | Path, seconds: float = 2.0, size: tuple[int, int] = (160, 120), fps: int = 24,
               audio: bool = True, audio_rate: int = 48000, channels: int = 2, codec: str = "libx264",
               noise: int = 0, seed: int = 0) -> Path:
    """An H.264 (or `codec`) clip with an AAC track (audio=False: none). `noise` adds a moving random
    texture of +-noise levels (a real-looking bit rate for benchmarks; 0 keeps flat colours for exact checks)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    # noise: one random texture per clip, shifted every frame (moving detail, a real bit rate, cheap to make)
    texture = rng.integers(-noise, noise + 1, (height + 64, width + 64, 3)).astype(np.int16) if noise else None
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            video.options = {"preset": "ultrafast"}
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=audio_rate)
            sound.layout = "stereo" if channels == 2 else "mono"
        for i in range(int(round(seconds * fps))):
            picture = np.empty((height, width, 3), dtype=np.uint8)
            picture[:] = colour_at(int(i / fps))
            if texture is not None:
                shifted = texture[i % 64: i % 64 + height, (2 * i) % 64: (2 * i) % 64 + width]
                picture = np.clip(picture + shifted, 0, 255).astype(np.uint8)
            _encode(out, video, av.VideoFrame.from_ndarray(picture, format="rgb24"), i, fps)
        _encode(out, video, None)
        if sound is not None:
            t = np.arange(int(round(seconds * audio_rate))) / audio_rate
            wave = 0.5 * np.sin(2 * np.pi * np.array([tone_at(int(x)) for x in t]) * t).astype(np.float32)
            step = 1024
            for start in range(0, len(wave), step):
                chunk = np.repeat(wave[None, start:start + step], channels, axis=0)     # (channels, n) planar
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                                   layout=sound.layout.name)
                frame.sample_rate = audio_rate
                _encode(out, sound, frame, start, audio_rate)
            _encode(out, sound, None)
    return path


def _encode(out, stream, frame, pts: int = 0, rate: int = 1) -> None:
    """Encode one frame (None: flush the encoder) and write its packets."""
    if frame is not None:
        frame.pts, frame.time_base = pts, Fraction(1, rate)
    for packet in stream.encode(frame):
        out.mux(packet)


def dominant_tone(samples: np.ndarray, sample_rate: int) -> float:
    """The strongest frequency of a stretch of audio (Hz)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * sample_rate / len(samples))
