"""Where a model runs, in which precision, and how its random draws start: one home for device
resolution, mixed precision, determinism and seeding.

Stage 1 and stage 2 both call these, so `train.device=auto`, a precision and a seed mean the same in both.

    device = resolve_device("auto")                      # outside Ray: cuda when available, else cpu
    device = worker_device("auto", gpu_ids=["0"])        # in a Ray worker: from the GPUs Ray gave it
    with autocast(precision, device): ...                # fp32 | bf16 | fp16 | auto
    scaler = grad_scaler(precision, device)              # a real scaler only for fp16
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Optional, Sequence

import numpy as np
import torch

from core.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else as given (e.g. `cpu`, `cuda:1`).
    Inside a Ray worker the sweep first turns `auto` into what Ray gave it (`worker_device`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def worker_device(name: str, gpu_ids: Sequence) -> str:
    """train.device for a process that Ray gave the GPUs `gpu_ids` (ray.get_gpu_ids(); empty: none).

    Ray (2.60) no longer clears CUDA_VISIBLE_DEVICES in a worker given no GPU, so `auto` would see the
    node's GPUs and pick GPU 0 outside Ray's accounting: with no GPU given, `auto` is the CPU. With GPUs,
    Ray shows the worker only its own, so `cuda` (= cuda:0) is the first of them; `cuda:N` names a
    device the worker may not have and is refused."""
    if name.startswith("cuda:"):
        raise ConfigError(f"key 'train.device': {name} is refused in a sweep: each Ray worker sees only the GPUs "
                          f"Ray gave it (as cuda:0, ...). Use train.device=auto or cuda, and resources.gpu / "
                          f"--gpus-per-trial to ask for GPUs")
    if name == "cuda" and not gpu_ids:
        raise ConfigError("key 'train.device': cuda, but Ray gave this task no GPU: set resources.gpu / "
                          "--gpus-per-trial (or resources.stage1.gpu) above 0, or use train.device=auto")
    if name == "auto":
        return "cuda" if gpu_ids else "cpu"
    return name


def hide_gpus_unless_given(gpu_ids: Sequence, environ=os.environ) -> None:
    """A worker given no GPU must not touch one: empty its CUDA_VISIBLE_DEVICES (before CUDA starts)."""
    if not gpu_ids and not torch.cuda.is_initialized():
        environ["CUDA_VISIBLE_DEVICES"] = ""


def cap_gpu_memory(device: torch.device, share: float, setter=None) -> Optional[float]:
    """A trial given a fraction of a GPU (0.25: four share it) may allocate only that fraction of its memory,
    so one trial's growth fails that trial (a reported out-of-memory) instead of its neighbours.
    Returns the cap set (None when there is none to set). `setter` defaults to torch's."""
    if device.type != "cuda" or not 0 < share < 1:
        return None
    (setter or torch.cuda.set_per_process_memory_fraction)(share, device)
    return share


# ---- precision -------------------------------------------------------------------------------------

def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of stage1.precision / train.precision on `device` (None: plain float32)."""
    if precision == "auto":
        supported = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if supported else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolved_precision(precision: str, device: torch.device) -> str:
    """fp32 | bf16 | fp16 as it will run (what `auto` became), for logs and MLflow."""
    dtype = autocast_dtype(precision, device)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(precision: str, device: torch.device):
    """torch.autocast for the precision (weights stay float32; matmuls and convolutions run in 16 bits)."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none. A disabled
    scaler passes every call straight through, so the training loops use one code path."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(precision, device) == torch.float16)


# ---- determinism and seeds -------------------------------------------------------------------------------

def set_deterministic(enabled: bool) -> None:
    """train.deterministic: deterministic kernels everywhere (an op without one raises), cuDNN without
    autotuning, and cuBLAS's fixed workspace (read when cuBLAS starts). Off: torch's defaults, faster on GPU."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, numpy's and torch's (all devices) global generators, which dropout, initialisation
    and data2vec's SpecAugment (numpy) draw from; returns a fresh torch.Generator with the same seed for
    draws that should not depend on how many global draws came before (e.g. batch order)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def is_out_of_memory(err: BaseException) -> bool:
    """A device out-of-memory (torch.OutOfMemoryError; CPU allocations raise a plain RuntimeError)."""
    return isinstance(err, torch.OutOfMemoryError)
