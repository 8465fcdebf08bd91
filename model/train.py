"""Stage-2 training: dialogues of stage-1 vectors -> the fusion model, epoch by epoch.

    result = train_stage2(cfg, features, on_epoch=report, resume_state=None)

Every epoch trains once over the training dialogues (shuffled by a local generator), evaluates
dev and test, updates the selected epoch (best weighted F1 on `cfg.train.select_on`), and calls
`on_epoch(metrics, state)` with exactly the keys of the per-epoch report (README: What MLflow holds). `state` holds
everything needed to continue (model, optimizer, scheduler, epoch, selection, history, RNG states),
as CPU tensors and plain Python values, so it survives `torch.save` / `torch.load(weights_only=True)`;
passed back as `resume_state` the run continues from the next epoch with identical results.
"""
from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from core.schema import DataError
from core.config import ConfigError, MAGTKDConfig
from core.features import SplitFeatures, Stage1Features
from model.fusion import AnchorGatedTransformer, build_fusion, count_parameters, stage2_loss
from model.metrics import classification_scores
from model.runtime import autocast, grad_scaler, resolve_device, resolved_precision, seed_everything, set_deterministic

SPLITS = ("train", "dev", "test")
IGNORE_LABEL = -100  # label at padded positions (never read: losses and scores use the mask)
EVAL_BATCH_FACTOR = 4  # evaluation batches hold this many times train.batch_size dialogues: no gradients to
                       # keep, and fewer, larger kernels (outputs do not depend on the batch: padding is masked)


class DivergedError(RuntimeError):
    """The training loss became NaN or inf; the message names the epoch and the step."""


@dataclass
class Stage2Result:
    metrics: dict                       # the last epoch's report (holds the selected_* figures)
    history: list[dict]                 # every epoch's report, resumed epochs included
    labels: list[str]
    n_parameters: int
    info: dict = field(default_factory=dict)  # device, anchor modality, steps per epoch


