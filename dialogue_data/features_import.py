"""The MAGTKD authors' released first-stage features, read safely and turned into `Stage1Features`.

The authors' `extract_first_stage_features.py` pickles, per split, a dict with

    text, audio, video, audio_kd, video_kd : {dialogue id: [768-d vector per utterance]}
    speakers, labels                        : {dialogue id: [int per utterance]}
    vids                                    : [dialogue ids in order]
    dia2utt                                 : {dialogue id: [utterance ids]}   (optional here)

Accepted `data.path`: a directory with one file per split (the authors' names
`first_stage_{split}_features.pkl`, or `{split}_features.pkl`, `{split}.pkl`; dev may also be
`valid`/`val`), or one file holding either {"train": dict, "dev": dict, "test": dict} or one
dict whose `vids` is {"train": [...], "dev": [...], "test": [...]}.

Pickle runs code by design, so these files go through `RestrictedUnpickler`: only numpy arrays
(and the numpy functions that rebuild them) and plain Python containers, numbers and strings are
allowed. Any other global (os.system, torch tensors, classes, ...) raises DataError naming the file
and the refused global before anything is called.

Modalities: `text` from text; `audio` from audio_kd when stage1.kd is on and audio is in
stage1.kd_modalities, else from audio (likewise video), exactly as the authors' stage 2 uses
(text, audio_kd, video_kd) on MELD and (text, audio_kd, video) on IEMOCAP. A key missing from the
file leaves that modality absent (masked, with a note). Label names come from `data.mapping`
(a YAML file with `labels: [...]`) when given, else MELD's seven or IEMOCAP's six by the path's name
or the number of classes.

Pipeline use (features are stage-1 output: no stage 1, no dataset to encode):

    fingerprint, features, notes = cached_author_features(cfg, cache_dir)
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from core.config import read_yaml
from core.schema import SPLITS, DataError, Dialogue, DialogueDataset, Utterance
from dialogue_data.cache import Stage1Cache

if TYPE_CHECKING:  # torch is imported only when features are actually built
    from core.features import Stage1Features

MELD_LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
IEMOCAP_LABELS = ["ang", "exc", "fru", "hap", "neu", "sad"]
_SPLIT_ALIASES = {"train": ["train"], "dev": ["dev", "valid", "val"], "test": ["test"]}
_FILE_PATTERNS = ("first_stage_{s}_features.pkl", "{s}_features.pkl", "{s}.pkl")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):   # numpy 1 and numpy 2 names
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for module in ("builtins", "__builtin__"):                             # Python 3 and 2 names
        for name, obj in (("list", list), ("dict", dict), ("tuple", tuple), ("set", set),
                          ("frozenset", frozenset), ("int", int), ("float", float), ("str", str),
                          ("bool", bool), ("bytes", bytes), ("bytearray", bytearray)):
            allowed[(module, name)] = obj
    # Protocols 0-2 store bytes (inside numpy arrays) as _codecs.encode(text, 'latin1'): a pure function.
    allowed[("_codecs", "encode")] = __import__("codecs").encode
    return allowed


# A pickle names sizes as plain numbers: `bytearray(10**10)` is 30 bytes that ask for 10 GB, and so is an
# ndarray shape. A genuine pickle carries the bytes it decodes to, so no size it names exceeds the file itself;
# these callables are wrapped to refuse anything larger than the file plus this slack.
ALLOCATION_SLACK_BYTES = 1024 * 1024
_SIZED = {"bytes", "bytearray", "ndarray", "_reconstruct"}


def _requested_bytes(name: str, args: tuple, kwargs: dict) -> int:
    """What a call of an allowed global would allocate from sizes given as numbers (0 when none)."""
    if name in ("bytes", "bytearray"):
        first = args[0] if args else kwargs.get("source")
        return first if isinstance(first, int) and not isinstance(first, bool) else 0
    shape = args[1] if name == "_reconstruct" and len(args) > 1 else (args[0] if name == "ndarray" and args
                                                                          else kwargs.get("shape", ()))
    dims = [shape] if isinstance(shape, int) else (list(shape) if isinstance(shape, (tuple, list)) else [])
    total = 8  # the widest common itemsize; exact dtypes do not matter for a bound
    for dim in dims:
        if not isinstance(dim, int) or dim < 0:
            return 0  # numpy refuses it itself
        total *= dim
    return total


class _Bounded:
    """An allowed global whose calls are checked against the size limit first. numpy.ndarray is one too: the
    pickle both calls it and hands it to _reconstruct as the array type (unwrapped there)."""

    def __init__(self, name: str, fn: Callable, limit: int, path):
        self.name, self.fn, self.limit, self.path = name, fn, limit, path

    def __call__(self, *args, **kwargs):
        args = tuple(a.fn if isinstance(a, _Bounded) else a for a in args)
        wanted = _requested_bytes(self.name, args, kwargs)
        if wanted > self.limit:
            raise DataError(f"{self.path}: refused a pickle that asks {self.name}() for {wanted} bytes, more than "
                            f"the file could hold ({self.limit} bytes at most); the file is damaged or hostile "
                            f"(nothing was run)")
        return self.fn(*args, **kwargs)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain data only; any other global is refused, never called. Sizes the
    pickle names (bytearray(N), an array's shape) are bounded by the file's size (`size_bytes`)."""

    def __init__(self, file, path: str | Path, size_bytes: int = 0):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 numpy pickles keep their bytes
        self.path = path
        limit = size_bytes + ALLOCATION_SLACK_BYTES
        self.allowed = {key: _Bounded(key[1], fn, limit, path) if key[1] in _SIZED else fn
                        for key, fn in _allowed_globals().items()}

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DataError(f"{self.path}: refused to unpickle global '{module}.{name}': only numpy arrays, "
                            f"lists, dicts, tuples, sets, numbers and strings are allowed (nothing was run)") from None

    def persistent_load(self, pid):
        raise DataError(f"{self.path}: refused a persistent id in the pickle (torch.save files are not "
                        f"accepted: save numpy arrays)")


