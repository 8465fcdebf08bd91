"""Dialogue datasets from CSV files, driven by a column and label mapping.

MELD (`meld.py`) and IEMOCAP (`iemocap.py`) are fixed mappings of this reader; any other CSV of
the same shape (one row per utterance, with dialogue id, speaker, text and label columns) needs
only a YAML mapping (see `dialogue_data/mappings/example.yaml`):

    python run_sweep.py data csv --path /data/mine --mapping dialogue_data/mappings/example.yaml

Every error names the file and the line as a text editor shows it (the header is line 1) and the
column: missing columns, unknown labels (with the valid ones), empty dialogue ids or dialogues,
duplicate utterance ids, undecodable bytes, rows with the wrong number of fields.
"""
from __future__ import annotations

import ast
import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dialogue_data.media import ClipPlace, attach_media, find_video
from core.config import read_yaml
from core.schema import SPLITS, DataError, Dialogue, DialogueDataset, Utterance
from dialogue_data.textio import clean_text, decode_transcript

ROLES = ("text", "speaker", "label", "dialogue_id", "utterance_id", "split", "wav", "video", "start", "end")
REQUIRED_ROLES = ("text", "speaker", "label", "dialogue_id")


@dataclass
class CsvSpec:
    """How to read one kind of CSV dataset."""
    name: str
    labels: list[str]                                  # label names, in class-index order
    label_map: dict[str, str]                          # raw value (lower-cased) -> label name
    columns: dict[str, str | list[str]]                # role (ROLES) -> column header (dialogue_id: one or a list)
    files: dict[str, list[str]] = field(default_factory=dict)   # split -> candidate names in the directory
    single_file: list[str] = field(default_factory=list)        # candidate names of one file with a split column
    split_values: dict[str, list[str]] = field(default_factory=lambda: {s: [s] for s in SPLITS})
    drop_labels: set[str] = field(default_factory=set)          # raw labels whose rows are skipped (lower-cased)
    order_by: str = ""                                 # role or column sorting utterances in a dialogue; "" = file order
    delimiter: str = ","
    media_pattern: str = ""                            # clip stem under media_dir, e.g. "dia{dialogue_id}_utt{utterance_id}"
    media_split_dirs: dict[str, list[str]] = field(default_factory=lambda: {s: [s] for s in SPLITS})
    speaker_format: str = "plain"                      # plain | list: cells like "['Monica Geller', 'Ross Geller']"
    label_spellings: list[str] = field(default_factory=list)    # raw labels as the mapping writes them (for errors)
    # With columns start/end (seconds, or HH:MM:SS,mmm) the utterance is that range of its video file
    # (IEMOCAP: the session's .avi); frames come from the range widened by video_margin on each side.
    video_margin: float = 0.0

    def column_name(self, role: str) -> str:
        """The header(s) behind a role, as an error message names them."""
        headers = self.columns.get(role, "")
        return "+".join(headers) if isinstance(headers, list) else headers


# A dialogue id spread over several columns (season, episode, scene) is their values joined by this.
ID_JOINER = "_"
# Several speakers in one list-valued cell are one speaker: their names in the order written, joined by this.
SPEAKER_JOINER = " & "


@dataclass
class _Row:
    line: int
    values: dict[str, str]                             # role -> raw cell
    order: str = ""


def read_csv_dataset(path: str | Path, spec: CsvSpec, media_dir: str | Path = "", sample_rate: int = 16000,
                     frames: int = 8, frame_size: int = 32, media_store: str | Path = "",
                     media_workers: int = 0, scan_only: bool = False) -> DialogueDataset:
    """Read the three splits under `path` (a directory, or one file with a split column); clips under
    `media_dir` are decoded once into `media_store` (see dialogue_data.media_store), or with `scan_only`
    only checked, nothing decoded or written (dialogue_data.media.attach_media)."""
    path = Path(path)
    notes: list[str] = []
    rows_by_split = {s: [] for s in SPLITS}            # split -> [(file, _Row)]
    for file, split in _locate_files(path, spec):
        for row in _read_rows(file, spec, notes):
            target = split or _split_of(row, file, spec)
            rows_by_split[target].append((file, row))
    splits, media_refs = {}, {}
    for split in SPLITS:
        splits[split], dropped = _dialogues(rows_by_split[split], spec, split, media_refs)
        if dropped:
            notes.append(f"{split}: skipped {dropped} utterance(s) with a dropped label ({', '.join(sorted(spec.drop_labels))})")
        if not splits[split]:
            raise DataError(f"{path}: the {split} split has no dialogues")
    if media_dir:
        media_dir = Path(media_dir)
        if not media_dir.is_dir():
            raise DataError(f"{media_dir}: data.media_dir is not a directory")
        locate = _media_locator(spec, media_dir, media_refs)
        notes += attach_media(splits, locate, sample_rate, frames, frame_size, f"{spec.name} media in {media_dir}",
                              media_store, media_workers, scan_only)
    else:
        notes.append("no data.media_dir: audio and video absent (text only)")
    return DialogueDataset(name=spec.name, labels=list(spec.labels), splits=splits, sample_rate=sample_rate,
                           source=str(path), notes=notes)


# ---- files and rows ---------------------------------------------------------------------------

def _locate_files(path: Path, spec: CsvSpec) -> list[tuple[Path, Optional[str]]]:
    """(file, split) pairs; split None means the rows carry a split column."""
    if path.is_file():
        if "split" not in spec.columns:
            raise DataError(f"{path}: a single file needs a split column (columns.split in the mapping); "
                            f"or give the directory holding one file per split")
        return [(path, None)]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory (data.path)")
    if spec.files:
        found = []
        for split in SPLITS:
            names = spec.files.get(split, [])
            hit = next((path / n for n in names if (path / n).is_file()), None)
            if hit is None:
                raise DataError(f"{path}: no {split} file; looked for {', '.join(names)}")
            found.append((hit, split))
        return found
    hit = next((path / n for n in spec.single_file if (path / n).is_file()), None)
    if hit is None:
        raise DataError(f"{path}: no data file; looked for {', '.join(spec.single_file)}")
    return [(hit, None)]


def _match_column(header: list[str], wanted: str) -> Optional[int]:
    if wanted in header:
        return header.index(wanted)
    lowered = [h.lower() for h in header]
    return lowered.index(wanted.lower()) if wanted.lower() in lowered else None


def _read_rows(file: Path, spec: CsvSpec, notes: list[str]) -> list[_Row]:
    try:
        data = file.read_bytes()
    except OSError as err:
        raise DataError(f"{file}: cannot read ({err.strerror})") from None
    text, repaired = decode_transcript(data, file)
    if repaired:
        notes.append(f"{file.name}: repaired {repaired} stray cp1252 byte(s)")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=spec.delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{file}: line 1: the file is empty (expected a header row)") from None
    except csv.Error as err:
        raise DataError(f"{file}: line 1: {err}") from None
    index: dict[str, list[int]] = {}
    missing = []
    for role, columns in spec.columns.items():
        for column in (columns if isinstance(columns, list) else [columns]):
            i = _match_column(header, column)
            if i is None:
                missing.append(f"'{column}' ({role})")     # a mapped column must exist, optional role or not
            else:
                index.setdefault(role, []).append(i)
    order_col = None
    if spec.order_by and spec.order_by not in spec.columns:
        order_col = _match_column(header, spec.order_by)
        if order_col is None:
            missing.append(f"'{spec.order_by}' (order_by)")
    if missing:
        raise DataError(f"{file}: line 1: missing column(s) {', '.join(missing)}; found: {', '.join(header)}")
    rows, line = [], reader.line_num
    try:
        for cells in reader:
            start, line = line + 1, reader.line_num        # a record may span lines: report its first
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(f"{file}: line {start}: {len(cells)} fields, but the header has {len(header)}")
            values = {role: ID_JOINER.join(cells[i].strip() for i in idx) for role, idx in index.items()}
            order = cells[order_col] if order_col is not None else values.get(spec.order_by, "")
            rows.append(_Row(start, values, order.strip()))
    except csv.Error as err:
        raise DataError(f"{file}: line {reader.line_num}: {err}") from None
    return rows


def _split_of(row: _Row, file: Path, spec: CsvSpec) -> str:
    raw = row.values["split"].strip()
    for split, values in spec.split_values.items():
        if raw.lower() in (v.lower() for v in values):
            return split
    valid = ", ".join(v for vs in spec.split_values.values() for v in vs)
    raise DataError(f"{file}: line {row.line}, column '{spec.columns['split']}': unknown split '{raw}'; valid: {valid}")


# ---- dialogues --------------------------------------------------------------------------------