def build_optimizer(model: torch.nn.Module, cfg: MAGTKDConfig) -> torch.optim.AdamW:
    """AdamW over the model's parameters; the fused kernel (one pass per step instead of a chain of
    foreach ops over 34M parameters at width 768) on every device that has it."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)


def linear_warmup_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor: 0 -> 1 over the warm-up steps, then 1 -> 0 linearly (transformers' linear schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


# ---- padded dialogue tensors ---------------------------------------------------------------------

@dataclass
class PaddedSplit:
    """One split as (dialogues, longest dialogue, ...) tensors, built once and sliced per batch."""
    inputs: dict[str, torch.Tensor]     # m -> (n, Tmax, D_m), zero at padding and at absent rows
    present: dict[str, torch.Tensor]    # m -> (n, Tmax) bool
    speakers: torch.Tensor              # (n, Tmax) int64, padding = fusion.max_speakers
    labels: torch.Tensor                # (n, Tmax) int64, IGNORE_LABEL at padding
    mask: torch.Tensor                  # (n, Tmax) bool, True at real utterances
    lengths: torch.Tensor               # (n,) int64, on the CPU (batch trimming and packing need no device sync)

    @classmethod
    def build(cls, split: SplitFeatures, modalities: list[str], padding_speaker: int,
              device: torch.device) -> "PaddedSplit":
        lengths = torch.tensor(split.dialogue_lengths, dtype=torch.int64)
        n_rows = len(split)
        n, t_max = len(lengths), int(lengths.max())
        dialogue = torch.repeat_interleave(torch.arange(n), lengths)                  # (N,) dialogue of each row
        position = torch.arange(n_rows) - (torch.cumsum(lengths, 0) - lengths)[dialogue]  # (N,) place in it

        def pad(values: torch.Tensor, fill) -> torch.Tensor:
            out = values.new_full((n, t_max) + tuple(values.shape[1:]), fill)
            out[dialogue, position] = values
            return out.to(device)

        present = {m: split.present[m].bool() if m in split.present else torch.ones(n_rows, dtype=torch.bool)
                   for m in modalities}
        # where(), not a product: an absent row must become 0 even if its stored vector is inf/NaN
        inputs = {m: pad(torch.where(present[m][:, None], split.vectors[m].float(), 0.0), 0.0) for m in modalities}
        return cls(inputs=inputs, present={m: pad(p, False) for m, p in present.items()},
                   speakers=pad(split.speakers.long(), padding_speaker), labels=pad(split.labels.long(), IGNORE_LABEL),
                   mask=pad(torch.ones(n_rows, dtype=torch.bool), False), lengths=lengths)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def batch(self, index: torch.Tensor) -> dict:
        """The dialogues at `index` (CPU int64), trimmed to the longest of them."""
        lengths = self.lengths[index]
        t = int(lengths.max())
        idx = index.to(self.mask.device)
        # The flat (b * t + position) index of every real utterance, from the lengths on the host: the model
        # packs rows and the loss picks them with it, so neither asks the device where the mask is True.
        starts = torch.arange(len(lengths)) * t
        rows = torch.repeat_interleave(starts, lengths) + torch.cat([torch.arange(int(n)) for n in lengths])
        return {"inputs": {m: x[idx, :t] for m, x in self.inputs.items()},
                "present": {m: p[idx, :t] for m, p in self.present.items()},
                "speakers": self.speakers[idx, :t], "labels": self.labels[idx, :t], "mask": self.mask[idx, :t],
                "rows": rows.to(self.mask.device, non_blocking=True)}


def _check_features(cfg: MAGTKDConfig, features: Stage1Features) -> None:
    for split in SPLITS:
        if split not in features.splits:
            raise DataError(f"stage-1 features: split '{split}' is missing (have {sorted(features.splits)})")
        sf = features.splits[split]
        if len(sf) == 0 or sum(sf.dialogue_lengths) != len(sf) or min(sf.dialogue_lengths) < 1:
            raise DataError(f"stage-1 features: split '{split}' has {len(sf)} rows but dialogue_lengths "
                            f"sum to {sum(sf.dialogue_lengths)} (or is empty / has an empty dialogue)")
        missing = [m for m in cfg.fusion.modalities if m not in sf.vectors]
        if missing:
            raise ConfigError(f"fusion.modalities asks for {missing} but the stage-1 features of '{split}' "
                              f"only have {sorted(sf.vectors)}")
        top = int(sf.speakers.max())
        if top >= cfg.fusion.max_speakers or int(sf.speakers.min()) < 0:
            raise ConfigError(f"fusion.max_speakers={cfg.fusion.max_speakers} but split '{split}' has speaker "
                              f"index {top}; raise fusion.max_speakers")
        if int(sf.labels.min()) < 0 or int(sf.labels.max()) >= len(features.labels):
            raise DataError(f"stage-1 features: split '{split}' has label ids outside 0..{len(features.labels) - 1}")


# ---- one epoch -----------------------------------------------------------------------------------

def _forward(model, batch: dict) -> dict:
    if isinstance(model, AnchorGatedTransformer):
        return model(batch["inputs"], batch["speakers"], batch["mask"], batch["present"], rows_index=batch["rows"])
    return model(batch["inputs"], batch["speakers"], batch["mask"], batch["present"])


def train_step(cfg, model, batch: dict, optimizer, scheduler, scaler, device) -> torch.Tensor:
    """One optimisation step; returns the loss as a device tensor. Nothing here waits for the device
    (no .item(), no boolean-mask gathers, no finiteness test): a GPU queues step after step, and the
    epoch checks finiteness once (tests/test_gpu_paths.py counts the syncs)."""
    with autocast(cfg.train.precision, device):
        loss = stage2_loss(cfg, _forward(model, batch), batch["labels"], batch["mask"], rows=batch["rows"])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)     # clip the true gradients (a no-op unless fp16 scales them)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.detach().float()


def _train_epoch(cfg, model, data: PaddedSplit, optimizer, scheduler, generator, epoch: int,
                 scaler=None, device=torch.device("cpu")) -> float:
    model.train()
    scaler = scaler or grad_scaler("fp32", device)
    order = torch.randperm(len(data), generator=generator)
    bs = cfg.train.batch_size
    total, steps = torch.zeros((), device=device), 0
    for start in range(0, len(data), bs):
        total += train_step(cfg, model, data.batch(order[start:start + bs]), optimizer, scheduler, scaler, device)
        steps += 1
    value = total.item() / steps    # the epoch's one host sync
    if not math.isfinite(value):
        raise DivergedError(f"stage-2 training loss is {value} in epoch {epoch} (lr {scheduler.get_last_lr()[0]:.3g}): "
                            f"lower train.lr, try train.precision=fp32, or check the stage-1 features for NaN/inf")
    return value


@torch.no_grad()
def evaluate(cfg, model, data: PaddedSplit, labels: list[str]) -> dict:
    """Scores of the prediction head on one split, plus the stage-2 loss averaged over utterances."""
    model.eval()
    loss_sum, count, preds, trues, probs = 0.0, 0, [], [], []
    size = cfg.train.batch_size * EVAL_BATCH_FACTOR
    for start in range(0, len(data), size):
        batch = data.batch(torch.arange(start, min(start + size, len(data))))
        with autocast(cfg.train.precision, next(model.parameters()).device):
            out = _forward(model, batch)
            mask = batch["mask"]
            n = int(mask.sum())
            loss_sum += stage2_loss(cfg, out, batch["labels"], mask).item() * n
        count += n
        logits = out["logits"][out["prediction"]][mask]
        preds.append(logits.argmax(dim=-1).cpu())
        probs.append(torch.softmax(logits.float(), dim=-1).cpu())
        trues.append(batch["labels"][mask].cpu())
    scores = classification_scores(torch.cat(trues).numpy(), torch.cat(preds).numpy(), labels)
    scores["loss"] = loss_sum / count
    # Per utterance, in the split's row order (dialogue by dialogue): what the report's bootstrap resamples.
    scores["predictions"] = {"gold": torch.cat(trues).tolist(), "predicted": torch.cat(preds).tolist(),
                             "probabilities": [[round(p, 5) for p in row] for row in torch.cat(probs).tolist()]}
    return scores


# ---- reports, selection, state -------------------------------------------------------------------

def epoch_report(epoch: int, train_loss: float, dev: dict, test: dict, selected: dict, labels: list[str]) -> dict:
    """the per-epoch metrics (README: What MLflow holds), in its order."""
    report = {"epoch": float(epoch), "train_loss": float(train_loss)}
    for split, scores in (("dev", dev), ("test", test)):
        report.update({f"{split}_loss": float(scores["loss"]), f"{split}_wf1": scores["wf1"],
                       f"{split}_acc": scores["acc"], f"{split}_mf1": scores["mf1"]})
    report["selected_epoch"] = float(selected["epoch"])
    for split in ("dev", "test"):
        for key in ("wf1", "acc", "mf1"):
            report[f"selected_{split}_{key}"] = selected[split][key]
    for split in ("dev", "test"):
        for label in labels:
            report[f"selected_{split}_f1_{label}"] = selected[split]["f1"][label]
    report["selected_test_confusion"] = json.dumps(selected["test"]["confusion"])
    return report


def _select(best: Optional[dict], epoch: int, dev: dict, test: dict, select_on: str) -> dict:
    """Keep the epoch with the highest weighted F1 on `select_on`; ties keep the earlier epoch."""
    score = (dev if select_on == "dev" else test)["wf1"]
    if best is None or score > best["score"]:
        keep = ("wf1", "acc", "mf1", "f1", "confusion", "predictions")
        return {"epoch": epoch, "score": score,
                "dev": {k: dev[k] for k in keep}, "test": {k: test[k] for k in keep}}
    return best


def _cpu_copy(obj):
    """A detached CPU copy of nested dicts/lists of tensors (later training must not change a given state)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(), "shuffle": generator.get_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---- the loop ------------------------------------------------------------------------------------