def safe_load(path: str | Path) -> Any:
    """The object in a pickle file, through RestrictedUnpickler; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), path, len(data)).load()
    except DataError:
        raise
    except Exception as err:  # truncated or not a pickle at all
        raise DataError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None


# ---- locating the per-split dicts ----------------------------------------------------------

def _split_payloads(path: Path) -> dict[str, tuple[Path, dict]]:
    if path.is_dir():
        out = {}
        for split in SPLITS:
            names = [p.format(s=a) for a in _SPLIT_ALIASES[split] for p in _FILE_PATTERNS]
            hit = next((path / n for n in names if (path / n).is_file()), None)
            if hit is None:
                raise DataError(f"{path}: no {split} feature file; looked for {', '.join(names)}")
            out[split] = (hit, _as_dict(safe_load(hit), hit))
        return out
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory (data.path)")
    obj = _as_dict(safe_load(path), path)
    if all(isinstance(obj.get(s), dict) for s in SPLITS):
        return {s: (path, obj[s]) for s in SPLITS}
    vids = obj.get("vids")
    if isinstance(vids, dict) and set(SPLITS) <= set(vids):
        return {s: (path, {**obj, "vids": list(vids[s])}) for s in SPLITS}
    raise DataError(f"{path}: expected one file per split in a directory, or one dict with 'train'/'dev'/'test' "
                    f"entries, or 'vids' as {{'train': [...], 'dev': [...], 'test': [...]}}; "
                    f"found keys {sorted(map(str, obj))}")


def _as_dict(obj: Any, path: Path) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict at the top of the pickle, found {type(obj).__name__}")
    return obj


# ---- conversion ------------------------------------------------------------------------------

def _sources(cfg) -> dict[str, str]:
    """Modality -> pickle key, following stage1.kd / stage1.kd_modalities like the authors' stage 2."""
    kd = set(cfg.stage1.kd_modalities) if cfg.stage1.kd else set()
    return {"text": "text", "audio": "audio_kd" if "audio" in kd else "audio",
            "video": "video_kd" if "video" in kd else "video"}