def _natural_key(value: str):
    """Numbers sort as numbers ('utt2' < 'utt10'); used when an id is not a plain number."""
    return [(0, float(p), "") if re.fullmatch(r"\d+(\.\d+)?", p) else (1, 0.0, p)
            for p in re.findall(r"\d+(?:\.\d+)?|\D+", value)]


def _sort_key(values: list[str]):
    try:
        numbers = [float(v) for v in values]
        return lambda i: numbers[i]
    except ValueError:
        keys = [_natural_key(v) for v in values]
        return lambda i: keys[i]


def _dialogues(rows: list[tuple[Path, _Row]], spec: CsvSpec, split: str,
               media_refs: dict) -> tuple[list[Dialogue], int]:
    col = spec.columns
    label_index = {name: i for i, name in enumerate(spec.labels)}
    groups: dict[str, list[tuple[Path, _Row]]] = {}
    for file, row in rows:
        v = row.values
        did = v["dialogue_id"].strip()
        if not did:
            raise DataError(f"{file}: line {row.line}, column '{spec.column_name('dialogue_id')}': empty dialogue id")
        groups.setdefault(did, []).append((file, row))
    ids = list(groups)
    if all(re.fullmatch(r"-?\d+", d) for d in ids):
        ids.sort(key=int)                                      # MELD: Dialogue_ID order
    dialogues, dropped = [], 0
    for did in ids:
        members = groups[did]
        if spec.order_by:
            order_values = [r.order for _, r in members]
            for (file, r), value in zip(members, order_values):
                if not value:
                    column = col.get(spec.order_by, spec.order_by)
                    raise DataError(f"{file}: line {r.line}, column '{column}': empty value (utterances are ordered by it)")
            key = _sort_key(order_values)
            members = [members[i] for i in sorted(range(len(members)), key=key)]  # stable
        seen: dict[str, int] = {}
        utterances = []
        for position, (file, r) in enumerate(members):
            v = r.values
            uid = v.get("utterance_id", "").strip() if "utterance_id" in col else str(position)
            if "utterance_id" in col and not uid:
                raise DataError(f"{file}: line {r.line}, column '{col['utterance_id']}': empty utterance id")
            if uid in seen:
                raise DataError(f"{file}: line {r.line}, column '{col.get('utterance_id', '')}': duplicate "
                                f"utterance id '{uid}' in dialogue '{did}' (first on line {seen[uid]})")
            seen[uid] = r.line
            raw_label = v["label"].strip()
            if raw_label.lower() in spec.drop_labels:
                dropped += 1
                continue
            name = spec.label_map.get(raw_label.lower())
            if name is None:
                valid = ", ".join(spec.label_spellings or sorted(spec.label_map))
                raise DataError(f"{file}: line {r.line}, column '{col['label']}': unknown label '{raw_label}'; "
                                f"valid labels: {valid}")
            speaker = _speaker(v["speaker"], spec.speaker_format, f"{file}: line {r.line}, column '{col['speaker']}'")
            utt = Utterance(speaker=clean_text(speaker), text=clean_text(v["text"]), label=label_index[name],
                            utterance_id=uid)
            start, end = _time_range(v, file, r.line, col)
            media_refs[(split, did, uid)] = (v.get("wav", "").strip(), v.get("video", "").strip(), start, end,
                                             f"{file}: line {r.line}")
            utterances.append(utt)
        if utterances and not any(u.text for u in utterances):
            first, last = min(r.line for _, r in members), max(r.line for _, r in members)
            raise DataError(f"{members[0][0]}: lines {first}-{last}: dialogue '{did}' is empty: "
                            f"none of its {len(utterances)} utterances has text")
        if utterances:
            dialogues.append(Dialogue(dialogue_id=did, utterances=utterances))
    return dialogues, dropped


_CLOCK = re.compile(r"^(\d+):([0-5]?\d):([0-5]?\d(?:[.,]\d+)?)$")


