"""Classification scores for emotion recognition in conversation (what the reports tabulate).

wf1 = F1 averaged with class supports as weights (the field's headline number), acc = accuracy,
mf1 = unweighted mean F1 over the classes that occur in the true or the predicted labels (sklearn's
default set: a class absent from a split does not drag the mean to 0), per-class F1 for every label
(0.0 when a class neither occurs nor is predicted), and the confusion matrix (rows = true label,
columns = predicted, both in `labels` order).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def weighted_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Support-weighted mean of per-class F1 (0.0 for a class never predicted); stage 1 selects its epoch by it."""
    return float(f1_score(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64),
                          average="weighted", zero_division=0))


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """-> {"wf1", "acc", "mf1": float, "f1": {label: float}, "confusion": list[list[int]]}."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"need equal, non-empty label and prediction arrays (got {y_true.shape} and {y_pred.shape})")
    ids = list(range(len(labels)))
    per_class = f1_score(y_true, y_pred, labels=ids, average=None, zero_division=0)
    return {
        "wf1": weighted_f1(y_true, y_pred),
        "acc": float(accuracy_score(y_true, y_pred)),
        "mf1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "f1": {name: float(score) for name, score in zip(labels, per_class)},
        "confusion": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }
