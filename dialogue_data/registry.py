"""`load_dataset(cfg.data)`: the one entry point from a config to a `DialogueDataset`.

    synthetic  the embedded generator (dialogue_data.synthetic); no path needed
    meld       data.path = directory of *_sent_emo.csv (dialogue_data.meld)
    iemocap    data.path = directory of the authors' per-split CSVs (dialogue_data.iemocap)
    csv        data.path + data.mapping (YAML column/label mapping; dialogue_data.csv_reader)
    features   the authors' first-stage feature pickles: these ARE stage-1 output, so they do not
               come through here; use dialogue_data.features_import.cached_author_features(cfg, cache_dir)
               (or load_author_features(path, cfg)) and skip stage 1.

`data.max_dialogues` keeps the first N dialogues of every split (quick runs); `data.media_dir`
adds clips to the real datasets.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections import OrderedDict
from pathlib import Path

from core.schema import SPLITS, DataError, DialogueDataset
from dialogue_data.csv_reader import load_mapping, read_csv_dataset
from dialogue_data.iemocap import read_iemocap
from dialogue_data.media import default_store
from dialogue_data.meld import read_meld
from dialogue_data.synthetic import generate

# The synthetic data are a pure function of the data config: keep the last few in memory so a
# worker that runs many trials (Ray reuse_actors) generates them once. Callers treat datasets as
# read-only; file-backed datasets are always re-read (the files may change between runs).
_MEMO: "OrderedDict[str, DialogueDataset]" = OrderedDict()
_MEMO_SIZE = 2


def load_dataset(data_cfg, cache_dir: str | Path | None = None, scan_only: bool = False) -> DialogueDataset:
    """The dataset named by `data_cfg.name` (a `core.config.DataConfig`), max_dialogues applied.

    Clips are decoded once into the media store: `data.media_store`, else `<cache_dir>/media` (a
    sweep's stage-1 cache directory), else the user's cache (dialogue_data.media.default_store).
    `scan_only` (`--dry-run`): the store is only read and the clips' headers checked; nothing is decoded
    or written, and clips not decoded yet get placeholder references (dialogue_data.media.attach_media)."""
    name = data_cfg.name
    if name == "synthetic":
        key = json.dumps(dataclasses.asdict(data_cfg), sort_keys=True)
        if key not in _MEMO:
            _MEMO[key] = _truncate(generate(data_cfg), data_cfg.max_dialogues)
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
        _MEMO.move_to_end(key)
        shared = _MEMO[key]                      # fresh containers, shared (read-only) utterances
        return dataclasses.replace(shared, splits=dict(shared.splits), notes=list(shared.notes))
    common = dict(media_dir=data_cfg.media_dir, sample_rate=data_cfg.sample_rate, frames=data_cfg.frames,
                  frame_size=data_cfg.frame_size, media_store=media_store_of(data_cfg, cache_dir),
                  media_workers=media_workers(data_cfg), scan_only=scan_only)
    if name == "meld":
        dataset = read_meld(data_cfg.path, **common)
    elif name == "iemocap":
        dataset = read_iemocap(data_cfg.path, **common)
    elif name == "csv":
        if not data_cfg.mapping:
            raise DataError("data.mapping: a YAML column/label mapping is required for data.name=csv "
                            "(see dialogue_data/mappings/example.yaml)")
        dataset = read_csv_dataset(data_cfg.path, load_mapping(data_cfg.mapping), **common)
    elif name == "features":
        raise DataError(f"{data_cfg.path}: data.name=features holds stage-1 vectors, not dialogues to encode: "
                        "load them with dialogue_data.features_import.cached_author_features(cfg, cache_dir) "
                        "and go straight to stage 2")
    else:
        raise DataError(f"data.name: unknown dataset '{name}'; valid: synthetic, meld, iemocap, csv, features")
    return _truncate(dataset, data_cfg.max_dialogues)


def media_store_of(data_cfg, cache_dir: str | Path | None = None) -> Path:
    if data_cfg.media_store:
        return Path(data_cfg.media_store).expanduser()
    return Path(cache_dir) / "media" if cache_dir else default_store()


def media_workers(data_cfg, cpus: float | None = None) -> int:
    """Processes that decode clips and DataLoader workers of stage 1: `data.media_workers`, or one per CPU
    (at most 8); with `cpus` (what Ray gave a task or trial) no more than those CPUs, and at least one."""
    wanted = data_cfg.media_workers or min(os.cpu_count() or 1, 8)
    return wanted if cpus is None else max(1, min(wanted, int(cpus)))


def _truncate(dataset: DialogueDataset, max_dialogues: int) -> DialogueDataset:
    if not max_dialogues:
        return dataset
    out = copy.copy(dataset)
    out.splits = {split: list(dataset.splits.get(split, []))[:max_dialogues] for split in SPLITS}
    out.notes = list(dataset.notes) + [f"data.max_dialogues={max_dialogues}: first {max_dialogues} dialogues per split"]
    return out