def parse_time(cell: str) -> float:
    """Seconds from '12.5' or MELD's 'HH:MM:SS,mmm' ('0:00:02,345' -> 2.345); ValueError otherwise."""
    text = cell.strip()
    clock = _CLOCK.match(text)
    if clock:
        hours, minutes, seconds = clock.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds.replace(",", "."))
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _time_range(values: dict, file: Path, line: int, col: dict) -> tuple[Optional[float], Optional[float]]:
    """The utterance's (start, end) in seconds when the mapping names start/end columns, else (None, None)."""
    if "start" not in col and "end" not in col:
        return None, None
    times = []
    for role in ("start", "end"):
        try:
            times.append(parse_time(values.get(role, "")))
        except ValueError:
            raise DataError(f"{file}: line {line}, column '{col.get(role, role)}': {values.get(role, '')!r} is not "
                            f"a time (seconds like 12.5, or HH:MM:SS,mmm)") from None
    start, end = times
    if start < 0 or end < start:
        raise DataError(f"{file}: line {line}, columns '{col['start']}'/'{col['end']}': range {start:.3f}-{end:.3f} s "
                        f"{'starts before 0' if start < 0 else 'ends before it starts'}")
    return start, end


def _speaker(cell: str, speaker_format: str, where: str) -> str:
    """One speaker name from a cell. With speaker_format 'list' the cell is a Python or JSON list literal
    (`['Monica Geller']`); several names are one speaker, joined in the order written, so the same pair
    is always the same speaker. Parsed with ast.literal_eval (literals only, nothing is executed)."""
    text = cell.strip()
    if speaker_format == "list":
        try:
            names = ast.literal_eval(text) if text else []
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: speaker {text!r} is not a list literal such as ['Monica Geller'] "
                            f"(the mapping sets speaker_format: list)") from None
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{where}: speaker {text!r} must be a list of names")
        text = SPEAKER_JOINER.join(n.strip() for n in names if n.strip())
    if not text:
        raise DataError(f"{where}: empty speaker")
    return text


def _media_locator(spec: CsvSpec, media_dir: Path, media_refs: dict):
    """locate(split, dialogue, utterance) -> ClipPlace (files, the utterance's time range, its CSV line)."""
    split_dirs = {}
    for split in SPLITS:
        hit = next((media_dir / d for d in spec.media_split_dirs.get(split, []) if (media_dir / d).is_dir()), None)
        split_dirs[split] = hit or media_dir

    def resolve(value: str) -> Optional[Path]:
        if not value:
            return None
        p = Path(value)
        return p if p.is_absolute() else media_dir / p

    def locate(split: str, dialogue: Dialogue, utt: Utterance) -> ClipPlace:
        wav_ref, video_ref, start, end, where = media_refs[(split, dialogue.dialogue_id, utt.utterance_id)]
        wav, video = resolve(wav_ref), resolve(video_ref)
        if spec.media_pattern:
            stem = split_dirs[split] / spec.media_pattern.format(dialogue_id=dialogue.dialogue_id,
                                                                 utterance_id=utt.utterance_id)
            wav = wav or stem.with_name(stem.name + ".wav")
            video = video or find_video(stem)
        return ClipPlace(wav, video, where, start, end, spec.video_margin)

    return locate


# ---- YAML mapping ---------------------------------------------------------------------------

MAPPING_KEYS = ("name", "files", "file", "columns", "labels", "drop_labels", "split_values", "order_by",
                "delimiter", "media_pattern", "media_split_dirs", "speaker_format", "video_margin")


