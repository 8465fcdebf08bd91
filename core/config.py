"""One validated config object carries every MAGTKD toggle.

    cfg = load_config("ablations/demo.yaml-style dict or file", overrides=["fusion.anchor_gating=false"])
    cfg.flat()          # {"fusion.anchor_gating": False, ...} for MLflow params
    cfg.content_hash()  # stable hash of the resolved config (deduplication)
    cfg.stage1_hash()   # hash of what stage 1 depends on (the feature cache key)

Defaults follow the authors' MELD settings (DESIGN.md) unless a comment says otherwise.
Every ablation is a set of dotted overrides of this object; nothing else carries toggles.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from core.yaml_guard import YamlLimitError, check_alias_expansion, read_yaml_text

MODALITIES = ("text", "audio", "video")
MAX_SEED = 2 ** 64                # seeds go to torch.manual_seed, which takes [0, 2**64)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
ENCODER_KEYS = ("text_encoder", "audio_encoder", "video_encoder")


class ConfigError(ValueError):
    """A config problem, with the file and the full key path in the message."""


@dataclass
class DataConfig:
    name: str = "synthetic"      # synthetic | meld | iemocap | csv | features
    path: str = ""               # dataset directory or file (all but synthetic)
    mapping: str = ""            # YAML column/label mapping for name=csv
    media_dir: str = ""          # optional wav/mp4/frames directory; missing clips mask that modality
    media_store: str = ""        # dir clips are decoded to, once (made absolute; "" = <cache dir>/media: <output>/cache/media)
    media_workers: int = 0       # decode processes and stage-1 DataLoader workers (0 = one per CPU, at most 8; never more than a Ray task's CPUs)
    max_dialogues: int = 0       # keep only the first N dialogues of each split (0 = all); quick runs
    # --- synthetic generator (the embedded default) ---
    synthetic_dialogues: int = 120   # training dialogues; dev and test get a quarter each
    synthetic_test_dialogues: int = 0  # test dialogues instead of that quarter (0 = the quarter): a larger test
                                       # set shrinks the test-sampling part of a table's standard error
    synthetic_seed: int = 0          # the data are fixed by this seed, whatever the trial seed
    text_signal: float = 1.0         # strength of the emotion cue in text (planted: strongest)
    audio_signal: float = 0.6        # ... in the waveform's pitch/energy/tempo
    video_signal: float = 0.35       # ... in the frame pattern (planted: weakest)
    noise_modality: str = ""         # "" | audio | video: that modality carries no signal at all
    # Planted mechanisms, one per MAGTKD part (dialogue_data/synthetic.py); 0 = off, the data unchanged.
    context_share: float = 0.0       # prompt: share of fresh-emotion turns that are replies readable only with the turn before
    train_label_noise: float = 0.0   # stage-1 KD: share of train labels replaced at random (dev/test clean)
    corrupt_share: float = 0.0       # anchor gating: share of dialogues whose audio is a bad line (noise, random tone)
    speaker_prior: float = 0.0       # speakers: P(a fresh emotion is the speaker role's habitual one)
    sample_rate: int = 16000
    audio_seconds: float = 1.0
    frames: int = 8
    frame_size: int = 32


@dataclass
class Stage1Config:
    text_encoder: str = "tiny"       # tiny | minilm | path to a local Hugging Face checkpoint directory
    audio_encoder: str = "tiny"      # tiny | path to a Data2VecAudio checkpoint | features (pre-extracted vectors)
    video_encoder: str = "tiny"      # tiny | path to a Timesformer checkpoint | features
    prompt: bool = True              # prompt learning: context + "</s> Now <sK> feels <mask>"; off: utterance alone
    text_pooling: str = "auto"       # auto: the mask with a prompt, the first token without | mask | first | mean
    target_segment: bool = False     # prompt on: the utterance being classified (and the suffix) get segment id 1, the
                                     # context 0, so the encoder knows which turn it labels. BERT-style encoders only
                                     # (two segment types); the authors' RoBERTa has one, so off by default.
                                     # No effect with stage1.prompt=false (there is no context to tell apart)
    max_tokens: int = 512            # prompt length including the mask token (authors: last 511 + mask)
    finetune_text: bool = True       # False: frozen text encoder, only the projection/classifier train (CPU runs)
    kd: bool = True                  # distil the text teacher into audio/video students (off: plain encoders)
    kd_modalities: list = field(default_factory=lambda: ["audio", "video"])  # which get a student (authors' IEMOCAP: audio only)
    kd_logit_weight: float = 0.1     # w_logit of the logit-relation loss (authors' MELD)
    kd_feature_weight: float = 1.0   # w_feat of the feature-similarity loss
    kd_temperature: float = 2.0      # tau of the logit-relation loss
    feature_temperature: float = 1.0 # t of the feature-similarity softmax
    width: int = 768                 # width of every stage-1 vector (audio/video projected only when their hidden size differs)
    tiny_hidden: int = 64            # hidden size of the tiny random encoders
    tiny_layers: int = 2             # layers of the tiny random encoders
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-5
    audio_lr: float = 0.0            # lr of the audio encoder/student alone (0 = stage1.lr; authors' IEMOCAP: 5e-6)
    grad_clip: float = 10.0
    shared_seed: int = -1            # >= 0: every stage-2 seed reuses stage 1 trained with this seed
    precision: str = "fp32"          # fp32 | bf16 | fp16 | auto (bf16 on a CUDA device that supports it, else fp32):
                                     # autocast for stage-1 training and encoding; fp16 adds a gradient scaler
    allow_random_encoders: bool = False  # true: 'tiny' (randomly initialised) encoders are accepted on a real
                                         # dataset (a smoke test); otherwise a sweep refuses them there


@dataclass
class FusionConfig:
    modalities: list = field(default_factory=lambda: list(MODALITIES))  # any non-empty subset of text/audio/video
    mode: str = "anchor"             # anchor: the anchor gated transformer | concat: plain concatenation fusion
    anchor_gating: bool = True       # off: nn.Identity() in place of every gate
    speaker_embeddings: bool = True
    shared_anchor_layers: bool = True  # authors' code: one layer and one gate for the three text-anchor paths
    width: int = 768
    heads: int = 8
    layers: int = 1                  # transformer layers per path
    dropout: float = 0.5
    max_speakers: int = 9            # speaker embeddings per dialogue; one more index is padding
    kd_audio_weight: float = 0.01    # a: weight of the audio branch's KD term (authors' MELD)
    kd_video_weight: float = 0.08    # b: weight of the video branch's KD term
    kd_terms: list = field(default_factory=lambda: ["ce", "logit"])  # any of ce, logit, feature
    detach_anchor: bool = False      # authors' code does not detach the anchor logits in the KD term


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 16             # dialogues per batch
    lr: float = 1e-4
    weight_decay: float = 1e-6
    warmup_ratio: float = 0.1        # fraction of steps with linear warm-up, then linear decay
    grad_clip: float = 10.0
    select_on: str = "dev"           # dev | test: test reproduces the authors' stage 2 (epoch picked on test)
    device: str = "auto"             # auto | cpu | cuda | cuda:N (auto: the GPU Ray gave the trial, else the CPU;
                                     # cuda:N is refused inside Ray workers, which see only their own GPUs)
    precision: str = "fp32"          # fp32 | bf16 | fp16 | auto (bf16 on a CUDA device that supports it, else fp32)
    deterministic: bool = False      # true: deterministic kernels (torch.use_deterministic_algorithms); slower on GPU
    checkpoint_interval_s: float = 300.0  # sweeps: resume state saved at most this often and after the last epoch; 0: every
                                          # epoch. Below 60 s every checkpoint is kept (safe resume), else the last two


@dataclass
class MAGTKDConfig:
    data: DataConfig = field(default_factory=DataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    # ---- serialisation -------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to plain values, lists as comma-joined strings (MLflow params)."""
        out = {}
        for key, value in _flatten(self.to_dict()):
            out[key] = ",".join(map(str, value)) if isinstance(value, list) else value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def content_hash(self, exclude: Iterable[str] = ("train.device", "train.checkpoint_interval_s",
                                                     "stage1.allow_random_encoders")) -> str:
        """Hash of the resolved config; the device, the checkpoint cadence and the permission to use random
        encoders do not change what is computed (the device *type* is part of a sweep trial's identity)."""
        flat = {k: v for k, v in self.flat().items() if k not in set(exclude)}
        return stable_hash(flat)

    def stage1_hash(self) -> str:
        """What stage 1 depends on: the stage1 section and the seed stage 1 is trained with."""
        stage1 = dataclasses.asdict(self.stage1)
        stage1.pop("allow_random_encoders")  # a permission, not a setting: the same features either way
        return stable_hash({"stage1": stage1, "seed": self.stage1_seed})

    @property
    def stage1_seed(self) -> int:
        return self.stage1.shared_seed if self.stage1.shared_seed >= 0 else self.seed

    def with_absolute_paths(self, base: str | Path = ".") -> "MAGTKDConfig":
        """Relative file paths made absolute against `base` (Ray trials run in their own directories);
        a path that does not exist is refused, so a typo fails before any trial starts."""
        updates = absolute_path_overrides(self.flat(), base)
        return self.replace(updates, "<paths>") if updates else self

    def replace(self, overrides: Iterable[str] | Mapping[str, Any], source: str = "<overrides>") -> "MAGTKDConfig":
        """A new validated config with dotted overrides applied."""
        data = self.to_dict()
        apply_overrides(data, overrides, source)
        return from_dict(data, source)


