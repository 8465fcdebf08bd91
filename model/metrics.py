"""Classification scores for emotion recognition in conversation (what the reports tabulate).

wf1 = F1 averaged with class supports as weights (the field's headline number), acc = accuracy,
mf1 = unweighted mean F1 over the classes that occur in the true or the predicted labels (sklearn's
default set: a class absent from a split does not drag the mean to 0), per-class F1 for every label
(0.0 when a class neither occurs nor is predicted), and the confusion matrix (rows = true label,
columns = predicted, both in `labels` order).

Computed from one confusion matrix with numpy, equal to scikit-learn's `f1_score(..., zero_division=0)`
(tests/test_metrics.py checks it): importing sklearn.metrics costs every trial and stage-1 worker
process about 1.7 s on a 2-core machine, more than a demo trial's epoch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_labels(values: Sequence[int]) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64).ravel()
    if array.size and array.min() < 0:
        raise ValueError(f"class ids must be >= 0 (got {int(array.min())})")
    return array


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = 0) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted; C = max(num_classes, largest id + 1)."""
    y_true, y_pred = _as_labels(y_true), _as_labels(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"need equal label and prediction arrays (got {y_true.shape} and {y_pred.shape})")
    n = max(num_classes, int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1, 1)
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def _per_class_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F1 per class (0 where a class is neither true nor predicted), true support, predicted count)."""
    true_pos = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    denominator = (support + predicted).astype(np.float64)
    f1 = np.divide(2 * true_pos, denominator, out=np.zeros_like(true_pos), where=denominator > 0)
    return f1, support, predicted


def _support_weighted(f1: np.ndarray, support: np.ndarray) -> float:
    total = support.sum()
    return float((f1 * support).sum() / total) if total else 0.0


def weighted_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Support-weighted mean of per-class F1 (0.0 for a class never predicted); stage 1 selects its epoch by it."""
    f1, support, _ = _per_class_f1(confusion(y_true, y_pred))
    return _support_weighted(f1, support)


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """-> {"wf1", "acc", "mf1": float, "f1": {label: float}, "confusion": list[list[int]]}."""
    y_true, y_pred = _as_labels(y_true), _as_labels(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"need equal, non-empty label and prediction arrays (got {y_true.shape} and {y_pred.shape})")
    matrix = confusion(y_true, y_pred, len(labels))
    f1, support, predicted = _per_class_f1(matrix)
    occurring = (support + predicted) > 0
    k = len(labels)
    return {
        "wf1": _support_weighted(f1, support),
        "acc": float(np.diag(matrix).sum() / y_true.size),
        "mf1": float(f1[occurring].mean()),
        "f1": {name: float(score) for name, score in zip(labels, f1[:k])},
        "confusion": matrix[:k, :k].tolist(),
    }
