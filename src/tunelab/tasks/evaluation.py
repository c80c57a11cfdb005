"""Scoring one split: metrics, predictions CSV, confusion matrix, all in one place,
so every task writes the same files in the same form."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np

from tunelab.core.runs import RunDirectory
from tunelab.data.duplicates import copies_of, split_keys
from tunelab.problems.scores import take_rows


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


def deduplicated_metrics(dataset, scored: dict, num_classes: int) -> dict[str, dict]:
    """Each evaluated text split scored again without its copies of training rows (exact
    after normalising, or near: character 4-gram Jaccard >= 0.7), where it has any: the
    number a leak inflates, beside the plain one."""
    train = dataset.splits.get("train")
    if train is None or not len(train) or not hasattr(train, "texts"):
        return {}
    reference = split_keys(train)
    out = {}
    for split, part in scored.items():
        if split == "train" or "text" not in part.inputs:
            continue
        rows = SimpleNamespace(texts=list(part.inputs["text"]), pairs=part.inputs.get("text_pair"))
        copied = copies_of(reference, split_keys(rows))
        if not copied.any() or copied.all():
            continue
        keep = np.flatnonzero(~copied)
        out[split] = {"copies_of_train": int(copied.sum()), "n": len(keep),
                      "metrics": take_rows(part.scores, keep).metrics(part.labels[keep], num_classes)}
    return out


def skipped_record(names: list[str]) -> dict:
    """metrics.json's ``skipped``: how many unreadable inputs, and which."""
    return {"count": len(names), "files": list(names)}
