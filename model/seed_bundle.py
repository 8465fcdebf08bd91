"""Seed bundles: k seeds of one stage-2 configuration trained together as one batched model.

    result = train_stage2_bundle(cfgs, features, on_epoch=report, resume_state=None)

`cfgs[s]` is the config of seed s (the configs differ in `seed` only) and `features[s]` its stage-1
vectors (one object for all when stage 1 is shared). A small stage-2 model leaves a CPU core or a GPU
mostly idle; k seeds as one model whose parameters carry a leading seed dimension turn k small
products into one batched product (benchmarks/RESULTS.md: Seed bundles).

Seed s in a bundle computes what `model.train.train_stage2` computes for seed s alone (within float
rounding: tests/test_seed_bundle.py), so identities, caches and tables do not depend on bundling:
- initialisation: each seed's model is built exactly as the single run builds it (seed_everything(s),
  then build_fusion) and the k models' parameters are stacked (torch.func.stack_module_state): the
  same numbers by construction;
- dropout: the single run draws its masks from the device's global generator, which seed_everything(s)
  seeded and the model's initialisation then advanced. Seed s of the bundle gets its own
  torch.Generator started from exactly that state, and draws masks of the same shapes in the same
  order (`model.fusion.keep_mask`);
- data order: its own shuffle generator, seeded with s, as in the single run;
- optimiser: AdamW is elementwise, so one AdamW over the stacked parameters is k AdamWs (same lr
  schedule for all). Gradient clipping is not elementwise: each seed is clipped by the norm of its own
  slice of the gradients;
- loss: `bundle_loss` computes stage2_loss's terms for every seed at once, each a masked mean over
  that seed's own rows;
- a seed whose loss becomes NaN or inf fails alone (its reason is kept); the others go on.

Batches differ from seed to seed (each has its own order), so seed s's N_s real utterances sit in rows
0..N_s-1 of a (k, Nmax, W) tensor, and for attention in a (k * B, Tmax) grid; padding rows and cells
never reach a real row. Position-wise layers are `torch.baddbmm` over the seed dimension (hand-batched:
torch.func.vmap cannot draw from per-seed generators, and was slower in the issue's probe). Only the
anchor model (fusion.mode=anchor) is bundled; `bundle_supported` says so before a sweep plans bundles.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import stack_module_state

from core.config import ConfigError, FusionConfig, MAGTKDConfig
from core.features import Stage1Features
from model.distill import PEARSON_EPS, row_pearson
from model.fusion import (STAGE2_FEATURE_T, STAGE2_TAU, PackedRows, build_fusion, count_parameters, keep_from_draws,
                          softmax_last, uniform16)
from model.metrics import classification_scores
from model.runtime import resolve_device, seed_everything
from model.train import (EVAL_BATCH_FACTOR, IGNORE_LABEL, SPLITS, DivergedError, PaddedSplit, Stage2Result, _check_features,
                         _cpu_copy, _select, build_optimizer, epoch_report, linear_warmup_decay)

LN_EPS = 1e-6   # every LayerNorm of the fusion model


def bundle_supported(fusion: FusionConfig) -> bool:
    """Only the anchor gated transformer is bundled (the concat baseline trains seed by seed)."""
    return fusion.mode == "anchor"


# ---- where each seed's utterances sit --------------------------------------------------------------

class SeedRows:
    """The real utterances of k per-seed (B, T_s) batches as rows of (k, copies * Nmax, ...) tensors.

    Row j < N_s of block c of seed s is utterance j of seed s's batch (dialogue by dialogue, as in
    `PackedRows`); rows N_s..Nmax-1 of each block are padding. For attention the rows go to a grid of
    k * copies * B dialogues of Tmax positions, (seed, copy, dialogue) major; padding rows go to one
    scratch cell after the grid. copies > 1 holds `copies` stacked batches per seed, as
    `PackedRows.stacked` does for a shared path.
    """

    def __init__(self, masks: list[torch.Tensor], copies: int = 1, per_seed: Optional[list[PackedRows]] = None):
        self.masks, self.copies = masks, copies
        self.per_seed = per_seed or [PackedRows(m) for m in masks]
        self.k, self.b = len(masks), int(masks[0].shape[0])
        self.lengths = [int(m.shape[1]) for m in masks]                                 # T_s
        self.counts = [int(r.index.numel()) for r in self.per_seed]                     # N_s
        self.n_max, self.t_max = max(self.counts), max(self.lengths)
        device = masks[0].device
        self.cells = self.k * copies * self.b * self.t_max                              # grid cells; + 1 scratch
        index = torch.full((self.k, copies, self.n_max), self.cells, dtype=torch.long, device=device)
        dialogue = torch.zeros((self.k, copies, self.n_max), dtype=torch.long, device=device)
        position = torch.zeros((self.k, self.n_max), dtype=torch.long, device=device)
        block = torch.arange(copies, device=device)[:, None]                            # (copies, 1)
        for s, rows in enumerate(self.per_seed):
            n = self.counts[s]
            first = (s * copies + block) * self.b                                       # first dialogue of each block
            dialogue[s, :, :n] = first + rows.dialogue
            index[s, :, :n] = (first + rows.dialogue) * self.t_max + rows.position
            position[s, :n] = rows.position
        self.index = index.view(-1)                                                     # (k * copies * Nmax,)
        self.dialogue = dialogue.view(-1)
        self.position = position                                                        # (k, Nmax)
        self.valid_rows = torch.arange(self.n_max, device=device) < torch.tensor(self.counts, device=device)[:, None]
        t_valid = torch.arange(self.t_max, device=device) < torch.tensor(self.lengths, device=device)[:, None]
        self.valid_cells = t_valid[:, :, None] & t_valid[:, None, :]                    # (k, Tmax, Tmax)
        # every seed holds the same utterances in the same rows (evaluation: one order for all seeds)
        self.aligned = copies == 1 and all(m is masks[0] or (m.shape == masks[0].shape and torch.equal(m, masks[0]))
                                           for m in masks[1:])
        self._stacked: dict[int, SeedRows] = {}
        self._aligned_masks: dict[int, tuple] = {}

    def stacked(self, copies: int) -> "SeedRows":
        if copies not in self._stacked:
            self._stacked[copies] = SeedRows(self.masks, copies, self.per_seed)
        return self._stacked[copies]

    def pack(self, per_seed: list[torch.Tensor], fill=0) -> torch.Tensor:
        """Per-seed (B, T_s, ...) tensors -> (k, Nmax, ...), `fill` in the padding rows."""
        packed = [rows.pack(x) for rows, x in zip(self.per_seed, per_seed)]
        return torch.stack([torch.cat([x, x.new_full((self.n_max - x.shape[0],) + tuple(x.shape[1:]), fill)])
                            for x in packed])

    def seed_rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each seed's real rows of a (k, Nmax, ...) tensor: k x (N_s, ...)."""
        return [x_s[:n] for x_s, n in zip(x.unbind(0), self.counts)]

    def key_grid(self, per_seed: list[torch.Tensor]) -> torch.Tensor:
        """Per-seed (copies * B, T_s) key masks -> (k * copies * B, Tmax), False beyond T_s."""
        return torch.cat([F.pad(m, (0, self.t_max - m.shape[1])) for m in per_seed])

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(k, copies * Nmax, F) rows -> (k * copies * B, Tmax, F) grid, zeros where no row is."""
        flat = x.reshape(-1, x.shape[-1])
        grid = flat.new_zeros((self.cells + 1, flat.shape[1])).index_copy_(0, self.index, flat)
        return grid[:-1].view(self.k * self.copies * self.b, self.t_max, -1)

    def to_rows(self, grid: torch.Tensor) -> torch.Tensor:
        """(k * copies * B, Tmax, F) grid -> (k, copies * Nmax, F) rows (padding rows read the scratch cell)."""
        flat = grid.reshape(self.cells, -1)
        flat = torch.cat([flat, flat.new_zeros((1, flat.shape[1]))])
        return flat.index_select(0, self.index).view(self.k, self.copies * self.n_max, -1)

    def _masks(self, sizes: list[int], valid: torch.Tensor, shape: tuple, p: float, dtype,
               generators: list[torch.Generator]) -> torch.Tensor:
        """Dropout masks of `shape` (seed first): seed s draws its sizes[s] numbers from its own generator
        (`keep_mask`'s draws, in its order) and they fill the cells where `valid` is True, row-major."""
        device = valid.device
        draws = torch.cat([uniform16(n, device, g) for n, g in zip(sizes, generators)])
        return torch.zeros(shape, dtype=dtype, device=device).masked_scatter_(valid, keep_from_draws(draws, p, dtype))

    def drop_rows(self, x: torch.Tensor, p: float, generators: list[torch.Generator]) -> torch.Tensor:
        """Dropout on (k, blocks * Nmax, W) rows; seed s draws the (blocks * N_s, W) mask that its single run draws."""
        blocks, w = x.shape[1] // self.n_max, x.shape[2]
        valid = self.valid_rows[:, None, :, None]                                       # (k, 1, Nmax, 1)
        mask = self._masks([blocks * n * w for n in self.counts], valid, (self.k, blocks, self.n_max, w), p,
                           x.dtype, generators)
        return x * mask.view_as(x)

    def attend(self, q, k, v, key_grid: torch.Tensor, heads: int, p: Optional[float],
               generators: list[torch.Generator]) -> torch.Tensor:
        """`PackedRows._attend_on_grid` for every seed at once: q, k, v (k, copies * Nmax, W) -> context, same shape.

        p None: no attention dropout. Otherwise seed s draws its (copies * B, H, T_s, T_s) mask."""
        if p is None and self.aligned:
            return self._attend_aligned(q, k, v, key_grid, heads)
        w = q.shape[-1]
        grid = self.to_grid(torch.cat([q, k, v], dim=-1)).view(-1, self.t_max, 3, heads, w // heads)
        q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)                                 # each (kCB, H, Tmax, hd)
        has_key = key_grid.any(dim=-1)                                                  # (kCB,)
        allowed = (key_grid | ~has_key[:, None])[:, None, None, :]                      # (kCB, 1, 1, Tmax)
        if p is None:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            scores = (q @ k.transpose(-2, -1)) * (w // heads) ** -0.5                   # (kCB, H, Tmax, Tmax)
            probs = softmax_last(scores.masked_fill(~allowed, float("-inf")))
            cb = self.copies * self.b
            mask = self._masks([cb * heads * t * t for t in self.lengths], self.valid_cells[:, None, None],
                               (self.k, cb, heads, self.t_max, self.t_max), p, q.dtype, generators)
            context = (probs * mask.view_as(probs)) @ v
        context = self.to_rows(context.transpose(1, 2).reshape(-1, self.t_max, w))
        if bool(has_key.all()):
            return context
        return context * has_key[self.dialogue].view(self.k, -1, 1).to(context.dtype)

    def _attend_aligned(self, q, k, v, key_grid: torch.Tensor, heads: int) -> torch.Tensor:
        """`PackedRows.attend` without dropout, for k seeds whose rows are the same utterances: all N rows
        of each seed attend in one (k, H, N, N) product (no grid), as the single run evaluates."""
        n, w = self.n_max, q.shape[-1]
        scores_bias, keep = self._aligned_mask(key_grid, q.dtype)                       # (k or 1, 1, N, N), (k or 1, N, 1)
        q, k, v = (x.view(self.k, n, heads, w // heads).transpose(1, 2) for x in (q, k, v))  # (k, H, N, hd)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=scores_bias)
        return context.transpose(1, 2).reshape(self.k, n, w) * keep

    def _aligned_mask(self, key_grid: torch.Tensor, dtype) -> tuple:
        """`PackedRows._attention_mask` of each seed's key mask, stacked; once per key grid."""
        if id(key_grid) not in self._aligned_masks:
            key_masks = key_grid.view(self.k, self.b, self.t_max)                       # aligned: T_s = Tmax
            # seeds that read one set of features have one key mask: one (N, N) mask broadcast over the seeds
            seeds = 1 if bool((key_masks == key_masks[:1]).all()) else self.k
            masks = [self.per_seed[s]._attention_mask(key_masks[s], dtype) for s in range(seeds)]
            scores_bias = torch.stack([bias for bias, _ in masks])[:, None]            # (seeds, 1, N, N)
            keep = torch.stack([keep for _, keep in masks])                             # (seeds, N, 1)
            self._aligned_masks[id(key_grid)] = (key_grid, scores_bias, keep)           # key_grid kept: its id stays unique
        return self._aligned_masks[id(key_grid)][1:]


# ---- what the bundle returns, and its loss ----------------------------------------------------------

@dataclass
class BundleOutput:
    """Every head's logits and features for all k seeds; rows N_s..Nmax-1 of seed s are padding."""
    logits: dict[str, torch.Tensor]                     # head -> (k, Nmax, C)
    features: dict[str, torch.Tensor]                   # head -> (k, Nmax, W)
    rows: SeedRows

    def seed(self, s: int) -> dict:
        """Seed s's output as the single model gives it on packed rows: {"logits": {head: (N_s, C)},
        "features": {head: (N_s, W)}, "prediction": "anchor"}."""
        n = self.rows.counts[s]
        return {"logits": {h: z[s, :n] for h, z in self.logits.items()},
                "features": {h: f[s, :n] for h, f in self.features.items()}, "prediction": "anchor"}


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x (k, N) over the rows where valid (k, N, 1) is True: (k,)."""
    return (x * valid[..., 0]).sum(dim=1) / valid[..., 0].sum(dim=1)


def _masked_pearson(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, eps: float = PEARSON_EPS) -> torch.Tensor:
    """`row_pearson` along dim 1 over the rows where valid (k, N, 1) is True: (k, N, K) x 2 -> (k, K)."""
    count = valid.sum(dim=1, keepdim=True)                                              # (k, 1, 1)
    a = (a - (a * valid).sum(dim=1, keepdim=True) / count) * valid
    b = (b - (b * valid).sum(dim=1, keepdim=True) / count) * valid
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def bundle_logit_relation_loss(student, teacher, valid, tau: float) -> torch.Tensor:
    """`logit_relation_loss` of every seed at once on padded rows: (k, N, C) x 2, valid (k, N, 1) -> (k,)."""
    p_s, p_t = F.softmax(student / tau, dim=-1), F.softmax(teacher / tau, dim=-1)
    inter = 1.0 - _masked_mean(row_pearson(p_s.flatten(0, 1), p_t.flatten(0, 1)).view(valid.shape[:2]), valid)
    intra = 1.0 - _masked_pearson(p_s, p_t, valid).mean(dim=1)
    return tau ** 2 * (inter + intra)


def bundle_feature_similarity_loss(student, teacher, valid, t: float) -> torch.Tensor:
    """`feature_similarity_loss` of every seed at once on padded rows: (k, N, W) x 2, valid (k, N, 1) -> (k,)."""
    s, te = F.normalize(student, p=2, dim=-1), F.normalize(teacher, p=2, dim=-1)
    columns = valid.transpose(1, 2)                                                     # (k, 1, N): real keys
    log_p = F.log_softmax((te @ te.transpose(1, 2) / t).masked_fill(~columns, float("-inf")), dim=-1)
    log_q = F.log_softmax((te @ s.transpose(1, 2) / t).masked_fill(~columns, float("-inf")), dim=-1)
    # KL(P || Q) as F.kl_div computes it, written out: both logs are set to 0 (not -inf) at padding columns,
    # so those add P (log P - log Q) = 0 with finite gradients (kl_div's d/dP = log P would be -inf there)
    log_p, log_q = log_p.masked_fill(~columns, 0.0), log_q.masked_fill(~columns, 0.0)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)                                     # (k, N)
    return _masked_mean(kl, valid)


def bundle_loss(cfg, output: BundleOutput, labels: torch.Tensor) -> torch.Tensor:
    """`stage2_loss` of every seed at once: labels (k, Nmax), IGNORE_LABEL at padding rows -> (k,).

    The same terms as model/fusion.py's stage2_loss, each a masked mean over seed s's N_s rows, so that
    seed s's loss is the one its single run computes (within float rounding: tests/test_seed_bundle.py)."""
    fusion = getattr(cfg, "fusion", cfg)
    valid = (labels != IGNORE_LABEL)[..., None]                                         # (k, Nmax, 1)
    count = valid[..., 0].sum(dim=1)                                                    # (k,)
    flat = labels.flatten()

    def ce(logits):
        per_row = F.cross_entropy(logits.flatten(0, 1), flat, ignore_index=IGNORE_LABEL, reduction="none")
        return per_row.view(labels.shape).sum(dim=1) / count

    logits, feats = output.logits, output.features
    teacher_logits, teacher_feats = logits["anchor"], feats["anchor"]
    if fusion.detach_anchor:
        teacher_logits, teacher_feats = teacher_logits.detach(), teacher_feats.detach()
    loss = ce(logits["anchor"])
    for head, weight in (("audio", fusion.kd_audio_weight), ("video", fusion.kd_video_weight)):
        if head in logits and weight > 0 and fusion.kd_terms:
            kd = torch.zeros_like(loss)
            if "ce" in fusion.kd_terms:
                kd = kd + ce(logits[head])
            if "logit" in fusion.kd_terms:
                kd = kd + bundle_logit_relation_loss(logits[head], teacher_logits, valid, STAGE2_TAU)
            if "feature" in fusion.kd_terms:
                kd = kd + bundle_feature_similarity_loss(feats[head], teacher_feats, valid, STAGE2_FEATURE_T)
            loss = loss + weight * kd
    return loss


# ---- the bundled model -----------------------------------------------------------------------------

def _generator_after_init(device: torch.device) -> torch.Generator:
    """A generator in the state the device's global one is in now (where the single run's dropout starts)."""
    generator = torch.Generator(device=device)
    if device.type == "cuda":
        generator.set_state(torch.cuda.get_rng_state(device))
    else:
        generator.set_state(torch.get_rng_state())
    return generator


class SeedBundle(nn.Module):
    """The anchor gated transformer (model/fusion.py) for k seeds at once; parameters (k, ...).

    forward(batches) takes one padded batch per seed (model/train.py's `PaddedSplit.batch`) and returns
    a `BundleOutput`: every head's logits and features for all seeds at once.
    """

    def __init__(self, fusion: FusionConfig, num_classes: int, input_dims: dict[str, int], seeds: list[int],
                 device: torch.device):
        super().__init__()
        if not bundle_supported(fusion):
            raise ConfigError(f"seed bundles need fusion.mode=anchor (got '{fusion.mode}')")
        models, self.generators = [], []
        for seed in seeds:
            seed_everything(seed)  # as train_stage2 does before it builds the model
            models.append(build_fusion(fusion, num_classes, input_dims).to(device))
            self.generators.append(_generator_after_init(device))
        template = models[0]
        self.seeds, self.fusion = list(seeds), fusion
        self.modalities, self.anchor_modality = template.modalities, template.anchor_modality
        self.branch_modalities = template.branch_modalities
        self.register_buffer("pe", template.inputs.positions.pe, persistent=False)
        params, _ = stack_module_state(models)                                          # name -> (k, ...)
        # nn.Linear weights are kept as (k, in, out): baddbmm then reads them as they lie, and their
        # gradients come out in that layout (stored as (k, out, in), each step copied every weight gradient)
        self.transposed = {f"{n}.weight" for n, m in template.named_modules() if isinstance(m, nn.Linear)}
        self.stacked = nn.ParameterDict({n.replace(".", "/"): nn.Parameter(self._layout(n, t.detach()).clone())
                                         for n, t in params.items()})
        # in the order of self.parameters() (ParameterDict sorts its keys): the optimiser's state is indexed so
        self.names = [key.removeprefix("stacked.").replace("/", ".") for key, _ in self.named_parameters()]
        self._params = {n: self.stacked[n.replace(".", "/")] for n in self.names}       # the forward's lookups

    def _layout(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A stacked single-model tensor (k, ...) in the bundle's layout, or back (the swap is its own inverse)."""
        return t.transpose(1, 2).contiguous() if name in self.transposed else t

    def param(self, name: str) -> torch.Tensor:
        return self._params[name]

    def portable(self, model_state: dict, optimizer_state: dict) -> tuple[dict, dict]:
        """The bundle's and its AdamW's state_dicts with every linear weight (and its Adam moments) laid
        out as the single model keeps them, (k, out, in); given that form, the bundle's own. Checkpoints
        hold the portable form, so a resume never depends on how the bundle lays out its weights."""
        model_state = {key: self._layout(key.removeprefix("stacked.").replace("/", "."), t) for key, t in model_state.items()}
        moments = {}
        for index, state in optimizer_state["state"].items():
            name = self.names[int(index)]
            moments[index] = {key: self._layout(name, v) if key.endswith("exp_avg") or key.endswith("exp_avg_sq") else v
                              for key, v in state.items()}
        return model_state, {**optimizer_state, "state": moments}

    def has(self, name: str) -> bool:
        return name in self._params

    def seed_state_dict(self, s: int) -> dict:
        """Seed s's parameters under the single model's names and shapes (load into build_fusion's model)."""
        return {n: self._layout(n, self.param(n).detach())[s] for n in self.names}

    # ---- layers, with parameters (k, ...) ----
    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x (k, R, in) -> (k, R, out) with seed s's weight (kept as (in, out)) and bias."""
        return torch.baddbmm(self.param(f"{name}.bias").unsqueeze(1), x, self.param(f"{name}.weight"))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        normed = F.layer_norm(x, x.shape[-1:], eps=LN_EPS)
        return torch.addcmul(self.param(f"{name}.bias").unsqueeze(1), normed, self.param(f"{name}.weight").unsqueeze(1))

    def _gate(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.has(f"{name}.fc.weight"):                                           # anchor_gating=false
            return x
        return torch.sigmoid(F.relu(self._linear(x, f"{name}.fc"))) * x

    def _drop(self, x: torch.Tensor, rows: SeedRows) -> torch.Tensor:
        p = self.fusion.dropout
        return rows.drop_rows(x, p, self.generators) if self.training and p > 0 else x

    def _attention(self, name: str, query, source, key_grid, rows: SeedRows) -> torch.Tensor:
        w = self.fusion.width
        weight, bias = self.param(f"{name}.qkv.weight"), self.param(f"{name}.qkv.bias")  # (k, W, 3W), (k, 3W)
        if source is query:
            q, k, v = torch.baddbmm(bias.unsqueeze(1), query, weight).chunk(3, dim=-1)
        else:
            q = torch.baddbmm(bias[:, None, :w], query, weight[..., :w])
            k, v = torch.baddbmm(bias[:, None, w:], source, weight[..., w:]).chunk(2, dim=-1)
        p = self.fusion.dropout if self.training and self.fusion.dropout > 0 else None
        return self._linear(rows.attend(q, k, v, key_grid, self.fusion.heads, p, self.generators), f"{name}.out")

    def _layer(self, name: str, index: int, query, source, key_grid, rows: SeedRows, self_rows: int = 0):
        """`TransformerLayer.forward`: [LN] -> attention -> dropout + residual -> feed-forward."""
        q = self._norm(query, f"{name}.query_norm") if index > 0 else query
        kv = q if source is None else source
        if self_rows:
            kv = torch.cat([q[:, :self_rows], source], dim=1)
        y = self._drop(self._attention(f"{name}.attention", q, kv, key_grid, rows), rows) + q
        ff = f"{name}.feed_forward"
        inner = self._drop(F.gelu(self._linear(self._norm(y, f"{ff}.norm"), f"{ff}.w1")), rows)
        return y + self._drop(self._linear(inner, f"{ff}.w2"), rows)

    def _path(self, name: str, target, source, key_grid, bias, rows: SeedRows):
        """`AttentionPath.forward`: positions and speakers on both streams, dropout on a cross path's two."""
        q, kv = target + bias, None
        if source is not None:
            q, kv = self._drop(q, rows), self._drop(source + bias, rows)
        for i in range(self.fusion.layers):
            q = self._layer(f"{name}.layers.{i}", i, q, kv, key_grid, rows)
        return q

    def _block(self, name: str, shared: bool, target, target_keys, sources, bias, rows: SeedRows) -> torch.Tensor:
        """`GatedBlock.forward`; sources [(rows (k, Nmax, W), per-seed key masks)]."""
        inputs = [(None, target_keys)] + list(sources)
        if shared and self.training and len(inputs) > 1:
            outs = self._stacked_block(name, target, inputs, bias, rows)
        else:
            outs = []
            for i, (source, keys) in enumerate(inputs):
                module = f"{name}.paths.{0 if shared else i}", f"{name}.gates.{0 if shared else i}"
                out = self._path(module[0], target, source, rows.key_grid(keys), bias, rows)
                outs.append(self._gate(out, module[1]))
        return self._linear(torch.cat(outs, dim=-1), f"{name}.reduce")

    def _stacked_block(self, name: str, target, inputs, bias, rows: SeedRows) -> list:
        """`GatedBlock._stacked` + `AttentionPath.stacked`: the shared path over P inputs as P stacked batches."""
        copies, n_max = len(inputs), rows.n_max
        stacked = rows.stacked(copies)
        keys = stacked.key_grid([torch.cat([keys[s] for _, keys in inputs]) for s in range(rows.k)])
        sources = torch.cat([source for source, _ in inputs[1:]], dim=1)               # (k, (P-1) Nmax, W)
        own = target + bias
        q = torch.cat([own, self._drop(own.repeat(1, copies - 1, 1), rows)], dim=1)
        kv = self._drop(sources + bias.repeat(1, copies - 1, 1), rows)
        for i in range(self.fusion.layers):
            q = self._layer(f"{name}.paths.0.layers.{i}", i, q, kv, keys, stacked, self_rows=n_max)
        return list(self._gate(q, f"{name}.gates.0").split(n_max, dim=1))              # P x (k, Nmax, W)

    def _inputs(self, batches: list[dict], rows: SeedRows):
        """`StreamInputs.forward` on rows: streams {m: (k, Nmax, W)}, per-seed key masks, bias (k, Nmax, W)."""
        streams, keys = {}, {}
        for m in self.modalities:
            keys[m] = [b["mask"] & b["present"][m] if m in b["present"] else b["mask"] for b in batches]
            x = rows.pack([b["inputs"][m] for b in batches])                           # (k, Nmax, D_m)
            if self.has(f"inputs.project.{m}.weight"):
                x = self._linear(x, f"inputs.project.{m}")
            streams[m] = x * rows.pack(keys[m]).unsqueeze(-1).to(x.dtype)
        bias = self.pe[rows.position]                                                   # (k, Nmax, W)
        if self.has("inputs.speakers.table.weight"):
            table = self.param("inputs.speakers.table.weight")                          # (k, S + 1, W)
            speakers = rows.pack([b["speakers"] for b in batches])                     # (k, Nmax)
            bias = bias + table.gather(1, speakers.unsqueeze(-1).expand(-1, -1, table.shape[-1]))
        return streams, keys, bias

    def forward(self, batches: list[dict]) -> tuple[list[dict], SeedRows]:
        rows = SeedRows([b["mask"] for b in batches])
        streams, keys, bias = self._inputs(batches, rows)
        features = {}
        for m in self.branch_modalities:
            others = [(streams[o], keys[o]) for o in self.modalities if o != m]
            features[m] = self._block(f"branches.{m}", False, streams[m], keys[m], others, bias, rows)
        a = self.anchor_modality
        features["anchor"] = self._block("anchor", self.fusion.shared_anchor_layers, streams[a], keys[a],
                                         [(features[m], keys[m]) for m in self.branch_modalities], bias, rows)
        logits = {h: self._linear(f, f"heads.{h}") for h, f in features.items()}       # h: (k, Nmax, C)
        return BundleOutput(logits, features, rows)

    def clip_gradients(self, max_norm: float) -> None:
        """clip_grad_norm_ per seed: each seed's gradients scaled by max_norm / (the norm of its own slice)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        k = len(self.seeds)
        norms = torch.stack([g.reshape(k, -1).norm(dim=1) for g in grads]).norm(dim=0)  # (k,)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view((k,) + (1,) * (g.dim() - 1)))


# ---- training -------------------------------------------------------------------------------------

@dataclass
class BundleResult:
    results: dict[int, Stage2Result]                     # seed -> its result, as train_stage2 gives it
    failures: dict[int, str] = field(default_factory=dict)  # seed -> why it stopped (diverged)


def _train_epoch(cfg, bundle: SeedBundle, data: list[PaddedSplit], optimizer, scheduler, shufflers, epoch: int,
                 failures: dict[int, str]) -> list[float]:
    """One epoch for every seed still training; -> mean train loss per seed (NaN for a failed seed)."""
    bundle.train()
    k, bs = len(bundle.seeds), cfg.train.batch_size
    orders = [torch.randperm(len(data[s]), generator=shufflers[s]) for s in range(k)]
    losses: list[list[float]] = [[] for _ in range(k)]
    for step, start in enumerate(range(0, len(data[0]), bs), start=1):
        batches = [data[s].batch(orders[s][start:start + bs]) for s in range(k)]
        output = bundle(batches)
        per_seed = bundle_loss(cfg, output, output.rows.pack([b["labels"] for b in batches], fill=IGNORE_LABEL))  # (k,)
        values = per_seed.detach().cpu().tolist()
        for s, value in enumerate(values):
            if bundle.seeds[s] not in failures and not math.isfinite(value):
                failures[bundle.seeds[s]] = (f"stage-2 training loss is {value} at epoch {epoch}, step {step} "
                                             f"(lr {scheduler.get_last_lr()[0]:.3g}): lower train.lr or check the "
                                             f"stage-1 features for NaN/inf")
        active = torch.tensor([seed not in failures for seed in bundle.seeds], device=per_seed.device)
        if not bool(active.any()):
            break
        optimizer.zero_grad(set_to_none=True)
        torch.where(active, per_seed, 0.0).sum().backward()
        if not bool(active.all()):
            for p in bundle.parameters():  # a failed seed's slice learns nothing more (its gradients may be NaN)
                if p.grad is not None:
                    p.grad[~active] = 0.0
        bundle.clip_gradients(cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        for s, value in enumerate(values):
            losses[s].append(value)
    return [float(np.mean(v)) if v and bundle.seeds[s] not in failures else math.nan for s, v in enumerate(losses)]


@torch.no_grad()
def evaluate_bundle(cfg, bundle: SeedBundle, data: list[PaddedSplit], labels: list[str]) -> list[dict]:
    """`model.train.evaluate` for every seed: its scores on one split (seed s on data[s])."""
    bundle.eval()
    k, size = len(bundle.seeds), cfg.train.batch_size * EVAL_BATCH_FACTOR
    loss_sum, count = [0.0] * k, 0
    preds, probs, trues = [[] for _ in range(k)], [[] for _ in range(k)], []
    for start in range(0, len(data[0]), size):
        index = torch.arange(start, min(start + size, len(data[0])))
        batches = [d.batch(index) for d in data]
        output = bundle(batches)
        gold = output.rows.per_seed[0].pack(batches[0]["labels"])                        # the same rows for every seed
        n = int(gold.shape[0])
        count += n
        batch_losses = bundle_loss(cfg, output, gold.expand(k, -1)).tolist()
        for s, logits in enumerate(output.rows.seed_rows(output.logits["anchor"])):
            loss_sum[s] += batch_losses[s] * n
            preds[s].append(logits.argmax(dim=-1).cpu())
            probs[s].append(torch.softmax(logits.float(), dim=-1).cpu())
        trues.append(gold.cpu())
    gold = torch.cat(trues)
    scores = []
    for s in range(k):
        predicted = torch.cat(preds[s])
        seed_scores = classification_scores(gold.numpy(), predicted.numpy(), labels)
        seed_scores["loss"] = loss_sum[s] / count
        seed_scores["predictions"] = {"gold": gold.tolist(), "predicted": predicted.tolist(),
                                      "probabilities": [[round(p, 5) for p in row] for row in torch.cat(probs[s]).tolist()]}
        scores.append(seed_scores)
    return scores


def _check_bundle(cfgs: list[MAGTKDConfig], features: list[Stage1Features]) -> None:
    if not cfgs or len(cfgs) != len(features):
        raise ConfigError(f"a seed bundle needs one config and one feature set per seed (got {len(cfgs)} and {len(features)})")
    seeds = [c.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"a seed bundle needs distinct seeds (got {seeds})")
    base = {k: v for k, v in cfgs[0].flat().items() if k != "seed"}
    for cfg in cfgs[1:]:
        differs = sorted(k for k, v in cfg.flat().items() if k != "seed" and base.get(k) != v)
        if differs:
            raise ConfigError(f"the seeds of a bundle must share their config; seed {cfg.seed} differs in {differs}")
    for cfg, feats in zip(cfgs, features):
        _check_features(cfg, feats)
        for split in SPLITS:
            if feats.splits[split].dialogue_lengths != features[0].splits[split].dialogue_lengths:
                raise ConfigError(f"the stage-1 features of seed {cfg.seed} hold other dialogues in '{split}' "
                                  f"than those of seed {cfgs[0].seed}: a bundle trains one data set")


def _generator_states(generators: list[torch.Generator]) -> list[torch.Tensor]:
    return [g.get_state() for g in generators]


def train_stage2_bundle(cfgs: list[MAGTKDConfig], features: list[Stage1Features],
                        on_epoch: Optional[Callable[[dict, dict], None]] = None,
                        resume_state: Optional[dict] = None) -> BundleResult:
    """Train k seeds of one config as a bundle; see the module docstring.

    on_epoch(per_seed, state) after every epoch: per_seed maps each seed still training to its epoch
    report (the keys of train_stage2's); state holds the whole bundle (stacked parameters, optimiser,
    scheduler, every seed's selection, history and generators, and `failures` {seed: reason}) as CPU
    tensors and plain values; passed back as resume_state, the bundle continues from the next epoch.
    """
    _check_bundle(cfgs, features)
    cfg = cfgs[0]
    seeds = [c.seed for c in cfgs]
    device = resolve_device(cfg.train.device)
    labels = list(features[0].labels)
    modalities = list(cfg.fusion.modalities)
    data = {split: [PaddedSplit.build(f.splits[split], modalities, cfg.fusion.max_speakers, device) for f in features]
            for split in SPLITS}
    dims = features[0].dims()
    bundle = SeedBundle(cfg.fusion, len(labels), {m: dims[m] for m in modalities}, seeds, device)
    optimizer = build_optimizer(bundle, cfg)
    steps_per_epoch = math.ceil(len(data["train"][0]) / cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(round(cfg.train.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, total_steps))
    shufflers = [torch.Generator().manual_seed(seed) for seed in seeds]  # as train_stage2: batch order only

    done, best, history, failures = 0, [None] * len(seeds), [[] for _ in seeds], {}
    if resume_state is not None:
        if list(resume_state["seeds"]) != seeds:
            raise ConfigError(f"resume state of seeds {list(resume_state['seeds'])} given to a bundle of {seeds}")
        model_state, optimizer_state = bundle.portable(resume_state["model"], resume_state["optimizer"])
        bundle.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(resume_state["scheduler"])
        done = int(resume_state["epoch"])
        best, history = copy.deepcopy(list(resume_state["best"])), copy.deepcopy(list(resume_state["history"]))
        failures = {int(s): str(r) for s, r in resume_state["failures"].items()}
        for g, state in zip(shufflers, resume_state["rng"]["shuffle"]):
            g.set_state(state)
        for g, state in zip(bundle.generators, resume_state["rng"]["dropout"]):
            g.set_state(state)

    for epoch in range(done + 1, cfg.train.epochs + 1):
        if len(failures) == len(seeds):
            break
        train_losses = _train_epoch(cfg, bundle, data["train"], optimizer, scheduler, shufflers, epoch, failures)
        dev = evaluate_bundle(cfg, bundle, data["dev"], labels)
        test = evaluate_bundle(cfg, bundle, data["test"], labels)
        per_seed = {}
        for s, seed in enumerate(seeds):
            if seed in failures:
                continue
            best[s] = _select(best[s], epoch, dev[s], test[s], cfg.train.select_on)
            history[s].append(epoch_report(epoch, train_losses[s], dev[s], test[s], best[s], labels))
            per_seed[seed] = dict(history[s][-1])
        if on_epoch is not None:
            model_state, optimizer_state = bundle.portable(bundle.state_dict(), optimizer.state_dict())
            state = {"epoch": epoch, "seeds": list(seeds), "model": _cpu_copy(model_state),
                     "optimizer": _cpu_copy(optimizer_state), "scheduler": _cpu_copy(scheduler.state_dict()),
                     "best": copy.deepcopy(best), "history": copy.deepcopy(history), "failures": dict(failures),
                     "rng": {"shuffle": _generator_states(shufflers), "dropout": _generator_states(bundle.generators)},
                     "config_hash": cfg.content_hash(exclude=("seed", "train.device", "train.checkpoint_interval_s"))}
            on_epoch(per_seed, state)

    if len(failures) == len(seeds):
        raise DivergedError(failures[seeds[0]])
    n_parameters = count_parameters(bundle) // len(seeds)
    info = {"device": str(device), "steps_per_epoch": str(steps_per_epoch), "anchor": bundle.anchor_modality,
            "bundle": ",".join(map(str, seeds))}
    results = {seed: Stage2Result(metrics=dict(history[s][-1]) if history[s] else {}, history=history[s],
                                  labels=labels, n_parameters=n_parameters, info=dict(info))
               for s, seed in enumerate(seeds) if seed not in failures}
    return BundleResult(results=results, failures=failures)
