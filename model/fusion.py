"""Stage 2 of MAGTKD: the anchor gated transformer over the utterances of a dialogue.

Reads bottom-up: positions and speakers, attention, one transformer layer, a gate, a path (the
authors' `TransformerEncoder`), a gated block (one target attending to several sources), then
the two fusion models and the stage-2 loss.

Shapes: B dialogues, T utterances (padded), W = fusion.width, C classes.
`mask` (B, T) is True at real utterances; `present[m]` (B, T) is True where modality m exists.
Attention keys of modality m are `mask & present[m]` (a branch's output keeps its modality's key
mask when the anchor attends to it), so a missing clip (zeros) is never attended to as if it were
real, and padding never changes the outputs at real positions.

Anchor and branches. The anchor is text when text is among `fusion.modalities`, else the first
present of audio, video. Every other present modality gets a branch: it attends to itself and to
each other present modality; the anchor attends to itself and to each branch's output. So
`text,audio` builds the audio branch (audio <- audio, text) and the anchor (text <- text,
audio-branch); `audio,video` makes audio the anchor and builds only the video branch. Heads:
"anchor" plus one per branch modality ("audio", "video"); the prediction is the anchor's.

Attention mask: padded keys are masked out (-1e9 on the padded path, a boolean key mask in
`scaled_dot_product_attention` on the packed one), then a plain softmax. This is what the authors' current code
computes (commit fd5adc6, 2025-11-19); with weights copied across, this model's stage-2 logits equal
theirs within 4.5e-7 (float32) at real positions, loss and gradients included. Only their first public
commit (96af1e3) had an inverted mask with softmax(relu(scores)).

Speaker ids (a difference from the authors, on purpose): they index speakers with corpus-global MELD
ids, and their padding index 2 is a real speaker whose embedding never trains. Here speakers are
numbered within each dialogue by order of first appearance (`Dialogue.speaker_indices`), and padding
has its own index `max_speakers`.

Packed rows (the default, `build_fusion(..., packed=True)`). About half of a padded MELD batch is
padding, so every position-wise layer (projections, feed-forward, gates, LayerNorm, heads) runs on
the N real utterances only, as an (N, W) tensor (`PackedRows`); only attention scatters them back
to the (B, H, T, hd) grid, for `F.scaled_dot_product_attention` with the key mask. packed=False
runs the padded (B, T, W) path with the hand-written attention: the oracle the parity test compares
against (same parameters, same outputs at real positions within float rounding). The packed model
also draws its dropout masks more cheaply (`CheapDropout`, `keep_mask`); the oracle keeps nn.Dropout.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import FusionConfig
from model.distill import feature_similarity_loss, logit_relation_loss

STAGE2_TAU = 2.0           # logit-relation temperature of the authors' stage 2 (their Logit_Loss default)
STAGE2_FEATURE_T = 1.0     # feature-similarity temperature (their Feature_Loss default)
MASK_FILL = -1e9           # what padded / absent key scores are set to before the softmax


# ---- packed rows ---------------------------------------------------------------------------------

def _cpu_vector_floats() -> int:
    """Floats per SIMD vector of the CPU kernels torch dispatched to (AVX-512: 16, AVX2 and below: 8)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """x.softmax(dim=-1), a few times faster on a CPU when the last dimension is shorter than one vector.

    torch's CPU softmax (forward and backward) takes a scalar loop when the dimension is shorter than a
    SIMD vector: 17 ns per element at a dialogue's 14 keys against 1 ns at 16 on an AVX-512 host. Padding
    the keys with -inf to one vector gives the same probabilities (exp(-inf) = 0) within float rounding
    (benchmarks/RESULTS.md: Softmax over short dialogues).
    """
    t, vector = x.shape[-1], _cpu_vector_floats() if x.device.type == "cpu" else 0
    if t >= vector:
        return x.softmax(dim=-1)
    return F.pad(x, (0, vector - t), value=float("-inf")).softmax(dim=-1)[..., :t]


