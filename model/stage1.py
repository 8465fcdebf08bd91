"""Stage 1: train the per-utterance encoders and turn every utterance into vectors for stage 2.

    features = run_stage1(cfg, dataset, log=print)   # -> core.features.Stage1Features

Order: the text model first (cross-entropy, best dev weighted-F1 epoch kept); then audio and
video, each either a student distilled from the frozen text teacher (`stage1.kd`) or a plain
encoder; finally every split is encoded. A modality missing for some utterances is trained on the
rest and gets present=False and a zero row there; a modality missing everywhere is not trained.

Reads bottom-up: batching and metrics, one generic training loop, then the three modalities.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.schema import SPLITS, DataError, DialogueDataset, MediaRef, Utterance
from core.config import MAGTKDConfig
from core.environment import fix_mmap_threshold
from model.distill import feature_similarity_loss, logit_relation_loss
from model.encoder_ids import describe_encoders
from model.encoders import (AudioEncoder, FeatureEncoder, VideoEncoder, build_audio_encoder, build_text_encoder,
                            build_video_encoder, normalise_waveform, stack_waveforms)
from core.features import SplitFeatures, Stage1Features
from model.metrics import weighted_f1
from model.runtime import autocast, grad_scaler, resolve_device, resolved_precision, seed_everything

Log = Callable[[str], None]
# A batch maker: row indices of one split -> the encoder's positional inputs (CPU tensors).
Batcher = Callable[[Sequence[int]], tuple]
# Inference batches are larger than training ones: no activations are kept for backward.
EVAL_BATCH_FACTOR = 8
MIN_EVAL_BATCH = 32
# An audio evaluation batch holds at most this many seconds of padded waveform (rows sorted by length first):
# data2vec's first convolution alone needs about 8.6 GB for 32 clips of 40 s; 160 s costs about 1 GB.
MAX_EVAL_AUDIO_SECONDS = 160.0
# A video evaluation batch holds at most this many frames x pixels as the encoder sees them (after fit_clip):
# 32 frames of 224 x 224, i.e. four 8-frame clips. The tiny test encoder (patch 8: 784 tokens per frame) needs
# about 160 MB per such clip in inference, so 64 clips at once (8 x batch_size) took a stage-1 task to 10.7 GB.
MAX_EVAL_VIDEO_FRAME_PIXELS = 32 * 224 * 224


def seed_for(seed: int, part: str) -> int:
    """A stable per-part seed, so e.g. switching KD off does not change the text model's draws."""
    return zlib.crc32(f"{seed}/{part}".encode())


# ---- the dataset, flattened per split -------------------------------------------------------------

@dataclass
class SplitTable:
    """One split as flat rows (one per utterance, dialogue order) plus its dialogue structure."""
    utterances: list[Utterance]
    dialogues: list[tuple[list[str], list[int]]]   # (texts, dialogue-local speakers) per dialogue
    labels: torch.Tensor                            # (N,) int64
    speakers: torch.Tensor                          # (N,) int64
    lengths: list[int]


def split_tables(dataset: DialogueDataset, max_speakers: int) -> dict[str, SplitTable]:
    tables = {}
    for split in SPLITS:
        utterances, dialogues, speakers, lengths = [], [], [], []
        for dialogue in dataset.splits.get(split, []):
            local = dialogue.speaker_indices(max_speakers)
            utterances.extend(dialogue.utterances)
            dialogues.append(([u.text or "" for u in dialogue.utterances], local))
            speakers.extend(local)
            lengths.append(len(dialogue.utterances))
        labels = torch.tensor([u.label for u in utterances], dtype=torch.long)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(dataset.labels)):
            bad = next(u for u in utterances if not 0 <= u.label < len(dataset.labels))
            raise DataError(f"{dataset.source or dataset.name}: utterance '{bad.utterance_id}' of split {split} "
                            f"has label {bad.label}, outside 0..{len(dataset.labels) - 1}")
        tables[split] = SplitTable(utterances, dialogues, labels, torch.tensor(speakers, dtype=torch.long), lengths)
    if not tables["train"].utterances:
        raise DataError(f"{dataset.source or dataset.name}: the train split has no utterances")
    return tables


# ---- metrics and inference -----------------------------------------------------------------------

def to_device(inputs: tuple, device: torch.device) -> tuple:
    return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)