# ---- building and validating ------------------------------------------------

SECTIONS = {"data": DataConfig, "stage1": Stage1Config, "fusion": FusionConfig, "train": TrainConfig}


def default_config() -> MAGTKDConfig:
    return MAGTKDConfig()


def valid_keys() -> list[str]:
    return sorted(k for k, _ in _flatten(MAGTKDConfig().to_dict()))


def suggest(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_key_message(key: str) -> str:
    """'unknown key X. Valid keys: <the keys of X's section>. Did you mean Y?' (all keys for an unknown section)."""
    every = valid_keys() + ["seed"]
    section = key.split(".", 1)[0] + "."
    same = [k for k in every if k.startswith(section)] or every
    return f"unknown key '{key}'. Valid keys: {', '.join(same)}.{suggest(key, every)}"


def _check_type(value: Any, expected: type, key: str, source: str) -> Any:
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):  # .inf, 1e999, .nan: every trial would diverge or mean nothing
                raise ConfigError(f"{source}: key '{key}' must be a finite number, got {value!r}")
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
    elif expected is list:
        if isinstance(value, str):  # "text,audio" from a command line
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    raise ConfigError(f"{source}: key '{key}' must be {expected.__name__}, got {type(value).__name__} {value!r}")


def from_dict(data: Mapping[str, Any] | None, source: str = "<config>") -> MAGTKDConfig:
    """Build and validate a config from a nested dict; unknown keys and wrong types are refused."""
    data = dict(data or {})
    kwargs: dict[str, Any] = {}
    top_keys = set(SECTIONS) | {"seed"}
    for key, value in data.items():
        if key not in top_keys:
            raise ConfigError(f"{source}: unknown key '{key}'. Valid top-level keys: {sorted(top_keys)}.{suggest(key, top_keys)}")
        if key == "seed":
            kwargs["seed"] = _check_type(value, int, "seed", source)
            continue
        cls = SECTIONS[key]
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: key '{key}' must be a mapping of {sorted(f.name for f in dataclasses.fields(cls))}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        section = {}
        for sub, subval in value.items():
            path = f"{key}.{sub}"
            if sub not in names:
                raise ConfigError(f"{source}: {unknown_key_message(path)}")
            section[sub] = _check_type(subval, hints[sub], path, source)
        kwargs[key] = cls(**section)
    cfg = MAGTKDConfig(**kwargs)
    validate(cfg, source)
    return cfg