class PackedRows:
    """The real utterances of a (B, T) batch as rows 0..N-1 (dialogue by dialogue, in order).

    pack (B, T, ...) -> (N, ...) and unpack (N, ...) -> (B, T, ...) (zeros at padding) are an
    index_select / index_copy on the flattened grid, so autograd passes gradients straight through.
    """

    def __init__(self, mask: torch.Tensor, copies: int = 1, index: torch.Tensor | None = None):
        self.mask = mask
        self.copies = copies                                                            # > 1: `stacked` batches
        self.shape = tuple(mask.shape)                                                  # (B, T)
        # (N,) flat grid index; given (built from lengths on the host), no nonzero() waits for the device
        self.index = mask.reshape(-1).nonzero().squeeze(1) if index is None else index
        self.dialogue = self.index // self.shape[1]                                     # (N,) dialogue of each row
        self.position = self.index % self.shape[1]                                      # (N,) place in its dialogue
        self._masks: dict[tuple, tuple] = {}                                            # attention masks by key mask, dtype

    def stacked(self, copies: int) -> "PackedRows":
        """The rows of `copies` such batches one after another (the batch repeated copies times)."""
        offsets = torch.arange(copies, device=self.index.device)[:, None] * self.mask.numel()   # (copies, 1)
        return PackedRows(self.mask.repeat(copies, 1), copies, index=(self.index[None, :] + offsets).reshape(-1))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape((-1,) + tuple(x.shape[2:])).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        b, t = self.shape
        grid = x.new_zeros((b * t,) + tuple(x.shape[1:])).index_copy(0, self.index, x)
        return grid.view((b, t) + tuple(x.shape[1:]))

    def attend(self, q, k, v, key_mask, heads: int, dropout: nn.Module | None = None) -> torch.Tensor:
        """Multi-head attention of packed rows: q, k, v (N, W), key_mask (B, T) -> context (N, W).

        Without attention dropout (None) all N rows attend in one (1, H, N, N) product whose mask
        allows a key only within the query's own dialogue and only where `key_mask` is True: a few
        more flops than the padded (B, H, T, T) grid at MELD's dialogue lengths, but no scatter to and
        gather from that grid. With `dropout` (training) the probabilities get a random mask each,
        and stacked batches would make the product `copies` squared times larger, so there the rows go
        to the smaller grid instead.
        """
        n, w = q.shape
        if dropout is not None or self.copies > 1:
            return self._attend_on_grid(q, k, v, key_mask, heads, dropout)
        scores_bias, keep = self._attention_mask(key_mask, q.dtype)
        # (1, H, N, hd): the 4-d layout is what CPU flash attention accepts
        q, k, v = (x.view(1, n, heads, w // heads).transpose(1, 2) for x in (q, k, v))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=scores_bias)
        context = context.transpose(1, 2).reshape(n, w)
        return context if keep is None else context * keep

    def _attend_on_grid(self, q, k, v, key_mask, heads: int, dropout: nn.Module | None) -> torch.Tensor:
        b, t = self.shape
        w = q.shape[-1]
        grid = self.unpack(torch.cat([q, k, v], dim=-1)).view(b, t, 3, heads, w // heads)
        q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)                                 # each (B, H, T, hd)
        has_key = key_mask.any(dim=-1)                                                  # (B,)
        allowed = (key_mask | ~has_key[:, None])[:, None, None, :]                      # (B, 1, 1, T)
        if dropout is None:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)         # (B, H, T, hd)
        else:
            scores = (q @ k.transpose(-2, -1)) * (w // heads) ** -0.5                   # (B, H, T, T)
            probs = softmax_last(scores.masked_fill(~allowed, float("-inf")))
            context = dropout(probs) @ v
        context = self.pack(context.transpose(1, 2).reshape(b, t, w))                  # (N, W)
        keep = self._keep(has_key, context.dtype)
        return context if keep is None else context * keep

    def _keep(self, has_key: torch.Tensor, dtype: torch.dtype):
        """(N, 1): 0 for rows of a dialogue with no real key, else 1. Always the factor, even when every
        dialogue has a key: asking the device whether they all do would make the step wait for it."""
        return has_key[self.dialogue, None].to(dtype)

    def _attention_mask(self, key_mask: torch.Tensor, dtype: torch.dtype):
        """(score bias (N, N): 0 where allowed, -inf elsewhere; keep (N, 1) or None), once per key mask and batch.

        A dialogue with no real key at all (all its clips missing) gets a zero context, as in the
        padded oracle: its own rows are allowed as keys so that no softmax row is all -inf, and
        `keep` zeroes the result. (`keep` is 1 for every other dialogue.)
        """
        cache_key = (id(key_mask), dtype)
        if cache_key not in self._masks:
            has_key = key_mask.any(dim=-1)                                              # (B,)
            key_ok = self.pack(key_mask | ~has_key[:, None])                            # (N,)
            allowed = (self.dialogue[:, None] == self.dialogue[None, :]) & key_ok[None, :]
            # an additive float mask, built here once: a bool one is converted on every call
            scores_bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))
            keep = self._keep(has_key, dtype)
            self._masks[cache_key] = (key_mask, scores_bias, keep)  # key_mask kept alive: its id stays unique
        return self._masks[cache_key][1:]