def batches_of(batcher: Batcher, chunks: list[list[int]]):
    """(chunk, inputs) for each chunk of rows; a batcher that reads clips (MediaBatcher) reads ahead."""
    if hasattr(batcher, "batches"):
        return batcher.batches(chunks)
    return ((chunk, batcher(chunk)) for chunk in chunks)


def eval_batches(rows: Sequence[int], batch_size: int, order_key: Optional[Callable[[int], int]] = None,
                 max_padded: Optional[int] = None) -> list[list[int]]:
    """Positions into `rows`, cut into evaluation batches: sorted by `order_key` (e.g. token count or
    waveform length) so a batch pads little, at most `batch_size` rows, and, with `max_padded`, at most that
    many padded units (rows x the batch's longest key): long clips come in smaller batches."""
    order = sorted(range(len(rows)), key=lambda i: order_key(rows[i])) if order_key else list(range(len(rows)))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (
                max_padded is None or order_key is None or (len(batches[-1]) + 1) * order_key(rows[i]) <= max_padded):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def own_copy(output: torch.Tensor) -> torch.Tensor:
    """A model's per-batch output as a float32 CPU tensor with a storage of its own. An encoder's vector can be a
    view: with hidden size == width the head's projection is the identity and the vector is the CLS row of the
    whole last hidden state (B, 1 + T*patches, H). Kept as such until predict's concatenation, each batch held all
    of it: 0.19 MB per clip for the benchmark's tiny video encoder, a stage-1 task's peak 144 MB higher at 1,000
    clips than at 100 (benchmarks/RESULTS.md, issue 26). `.float().cpu()` alone returns that same view on a CPU."""
    return output.float().cpu().clone(memory_format=torch.contiguous_format)