def validate(cfg: MAGTKDConfig, source: str = "<config>") -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: key '{key}' {msg}")

    d, s, f, t = cfg.data, cfg.stage1, cfg.fusion, cfg.train
    need(d.name in ("synthetic", "meld", "iemocap", "csv", "features"), "data.name",
         f"must be one of synthetic, meld, iemocap, csv, features (got {d.name!r})")
    need(d.name == "synthetic" or bool(d.path), "data.path",
         f"is required for data.name={d.name}: pass data.path=DIR (the dataset's directory or file) on the "
         f"command line or set it in the spec's dataset section")
    need(d.name != "csv" or bool(d.mapping), "data.mapping", "is required for data.name=csv")
    need(d.max_dialogues >= 0, "data.max_dialogues", "must be >= 0")
    need(d.synthetic_dialogues >= 4, "data.synthetic_dialogues", "must be >= 4")
    need(d.synthetic_test_dialogues >= 0, "data.synthetic_test_dialogues", "must be >= 0 (0: a quarter of the training dialogues)")
    for key in ("text_signal", "audio_signal", "video_signal"):
        need(getattr(d, key) >= 0, f"data.{key}", "must be >= 0")
    for key in ("context_share", "train_label_noise", "corrupt_share", "speaker_prior"):
        need(0.0 <= getattr(d, key) <= 1.0, f"data.{key}", f"must be in [0, 1] (got {getattr(d, key)})")
    need(d.noise_modality in ("", "audio", "video", "text"), "data.noise_modality", "must be '', text, audio or video")
    need(d.sample_rate >= 1000 and d.audio_seconds > 0, "data.sample_rate", "and data.audio_seconds must be positive (>= 1000 Hz)")
    need(d.frames >= 1 and d.frame_size >= 8, "data.frames", "must be >= 1 with data.frame_size >= 8")
    need(d.media_workers >= 0, "data.media_workers", "must be >= 0 (0: one per CPU, at most 8)")

    need(s.max_tokens >= 8, "stage1.max_tokens", "must be >= 8")
    need(s.text_pooling in ("auto", "mask", "first", "mean"), "stage1.text_pooling", "must be auto, mask, first or mean")
    need(not (s.text_pooling == "mask" and not s.prompt), "stage1.text_pooling", "mask needs stage1.prompt=true")
    for key in ("kd_logit_weight", "kd_feature_weight"):
        need(getattr(s, key) >= 0, f"stage1.{key}", "must be >= 0")
    need(s.kd_temperature > 0 and s.feature_temperature > 0, "stage1.kd_temperature", "and stage1.feature_temperature must be > 0")
    need(s.width >= 1 and s.tiny_hidden >= 4 and s.tiny_layers >= 1, "stage1.width", "stage1.tiny_hidden and stage1.tiny_layers must be positive")
    need(s.tiny_hidden % 4 == 0, "stage1.tiny_hidden", "must be divisible by 4 (the tiny encoders use 4 heads)")
    need(s.epochs >= 0 and s.batch_size >= 1 and s.lr > 0, "stage1.epochs", "must be >= 0 with batch_size >= 1 and lr > 0")
    need(s.grad_clip > 0, "stage1.grad_clip", "must be > 0")
    need(s.audio_lr >= 0, "stage1.audio_lr", "must be >= 0 (0: stage1.lr)")
    bad = [m for m in s.kd_modalities if m not in ("audio", "video")]
    need(not bad, "stage1.kd_modalities", f"has {bad}; only audio and video have students")

    need(len(f.modalities) > 0, "fusion.modalities", "needs at least one of text, audio, video")
    bad = [m for m in f.modalities if m not in MODALITIES]
    need(not bad, "fusion.modalities", f"has unknown modalities {bad}; valid: {list(MODALITIES)}")
    need(len(set(f.modalities)) == len(f.modalities), "fusion.modalities", "lists a modality twice")
    f.modalities = [m for m in MODALITIES if m in f.modalities]  # canonical order, stable hash
    need(f.mode in ("anchor", "concat"), "fusion.mode", "must be anchor or concat")
    need(f.width >= 1 and f.heads >= 1, "fusion.width", "and fusion.heads must be positive")
    need(f.width % f.heads == 0, "fusion.heads", f"must divide fusion.width ({f.width} % {f.heads} != 0)")
    need(f.layers >= 1, "fusion.layers", "must be >= 1")
    need(0.0 <= f.dropout < 1.0, "fusion.dropout", f"must be in [0, 1) (got {f.dropout})")
    need(f.max_speakers >= 1, "fusion.max_speakers", "must be >= 1")
    need(f.kd_audio_weight >= 0 and f.kd_video_weight >= 0, "fusion.kd_audio_weight", "and fusion.kd_video_weight must be >= 0")
    bad = [k for k in f.kd_terms if k not in ("ce", "logit", "feature")]
    need(not bad, "fusion.kd_terms", f"has unknown terms {bad}; valid: ce, logit, feature")

    need(t.epochs >= 1, "train.epochs", "must be >= 1")
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(t.lr > 0, "train.lr", "must be > 0")
    need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(0.0 <= t.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)")
    need(t.grad_clip > 0, "train.grad_clip", "must be > 0")
    need(t.checkpoint_interval_s >= 0, "train.checkpoint_interval_s", "must be >= 0 (0: every epoch)")
    need(t.select_on in ("dev", "test"), "train.select_on", "must be dev or test")
    need(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda") or t.device == "mps",
         "train.device", "must be auto, cpu, cuda, cuda:N or mps")
    # torch.manual_seed takes [0, 2**64) here (a negative seed would also read as "no shared seed" below).
    need(0 <= cfg.seed < MAX_SEED, "seed", f"must be an integer in [0, 2**64) (torch.manual_seed's range), got {cfg.seed}")
    need(-1 <= s.shared_seed < MAX_SEED, "stage1.shared_seed",
         f"must be -1 (each seed its own stage 1) or in [0, 2**64), got {s.shared_seed}")
    need(0 <= d.synthetic_seed < MAX_SEED, "data.synthetic_seed", f"must be in [0, 2**64), got {d.synthetic_seed}")

    for key, value in (("stage1.precision", s.precision), ("train.precision", t.precision)):
        need(value in PRECISIONS, key, f"must be one of {', '.join(PRECISIONS)} (got {value!r})")


