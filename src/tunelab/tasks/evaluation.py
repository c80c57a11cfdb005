"""Scoring one split: metrics, predictions CSV, confusion matrix, all in one place,
so every task writes the same files in the same form."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunelab.core.runs import RunDirectory
from tunelab.problems.metrics import DENSE_CONFUSION_LIMIT, confusion, confusion_cells, text_report, top_confused_pairs
from tunelab.problems.scores import (
    MAX_SCORE_COLUMNS,
    TOP_K,
    ClassScores,
    LabelScores,
    ValueScores,
    label_set_text,
    split_metrics,
)


def prediction_columns(
    ids: Sequence[str],
    inputs: dict[str, Sequence],
    class_names: Sequence[str],
    scores: ClassScores,
    y_true: np.ndarray | None = None,
) -> dict[str, list]:
    """Rows of a predictions table: id, the input, label and prediction as class names, scores."""
    names = np.asarray(class_names, dtype=object)
    columns: dict[str, list] = {"id": list(ids), **{k: list(v) for k, v in inputs.items()}}
    if y_true is not None:
        columns["label"] = names[y_true].tolist()
    columns["prediction"] = names[scores.predicted].tolist()
    columns[scores.kind] = scores.score.tolist()
    if scores.full is not None:
        for index, name in enumerate(class_names):
            columns[f"{scores.kind}_{name}"] = scores.full[:, index].tolist()
    else:
        columns["top5"] = [" | ".join(names[row]) for row in scores.top_indices]
    return columns


def evaluate_split(
    run: RunDirectory,
    split: str,
    class_names: Sequence[str],
    y_true: np.ndarray,
    scores,
    ids: Sequence[str],
    inputs: dict[str, Sequence],
) -> tuple[dict, str]:
    """Score one split and write its predictions table and its picture (confusion matrix,
    or predicted-vs-gold scatter plot); return (metrics, text report). ``scores`` is a
    ClassScores, LabelScores or ValueScores; ``inputs`` the input columns (text, pair, file)."""
    if isinstance(scores, ValueScores):
        columns = {"id": list(ids), **{k: list(v) for k, v in inputs.items()}, "label": y_true.tolist(),
                   "prediction": scores.values.tolist()}
        run.write_predictions(split, columns)
        run.write_scatter(split, y_true, scores.values)
        metrics = split_metrics(y_true, scores, 0)
        return metrics, "\n".join(f"{k}: {v:.4f}" for k, v in metrics.items() if k != "n")
    if isinstance(scores, LabelScores):
        columns = {"id": list(ids), **{k: list(v) for k, v in inputs.items()},
                   "label": [label_set_text(r, class_names) for r in y_true],
                   "prediction": [label_set_text(r, class_names) for r in scores.predicted]}
        if len(class_names) <= MAX_SCORE_COLUMNS:
            for index, name in enumerate(class_names):
                columns[f"{scores.kind}_{name}"] = scores.scores[:, index].tolist()
        else:
            top = np.argsort(-scores.scores, axis=1)[:, :TOP_K]
            columns["top5"] = [" | ".join(class_names[i] for i in row) for row in top]
        run.write_predictions(split, columns)
        return split_metrics(y_true, scores, len(class_names)), text_report(y_true.astype(int),
                                                                            scores.predicted.astype(int),
                                                                            class_names)
    num_classes = len(class_names)
    metrics = split_metrics(y_true, scores, num_classes)
    run.write_predictions(split, prediction_columns(ids, inputs, class_names, scores, y_true))
    cells, counts = confusion_cells(y_true, scores.predicted)
    top = top_confused_pairs(cells, counts, class_names)
    if num_classes <= DENSE_CONFUSION_LIMIT:
        run.write_confusion(split, confusion(y_true, scores.predicted, num_classes), class_names, top)
    else:
        run.write_sparse_confusion(split, cells, counts, class_names, top)
    return metrics, text_report(y_true, scores.predicted, class_names)


def skipped_record(names: list[str]) -> dict:
    """metrics.json's ``skipped``: how many unreadable inputs, and which."""
    return {"count": len(names), "files": list(names)}
