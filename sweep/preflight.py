"""Checks of a sweep's options and devices that need neither Ray nor a write (called by engine.prepare).

    check_finite("--time-budget", float("nan"))                 # ConfigError: must be a finite number
    check_devices([cfg, ...], address=None)                     # ConfigError: train.device=cuda, no GPU here
    notes = device_notes([cfg, ...], address="auto")             # a cluster: checked once joined

Each check raises one ConfigError naming the option or key and saying what to do, so a caller can run
them one by one and either stop at the first or collect them all.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from core.config import ConfigError


def check_finite(flag: str, value: Any, minimum: Optional[float] = None) -> Optional[float]:
    """A numeric command-line option: finite (nan and inf are refused) and >= minimum; None passes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{flag} must be >= {minimum:g}, got {value:g}")
    return float(value)


def requested_devices(cfgs: Iterable) -> list[str]:
    """The distinct train.device values that name an accelerator (cuda, cuda:N, mps), in order."""
    out: list[str] = []
    for cfg in cfgs:
        device = cfg.train.device
        if (device.startswith("cuda") or device == "mps") and device not in out:
            out.append(device)
    return out


def check_devices(cfgs: Iterable, address: Optional[str]) -> None:
    """train.device=cuda / cuda:N / mps on a local Ray: this machine must have that device (otherwise every
    trial would fail after Ray started). With a cluster (--address) the trials run elsewhere: see
    device_notes and engine's check against the cluster's GPUs once joined."""
    devices = requested_devices(cfgs)
    if address or not devices:
        return
    import torch  # seconds: only when an accelerator is asked for

    for device in devices:
        if device == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise ConfigError("key 'train.device': mps is not available on this machine; use train.device=auto "
                                  "or cpu")
            continue
        count = torch.cuda.device_count()
        index = device.split(":", 1)[1] if ":" in device else "0"
        if count == 0:
            raise ConfigError(f"key 'train.device': {device} but this machine has no CUDA GPU; use train.device=auto "
                              f"(a GPU when there is one) or cpu, or --address to run on a cluster with GPUs")
        if not index.isdigit() or int(index) >= count:
            raise ConfigError(f"key 'train.device': {device} but this machine has {count} CUDA GPU(s) "
                              f"(cuda:0 .. cuda:{count - 1})")


def device_notes(cfgs: Iterable, address: Optional[str]) -> list[str]:
    """What a sweep on a cluster says about devices it cannot check before joining."""
    devices = requested_devices(cfgs)
    if not address or not devices:
        return []
    return [f"note: train.device={', '.join(devices)} is checked against the Ray cluster's GPUs once joined "
            f"(before any trial); each worker node must have it"]


def check_cluster_devices(cfgs: Iterable, cluster_gpus: float) -> None:
    """Once a cluster is joined: CUDA trials need GPUs in it (mps cannot be seen from Ray: left to the trials)."""
    cuda = [d for d in requested_devices(cfgs) if d.startswith("cuda")]
    if cuda and cluster_gpus <= 0:
        raise ConfigError(f"key 'train.device': {cuda[0]} but the Ray cluster has no GPU; use train.device=auto or "
                          f"cpu, or join a cluster with GPUs")