def random_encoder_problem(cfg: MAGTKDConfig, modalities: Iterable[str] = MODALITIES) -> str:
    """'' unless `tiny` (randomly initialised) encoders would be trained on a real dataset without
    stage1.allow_random_encoders=true; then the message naming the keys to set. `modalities`: those the
    data carry (an encoder of a modality the data lack never trains). A table titled 'MAGTKD on MELD'
    must not silently come from random encoders; the synthetic data are made for them."""
    if cfg.data.name in ("synthetic", "features") or cfg.stage1.allow_random_encoders:
        return ""
    carried = set(modalities)
    tiny = [k for k in ENCODER_KEYS if getattr(cfg.stage1, k) == "tiny" and k.split("_")[0] in carried]
    if not tiny:
        return ""
    sets = " ".join(f"stage1.{k}=/path/to/checkpoint" for k in tiny).replace(
        "stage1.text_encoder=/path/to/checkpoint", "stage1.text_encoder=minilm|/path/to/checkpoint")
    return (f"key 'stage1.{tiny[0]}': {', '.join('stage1.' + k for k in tiny)} "
            f"{'is' if len(tiny) == 1 else 'are'} 'tiny' (small randomly initialised encoders) on "
            f"data.name={cfg.data.name}: the results would not be MAGTKD's. Set {sets} (local Hugging Face "
            f"checkpoint directories; audio/video may also be 'features'), or pass stage1.allow_random_encoders=true "
            f"for a deliberate smoke test")


