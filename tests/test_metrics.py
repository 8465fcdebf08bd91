"""model/metrics.py (numpy) gives exactly scikit-learn's scores, including absent and never-predicted classes."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from model.metrics import classification_scores, weighted_f1

LABELS = ["neutral", "joy", "anger", "fear", "sadness", "disgust", "surprise"]


@pytest.mark.parametrize("case", range(60))
def test_scores_equal_sklearn(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 80))
    present = rng.choice(len(LABELS), size=int(rng.integers(1, len(LABELS) + 1)), replace=False)
    y_true = rng.choice(present, size=n)
    # a mix of right answers and guesses, some of them classes absent from y_true
    y_pred = np.where(rng.random(n) < rng.random(), y_true, rng.integers(0, len(LABELS), size=n))
    scores = classification_scores(y_true, y_pred, LABELS)
    ids = list(range(len(LABELS)))
    assert scores["wf1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0), abs=1e-12)
    assert weighted_f1(y_true, y_pred) == pytest.approx(scores["wf1"], abs=1e-12)
    assert scores["mf1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
    assert scores["acc"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    per_class = f1_score(y_true, y_pred, labels=ids, average=None, zero_division=0)
    assert list(scores["f1"].values()) == pytest.approx(list(per_class), abs=1e-12)
    assert scores["confusion"] == confusion_matrix(y_true, y_pred, labels=ids).tolist()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        classification_scores([], [], LABELS)
    with pytest.raises(ValueError, match="equal"):
        classification_scores([0, 1], [0], LABELS)
    with pytest.raises(ValueError, match=">= 0"):
        weighted_f1([0, -1], [0, 0])
