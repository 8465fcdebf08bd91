"""Stage 1's reader over the media store: a torch Dataset of clips and a DataLoader with workers.

    features = run_stage1(cfg, dataset, media_reader=store_reader(cfg))

`model.stage1` asks a reader for the arrays of a list of row batches (`batches(chunks)`, one epoch's
order, known in advance) or of one batch (`load(rows)`). Over clips in the media store the batches come
from a `torch.utils.data.DataLoader` whose worker processes memory-map each clip's .npy, convert it to
float32 and hand it over in shared memory, reading ahead of the training step; nothing of a split is
held in memory at once. In-memory arrays (the synthetic data) are read in-process: no workers to start.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.config import MAGTKDConfig
from core.schema import MediaRef
from dialogue_data.registry import media_workers


class StoreClips(Dataset):
    """Row -> float32 tensor of that utterance's clip (read from the store) or array (in memory)."""

    def __init__(self, values: list):
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, row: int) -> torch.Tensor:
        value = self.values[row]
        return torch.from_numpy(value.load() if isinstance(value, MediaRef) else np.asarray(value, dtype=np.float32))


def _as_list(batch: list) -> list:
    return batch


class StoreReader:
    """model.stage1's reader (load(rows), batches(chunks)) with `workers` DataLoader processes."""

    def __init__(self, values: list, workers: int = 2):
        self.clips = StoreClips(values)
        self.workers = workers if any(isinstance(v, MediaRef) for v in values) else 0

    def load(self, rows: Sequence[int]) -> list[np.ndarray]:
        return [self.clips[i].numpy() for i in rows]

    def batches(self, chunks: list[list[int]]):
        if self.workers == 0 or len(chunks) < 2:
            yield from (self.load(chunk) for chunk in chunks)
            return
        loader = DataLoader(self.clips, batch_sampler=chunks, num_workers=min(self.workers, len(chunks)),
                            collate_fn=_as_list)
        for batch in loader:
            yield [t.numpy() for t in batch]


def store_reader(cfg: MAGTKDConfig):
    """The media reader stage 1 gets in a sweep: `data.media_workers` DataLoader workers."""
    return partial(StoreReader, workers=media_workers(cfg.data))