def _label_names(cfg, path: Path, raw_labels: list) -> list[str]:
    if cfg.data.mapping:
        spec = read_yaml(cfg.data.mapping)
        labels = spec.get("labels") if isinstance(spec, dict) else None
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise DataError(f"{cfg.data.mapping}: key 'labels' must list the label names in class-index order")
        return list(labels)
    if raw_labels and all(isinstance(x, str) for x in raw_labels):
        return sorted(set(raw_labels))
    lowered = str(path).lower()
    if "iemocap" in lowered:
        return list(IEMOCAP_LABELS)
    if "meld" in lowered:
        return list(MELD_LABELS)
    classes = int(max(raw_labels)) + 1 if raw_labels else 0
    if classes == len(MELD_LABELS):
        return list(MELD_LABELS)
    if classes == len(IEMOCAP_LABELS):
        return list(IEMOCAP_LABELS)
    raise DataError(f"{path}: cannot tell the label names of {classes} classes; give data.mapping, a YAML "
                    f"file with 'labels: [...]' in class-index order")


def _speaker_index(value: Any, file: Path, vid: Any, i: int) -> Any:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr.item()
    if arr.ndim == 1 and arr.size > 0:                   # one-hot speaker vectors (older releases)
        return int(arr.argmax())
    raise DataError(f"{file}: key 'speakers', dialogue {vid}, utterance {i}: expected an index or a one-hot vector")


def load_author_features(path: str | Path, cfg) -> tuple[DialogueDataset, "Stage1Features"]:
    """(a text-less, media-less dataset skeleton, the features); the skeleton's fingerprint() hashes the vectors."""
    import torch  # torch and the feature tables only when features are read: the data commands stay light

    from core.features import SplitFeatures, Stage1Features

    path = Path(path)
    payloads = _split_payloads(path)
    sources = _sources(cfg)
    for modality, key in sources.items():  # a modality is in every split or in none
        holders = [s for s in SPLITS if key in payloads[s][1]]
        if holders and len(holders) != len(SPLITS):
            missing = [s for s in SPLITS if s not in holders]
            raise DataError(f"{payloads[missing[0]][0]}: missing key '{key}' ({modality}), which the "
                            f"{holders[0]} split has")
    all_labels = [x for _, d in payloads.values() for vid in d.get("vids", []) for x in (d.get("labels", {}) or {}).get(vid, [])]
    names = _label_names(cfg, path, all_labels)
    label_of = {n: i for i, n in enumerate(names)}
    notes, widths = [], {}
    split_features, split_dialogues = {}, {}
    for split in SPLITS:
        file, d = payloads[split]
        for key in ("text", "labels", "vids", "speakers"):
            if key not in d:
                raise DataError(f"{file}: missing key '{key}' (found: {', '.join(sorted(map(str, d)))})")
        vids = list(d["vids"])
        if cfg.data.max_dialogues:
            vids = vids[: cfg.data.max_dialogues]
        if not vids:
            raise DataError(f"{file}: key 'vids': the {split} split has no dialogues")
        present_keys = {m: k for m, k in sources.items() if k in d}
        vectors = {m: [] for m in present_keys}
        labels, speakers, lengths, dialogues = [], [], [], []
        for vid in vids:
            raw = _entry(d, "labels", vid, file)
            n = len(raw)
            if n == 0:
                raise DataError(f"{file}: dialogue {vid}: empty dialogue (no labels/utterances)")
            ids = []
            for i, x in enumerate(raw):
                x = x.item() if isinstance(x, np.generic) else x
                idx = label_of.get(x) if isinstance(x, str) else (int(x) if isinstance(x, (int, float)) and float(x).is_integer() else None)
                if idx is None or not 0 <= idx < len(names):
                    raise DataError(f"{file}: key 'labels', dialogue {vid}, utterance {i}: label {x!r} is not one of "
                                    f"0..{len(names) - 1} ({', '.join(names)})")
                ids.append(idx)
            spk_raw = _entry(d, "speakers", vid, file)
            if len(spk_raw) != n:
                raise DataError(f"{file}: key 'speakers', dialogue {vid}: {len(spk_raw)} entries for {n} utterances")
            spk = [_speaker_index(s, file, vid, i) for i, s in enumerate(spk_raw)]
            if not all(isinstance(s, int) and s >= 0 for s in spk):   # names: dialogue-local by first appearance
                order: dict = {}
                spk = [order.setdefault(s, len(order)) for s in spk]
            for modality, key in present_keys.items():
                rows = _entry(d, key, vid, file)
                try:
                    arr = np.asarray(rows, dtype=np.float32)
                except (ValueError, TypeError):
                    raise DataError(f"{file}: key '{key}', dialogue {vid}: vectors of different widths or not numbers") from None
                width = widths.setdefault(key, arr.shape[-1] if arr.ndim == 2 else None)
                if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] != width:
                    raise DataError(f"{file}: key '{key}', dialogue {vid}: expected {n} vectors of width {width}, "
                                    f"got shape {tuple(arr.shape)}")
                if not np.isfinite(arr).all():
                    raise DataError(f"{file}: key '{key}', dialogue {vid}: non-finite values")
                vectors[modality].append(arr)
            utt_ids = list(d.get("dia2utt", {}).get(vid, range(n))) if isinstance(d.get("dia2utt"), dict) else list(range(n))
            if len(utt_ids) != n:
                raise DataError(f"{file}: key 'dia2utt', dialogue {vid}: {len(utt_ids)} utterance ids for {n} utterances")
            labels += ids
            speakers += spk
            lengths.append(n)
            dialogues.append(Dialogue(str(vid), [Utterance(speaker=f"s{s}", text="", label=y, utterance_id=str(u))
                                                 for s, y, u in zip(spk, ids, utt_ids)]))
        count = len(labels)
        split_features[split] = SplitFeatures(
            vectors={m: torch.from_numpy(np.concatenate(v)) for m, v in vectors.items()},   # (N, D)
            present={m: torch.ones(count, dtype=torch.bool) for m in vectors},
            labels=torch.tensor(labels, dtype=torch.int64), speakers=torch.tensor(speakers, dtype=torch.int64),
            dialogue_lengths=lengths)
        split_dialogues[split] = dialogues
        for modality, key in sources.items():
            if key not in d:
                notes.append(f"{file.name}: no '{key}' key: {modality} absent ({split})")
    used = ", ".join(f"{m}<-{k}" for m, k in sources.items())
    notes.insert(0, f"authors' stage-1 features from {path} ({used})")
    features = Stage1Features(labels=names, splits=split_features,
                              info={"source": str(path), "modalities": used, "notes": json.dumps(notes)})
    fingerprint = _fingerprint(features)
    features.info["fingerprint"] = fingerprint
    dataset = FeatureDataset(name="features", labels=names, splits=split_dialogues, source=str(path),
                             notes=notes, content_hash=fingerprint)
    return dataset, features


