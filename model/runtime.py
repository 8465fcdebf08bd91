"""Where a model runs and how its random draws start: one home for device resolution and seeding.

Stage 1 and stage 2 both call these, so `train.device=auto` and a seed mean the same in both.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else as given (e.g. `cpu`, `cuda:1`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, numpy's and torch's (all devices) global generators, which dropout, initialisation
    and data2vec's SpecAugment (numpy) draw from; returns a fresh torch.Generator with the same seed for
    draws that should not depend on how many global draws came before (e.g. batch order)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