def predict(model: nn.Module, batcher: Batcher, rows: Sequence[int], batch_size: int, device: torch.device,
            order_key: Optional[Callable[[int], int]] = None, grad_free=torch.inference_mode,
            precision: str = "fp32", max_padded: Optional[int] = None):
    """(vectors (N, D), logits (N, C)) on the CPU for `rows`, in eval mode and without autograd.

    `order_key` (e.g. token count) groups similar rows into a batch to cut padding, `max_padded` caps a
    batch's padded size (`eval_batches`); results come back in the order of `rows`.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("predict() needs at least one row")
    batches = eval_batches(rows, batch_size, order_key, max_padded)
    order = [i for batch in batches for i in batch]
    model.eval()
    vecs, logits = [], []
    chunks = [[rows[i] for i in batch] for batch in batches]
    with grad_free(), autocast(precision, device):
        for _, inputs in batches_of(batcher, chunks):
            v, z = model(*to_device(inputs, device))
            vecs.append(own_copy(v))
            logits.append(own_copy(z))
    # Concatenated outside inference mode: ordinary tensors, usable as stage-2 inputs under autograd.
    vec, logit = torch.cat(vecs), torch.cat(logits)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return vec[inverse].clone(), logit[inverse].clone()


# ---- distillation --------------------------------------------------------------------------------

@dataclass
class TeacherTargets:
    """The frozen teacher's outputs for training rows, computed once (the teacher never changes)."""
    rows: torch.Tensor      # (N,) row indices into the train split
    vectors: torch.Tensor   # (N, width)
    logits: torch.Tensor    # (N, C)

    def take(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.position[torch.as_tensor(list(rows), dtype=torch.long)]
        return self.vectors[index], self.logits[index]

    def __post_init__(self):
        self.position = torch.full((int(self.rows.max()) + 1 if len(self.rows) else 1,), -1, dtype=torch.long)
        self.position[self.rows] = torch.arange(len(self.rows))


def teacher_targets(teacher: nn.Module, batcher: Batcher, rows: Sequence[int], batch_size: int,
                    device: torch.device, order_key=None, precision: str = "fp32") -> TeacherTargets:
    """Freeze the teacher (eval mode, requires_grad False) and record its outputs under no_grad."""
    teacher.requires_grad_(False)
    vec, logits = predict(teacher, batcher, rows, batch_size, device, order_key, grad_free=torch.no_grad,
                          precision=precision)
    return TeacherTargets(torch.as_tensor(list(rows), dtype=torch.long), vec, logits)


def student_loss(vector: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                 teacher_vector: Optional[torch.Tensor], teacher_logits: Optional[torch.Tensor],
                 stage1) -> torch.Tensor:
    """CE, plus (with a teacher) w_logit x logit-relation + w_feat x feature-similarity."""
    loss = F.cross_entropy(logits, labels)
    if teacher_logits is not None:

        if stage1.kd_logit_weight > 0:
            loss = loss + stage1.kd_logit_weight * logit_relation_loss(logits, teacher_logits, stage1.kd_temperature)
        if stage1.kd_feature_weight > 0:
            loss = loss + stage1.kd_feature_weight * feature_similarity_loss(vector, teacher_vector,
                                                                             stage1.feature_temperature)
    return loss


# ---- one training loop for every encoder ---------------------------------------------------------

@dataclass
class FitResult:
    best_epoch: int          # 0 = no training (epochs=0)
    best_dev_wf1: float      # nan when nothing was selected on dev
    best_dev_acc: float
    seconds: float
    best_test_wf1: float = float("nan")   # at the kept epoch; nan without test rows
    best_test_acc: float = float("nan")


def fit(name: str, model: nn.Module, stage1, train: tuple[Batcher, Sequence[int], torch.Tensor],
        dev: tuple[Batcher, Sequence[int], torch.Tensor], num_classes: int, device: torch.device,
        generator: torch.Generator, log: Log, teacher: Optional[TeacherTargets] = None,
        order_key=None, test: Optional[tuple[Batcher, Sequence[int], torch.Tensor]] = None,
        test_order_key=None, max_padded: Optional[int] = None) -> FitResult:
    """AdamW + CE (+ KD terms against fixed teacher targets), gradient clipping, and the weights of
    the best dev weighted-F1 epoch restored at the end (the last epoch when dev has no rows).

    `train`/`dev`/`test` are (batcher, row indices, labels of all rows of that split). Test scores are
    logged every epoch beside dev (a KD ablation asks how good each stage-1 model was), never used to select.
    """
    start = time.perf_counter()
    if test is not None and not len(test[1]):
        test = None
    batcher, rows, labels = train
    dev_batcher, dev_rows, dev_labels = dev
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage1.lr)
    scaler = grad_scaler(stage1.precision, device)   # passes through unless fp16
    eval_batch = max(stage1.batch_size * EVAL_BATCH_FACTOR, MIN_EVAL_BATCH)
    best = FitResult(0, float("nan"), float("nan"), 0.0)
    best_state = None
    for epoch in range(1, stage1.epochs + 1):
        model.train()
        order = rows[torch.randperm(len(rows), generator=generator)]
        total, count = 0.0, 0
        for chunk, inputs in batches_of(batcher, [c.tolist() for c in order.split(stage1.batch_size)]):
            t_vec, t_logits = (None, None)
            if teacher is not None:
                t_vec, t_logits = (t.to(device) for t in teacher.take(chunk))
            with autocast(stage1.precision, device):
                vector, logits = model(*to_device(inputs, device))
                loss = student_loss(vector, logits, labels[chunk].to(device), t_vec, t_logits, stage1)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage1 {name}: loss became {loss.item()} in epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, stage1.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            total += loss.item() * len(chunk)
            count += len(chunk)
        message = f"stage1 {name}: epoch {epoch}/{stage1.epochs} train loss {total / max(count, 1):.4f}"
        if len(dev_rows):
            wf1, acc = _scores(model, dev, eval_batch, device, order_key, stage1.precision, max_padded)
            message += f" dev wF1 {wf1:.4f} acc {acc:.4f}"
            test_wf1, test_acc = float("nan"), float("nan")
            if test is not None:
                test_wf1, test_acc = _scores(model, test, eval_batch, device, test_order_key, stage1.precision,
                                             max_padded)
                message += f" test wF1 {test_wf1:.4f} acc {test_acc:.4f}"
            if best_state is None or wf1 > best.best_dev_wf1:
                best = FitResult(epoch, wf1, acc, 0.0, test_wf1, test_acc)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(message + f" ({time.perf_counter() - start:.1f}s)")
    if best_state is not None:
        model.load_state_dict(best_state)
        log(f"stage1 {name}: kept epoch {best.best_epoch} (dev wF1 {best.best_dev_wf1:.4f})")
    elif stage1.epochs:
        best.best_epoch = stage1.epochs
    best.seconds = time.perf_counter() - start
    return best