# ---- dropout with a cheap random mask -------------------------------------------------------------

def keep_mask(shape: tuple, p: float, device, dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """A dropout mask of `shape`: 1 / (1 - p) with probability 1 - p, else 0 (drawn from `generator`, or
    the device's global generator when None; model/seed_bundle.py gives each seed its own).

    Four 16-bit uniform draws are cut from each 64-bit random word (p exact to 1/65536): torch's CPU
    `bernoulli_`, behind nn.Dropout, draws one number per element and was 18% of a width-128 training
    step (benchmarks/RESULTS.md); this mask costs about a third of that.
    """
    return keep_from_draws(uniform16(math.prod(shape), device, generator).view(shape), p, dtype)


def uniform16(n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """n int16 draws, uniform in -32768..32767, cut four from each 64-bit random word."""
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device, generator=generator)
    return words.view(torch.int16)[:n]


def keep_from_draws(draws: torch.Tensor, p: float, dtype) -> torch.Tensor:
    """`uniform16` draws -> 1 / (1 - p) where the draw is kept, else 0."""
    threshold = round(p * 65536) - 32768
    return (draws >= threshold).to(dtype).mul_(1.0 / (1.0 - p))


class CheapDropout(nn.Module):
    """nn.Dropout with `keep_mask`: the packed model's dropout (the padded oracle keeps nn.Dropout)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.is_cuda:  # one fused kernel there; keep_mask's cut-up random words take about five
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(tuple(x.shape), self.p, x.device, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def with_cheap_dropout(model: nn.Module) -> nn.Module:
    """Every nn.Dropout inside `model` replaced by `CheapDropout` of the same p."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Dropout):
                setattr(module, name, CheapDropout(child.p))
    return model


# ---- stream inputs: positions, speakers, projection ------------------------------------------------

class SinusoidalPositions(nn.Module):
    """The fixed sine/cosine table; forward(T) -> (T, W)."""

    def __init__(self, width: int, max_len: int = 1024):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)             # (L, 1)
        div = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
        pe = torch.zeros(max_len, width)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div[: width // 2])                          # odd widths too
        self.register_buffer("pe", pe, persistent=False)  # a constant: not part of a checkpoint

    def forward(self, length: int) -> torch.Tensor:
        if length > self.pe.shape[0]:
            raise ValueError(f"dialogue of {length} utterances is longer than the position table ({self.pe.shape[0]})")
        return self.pe[:length]


class SpeakerEmbedding(nn.Module):
    """Dialogue-local speaker index -> vector; index `max_speakers` is a dedicated padding row.

    The authors pad with index 2, which is also a real speaker; a separate row cannot change the
    outputs at real positions (padded keys are masked) and keeps speaker 2 clean.
    """

    def __init__(self, max_speakers: int, width: int):
        super().__init__()
        self.table = nn.Embedding(max_speakers + 1, width, padding_idx=max_speakers)
        nn.init.normal_(self.table.weight, mean=0.0, std=0.1)
        with torch.no_grad():
            self.table.weight[max_speakers].zero_()

    def forward(self, speakers: torch.Tensor) -> torch.Tensor:
        return self.table(speakers)                                                   # (B, T, W)


class NoSpeakers(nn.Module):
    """speaker_embeddings=false: a zero that broadcasts, so the stream sum needs no branch."""

    def forward(self, speakers: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), device=speakers.device)


