import numpy as np
import pytest

from tunelab.problems.metrics import classification_metrics, confusion_cells, top_confused_pairs, top_k_accuracy


def test_binary_uses_positive_class():
    y_true = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    y_pred = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    m = classification_metrics(y_true, y_pred, 2)
    # positive class: tp=2, fp=1, fn=1
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # negative class: tp=4, fp=1, fn=1 -> 0.8 each; macro is the mean of both classes
    assert m["precision_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["n"] == 8


def test_multiclass_is_support_weighted_and_macro():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, 3)
    recalls = np.array([3 / 4, 2 / 2, 1 / 2])
    support = np.array([4, 2, 2])
    assert m["recall"] == pytest.approx((recalls * support).sum() / 8)
    assert m["recall_macro"] == pytest.approx(recalls.mean())
    assert m["recall"] == pytest.approx(m["accuracy"])  # weighted recall is accuracy
    assert "top5_accuracy" not in m


def test_class_absent_from_predictions_counts_as_zero():
    # Class 3 has no example in the split: the macro averages are over classes 0-2.
    m = classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), 4)
    assert m["precision_macro"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["classes_present"] == 3


def test_macro_metrics_average_over_the_classes_present_in_the_split():
    """Perfect predictions on a split that holds 3 of 10 classes are perfect (not 0.3)."""
    y = np.array([0, 4, 7, 0, 4, 7])
    m = classification_metrics(y, y.copy(), 10)
    assert m["f1_macro"] == m["precision_macro"] == m["recall_macro"] == m["balanced_accuracy"] == 1.0
    assert m["classes_present"] == 3
    # A wrong prediction into an absent class still costs the true class its recall.
    m = classification_metrics(y, np.array([0, 4, 7, 0, 4, 9]), 10)
    assert m["recall_macro"] == pytest.approx((1 + 1 + 0.5) / 3) == m["balanced_accuracy"]


def test_top5_with_scores():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 10))
    y_true = np.argsort(-scores, axis=1)[:, 4]  # the 5th best: inside the top 5
    y_true[:10] = np.argsort(-scores[:10], axis=1)[:, 5]  # the 6th best: outside
    m = classification_metrics(y_true, scores.argmax(1), 10, scores)
    assert m["top5_accuracy"] == pytest.approx(40 / 50)
    assert top_k_accuracy(y_true, scores, 1) == m["accuracy"]


def test_top_confused_pairs():
    matrix = np.array([[5, 3, 0], [1, 4, 0], [0, 7, 2]])
    y_true = np.repeat(np.repeat(np.arange(3), 3), matrix.ravel())
    y_pred = np.repeat(np.tile(np.arange(3), 3), matrix.ravel())
    cells, counts = confusion_cells(y_true, y_pred)
    assert {tuple(c): n for c, n in zip(cells.tolist(), counts.tolist())} == \
        {(t, p): int(matrix[t, p]) for t in range(3) for p in range(3) if matrix[t, p]}
    pairs = top_confused_pairs(cells, counts, ["a", "b", "c"], k=2)
    assert pairs == [{"true": "c", "predicted": "b", "count": 7}, {"true": "a", "predicted": "b", "count": 3}]