# ---- overrides and YAML ------------------------------------------------------

NAMED_ENCODERS = ("tiny", "minilm", "features")   # stage1.*_encoder values that are not paths
PATH_KEYS = ("data.path", "data.mapping", "data.media_dir",
             "stage1.text_encoder", "stage1.audio_encoder", "stage1.video_encoder")
CREATED_PATH_KEYS = ("data.media_store",)   # made absolute like PATH_KEYS, but created when missing


def absolute_path_overrides(overrides: Mapping[str, Any], base: str | Path = ".",
                            must_exist: bool = True) -> dict[str, str]:
    """The file-path entries of a {dotted key: value} mapping, made absolute against `base` and (unless
    must_exist=False, as when a spec file is only loaded and validated) checked to exist; the media store
    (CREATED_PATH_KEYS) is made absolute only: it is created by the first load."""
    out = {}
    for key in PATH_KEYS + CREATED_PATH_KEYS:
        value = overrides.get(key)
        if not value or not isinstance(value, str) or value in NAMED_ENCODERS:
            continue
        path = (Path(base) / Path(value).expanduser()).resolve()
        if must_exist and key in PATH_KEYS and not path.exists():
            raise ConfigError(f"key '{key}': {value} does not exist (resolved to {path})")
        out[key] = str(path)
    return out


