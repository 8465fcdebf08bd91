"""Per-utterance predictions at the selected epoch: the file behind every trial's MLflow artifact `predictions.csv`.

One line per dev and test utterance, in the split's dialogue order:

    split,dialogue_id,utterance_id,gold,predicted,p_<label 1>,...,p_<label K>

`gold` and `predicted` are label names; the probabilities are the softmax of the prediction head. The report's
significance test resamples test dialogues from these files (reports/stats.py), so they must let two trials
of one sweep be paired utterance by utterance: ids come from the dataset, the same for every trial.
"""
from __future__ import annotations

import csv
import io

PREDICTIONS_FILE = "predictions.csv"
SPLITS = ("dev", "test")


def utterance_ids(dataset, splits=SPLITS) -> dict[str, list[tuple[str, str]]]:
    """(dialogue id, utterance id) per row of each split, in the order stage 1 writes its rows."""
    out = {}
    for split in splits:
        rows = []
        for d, dialogue in enumerate(dataset.splits.get(split, [])):
            did = dialogue.dialogue_id or f"d{d}"
            rows.extend((did, u.utterance_id or f"{did}_u{i}") for i, u in enumerate(dialogue.utterances))
        out[split] = rows
    return out


def positional_ids(dialogue_lengths: list[int]) -> list[tuple[str, str]]:
    """Ids from positions alone (data without ids, e.g. the authors' released features)."""
    return [(f"d{d}", f"d{d}_u{i}") for d, n in enumerate(dialogue_lengths) for i in range(n)]


def predictions_csv(selected: dict, ids: dict[str, list[tuple[str, str]]], labels: list[str]) -> str:
    """The CSV text for the selected epoch `selected` (train._select's record); '' when it holds no predictions
    (before the first epoch, or a selection restored from a checkpoint written before predictions existed)."""
    if not any((selected.get(split) or {}).get("predictions") for split in SPLITS):
        return ""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["split", "dialogue_id", "utterance_id", "gold", "predicted"] + [f"p_{lbl}" for lbl in labels])
    for split in SPLITS:
        rows = (selected.get(split) or {}).get("predictions")
        if not rows:
            continue
        for (did, uid), gold, pred, probs in zip(ids[split], rows["gold"], rows["predicted"], rows["probabilities"]):
            writer.writerow([split, did, uid, labels[gold], labels[pred]] + [f"{p:.5f}" for p in probs])
    return buf.getvalue()


def read_predictions(text: str, split: str = "test") -> dict:
    """-> {"dialogue_ids": [...], "utterance_ids": [...], "gold": [...], "predicted": [...]} for one split,
    labels as names; a missing column raises ValueError naming it."""
    reader = csv.DictReader(io.StringIO(text))
    need = ["split", "dialogue_id", "utterance_id", "gold", "predicted"]
    missing = [c for c in need if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{PREDICTIONS_FILE}: missing column(s) {', '.join(missing)}")
    out = {"dialogue_ids": [], "utterance_ids": [], "gold": [], "predicted": []}
    for row in reader:
        if row["split"] == split:
            out["dialogue_ids"].append(row["dialogue_id"])
            out["utterance_ids"].append(row["utterance_id"])
            out["gold"].append(row["gold"])
            out["predicted"].append(row["predicted"])
    return out