def _scores(model: nn.Module, split: tuple[Batcher, Sequence[int], torch.Tensor], batch_size: int,
            device: torch.device, order_key=None, precision: str = "fp32",
            max_padded: Optional[int] = None) -> tuple[float, float]:
    """(weighted F1, accuracy) of the model on a split's rows."""
    batcher, rows, labels = split
    _, logits = predict(model, batcher, rows, batch_size, device, order_key, precision=precision,
                        max_padded=max_padded)
    target = labels[list(rows)]
    predicted = logits.argmax(1)
    return weighted_f1(target.cpu().numpy(), predicted.cpu().numpy()), float((predicted == target).float().mean())


# ---- modalities ------------------------------------------------------------------------------------

@dataclass
class ModalityOutput:
    """One modality's vectors for every split (zero rows where absent) and a summary for `info`."""
    vectors: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    info: dict[str, str]


def vector_batcher(matrix: torch.Tensor) -> Batcher:
    return lambda rows: (matrix[list(rows)],)


def run_text(cfg: MAGTKDConfig, dataset: DialogueDataset, tables: dict[str, SplitTable], device, log: Log):
    """Train the text model; return (its outputs, a function giving the frozen teacher's targets)."""
    s1 = cfg.stage1
    generator = seed_everything(seed_for(cfg.stage1_seed, "text"))
    train_texts = [u.text or "" for u in tables["train"].utterances]
    encoder = build_text_encoder(s1, train_texts, len(dataset.labels), cfg.fusion.max_speakers).to(device)
    ids = {split: encoder.inputs(t.dialogues) for split, t in tables.items()}
    eval_batch = max(s1.batch_size * EVAL_BATCH_FACTOR, MIN_EVAL_BATCH)
    lengths = {split: [len(x) for x in seqs] for split, seqs in ids.items()}
    log(f"stage1 text: {s1.text_encoder} encoder, prompt {'on' if s1.prompt else 'off'}, "
        f"{'fine-tuned' if s1.finetune_text else 'frozen backbone'}, "
        f"tokens per input mean {np.mean(lengths['train']):.0f} max {max(lengths['train'])}")

    if s1.finetune_text:
        model: nn.Module = encoder
        batchers = {split: (lambda seqs: (lambda rows: encoder.collate([seqs[i] for i in rows])))(seqs)
                    for split, seqs in ids.items()}
        keys = {split: (lambda ls: (lambda i: ls[i]))(ls) for split, ls in lengths.items()}
    else:
        # The backbone never changes: run it once over every utterance, then train the head alone.
        encoder.backbone.requires_grad_(False)
        hidden_model = _Pooled(encoder.backbone)
        hidden = {}
        for split, seqs in ids.items():
            if seqs:
                hidden[split], _ = predict(hidden_model, lambda rows, s=seqs: encoder.collate([s[i] for i in rows]),
                                           range(len(seqs)), eval_batch, device, lambda i, s=seqs: len(s[i]),
                                           precision=s1.precision)
            else:
                hidden[split] = torch.zeros(0, encoder.backbone.hidden_size)
        model = encoder.head
        batchers = {split: vector_batcher(h) for split, h in hidden.items()}
        keys = {split: None for split in ids}

    num_classes = len(dataset.labels)
    result = fit("text", model, s1, (batchers["train"], range(len(ids["train"])), tables["train"].labels),
                 (batchers["dev"], range(len(ids["dev"])), tables["dev"].labels), num_classes, device,
                 generator, log, order_key=keys["dev"],
                 test=(batchers["test"], range(len(ids["test"])), tables["test"].labels), test_order_key=keys["test"])
    vectors = {}
    for split, seqs in ids.items():
        vectors[split] = (predict(model, batchers[split], range(len(seqs)), eval_batch, device, keys[split],
                                  precision=s1.precision)[0] if seqs else torch.zeros(0, s1.width))
    present = {split: torch.ones(len(seqs), dtype=torch.bool) for split, seqs in ids.items()}
    info = {"text_best_epoch": str(result.best_epoch), "text_dev_wf1": f"{result.best_dev_wf1:.4f}",
            "text_dev_acc": f"{result.best_dev_acc:.4f}", "text_test_wf1": f"{result.best_test_wf1:.4f}",
            "text_test_acc": f"{result.best_test_acc:.4f}", "text_seconds": f"{result.seconds:.1f}"}
    # Only a KD student needs the teacher's outputs; they are computed now, so that the text model, its last
    # gradients and (fit's) best-epoch copy are all freed before the students train: on a GPU, about 2.8 GB of
    # gradients alone for RoBERTa-large. The students see fixed targets (CPU tensors), never the model.
    targets = (teacher_targets(model, batchers["train"], range(len(ids["train"])), eval_batch, device,
                               keys["train"], s1.precision) if _needs_teacher(cfg, tables) else None)
    model.zero_grad(set_to_none=True)
    # Nothing returned refers to the model (the closure holds `targets` only): run_stage1 frees it on return.
    return ModalityOutput(vectors, present, info), (lambda: targets)