def projection(in_dim: int, width: int) -> nn.Module:
    """Stage-1 vectors to the fusion width (identity when they already match, as in the authors' MELD)."""
    return nn.Identity() if in_dim == width else nn.Linear(in_dim, width)


class StreamInputs(nn.Module):
    """Projects each modality, zeroes its absent rows, and builds the shared position+speaker term."""

    def __init__(self, fusion: FusionConfig, input_dims: dict[str, int]):
        super().__init__()
        self.modalities = list(fusion.modalities)
        self.padding_speaker = fusion.max_speakers
        self.project = nn.ModuleDict({m: projection(input_dims[m], fusion.width) for m in self.modalities})
        self.positions = SinusoidalPositions(fusion.width)
        self.speakers = SpeakerEmbedding(fusion.max_speakers, fusion.width) if fusion.speaker_embeddings else NoSpeakers()

    def forward(self, inputs, speakers, mask, present=None, rows: PackedRows | None = None):
        """-> streams {m: (B, T, W)}, key masks {m: (B, T) bool}, stream bias (B, T, W) = pe[:T] + speaker.

        With `rows`, streams and bias are packed (N, W); the key masks stay (B, T) for attention.
        """
        present = present or {}
        keys = {m: mask & present[m] if m in present else mask for m in self.modalities}
        if rows is not None:
            streams = {m: self.project[m](rows.pack(inputs[m])) * rows.pack(keys[m]).unsqueeze(-1).to(inputs[m].dtype)
                       for m in self.modalities}
            bias = self.positions(mask.shape[1])[rows.position] + self.speakers(rows.pack(speakers))
            return streams, keys, bias
        streams = {m: self.project[m](inputs[m]) * keys[m].unsqueeze(-1).to(inputs[m].dtype) for m in self.modalities}
        speakers = speakers.masked_fill(~mask, self.padding_speaker)
        bias = self.positions(mask.shape[1]) + self.speakers(speakers)                 # (B, T, W)
        return streams, keys, bias


# ---- attention, layer, gate ----------------------------------------------------------------------

class MultiHeadCrossAttention(nn.Module):
    """Queries from one stream, keys and values from another (the same one for self-attention)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.width = heads, width // heads, width
        # q, k and v weights stacked (3W, W): self-attention is one product and cross-attention two,
        # on slices of the parameter (views: nothing is copied per call)
        self.qkv = nn.Linear(width, 3 * width)
        for block in self.qkv.weight.data.chunk(3):
            nn.init.xavier_uniform_(block)
        nn.init.zeros_(self.qkv.bias)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, width)

    def _project(self, query: torch.Tensor, source: torch.Tensor):
        """q, k, v: one (W -> 3W) product for self-attention, (W -> W) and (W -> 2W) for cross-attention."""
        if source is query:
            return self.qkv(query).chunk(3, dim=-1)
        w, weight, bias = self.width, self.qkv.weight, self.qkv.bias
        k, v = F.linear(source, weight[w:], bias[w:]).chunk(2, dim=-1)
        return F.linear(query, weight[:w], bias[:w]), k, v

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)                 # (B, H, T, hd)

    def forward(self, query: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor,
                rows: PackedRows | None = None) -> torch.Tensor:
        if rows is not None:
            dropout = self.dropout if self.training and self.dropout.p > 0 else None
            q, k, v = self._project(query, source)
            return self.out(rows.attend(q, k, v, key_mask, self.heads, dropout))
        b, t, w = query.shape
        weight, bias = self.qkv.weight, self.qkv.bias
        q = self._split(F.linear(query, weight[:w], bias[:w])) / math.sqrt(self.head_dim)
        k = self._split(F.linear(source, weight[w:2 * w], bias[w:2 * w]))
        v = self._split(F.linear(source, weight[2 * w:], bias[2 * w:]))
        keep = key_mask[:, None, None, :]                                               # (B, 1, 1, Tk)
        scores = (q @ k.transpose(-2, -1)).masked_fill(~keep, MASK_FILL)               # (B, H, Tq, Tk)
        # A query with no real key at all (a dialogue whose clips are all missing) gets zeros,
        # not a uniform mix of padding; with any real key this product changes nothing.
        probs = scores.softmax(dim=-1) * keep
        context = (self.dropout(probs) @ v).transpose(1, 2).reshape(b, t, w)
        return self.out(context)


class FeedForward(nn.Module):
    """y + dropout(W2(dropout(gelu(W1(LN(y)))))), inner width = width, LN eps 1e-6."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.w1, self.w2 = nn.Linear(width, width), nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.dropout(self.w2(self.dropout(F.gelu(self.w1(self.norm(y))))))


