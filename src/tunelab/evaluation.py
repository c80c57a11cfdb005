"""Scoring one split: metrics, predictions CSV, confusion matrix, all in one place,
so every task writes the same files in the same form."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunelab.metrics import classification_metrics, confusion, text_report, top_confused_pairs
from tunelab.runs import RunDirectory

# Per-class score columns in predictions CSVs up to this many classes; beyond, top-5.
MAX_SCORE_COLUMNS = 10


def prediction_columns(
    ids: Sequence[str],
    inputs: tuple[str, Sequence[str]],
    class_names: Sequence[str],
    y_pred: np.ndarray,
    scores: np.ndarray,
    y_true: np.ndarray | None = None,
    score_kind: str = "score",
) -> dict[str, list]:
    """Rows of a predictions table: id, the input, label and prediction as class names, scores."""
    names = np.asarray(class_names, dtype=object)
    columns: dict[str, list] = {"id": list(ids), inputs[0]: list(inputs[1])}
    if y_true is not None:
        columns["label"] = names[y_true].tolist()
    columns["prediction"] = names[y_pred].tolist()
    columns[score_kind] = scores[np.arange(len(y_pred)), y_pred].tolist()
    if len(class_names) <= MAX_SCORE_COLUMNS:
        for index, name in enumerate(class_names):
            columns[f"{score_kind}_{name}"] = scores[:, index].tolist()
    else:
        top = np.argsort(-scores, axis=1)[:, :5]
        columns["top5"] = [" | ".join(names[row]) for row in top]
    return columns


def evaluate_split(
    run: RunDirectory,
    split: str,
    class_names: Sequence[str],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    scores: np.ndarray,
    ids: Sequence[str],
    inputs: tuple[str, Sequence[str]],
    score_kind: str = "score",
) -> tuple[dict, str]:
    """Write the split's predictions and confusion matrix; return (metrics, text report)."""
    num_classes = len(class_names)
    metrics = classification_metrics(y_true, y_pred, num_classes, scores)
    run.write_predictions(
        split, prediction_columns(ids, inputs, class_names, y_pred, scores, y_true, score_kind)
    )
    matrix = confusion(y_true, y_pred, num_classes)
    run.write_confusion(split, matrix, class_names, top_confused_pairs(matrix, class_names))
    return metrics, text_report(y_true, y_pred, class_names)