def parse_value(text: str) -> Any:
    """A command-line value through YAML's safe scalar rules: 'false' -> False, '3e-4' -> 0.0003."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:  # YAML 1.1 reads '3e-4' as a string
            return float(value) if any(c in value for c in "eE.") and not value.isalpha() else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict, overrides: Iterable[str] | Mapping[str, Any], source: str = "<overrides>") -> dict:
    """Apply dotted overrides ('fusion.width=128' strings or a {dotted: value} mapping) to a nested dict."""
    items = overrides.items() if isinstance(overrides, Mapping) else [_split_override(o, source) for o in overrides]
    for key, value in items:
        parts = str(key).split(".")
        if len(parts) == 1 and parts[0] == "seed":
            data["seed"] = value
            continue
        if len(parts) != 2:
            raise ConfigError(f"{source}: override key '{key}' must look like section.key; valid keys: {', '.join(valid_keys())}."
                              f"{suggest(str(key), valid_keys())}")
        section, sub = parts
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown key '{key}'. Valid sections: {sorted(SECTIONS)}.{suggest(str(key), valid_keys())}")
        node = data.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: key '{section}' must be a mapping")
        node[sub] = value
    return data


def _split_override(text: str, source: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"{source}: override '{text}' must be key=value, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    return key.strip(), parse_value(value)


def read_yaml_file(path: Path) -> str:
    """The text of a YAML file, checked before parsing (core/yaml_guard.py): a regular file of at most
    MAX_YAML_BYTES, UTF-8, whose aliases do not expand it past MAX_YAML_NODES nodes."""
    try:
        text = read_yaml_text(path)
        check_alias_expansion(text, path)
    except YamlLimitError as err:
        raise ConfigError(str(err)) from None
    return text


def read_yaml(path: str | Path) -> Any:
    """yaml.safe_load with errors that name the file and the line."""
    path = Path(path)
    text = read_yaml_file(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        # PyYAML's context says what it was inside ("while parsing a flow mapping", and where that began).
        context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context:
            problem += f" ({context}" + (f" that starts at line {context_mark.line + 1}, column "
                                         f"{context_mark.column + 1}" if context_mark else "") + ")"
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: empty file (no YAML content{', only comments' if text.strip() else ''})")
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> MAGTKDConfig:
    """Defaults, then the YAML file (a config mapping), then dotted overrides; validated at the end."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "<defaults>"
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    cfg = from_dict(data or {}, source)
    return cfg.replace(overrides, "<command line>") if overrides else cfg


# ---- helpers -----------------------------------------------------------------

def _flatten(d: Mapping, prefix: str = ""):
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def stable_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of obj as sorted JSON: the one hash behind config, plan and trial keys."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