def _needs_teacher(cfg: MAGTKDConfig, tables: dict[str, SplitTable]) -> bool:
    """Whether some KD student will train: stage1.kd on and a distilled modality present in training."""
    s1 = cfg.stage1
    if not s1.kd:
        return False
    for modality in s1.kd_modalities:
        field = media_of(modality, s1.audio_encoder if modality == "audio" else s1.video_encoder)
        if any(field(u) is not None for u in tables["train"].utterances):
            return True
    return False


def release_device_memory(device: torch.device) -> None:
    """Hand memory freed by Python back to the device (the caching allocator keeps it otherwise)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Pooled(nn.Module):
    """Adapts the text backbone to predict()'s (vector, logits) convention (logits unused)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(input_ids, attention_mask)
        return hidden, hidden[:, :1]


def media_of(modality: str, encoder_name: str):
    """The utterance field that carries this modality for this encoder kind: an array, or for audio and
    video a reference into the media store (core.schema.MediaRef)."""
    if encoder_name == "features":
        return (lambda u: u.audio_features) if modality == "audio" else (lambda u: u.video_features)
    return (lambda u: u.audio) if modality == "audio" else (lambda u: u.video)


def as_array(value) -> np.ndarray:
    """An in-memory array as it is; a media-store reference read (float32)."""
    return value.load() if isinstance(value, MediaRef) else value


class DirectReader:
    """Reads rows' arrays in this process. pipeline.media_loader.StoreReader has the same two methods
    and reads clips of the media store ahead in DataLoader workers."""

    def __init__(self, values: list):
        self.values = values

    def load(self, rows: Sequence[int]) -> list[np.ndarray]:
        return [as_array(self.values[i]) for i in rows]

    def batches(self, chunks: list[list[int]]):
        return (self.load(chunk) for chunk in chunks)


# values of one split (arrays or MediaRefs, one per row) -> a reader with load(rows) and batches(chunks)
MediaReader = Callable[[list], DirectReader]


class MediaBatcher:
    """Rows -> the encoder's tensors, built per batch from a reader (no copy of the whole split is kept)."""

    def __init__(self, encoder: nn.Module, reader, sample_rate: int):
        self.encoder, self.reader, self.sample_rate = encoder, reader, sample_rate
        if not isinstance(encoder, (FeatureEncoder, AudioEncoder, VideoEncoder)):
            raise TypeError(f"no batcher for {type(encoder).__name__}")

    def inputs(self, arrays: list[np.ndarray]) -> tuple:
        encoder = self.encoder
        if isinstance(encoder, FeatureEncoder):
            return (torch.stack([torch.as_tensor(a, dtype=torch.float32).reshape(-1) for a in arrays]),)
        if isinstance(encoder, AudioEncoder):
            return stack_waveforms([normalise_waveform(a, self.sample_rate, encoder.sample_rate) for a in arrays])
        return (torch.stack([encoder.fit_clip(torch.as_tensor(a, dtype=torch.float32)) for a in arrays]),)

    def __call__(self, rows: Sequence[int]) -> tuple:
        return self.inputs(self.reader.load(rows))

    def batches(self, chunks: list[list[int]]):
        for chunk, arrays in zip(chunks, self.reader.batches(chunks)):
            yield chunk, self.inputs(arrays)


def check_vector_sizes(modality: str, tables: dict[str, SplitTable], field, size: int,
                       dataset: DialogueDataset) -> None:
    """Pre-extracted vectors must all have one length (they are stacked into (B, D) batches)."""
    for split, table in tables.items():
        for u in table.utterances:
            value = field(u)
            if value is not None and int(np.asarray(value).size) != size:
                raise DataError(f"{dataset.source or dataset.name}: utterance '{u.utterance_id}' of split {split} has "
                                f"a {modality} feature vector of length {np.asarray(value).size}; others have {size}")


