"""One metrics function for every task, any number of classes.

``precision``/``recall``/``f1`` follow the reference convention: binary scores
of the positive class (index 1) for two classes, support-weighted averages
otherwise. The ``_macro`` forms are always present and average over the classes
present in the split (``classes_present``): a class with no example in a split
has no recall to average, and counting it as 0 would punish a perfect model.
``balanced_accuracy`` is the macro recall. The reference helper assumed two
classes; this one does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# scikit-learn is imported inside the functions: it takes most of a second, and the
# command line (help, flags) must not wait for it.


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    scores: np.ndarray | None = None,
    top_indices: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1 (reference convention and macro), n, and
    top-5 accuracy for more than five classes when per-class ``scores`` or the
    ``top_indices`` (n, >=5) of each example's best classes are given."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = list(range(num_classes))
    average = "binary" if num_classes == 2 else "weighted"
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, pos_label=1, zero_division=0
    )
    present = sorted(int(c) for c in np.unique(y_true)) or labels
    pm, rm, fm, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=present, average="macro", zero_division=0
    )
    result: dict[str, float | int] = {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "precision_macro": float(pm),
        "recall_macro": float(rm),
        "f1_macro": float(fm),
        "balanced_accuracy": float(rm),
        "classes_present": len(present) if len(y_true) else 0,
        "classes_predicted": int(len(np.unique(y_pred))) if len(y_pred) else 0,
        "n": int(len(y_true)),
    }
    if num_classes > 5:
        if top_indices is not None and top_indices.shape[1] >= 5:
            result["top5_accuracy"] = float(np.mean(np.any(top_indices[:, :5] == y_true[:, None], axis=1)))
        elif scores is not None:
            result["top5_accuracy"] = top_k_accuracy(y_true, scores, 5)
    return result


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    top = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


# Above this many classes a confusion matrix is written as its non-zero cells: a dense
# 5,000 x 5,000 matrix is 25 million numbers, most of them 0.
DENSE_CONFUSION_LIMIT = 500


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def confusion_cells(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero cells of the confusion matrix: ((true, predicted) pairs, counts), in
    O(n) memory whatever the number of classes."""
    cells, counts = np.unique(np.stack([np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)],
                                       axis=1).reshape(-1, 2), axis=0, return_counts=True)
    return cells, counts


def top_confused_pairs(cells: np.ndarray, counts: np.ndarray, class_names: Sequence[str], k: int = 10) -> list[dict]:
    """The most frequent (true, predicted) mistakes: readable where a 200x200 picture is not."""
    wrong = np.flatnonzero(cells[:, 0] != cells[:, 1]) if len(cells) else np.zeros(0, dtype=int)
    order = wrong[np.argsort(-counts[wrong], kind="stable")][:k]
    return [{"true": class_names[cells[i, 0]], "predicted": class_names[cells[i, 1]], "count": int(counts[i])}
            for i in order]


def text_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> str:
    from sklearn.metrics import classification_report

    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        digits=4,
        zero_division=0,
    )


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | int]:
    """Pearson and Spearman correlations, MSE, MAE and R^2 of predicted against gold values."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    constant = len(y_true) < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0
    return {
        "pearson": 0.0 if constant else float(pearsonr(y_true, y_pred)[0]),
        "spearman": 0.0 if constant else float(spearmanr(y_true, y_pred)[0]),
        "mse": float(mean_squared_error(y_true, y_pred)) if len(y_true) else 0.0,
        "mae": float(mean_absolute_error(y_true, y_pred)) if len(y_true) else 0.0,
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else 0.0,
        "n": int(len(y_true)),
    }


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None = None
                       ) -> dict[str, float | int]:
    """Micro, macro and samples F1, subset accuracy, Hamming loss, and the mean average
    precision of ``scores`` over the labels present in the split."""
    from sklearn.metrics import average_precision_score, f1_score, hamming_loss

    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    present = np.flatnonzero(y_true.sum(0) > 0)
    result: dict[str, float | int] = {
        "f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y_true[:, present], y_pred[:, present], average="macro", zero_division=0))
        if len(present) else 0.0,
        "f1_samples": float(f1_score(y_true, y_pred, average="samples", zero_division=0)),
        "subset_accuracy": float(np.mean((y_true == y_pred).all(1))) if len(y_true) else 0.0,
        "hamming_loss": float(hamming_loss(y_true, y_pred)) if len(y_true) else 0.0,
        "classes_present": int(len(present)),
        "n": int(len(y_true)),
    }
    if scores is not None and len(present):
        result["mean_average_precision"] = float(average_precision_score(y_true[:, present], scores[:, present],
                                                                         average="macro"))
    return result


# Metrics where less is better.
LOWER_IS_BETTER = frozenset({"loss", "mse", "mae", "hamming_loss"})


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over ``bins`` equal-width
    confidence bins weighted by how many predictions fall in each."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if not len(confidence):
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def below_majority(metrics: dict) -> list[str]:
    """Warnings for splits where a run does not beat the majority class, or beats it only
    by collapsing onto one class (or to chance balanced accuracy)."""
    if metrics.get("task", {}).get("kind") == "majority":
        return []  # the floor itself
    floors = metrics.get("data", {}).get("majority_accuracy", {})
    warnings = []
    for split, values in metrics["splits"].items():
        if split in floors and values.get("accuracy", 1.0) <= floors[split]:
            hint = ("too few training steps or a learning rate too high or too low (try more epochs, --lr)"
                    if metrics.get("command") in ("finetune", "clip-finetune") else
                    "features that do not separate the classes, or too few training examples")
            warnings.append(f"{split} accuracy {values['accuracy']:.4f} is not above the majority class "
                            f"({floors[split]:.4f}): the run learnt nothing useful; likely {hint}")
            continue
        present = values.get("classes_present", 0)
        if present > 1 and values.get("classes_predicted") == 1:
            warnings.append(f"{split}: the run predicts one class for every example (balanced accuracy "
                            f"{values.get('balanced_accuracy', 0):.4f}, chance {1 / present:.4f}): it collapsed; "
                            "likely too few training steps (try more epochs, --lr), or --class-weight balanced")
        elif present > 1 and "balanced_accuracy" in values and values["balanced_accuracy"] <= 1 / present + 0.02:
            warnings.append(f"{split} balanced accuracy {values['balanced_accuracy']:.4f} is at chance (1/{present} "
                            f"= {1 / present:.4f}): the run tells the classes apart no better than guessing")
    return warnings
