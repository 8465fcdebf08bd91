"""The media store: every utterance's clip decoded once to disk, shared by every later load and sweep.

    store = MediaStore(f"{output}/cache/media")
    refs = store.build(requests, workers=4)    # request.key -> MediaRef; decodes only what is missing

Layout under the root:
- `items/AB/KEY.npy`: one array per utterance and modality (uint8 frames (T, 3, H, W) or int16 audio
  (samples,)), plain .npy (np.load with mmap_mode="r", allow_pickle=False reads it without a copy).
- `manifest.jsonl`: one JSON line per source file (path, size, mtime, sha256 of its content: hashed
  once, then known by path + size + mtime) and per decoded item (key, array path, shape).

An item's KEY is a sha256 over the source file's content hash and the decode settings (modality,
sample rate or frame count and size, time range, margin): the same clip decoded the same way is the
same item, whichever dataset, mapping or sweep asks for it, and a changed file or setting is a new item.

Decoding runs in a process pool (one task per source file, so an IEMOCAP session video is opened once
for all its utterances), with a progress line. Each array is written to a temporary file and moved
into place (`os.replace`), and its manifest line is appended only after that: a killed build leaves
whole items and a manifest that lists only whole items; the next build decodes the rest. A clip that
cannot be decoded is a DataError naming the file and the transcript line; nothing of it is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from filelock import FileLock

from core.schema import DataError, MediaRef
from dialogue_data.decode import CLIP_SUFFIXES, open_clip

FORMAT = "magtkd-media-v1"
MANIFEST = "manifest.jsonl"
TO_DECODE = "to-decode:"   # opens the identity of a scan's placeholder MediaRef (a clip not decoded yet)


@dataclass(frozen=True)
class MediaRequest:
    """One utterance's clip for one modality, and how to decode it."""
    modality: str                    # audio | video
    source: str                      # absolute path: a wav, a video file, a .npy of frames or a frames folder
    where: str                       # the transcript's file and line, for messages
    sample_rate: int = 0             # audio
    frames: int = 0                  # video
    frame_size: int = 0              # video
    start: Optional[float] = None    # seconds in the source (None: the whole file)
    end: Optional[float] = None
    margin: float = 0.0              # video: seconds added on both sides of the range (kept in the file)

    def settings(self) -> dict:
        """Everything but the source and the message context: what, with the content hash, names the item."""
        out = asdict(self)
        out.pop("source"), out.pop("where")
        return out


