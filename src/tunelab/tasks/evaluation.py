"""Scoring one split: metrics, predictions CSV, confusion matrix, all in one place,
so every task writes the same files in the same form."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunelab.core.runs import RunDirectory


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
    or predicted-vs-gold scatter plot); return (metrics, text report). ``scores`` are a
    problem's scores (tunelab.problems.scores), which know their own columns, picture and
    metrics; ``inputs`` the input columns (text, pair, file)."""
    run.write_predictions(split, scores.columns(ids, inputs, class_names, y_true))
    scores.draw(run, split, y_true, class_names)
    metrics = scores.metrics(y_true, len(class_names))
    return metrics, scores.describe(y_true, class_names, metrics)


def skipped_record(names: list[str]) -> dict:
    """metrics.json's ``skipped``: how many unreadable inputs, and which."""
    return {"count": len(names), "files": list(names)}