def train_stage2(cfg: MAGTKDConfig, features: Stage1Features,
                 on_epoch: Optional[Callable[[dict, dict], None]] = None,
                 resume_state: Optional[dict] = None,
                 checkpoint_due: Callable[[int], bool] = lambda epoch: True) -> Stage2Result:
    """Train the stage-2 fusion model on stage-1 vectors; see the module docstring. The host copy of the
    model and optimizer goes into `state` only for epochs where `checkpoint_due(epoch)`; otherwise `state`
    holds the light parts (epoch, selection, history)."""
    _check_features(cfg, features)
    device = resolve_device(cfg.train.device)
    set_deterministic(cfg.train.deterministic)
    labels = list(features.labels)
    modalities = list(cfg.fusion.modalities)
    seed_everything(cfg.seed)

    data = {s: PaddedSplit.build(features.splits[s], modalities, cfg.fusion.max_speakers, device) for s in SPLITS}
    dims = features.dims()
    model = build_fusion(cfg.fusion, len(labels), {m: dims[m] for m in modalities}).to(device)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(data["train"]) / cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(round(cfg.train.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, total_steps))
    generator = torch.Generator().manual_seed(cfg.seed)   # shuffling only: independent of dropout's draws
    scaler = grad_scaler(cfg.train.precision, device)

    done, best, history = 0, None, []
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        done, best = int(resume_state["epoch"]), copy.deepcopy(resume_state["best"])
        history = copy.deepcopy(list(resume_state["history"]))
        _set_rng_state(resume_state["rng"], generator, device)

    for epoch in range(done + 1, cfg.train.epochs + 1):
        train_loss = _train_epoch(cfg, model, data["train"], optimizer, scheduler, generator, epoch, scaler, device)
        dev = evaluate(cfg, model, data["dev"], labels)
        test = evaluate(cfg, model, data["test"], labels)
        best = _select(best, epoch, dev, test, cfg.train.select_on)
        metrics = epoch_report(epoch, train_loss, dev, test, best, labels)
        history.append(metrics)
        if on_epoch is not None:
            state = {"epoch": epoch, "best": copy.deepcopy(best), "history": copy.deepcopy(history),
                     "config_hash": cfg.content_hash()}
            if checkpoint_due(epoch):   # the device -> host copy (0.4 GB at width 768) only when it is saved
                state.update({"model": _cpu_copy(model.state_dict()), "optimizer": _cpu_copy(optimizer.state_dict()),
                              "scheduler": _cpu_copy(scheduler.state_dict()), "rng": _rng_state(generator, device)})
            on_epoch(dict(metrics), state)

    return Stage2Result(metrics=dict(history[-1]) if history else {}, history=history, labels=labels,
                        n_parameters=count_parameters(model),
                        info={"device": str(device), "steps_per_epoch": str(steps_per_epoch),
                              "precision": resolved_precision(cfg.train.precision, device),
                              "anchor": getattr(model, "anchor_modality", "concat")})