class TransformerLayer(nn.Module):
    """Layer `index` of a path: [LN(query) if index > 0] -> attention -> residual -> feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float, index: int):
        super().__init__()
        # The authors normalise the query only from the second layer on; layer 0 has no norm at all.
        self.query_norm = nn.LayerNorm(width, eps=1e-6) if index > 0 else nn.Identity()
        self.attention = MultiHeadCrossAttention(width, heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.feed_forward = FeedForward(width, dropout)

    def forward(self, query, source, key_mask, rows: PackedRows | None = None, self_rows: int = 0):
        """source=None: self-attention, keys and values are the (normalised) query stream itself.
        self_rows > 0 (stacked paths, `AttentionPath.stacked`): the first self_rows query rows are a self
        path's and attend to themselves; `source` holds the keys and values of the rows after them."""
        q = self.query_norm(query)
        kv = q if source is None else source
        if self_rows:
            kv = torch.cat([q[:self_rows], source])
        return self.feed_forward(self.dropout(self.attention(q, kv, key_mask, rows)) + q)


class Gate(nn.Module):
    """g(x) = sigmoid(relu(W x)) * x (the authors' unimodal gated fusion)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def openness(self, x: torch.Tensor) -> torch.Tensor:
        """The gate's value, in [0.5, 1): relu keeps the sigmoid's input non-negative."""
        return torch.sigmoid(F.relu(self.fc(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.openness(x) * x


# ---- paths and gated blocks ----------------------------------------------------------------------

class AttentionPath(nn.Module):
    """target <- source through `layers` transformer layers (the authors' TransformerEncoder).

    Both streams get the position+speaker term. A cross path then drops out both streams; a self
    path (source=None) does not, as in the authors' code.
    """

    def __init__(self, width: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(width, heads, dropout, i) for i in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, target, source, key_mask, bias, rows: PackedRows | None = None):
        q = target + bias
        kv = None
        if source is not None:
            q, kv = self.dropout(q), self.dropout(source + bias)
        for layer in self.layers:
            q = layer(q, kv, key_mask, rows)
        return q                                                                        # (B, T, W)

    def stacked(self, target, sources, key_mask, bias, rows: PackedRows, copies: int):
        """forward() of the self path and of copies - 1 cross paths at once, on packed rows.

        target, bias (N, W); sources ((copies - 1) * N, W): the cross paths' sources stacked; key_mask
        (copies * B, T) and `rows` (rows.stacked(copies)) describe the stacked batches. -> (copies * N, W).
        """
        own = target + bias
        q = torch.cat([own, self.dropout(own.repeat(copies - 1, 1))])
        kv = self.dropout(sources + bias.repeat(copies - 1, 1))
        for layer in self.layers:
            q = layer(q, kv, key_mask, rows, self_rows=own.shape[0])
        return q


class GatedBlock(nn.Module):
    """The target attends to itself and to each source; each path output is gated; concat; reduce.

    shared=True: one path and one gate serve every source (the authors' text anchor).
    gating=False: nn.Identity() instead of every gate.
    """

    def __init__(self, n_paths: int, fusion: FusionConfig, shared: bool):
        super().__init__()
        w = fusion.width
        n_modules = 1 if shared else n_paths
        self.n_paths = n_paths
        self.paths = nn.ModuleList(AttentionPath(w, fusion.heads, fusion.layers, fusion.dropout) for _ in range(n_modules))
        self.gates = nn.ModuleList((Gate(w) if fusion.anchor_gating else nn.Identity()) for _ in range(n_modules))
        self.reduce = nn.Linear(n_paths * w, w)

    def forward(self, target, target_keys, sources, bias, rows: PackedRows | None = None):
        """sources: [(stream (B, T, W) or packed (N, W), key mask (B, T))] after the target's own self path."""
        inputs = [(None, target_keys)] + list(sources)
        if rows is not None and self.training and len(self.paths) == 1 and len(inputs) > 1:
            outs = self._stacked(target, inputs, bias, rows)
        else:
            repeat = self.n_paths // len(self.paths)  # n_paths distinct modules, or one module n_paths times
            outs = [gate(path(target, src, keys, bias, rows))
                    for path, gate, (src, keys) in zip(list(self.paths) * repeat, list(self.gates) * repeat, inputs)]
        return self.reduce(torch.cat(outs, dim=-1))                                     # (B, T, W)

    def _stacked(self, target, inputs, bias, rows: PackedRows) -> list:
        """A shared path over P inputs, packed, is one path over P stacked batches: P times fewer and
        larger kernels, the same result. Training only: there the per-kernel cost of the backward pass
        dominates small widths (+9% at width 128, +20% at 64); in evaluation the paths one by one, each
        with the block-diagonal attention, were faster (benchmarks/RESULTS.md)."""
        copies = len(inputs)
        keys = torch.cat([k for _, k in inputs])                                        # (P * B, T)
        sources = torch.cat([src for src, _ in inputs[1:]])                             # ((P - 1) * N, W)
        out = self.paths[0].stacked(target, sources, keys, bias, rows.stacked(copies), copies)
        return list(self.gates[0](out).chunk(copies))                                   # P x (N, W)


# ---- the fusion models ---------------------------------------------------------------------------

def anchor_modality(modalities: list[str]) -> str:
    """Text when present, else the first present of audio, video."""
    return "text" if "text" in modalities else [m for m in ("audio", "video") if m in modalities][0]


class AnchorGatedTransformer(nn.Module):
    """MAGTKD stage 2: modality branches, then the anchor attending to itself and to the branches."""

    def __init__(self, fusion: FusionConfig, num_classes: int, input_dims: dict[str, int], packed: bool = True):
        super().__init__()
        self.packed = packed  # False: the padded oracle (module docstring)
        self.modalities = list(fusion.modalities)
        self.anchor_modality = anchor_modality(self.modalities)
        self.branch_modalities = [m for m in self.modalities if m != self.anchor_modality]
        self.inputs = StreamInputs(fusion, input_dims)
        self.branches = nn.ModuleDict({m: GatedBlock(len(self.modalities), fusion, shared=False)
                                       for m in self.branch_modalities})
        self.anchor = GatedBlock(1 + len(self.branch_modalities), fusion, shared=fusion.shared_anchor_layers)
        self.heads = nn.ModuleDict({h: nn.Linear(fusion.width, num_classes) for h in ["anchor"] + self.branch_modalities})
        if packed:
            with_cheap_dropout(self)

    def forward(self, inputs, speakers, mask, present=None, rows_index=None):
        """inputs {m: (B, T, D_m)}, speakers (B, T) int, mask (B, T) bool, present {m: (B, T) bool},
        rows_index (N,) the flat index of the real positions when the caller has it (no device sync).

        -> {"logits": {head: (B, T, C)}, "features": {head: (B, T, W)}, "prediction": "anchor"}
        Packed or not, outputs are padded (B, T, ...); packed ones are zero at padding.
        """
        rows = PackedRows(mask, index=rows_index) if self.packed else None
        streams, keys, bias = self.inputs(inputs, speakers, mask, present, rows)
        features = {}
        for m in self.branch_modalities:
            others = [(streams[o], keys[o]) for o in self.modalities if o != m]
            features[m] = self.branches[m](streams[m], keys[m], others, bias, rows)
        a = self.anchor_modality
        features["anchor"] = self.anchor(streams[a], keys[a], [(features[m], keys[m]) for m in self.branch_modalities],
                                         bias, rows)
        logits = {h: self.heads[h](f) for h, f in features.items()}
        if rows is not None:
            logits = {h: rows.unpack(z) for h, z in logits.items()}
            features = {h: rows.unpack(f) for h, f in features.items()}
        return {"logits": logits, "features": features, "prediction": "anchor"}


class ConcatFusion(nn.Module):
    """fusion.mode=concat baseline: per-modality projection + positions/speakers, concat, Linear, classifier."""

    def __init__(self, fusion: FusionConfig, num_classes: int, input_dims: dict[str, int]):
        super().__init__()
        self.modalities = list(fusion.modalities)
        self.inputs = StreamInputs(fusion, input_dims)
        self.dropout = nn.Dropout(fusion.dropout)
        self.reduce = nn.Linear(len(self.modalities) * fusion.width, fusion.width)
        self.heads = nn.ModuleDict({"anchor": nn.Linear(fusion.width, num_classes)})

    def forward(self, inputs, speakers, mask, present=None):
        streams, _, bias = self.inputs(inputs, speakers, mask, present)
        fused = self.reduce(torch.cat([self.dropout(streams[m] + bias) for m in self.modalities], dim=-1))
        return {"logits": {"anchor": self.heads["anchor"](fused)}, "features": {"anchor": fused}, "prediction": "anchor"}


def build_fusion(fusion: FusionConfig, num_classes: int, input_dims: dict[str, int], packed: bool = True) -> nn.Module:
    """The stage-2 model for `fusion.mode` (anchor | concat); packed=False: the padded oracle of the anchor model."""
    if fusion.mode == "concat":
        return ConcatFusion(fusion, num_classes, input_dims)
    return AnchorGatedTransformer(fusion, num_classes, input_dims, packed=packed)


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a shared anchor layer counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- the stage-2 loss ----------------------------------------------------------------------------

def branch_kd_loss(terms, logits, feats, teacher_logits, teacher_feats, labels) -> torch.Tensor:
    """Sum of the chosen KD terms for one branch; rows are real utterances: (N, C), (N, W), (N,)."""
    loss = logits.new_zeros(())
    if "ce" in terms:
        loss = loss + F.cross_entropy(logits, labels)
    if "logit" in terms:
        loss = loss + logit_relation_loss(logits, teacher_logits, STAGE2_TAU)
    if "feature" in terms:
        loss = loss + feature_similarity_loss(feats, teacher_feats, STAGE2_FEATURE_T)
    return loss


def stage2_loss(cfg, outputs: dict, labels: torch.Tensor, mask: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """CE(anchor) + a * KD(audio branch) + b * KD(video branch), over real positions only.

        KD(branch) = sum over fusion.kd_terms of
            ce      : CE(branch logits, labels)
            logit   : logit_relation_loss(branch logits, anchor logits, tau=2)
            feature : feature_similarity_loss(branch features, anchor features, t=1)
        a = fusion.kd_audio_weight, b = fusion.kd_video_weight (a head that is not built is skipped;
        a zero weight skips the term, so 0 * NaN cannot happen). The anchor is the teacher and is
        not detached unless fusion.detach_anchor (the authors do not detach it).
    `cfg` is a MAGTKDConfig or its FusionConfig; labels (B, T) int; mask (B, T) bool; rows (N,) the flat
    index of the True positions of mask, when known (then no boolean-mask gather waits for the device).
    """
    fusion = getattr(cfg, "fusion", cfg)
    if rows is None:
        def real(x):
            return x[mask]
    else:
        def real(x):
            return x.reshape((-1,) + tuple(x.shape[2:])).index_select(0, rows)
    y = real(labels)                                                                    # (N,)
    logits = {h: real(z) for h, z in outputs["logits"].items()}                         # (N, C)
    feats = {h: real(f) for h, f in outputs["features"].items()}                        # (N, W)
    teacher_logits, teacher_feats = logits["anchor"], feats["anchor"]
    if fusion.detach_anchor:
        teacher_logits, teacher_feats = teacher_logits.detach(), teacher_feats.detach()
    loss = F.cross_entropy(logits["anchor"], y)
    for head, weight in (("audio", fusion.kd_audio_weight), ("video", fusion.kd_video_weight)):
        if head in logits and weight > 0 and fusion.kd_terms:
            loss = loss + weight * branch_kd_loss(fusion.kd_terms, logits[head], feats[head],
                                                  teacher_logits, teacher_feats, y)
    return loss