def build_media_encoder(modality: str, s1, num_classes: int, sample) -> nn.Module:
    name = s1.audio_encoder if modality == "audio" else s1.video_encoder
    if name == "features":
        return FeatureEncoder(int(np.asarray(sample).size), num_classes, s1.width)
    if modality == "audio":
        return build_audio_encoder(s1, num_classes)
    frames = np.asarray(sample)
    if frames.ndim != 4:
        raise DataError(f"video frames must be (T, C, H, W); got shape {frames.shape}")
    return build_video_encoder(s1, num_classes, frames=frames.shape[0], size=frames.shape[2], channels=frames.shape[1])


def media_eval_order(modality: str, encoder_name: str, tables: dict[str, SplitTable], field, sample_rate: int,
                     encoder: Optional[nn.Module] = None):
    """Evaluation order of a media split: ({split: row -> size}, the cap on rows x size per batch) for
    eval_batches. Audio: size = waveform length, cap MAX_EVAL_AUDIO_SECONDS of padded audio, rows sorted so a
    batch holds clips of similar length. Video: size = frames x pixels of the clip the encoder sees (one size
    for every row), cap MAX_EVAL_VIDEO_FRAME_PIXELS. Pre-extracted vectors: (no key, no cap)."""
    if encoder_name == "features":
        return {split: None for split in tables}, None
    if modality == "video":
        if not isinstance(encoder, VideoEncoder):
            raise TypeError("the video evaluation order needs the VideoEncoder (its frame count and size)")
        frame_pixels = encoder.num_frames * encoder.size[0] * encoder.size[1]
        return {split: (lambda i: frame_pixels) for split in tables}, MAX_EVAL_VIDEO_FRAME_PIXELS

    def samples(clip) -> int:   # an in-memory waveform or a MediaRef into the media store: both know their shape
        return 0 if clip is None else int(clip.shape[0])

    keys = {split: (lambda utts: (lambda i: samples(field(utts[i]))))(t.utterances) for split, t in tables.items()}
    return keys, int(MAX_EVAL_AUDIO_SECONDS * sample_rate)


def run_media(modality: str, cfg: MAGTKDConfig, dataset: DialogueDataset, tables: dict[str, SplitTable],
              teacher: Callable[[], TeacherTargets], device, log: Log,
              media_reader: MediaReader = DirectReader) -> ModalityOutput:
    """Train audio or video (a KD student or a plain encoder) on utterances that have it; encode all."""
    s1 = cfg.stage1
    name = s1.audio_encoder if modality == "audio" else s1.video_encoder
    field = media_of(modality, name)
    present = {split: torch.tensor([field(u) is not None for u in t.utterances], dtype=torch.bool)
               for split, t in tables.items()}
    counts = ", ".join(f"{split} {int(p.sum())}/{len(p)}" for split, p in present.items())
    carrier = "pre-extracted vectors" if name == "features" else "waveforms" if modality == "audio" else "frames"
    what = f"{modality} ({carrier})"
    zeros = {split: torch.zeros(len(p), s1.width) for split, p in present.items()}
    if not bool(present["train"].any()):
        log(f"stage1 {modality}: WARNING {what} absent from every training utterance ({counts}); "
            f"not trained, masked (present=False) for stage 2")
        return ModalityOutput(zeros, {s: torch.zeros_like(p) for s, p in present.items()},
                              {f"{modality}_trained": "false", f"{modality}_coverage": counts})
    if not all(bool(p.all()) for p in present.values()):
        log(f"stage1 {modality}: WARNING {what} present for {counts} utterances; the rest are masked "
            f"(present=False, zero rows)")

    distil = s1.kd and modality in s1.kd_modalities
    generator = seed_everything(seed_for(cfg.stage1_seed, modality))
    train_rows = present["train"].nonzero().flatten().tolist()
    sample = as_array(field(tables["train"].utterances[train_rows[0]]))
    if name == "features":
        check_vector_sizes(modality, tables, field, int(np.asarray(sample).size), dataset)
    encoder = build_media_encoder(modality, s1, len(dataset.labels), sample).to(device)
    batchers = {split: MediaBatcher(encoder, media_reader([field(u) for u in t.utterances]), dataset.sample_rate)
                for split, t in tables.items()}
    label = f"{modality} {'student (KD from text)' if distil else 'encoder'}"
    log(f"stage1 {label}: {name}, {len(train_rows)} training utterances")
    own_lr = s1.audio_lr if modality == "audio" and s1.audio_lr > 0 else s1.lr   # authors' IEMOCAP audio: 5e-6
    keys, max_padded = media_eval_order(modality, name, tables, field, dataset.sample_rate, encoder)
    result = fit(label, encoder, dataclasses.replace(s1, lr=own_lr), (batchers["train"], train_rows, tables["train"].labels),
                 (batchers["dev"], present["dev"].nonzero().flatten().tolist(), tables["dev"].labels),
                 len(dataset.labels), device, generator, log, teacher=teacher() if distil else None,
                 order_key=keys["dev"], max_padded=max_padded, test_order_key=keys["test"],
                 test=(batchers["test"], present["test"].nonzero().flatten().tolist(), tables["test"].labels))
    eval_batch = max(s1.batch_size * EVAL_BATCH_FACTOR, MIN_EVAL_BATCH)
    vectors = {}
    for split, p in present.items():
        rows = p.nonzero().flatten().tolist()
        vectors[split] = zeros[split]
        if rows:
            vectors[split][rows] = predict(encoder, batchers[split], rows, eval_batch, device, keys[split],
                                           precision=s1.precision, max_padded=max_padded)[0]
    info = {f"{modality}_trained": "true", f"{modality}_kd": str(distil).lower(), f"{modality}_coverage": counts,
            f"{modality}_best_epoch": str(result.best_epoch), f"{modality}_dev_wf1": f"{result.best_dev_wf1:.4f}",
            f"{modality}_dev_acc": f"{result.best_dev_acc:.4f}", f"{modality}_test_wf1": f"{result.best_test_wf1:.4f}",
            f"{modality}_test_acc": f"{result.best_test_acc:.4f}",
            f"{modality}_seconds": f"{result.seconds:.1f}"}
    return ModalityOutput(vectors, present, info)