def load_mapping(mapping_path: str | Path) -> CsvSpec:
    """A CsvSpec from a YAML mapping (yaml.safe_load); errors name the mapping file and the key."""
    src = Path(mapping_path)
    data = read_yaml(src)
    if not isinstance(data, dict):
        raise DataError(f"{src}: expected a mapping at the top level (keys: {', '.join(MAPPING_KEYS)})")
    unknown = [k for k in data if k not in MAPPING_KEYS]
    if unknown:
        raise DataError(f"{src}: unknown key '{unknown[0]}'; valid keys: {', '.join(MAPPING_KEYS)}")

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise DataError(f"{src}: key '{key}' {msg}")

    columns = data.get("columns")
    need(isinstance(columns, dict), "columns", f"must map roles to column headers ({', '.join(ROLES)})")
    for role, header in columns.items():
        need(role in ROLES, f"columns.{role}", f"is not a role; valid roles: {', '.join(ROLES)}")
        if role == "dialogue_id" and isinstance(header, list):  # an id spread over columns: joined in order
            need(bool(header) and all(isinstance(h, str) and h for h in header), f"columns.{role}",
                 "must be a column header or a list of column headers (joined in order into one id)")
            continue
        need(header is None or isinstance(header, str), f"columns.{role}", "must be a column header (text)")
    columns = {role: header for role, header in columns.items() if header}
    for role in REQUIRED_ROLES:
        need(role in columns, f"columns.{role}", "is required")
    need(("start" in columns) == ("end" in columns), "columns.start", "and columns.end go together (a time range)")
    video_margin = data.get("video_margin", 0.0)
    need(isinstance(video_margin, (int, float)) and not isinstance(video_margin, bool) and video_margin >= 0,
         "video_margin", "must be a number of seconds >= 0 (frames come from [start - margin, end + margin])")

    labels_raw = data.get("labels")
    drop = {str(x).strip().lower() for x in (data.get("drop_labels") or [])}
    if isinstance(labels_raw, list) and labels_raw and all(isinstance(x, str) for x in labels_raw):
        labels = [x.strip() for x in labels_raw]
        label_map = {x.lower(): x for x in labels}
        spellings = list(labels)
    elif isinstance(labels_raw, dict) and labels_raw:
        labels, label_map, spellings = [], {}, []
        for raw, name in labels_raw.items():
            if name is None:                                 # raw: null drops those rows
                drop.add(str(raw).strip().lower())
                continue
            need(isinstance(name, str), f"labels.{raw}", "must be a label name (text) or null to drop")
            label_map[str(raw).strip().lower()] = name.strip()
            spellings.append(str(raw).strip())
            if name.strip() not in labels:
                labels.append(name.strip())
    else:
        need(False, "labels", "must be a list of labels or a mapping raw value -> label name")
    need(len(set(labels)) == len(labels), "labels", "lists a label twice")

    files, single = {}, []
    if "files" in data:
        need(isinstance(data["files"], dict) and set(data["files"]) == set(SPLITS), "files",
             f"must name one file for each of {', '.join(SPLITS)}")
        files = {s: [str(data["files"][s])] for s in SPLITS}
    if "file" in data:
        need(isinstance(data["file"], str), "file", "must be a file name")
        need("split" in columns, "columns.split", "is required with 'file' (one file holding every split)")
        single = [data["file"]]
    need(bool(files) != bool(single), "files", "or 'file' is required (not both)")

    split_values = {s: [s] for s in SPLITS}
    if data.get("split_values") is not None:
        sv = data["split_values"]
        need(isinstance(sv, dict) and set(sv) <= set(SPLITS), "split_values", f"must map {', '.join(SPLITS)} to values")
        for s, v in sv.items():
            split_values[s] = [str(x) for x in (v if isinstance(v, list) else [v])]
    order_by = data.get("order_by") or ""
    need(isinstance(order_by, str), "order_by", "must be a role or a column header")
    need(order_by not in ROLES or order_by in columns, "order_by", f"names role '{order_by}' but columns.{order_by} is not set")
    delimiter = data.get("delimiter", ",")
    need(isinstance(delimiter, str) and len(delimiter) == 1, "delimiter", "must be one character")
    pattern = data.get("media_pattern") or ""
    need(isinstance(pattern, str), "media_pattern", "must be text like 'dia{dialogue_id}_utt{utterance_id}'")
    try:
        pattern.format(dialogue_id="d", utterance_id="u")
    except (KeyError, IndexError, ValueError) as err:
        need(False, "media_pattern", f"may only use {{dialogue_id}} and {{utterance_id}} ({err})")
    msd = {s: [s] for s in SPLITS}
    if data.get("media_split_dirs") is not None:
        m = data["media_split_dirs"]
        need(isinstance(m, dict) and set(m) <= set(SPLITS), "media_split_dirs", f"must map {', '.join(SPLITS)} to folders")
        for s, v in m.items():
            msd[s] = [str(x) for x in (v if isinstance(v, list) else [v])]
    name = data.get("name", "csv")
    need(isinstance(name, str) and bool(name), "name", "must be a non-empty name")
    speaker_format = data.get("speaker_format", "plain")
    need(speaker_format in ("plain", "list"), "speaker_format",
         f"must be plain or list (cells like ['Monica Geller']), got {speaker_format!r}")
    return CsvSpec(name=name, labels=labels, label_map=label_map, columns=columns, files=files,
                   single_file=single, split_values=split_values, drop_labels=drop, order_by=order_by,
                   delimiter=delimiter, media_pattern=pattern, media_split_dirs=msd, speaker_format=speaker_format,
                   label_spellings=spellings, video_margin=float(video_margin))
