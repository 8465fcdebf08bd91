"""`run_sweep.py data` and `run_sweep.py cache`: look at a dataset before a sweep; list or clear the stage-1 cache.

    python run_sweep.py data synthetic
    python run_sweep.py data meld --path ../shared/data/meld
    python run_sweep.py data csv --path /data/mine --mapping dialogue_data/mappings/example.yaml
    python run_sweep.py data synthetic data.noise_modality=audio max_dialogues=10
    python run_sweep.py data meld --path /data/MELD.Raw --media-dir /data/MELD.Raw [--output runs]
    python run_sweep.py cache list [--output runs]
    python run_sweep.py cache clear [KEY ...] [--output runs]
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from core.config import load_config
from core.schema import DataError
from dialogue_data.cache import Stage1Cache
from dialogue_data.features_import import load_author_features
from dialogue_data.media_store import MediaStore
from dialogue_data.registry import load_dataset, media_store_of

DATASETS = ("synthetic", "meld", "iemocap", "csv", "features")


def add_commands(subparsers) -> None:
    data = subparsers.add_parser(
        "data", help="summarise a dataset: dialogues, utterances, labels, speakers, media coverage",
        description="Per split: dialogues, utterances, label distribution, speakers and which modalities "
                    "are present for how many utterances.")
    data.add_argument("name", choices=DATASETS, help="which reader (data.name)")
    data.add_argument("--path", default=None, help="dataset directory or file (data.path)")
    data.add_argument("--mapping", default=None, help="YAML column/label mapping for name=csv (data.mapping)")
    data.add_argument("--media-dir", default=None, help="wav/mp4/frames directory (data.media_dir)")
    data.add_argument("--output", default="runs",
                      help="the sweep output directory whose media store (<output>/cache/media) clips are "
                           "decoded into, as a sweep with the same --output would (default ./runs)")
    data.add_argument("--cache-dir", default=None, metavar="DIR",
                      help="the sweep's --cache-dir, if it has one: the media store is DIR/media")
    data.add_argument("--strict", action="store_true",
                      help="exit 2 when a label has no training examples (otherwise a warning)")
    data.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="config overrides, e.g. data.max_dialogues=10 (a bare key means data.KEY)")
    data.set_defaults(func=cmd_data)

    cache = subparsers.add_parser("cache", help="list or clear the stage-1 feature cache (<output>/cache)")
    cache.add_argument("action", choices=("list", "clear"))
    cache.add_argument("keys", nargs="*", help="clear: only these entries (default: all)")
    cache.add_argument("--output", default="runs", help="the sweep output directory (default ./runs)")
    cache.set_defaults(func=cmd_cache)


# ---- data -----------------------------------------------------------------------------------

def _config(args):
    overrides = [f"data.name={args.name}"]
    for flag, key in (("path", "data.path"), ("mapping", "data.mapping"), ("media_dir", "data.media_dir")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    for item in args.overrides:
        key = item.split("=", 1)[0]
        overrides.append(item if "." in key or key == "seed" else f"data.{item}")
    return load_config(None, overrides)


def cmd_data(args) -> int:
    cfg = _config(args)
    if cfg.data.name == "features":
        dataset, features = load_author_features(cfg.data.path, cfg)
        print(describe_features(features, dataset))
    else:
        cache_dir = Path(args.cache_dir) if args.cache_dir else Path(args.output) / "cache"
        dataset = load_dataset(cfg.data, cache_dir)
        print(describe(dataset))
        if cfg.data.media_dir:
            print(describe_store(MediaStore(media_store_of(cfg.data, cache_dir))))
        if dataset.label_warnings() and args.strict:
            raise DataError("; ".join(dataset.label_warnings()) + " (--strict)")
    return 0


def _pct(part: int, whole: int) -> str:
    return f"{part} ({100.0 * part / whole:.1f}%)" if whole else "0"


def _label_table(labels: list[str], counts: dict[str, Counter], totals: dict[str, int]) -> list[str]:
    splits = list(counts)
    width = max(len(x) for x in labels + ["label"])
    lines = ["label distribution (utterances):", "  " + "label".ljust(width) + "".join(s.rjust(16) for s in splits)]
    for i, label in enumerate(labels):
        lines.append("  " + label.ljust(width) + "".join(_pct(counts[s][i], totals[s]).rjust(16) for s in splits))
    return lines


def describe_store(store: MediaStore) -> str:
    """What the media store holds (every dataset and setting decoded into it so far)."""
    held = store.summary()
    return (f"\nmedia store {held['root']}: {held['audio']} audio and {held['video']} video clips decoded "
            f"({held['bytes'] / 1e6:.1f} MB) from {held['sources']} source files; a sweep with the same "
            f"--output/--cache-dir reads them from there and decodes nothing again")


def describe(dataset) -> str:
    """The text `run_sweep.py data` prints for a DialogueDataset."""
    lines = [f"{dataset.name}: {len(dataset.labels)} labels ({', '.join(dataset.labels)})",
             f"source: {dataset.source}",
             f"fingerprint: {dataset.fingerprint()}", ""]
    header = f"  {'split':<6}{'dialogues':>10}{'utterances':>12}{'speakers':>10}{'utt/dialogue':>16}"
    header += "".join(f"{m:>16}" for m in ("text", "audio", "video"))
    lines.append(header)
    counts, totals = {}, {}
    for split, dialogues in dataset.splits.items():
        cov = dataset.coverage(split)
        n = cov["utterances"]
        sizes = [len(d.utterances) for d in dialogues]
        speakers = {u.speaker for u in dataset.utterances(split)}
        size_text = f"{n / len(sizes):.1f} ({min(sizes)}-{max(sizes)})" if sizes else "-"
        row = f"  {split:<6}{len(dialogues):>10}{n:>12}{len(speakers):>10}{size_text:>16}"
        row += "".join(f"{_pct(cov[m], n):>16}" for m in ("text", "audio", "video"))
        lines.append(row)
        counts[split] = Counter(u.label for u in dataset.utterances(split))
        totals[split] = n
    lines += [""] + _label_table(dataset.labels, counts, totals)
    train = dataset.splits.get("train") or []
    if train:
        first = train[0]
        ids = [u.utterance_id for u in first.utterances]
        shown = ", ".join(ids[:12]) + (", ..." if len(ids) > 12 else "")
        lines += ["", f"first train dialogue '{first.dialogue_id}': utterance ids in order: {shown}"]
        for u in first.utterances[:3]:
            lines.append(f"  [{u.utterance_id}] {u.speaker}: {u.text[:70]}  -> {dataset.labels[u.label]}")
    if dataset.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in dataset.notes]
    if dataset.label_warnings():
        lines += ["", "warnings:"] + [f"  - {warning}" for warning in dataset.label_warnings()]
    return "\n".join(lines)


def describe_features(features, dataset=None) -> str:
    """The text `run_sweep.py data features` prints: imported stage-1 vectors."""
    dims = features.dims()
    lines = [f"features: {len(features.labels)} labels ({', '.join(features.labels)})",
             f"source: {features.info.get('source', '')}  ({features.info.get('modalities', '')})",
             f"fingerprint: {features.info.get('fingerprint', '')}",
             "widths: " + ", ".join(f"{m} {d}" for m, d in dims.items()), ""]
    header = f"  {'split':<6}{'dialogues':>10}{'utterances':>12}{'max speakers':>14}"
    header += "".join(f"{m:>16}" for m in ("text", "audio", "video"))
    lines.append(header)
    counts, totals = {}, {}
    for split, sf in features.splits.items():
        n = len(sf)
        per_dialogue = [len(set(sf.speakers[a:b].tolist())) for a, b in sf.dialogues()]
        row = f"  {split:<6}{len(sf.dialogue_lengths):>10}{n:>12}{max(per_dialogue, default=0):>14}"
        row += "".join(f"{_pct(int(sf.present[m].sum()) if m in sf.present else 0, n):>16}"
                       for m in ("text", "audio", "video"))
        lines.append(row)
        counts[split] = Counter(sf.labels.tolist())
        totals[split] = n
    lines += [""] + _label_table(features.labels, counts, totals)
    notes = dataset.notes if dataset is not None else []
    if notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in notes]
    return "\n".join(lines)


# ---- cache ----------------------------------------------------------------------------------

def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_cache(args) -> int:
    root = Path(args.output) / "cache"
    cache = Stage1Cache(root)
    if args.action == "clear":
        removed = cache.clear(args.keys or None)
        print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {root}")
        return 0
    entries = cache.list()
    total = sum(e.size_bytes for e in entries)
    print(f"stage-1 cache {root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_size(total)}")
    for e in entries:
        info = ", ".join(f"{k}={v}" for k, v in e.info.items() if k not in ("notes",))
        print(f"  {e.key}  {_size(e.size_bytes):>9}  {e.created or '-':<24}  {len(e.labels)} labels"
              + (f"  {info[:80]}" if info else "") + (f"  [{e.problem}]" if e.problem else ""))
    return 0