# ---- entry point -----------------------------------------------------------------------------------

def run_stage1(cfg: MAGTKDConfig, dataset: DialogueDataset, log: Log = print,
               media_reader: MediaReader = DirectReader) -> Stage1Features:
    """Train stage 1 with seed `cfg.stage1_seed` and encode every split (see the module docstring).
    `media_reader` reads audio and video (pipeline.media_loader gives one over the media store)."""
    start = time.perf_counter()
    fix_mmap_threshold()   # clip-sized buffers in their own mappings: peak RSS flat in the corpus size
    s1 = cfg.stage1
    device = resolve_device(cfg.train.device)
    tables = split_tables(dataset, cfg.fusion.max_speakers)
    log(f"stage1: dataset {dataset.name} ({', '.join(f'{s} {len(t.labels)}' for s, t in tables.items())} "
        f"utterances), seed {cfg.stage1_seed}, device {device}, {resolved_precision(s1.precision, device)}, "
        f"{s1.epochs} epochs")
    text, teacher = run_text(cfg, dataset, tables, device, log)
    release_device_memory(device)   # the text model, its gradients and best-epoch copy went with run_text
    outputs = {"text": text}
    for modality in ("audio", "video"):
        outputs[modality] = run_media(modality, cfg, dataset, tables, teacher, device, log, media_reader)

    splits = {}
    for split, table in tables.items():
        splits[split] = SplitFeatures(
            vectors={m: out.vectors[split].float().contiguous() for m, out in outputs.items()},
            present={m: out.present[split] for m, out in outputs.items()},
            labels=table.labels.clone(), speakers=table.speakers.clone(), dialogue_lengths=list(table.lengths))
    info = {"text_encoder": s1.text_encoder, "audio_encoder": s1.audio_encoder, "video_encoder": s1.video_encoder,
            **{f"{m}_encoder_id": text for m, text in describe_encoders(s1).items()},
            "precision": resolved_precision(s1.precision, device),
            "prompt": str(s1.prompt).lower(), "kd": str(s1.kd).lower(), "kd_modalities": ",".join(s1.kd_modalities),
            "finetune_text": str(s1.finetune_text).lower(), "epochs": str(s1.epochs), "seed": str(cfg.stage1_seed),
            "width": str(s1.width), "device": str(device), "dataset": dataset.name}
    for out in outputs.values():
        info.update(out.info)
    info["seconds"] = f"{time.perf_counter() - start:.1f}"
    log(f"stage1: done in {info['seconds']}s")
    return Stage1Features(labels=list(dataset.labels), splits=splits, info=info)