def item_key(content_sha256: str, request: MediaRequest) -> str:
    blob = json.dumps({"format": FORMAT, "source": content_sha256, **request.settings()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def file_identity(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a file; a frames folder counts as its images' total size and latest mtime."""
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
        return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def content_sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(f"\x1f{file.name}\x1f".encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---- the work of one task (runs in a pool process) ------------------------------------------------

def _decode(request: MediaRequest, clip) -> np.ndarray:
    """The array to store for one request: int16 audio or uint8 frames."""
    from dialogue_data.media import read_frames_dir, read_frames_npy, read_wav

    source = Path(request.source)
    if request.modality == "audio":
        if clip is not None:
            audio = clip.audio(request.sample_rate, request.start, request.end)
        else:
            audio = read_wav(source, request.sample_rate)
        return np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    if clip is not None:
        return clip.frames(request.frames, request.frame_size, request.start, request.end, request.margin)
    frames = (read_frames_dir(source, request.frames, request.frame_size) if source.is_dir()
              else read_frames_npy(source, request.frames, request.frame_size))
    return np.round(frames * 255.0).astype(np.uint8)


def _write_atomic(array: np.ndarray, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".npy.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)


def decode_source(root: str, source: str, sha256: str, requests: list[MediaRequest], threads: int = 0) -> dict:
    """Hash the source (when not known), decode each request and write its array. Returns the manifest
    lines for the parent to append (the parent is the only writer of the manifest)."""
    path = Path(source)
    size, mtime = file_identity(path)
    sha256 = sha256 or content_sha256(path)
    is_clip = path.suffix.lower() in CLIP_SUFFIXES and path.is_file()
    clip = open_clip(path, requests[0].where, threads) if is_clip else None
    items = []
    try:
        decoded = []
        for request in requests:       # decode all first: an error in one writes nothing for this source
            if clip is not None:
                clip.set_where(request.where)
            decoded.append(_decode(request, clip))
    finally:
        if clip is not None:
            clip.close()
    for request, array in zip(requests, decoded):
        key = item_key(sha256, request)
        relative = f"items/{key[:2]}/{key}.npy"
        _write_atomic(array, Path(root) / relative)
        items.append({"kind": "item", "key": key, "array": relative, "shape": list(array.shape),
                      "dtype": str(array.dtype), "source": source})
    return {"file": {"kind": "file", "path": source, "size": size, "mtime_ns": mtime, "sha256": sha256},
            "items": items}


def check_ranges(todo: dict[str, list[MediaRequest]]) -> None:
    """Every time range against its file's length, before any decoding (one header read per file)."""
    check_sources({source: [r for r in requests if r.start is not None or r.end is not None]
                   for source, requests in todo.items()}, tracks=False)


def check_sources(todo: dict[str, list[MediaRequest]], tracks: bool = True) -> None:
    """Open each video file's container header (no decoding): with `tracks`, the audio or video track each
    request reads must be there; every time range must lie within the file. Other sources (wav, frames)
    were found on disk when the requests were made."""
    for source, requests in todo.items():
        if not requests:
            continue
        if Path(source).suffix.lower() not in CLIP_SUFFIXES:
            ranged = [r for r in requests if r.start is not None or r.end is not None]
            if ranged:
                raise DataError(f"{ranged[0].where}: {source}: a time range needs a video file")
            continue
        with open_clip(Path(source), requests[0].where) as clip:
            for request in requests:
                clip.set_where(request.where)
                if tracks and not getattr(clip.container.streams, request.modality):
                    raise clip.fail(f"the file has no {request.modality} track")
                if request.start is not None or request.end is not None:
                    clip.check_range(request.start, request.end)


# ---- the store --------------------------------------------------------------------------------------

class MediaStore:
    def __init__(self, root: str | Path, log: Optional[Callable[[str], None]] = None):
        self.root = Path(root).expanduser().resolve()
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def read_manifest(self) -> tuple[dict, dict]:
        """({(path, size, mtime_ns): sha256}, {key: item line}); a torn last line (a killed append) is skipped."""
        files, items = {}, {}
        if not self.manifest.is_file():
            return files, items
        for line in self.manifest.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == "file":
                files[(record["path"], record["size"], record["mtime_ns"])] = record["sha256"]
            elif record.get("kind") == "item":
                items[record["key"]] = record
        return files, items

    def _append(self, records: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / "manifest.lock")):
            with open(self.manifest, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
                f.flush()
                os.fsync(f.fileno())

    def _ref(self, key: str, record: dict) -> Optional[MediaRef]:
        path = self.root / record["array"]
        return MediaRef(str(path), key, tuple(record["shape"])) if path.is_file() else None

    def _held(self, requests: list[MediaRequest]):
        """(refs of the requests the store holds, {source: requests still to decode}, {source: known sha256})."""
        files, items = self.read_manifest()
        refs: dict[MediaRequest, MediaRef] = {}
        todo: dict[str, list[MediaRequest]] = {}
        known: dict[str, str] = {}
        for request in requests:
            source = Path(request.source)
            sha = files.get((request.source, *file_identity(source)))
            if sha is not None:
                known[request.source] = sha
                key = item_key(sha, request)
                ref = self._ref(key, items[key]) if key in items else None
                if ref is not None:
                    refs[request] = ref
                    continue
            todo.setdefault(request.source, []).append(request)
        return refs, todo, known

    def scan(self, requests: list[MediaRequest]) -> tuple[dict[MediaRequest, MediaRef], dict]:
        """Read-only (`--dry-run`): what build() would do, without decoding or writing anything.

        Returns (refs, counts). A request the store holds gets its MediaRef; for the others each source
        file is checked as build() would before decoding (a clip's container header: the track is there
        and the time range lies within the file) and the request gets a placeholder MediaRef (no array,
        an identity from the file's path, size and mtime: the content is not hashed). counts: {"held",
        "to_decode", "files"}: clips the store holds, clips a real load would decode, and their files."""
        refs, todo, _ = self._held(requests)
        held = len(refs)
        check_sources(todo)
        for source, pending in todo.items():
            size, mtime = file_identity(Path(source))
            for request in pending:
                shape = (request.frames, 3, request.frame_size, request.frame_size) if request.modality == "video" else (0,)
                refs[request] = MediaRef("", TO_DECODE + item_key(f"{source}:{size}:{mtime}", request), shape)
        return refs, {"held": held, "to_decode": len(refs) - held, "files": len(todo)}

    def build(self, requests: list[MediaRequest], workers: int = 0) -> dict[MediaRequest, MediaRef]:
        """A MediaRef for every request, decoding (in `workers` processes; 0 = one per CPU) only what
        the store does not hold yet."""
        refs, todo, known = self._held(requests)
        if todo:
            check_ranges(todo)
            self._decode_missing(todo, known, workers)
            files, items = self.read_manifest()
            for request in (r for rs in todo.values() for r in rs):
                sha = files[(request.source, *file_identity(Path(request.source)))]
                refs[request] = self._ref(item_key(sha, request), items[item_key(sha, request)])
        return refs

    def _decode_missing(self, todo: dict[str, list[MediaRequest]], known: dict[str, str], workers: int) -> None:
        total = sum(len(rs) for rs in todo.values())
        workers = min(workers or os.cpu_count() or 1, len(todo))
        self.log(f"media store {self.root}: decoding {total} clip(s) from {len(todo)} file(s) "
                 f"in {workers} process(es)")
        progress = _Progress(total, self.log)
        # One decoder thread per process in a pool (the processes fill the cores); FFmpeg's own threads in a
        # process alone. MAGTKD_DECODER_THREADS=N sets it (benchmarks/media_scale.py compares at 1 thread).
        threads = int(os.environ.get("MAGTKD_DECODER_THREADS", "0")) or (1 if workers > 1 else 0)
        tasks = [(str(self.root), source, known.get(source, ""), rs, threads) for source, rs in todo.items()]
        if workers <= 1:
            for task in tasks:
                result = decode_source(*task)
                self._append([result["file"], *result["items"]])
                progress.step(len(result["items"]))
        else:
            # spawn: the parent may hold torch, Ray or threads, which a forked child must not inherit
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                pending = {pool.submit(decode_source, *task) for task in tasks}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        if future.exception() is not None:
                            for other in pending:
                                other.cancel()
                            raise future.exception()
                        result = future.result()
                        self._append([result["file"], *result["items"]])
                        progress.step(len(result["items"]))
        progress.finish()

    def summary(self) -> dict:
        """What the store holds: items per modality (by array dtype), their bytes, and source files."""
        files, items = self.read_manifest()
        out = {"root": str(self.root), "sources": len(files), "audio": 0, "video": 0, "bytes": 0}
        for record in items.values():
            path = self.root / record["array"]
            if path.is_file():
                out["audio" if record["dtype"] == "int16" else "video"] += 1
                out["bytes"] += path.stat().st_size
        return out


class _Progress:
    """One progress line: in place on a terminal, every few seconds otherwise."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.done, self.log = total, 0, log
        self.start = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last < (0.5 if self.tty else 5.0) and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (f"media store: {self.done}/{self.total} clips decoded ({rate:.1f}/s, "
                f"about {eta / 60:.0f} min left)")
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            self.log(line)

    def finish(self) -> None:
        seconds = time.monotonic() - self.start
        if self.tty:
            print(file=sys.stderr)
        self.log(f"media store: {self.done} clips decoded in {seconds:.1f}s")