def _entry(d: dict, key: str, vid: Any, file: Path):
    table = d[key]
    if not isinstance(table, dict):
        raise DataError(f"{file}: key '{key}' must map dialogue ids to lists, found {type(table).__name__}")
    if vid not in table:
        raise DataError(f"{file}: key '{key}' has no entry for dialogue {vid}")
    value = table[vid]
    if isinstance(value, np.ndarray):
        return list(value) if value.ndim else [value.item()]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{file}: key '{key}', dialogue {vid}: expected a list, found {type(value).__name__}")
    return value


def _fingerprint(features) -> str:
    h = hashlib.sha256("\x1f".join(features.labels).encode())
    for name, tensor in sorted(features.to_tensors().items()):
        h.update(name.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class FeatureDataset(DialogueDataset):
    """The dialogue skeleton of imported features (ids, speakers, labels; no text or media)."""
    content_hash: str = ""      # of the vectors: what fingerprint() returns

    def fingerprint(self) -> str:
        return self.content_hash or super().fingerprint()


# ---- through the stage-1 cache -------------------------------------------------------------

def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix == ".pkl") if path.is_dir() else [path]
    for file in files:
        h.update(file.name.encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def author_features_key(cfg) -> str:
    """Cache key: the files' content, the modality sources, max_dialogues and the label mapping."""
    path = Path(cfg.data.path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (data.path)")
    mapping = Path(cfg.data.mapping).read_text(encoding="utf-8") if cfg.data.mapping else ""
    blob = json.dumps([_file_digest(path), _sources(cfg), cfg.data.max_dialogues, mapping], sort_keys=True)
    return "features-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_author_features(cfg, cache_dir: str | Path,
                           log: Optional[Callable[[str], None]] = None) -> tuple[str, "Stage1Features", list[str]]:
    """(fingerprint, features, notes) for data.name=features; unpickled once, then read from the cache."""
    key = author_features_key(cfg)
    features = Stage1Cache(cache_dir, log=log).get_or_compute(
        key, lambda: load_author_features(cfg.data.path, cfg)[1])
    return features.info["fingerprint"], features, json.loads(features.info.get("notes", "[]"))
