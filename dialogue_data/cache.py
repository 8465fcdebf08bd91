"""The stage-1 feature cache: computed once, shared by every trial whose stage-1 part matches.

    cache = Stage1Cache(f"{output}/cache")
    features = cache.get_or_compute(key, lambda: run_stage1(cfg, dataset), dataset.labels)

An entry is two files named by its key (`{dataset fingerprint}-{cfg.stage1_hash()}`):
`KEY.safetensors` (the tensors of `Stage1Features.to_tensors()`, never pickle) and `KEY.json`
(labels, info, the sha256 and size of the tensor file, creation time). Both are written to a
temporary file in the same directory and moved into place with `os.replace`, so a reader sees a
whole file or none. A read checks the sidecar, the sha256 and that safetensors can load the file;
anything wrong (truncated, corrupt, stale labels) gives a `CacheWarning` and the entry is
recomputed. A `filelock.FileLock` per key (`KEY.lock`) makes concurrent trials, in any process on
any machine sharing the directory, compute an entry once: the others wait and then read it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from filelock import FileLock

from core.schema import DataError

if TYPE_CHECKING:  # torch is imported only when features are actually built or read
    from core.features import Stage1Features

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
FORMAT = "magtkd-stage1-v1"


def entry_key(dataset_fingerprint: str, stage1_hash: str) -> str:
    """The key of the entry a config needs: what the data are and what stage 1 depends on
    (`MAGTKDConfig.stage1_hash()`). The sweep plans stage 1 by these keys; trials read them."""
    return f"{dataset_fingerprint}-{stage1_hash}"


class CacheWarning(UserWarning):
    """A cache entry was unusable (truncated, corrupt, stale) and is being recomputed."""


@dataclass
class CacheEntry:
    key: str
    path: Path                  # the .safetensors file
    size_bytes: int
    created: str                # ISO time, from the sidecar
    labels: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    problem: str = ""           # non-empty when the sidecar is missing or unreadable


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class Stage1Cache:
    def __init__(self, root: str | Path, log: Optional[Callable[[str], None]] = None):
        self.root = Path(root)
        self.log = log or (lambda message: None)

    # ---- paths ----------------------------------------------------------------------------------
    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        if not _KEY_RE.match(key):
            raise DataError(f"{self.root}: invalid cache key {key!r} (letters, digits, '.', '_', '-')")
        return self.root / f"{key}.safetensors", self.root / f"{key}.json", self.root / f"{key}.lock"

    def lock(self, key: str) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self._paths(key)[2]))

    # ---- public API -----------------------------------------------------------------------------
    def get_or_compute(self, key: str, compute: Callable[[], "Stage1Features"],
                       labels: Optional[list[str]] = None) -> "Stage1Features":
        """The cached entry for `key`, or `compute()` stored under it; computed once across processes."""
        with self.lock(key):
            features = self.get(key, labels)
            if features is not None:
                self.log(f"stage-1 cache hit {key}")
                return features
            self.log(f"stage-1 cache miss {key}: computing")
            features = compute()
            if labels is not None and list(features.labels) != list(labels):
                raise DataError(f"{self.root}: computed features for {key} have labels {features.labels}, "
                                f"expected {list(labels)}")
            self.put(key, features)
            return features

    def get(self, key: str, labels: Optional[list[str]] = None) -> Optional["Stage1Features"]:
        """The verified entry, or None (missing; or unusable, with a CacheWarning). Call under lock(key)."""
        meta = self.verified_meta(key, labels)
        if meta is None:
            return None
        from safetensors.torch import load_file  # torch only when an entry is read: `cache list` stays light

        from core.features import Stage1Features

        try:
            tensors = load_file(str(self._paths(key)[0]))
            return Stage1Features.from_tensors(tensors, meta["labels"], meta.get("info", {}))
        except Exception as err:  # any defect means: recompute, loudly
            self._unusable(key, err)
            return None

    def verified_meta(self, key: str, labels: Optional[list[str]] = None) -> Optional[dict]:
        """The entry's sidecar once its tensor file is checked against it (format, size, sha256, labels),
        without reading the tensors: the sweep's driver checks the cache this way and never imports torch.
        None when missing, or unusable (with a CacheWarning). Call under lock(key)."""
        tensor_path, sidecar_path, _ = self._paths(key)
        if not tensor_path.exists() and not sidecar_path.exists():
            return None
        try:
            meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"unknown format {meta.get('format')!r}")
            size = tensor_path.stat().st_size
            if size != meta["size"]:
                raise ValueError(f"{tensor_path.name} has {size} bytes, the sidecar says {meta['size']} (truncated?)")
            digest = _sha256(tensor_path)
            if digest != meta["sha256"]:
                raise ValueError(f"sha256 of {tensor_path.name} does not match its sidecar")
            if labels is not None and list(meta["labels"]) != list(labels):
                raise ValueError(f"labels {meta['labels']} differ from the dataset's {list(labels)}")
            return meta
        except Exception as err:  # any defect means: recompute, loudly
            self._unusable(key, err)
            return None

    def _unusable(self, key: str, err: Exception) -> None:
        warnings.warn(f"stage-1 cache entry {self.root / key} is unusable ({type(err).__name__}: {err}); "
                      f"recomputing it", CacheWarning, stacklevel=4)

    def put(self, key: str, features: "Stage1Features") -> None:
        """Write an entry atomically (temp file in the same directory, fsync, os.replace). Call under lock(key)."""
        from safetensors.torch import save_file

        tensor_path, sidecar_path, _ = self._paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp_tensor = self._temp(key, ".safetensors")
        tmp_sidecar = self._temp(key, ".json")
        try:
            save_file(features.to_tensors(), str(tmp_tensor), metadata={"format": FORMAT})
            _fsync(tmp_tensor)
            meta = {"format": FORMAT, "key": key, "labels": list(features.labels),
                    "info": {str(k): v for k, v in features.info.items()},
                    "sha256": _sha256(tmp_tensor), "size": tmp_tensor.stat().st_size,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            tmp_sidecar.write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
            _fsync(tmp_sidecar)
            # Tensor first, then sidecar: a crash in between leaves a mismatch, which a read rejects.
            os.replace(tmp_tensor, tensor_path)
            os.replace(tmp_sidecar, sidecar_path)
        finally:
            for tmp in (tmp_tensor, tmp_sidecar):
                tmp.unlink(missing_ok=True)

    def _temp(self, key: str, suffix: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{key}.", suffix=suffix + ".tmp", dir=self.root)
        os.close(fd)
        return Path(name)

    def list(self) -> list[CacheEntry]:
        """Entries on disk (not verified: `get` does that), oldest first."""
        if not self.root.is_dir():
            return []
        entries = []
        for tensor_path in sorted(self.root.glob("*.safetensors")):
            key = tensor_path.name[: -len(".safetensors")]
            sidecar = self.root / f"{key}.json"
            entry = CacheEntry(key=key, path=tensor_path, size_bytes=tensor_path.stat().st_size, created="")
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
                entry.created, entry.labels, entry.info = meta.get("created", ""), meta.get("labels", []), meta.get("info", {})
            except (OSError, ValueError) as err:
                entry.problem = f"sidecar unreadable ({type(err).__name__}); will be recomputed"
            entries.append(entry)
        return sorted(entries, key=lambda e: (e.created, e.key))

    def clear(self, keys: Optional[list[str]] = None) -> int:
        """Delete entries (all, or those in `keys`), each under its lock; returns how many."""
        if not self.root.is_dir():
            return 0
        if keys is None:
            keys = sorted({p.name[: -len(".safetensors")] for p in self.root.glob("*.safetensors")}
                          | {p.name[: -len(".json")] for p in self.root.glob("*.json")})
            for tmp in self.root.glob(".*.tmp"):                 # leftovers of killed writers
                tmp.unlink(missing_ok=True)
        removed = 0
        for key in keys:
            tensor_path, sidecar_path, lock_path = self._paths(key)
            with self.lock(key):
                existed = tensor_path.exists() or sidecar_path.exists()
                tensor_path.unlink(missing_ok=True)
                sidecar_path.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
            removed += existed
        return removed
