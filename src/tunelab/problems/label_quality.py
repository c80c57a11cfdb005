"""Likely label errors from out-of-fold predictions: a logistic-regression probe fitted
by k-fold cross-validation on the encoder's features (its C chosen by out-of-fold log
loss), then confident learning (Northcutt, Jiang and Chuang, JAIR 2021), as cleanlab's
``find_label_issues`` does by default (prune by noise rate).

Implemented here rather than imported: cleanlab is AGPL-3.0 and tunelab is MIT, so
cleanlab can be neither a dependency nor copied; the published method is a few array
operations, and a test checks that it flags the same examples as cleanlab on the same
probabilities. Label sets are audited label by label (each a two-class problem);
numbers by out-of-fold ridge residuals."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

C_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclasses.dataclass
class LabelIssues:
    """Flagged rows (positions), the score that ranks them (higher: more likely wrong),
    the suggested label (a class index, a label index for label sets, or a value), and
    each row's self-confidence (probability of its given label). ``suggestions`` and
    ``per_class`` are filled by the problem that made them (labels as text; label quality
    per class or per label)."""

    rows: np.ndarray
    scores: np.ndarray
    suggested: np.ndarray
    self_confidence: np.ndarray
    label_of_issue: np.ndarray | None = None  # label sets: which label of the row is in doubt
    notes: dict = dataclasses.field(default_factory=dict)
    suggestions: list[str] = dataclasses.field(default_factory=list)
    per_class: list[dict] = dataclasses.field(default_factory=list)


def class_issues(features: np.ndarray, labels: np.ndarray, names: list[str], folds: int = 5,
                 seed: int = 0) -> LabelIssues:
    """One class per example: confident learning on out-of-fold probabilities."""
    probabilities, c = out_of_fold_probabilities(features, labels, folds, seed)
    found = confident_learning(labels, probabilities)
    found.suggestions = [names[k] for k in found.suggested]
    found.per_class = class_label_quality(labels, found, names)
    found.notes = {"method": "confident learning (prune by noise rate) on out-of-fold logistic-regression "
                             "probabilities", "C": c, "folds": folds}
    return found


def label_set_issues_named(features: np.ndarray, targets: np.ndarray, names: list[str], folds: int = 5,
                           seed: int = 0) -> LabelIssues:
    """Label sets: each doubt says which label to add or remove."""
    found = label_set_issues(features, targets, folds, seed)
    found.suggestions = [f"{'add' if targets[row, label] == 0 else 'remove'} {names[label]}"
                         for row, label in zip(found.rows, found.label_of_issue)]
    flagged = Counter(names[label] for label in found.label_of_issue)
    found.per_class = [{"class": name, "n": int(targets[:, k].sum()), "flagged": int(flagged.get(name, 0)),
                        "flagged_share": float(flagged.get(name, 0) / max(1, len(targets)))}
                       for k, name in enumerate(names)]
    found.notes = {"method": "confident learning per label on out-of-fold logistic-regression probabilities",
                   "folds": folds}
    return found


def value_issues_named(features: np.ndarray, values: np.ndarray, folds: int = 5, seed: int = 0) -> LabelIssues:
    """Numbers: the suggestion is the out-of-fold prediction."""
    found = value_issues(features, values, folds, seed)
    found.suggestions = [f"{v:.4g}" for v in found.suggested]
    found.notes = {"method": "out-of-fold ridge residuals", **found.notes, "folds": folds}
    return found


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int = 5,
                              seed: int = 0) -> tuple[np.ndarray, float]:
    """(n, classes) out-of-fold class probabilities of a standardised logistic regression,
    and the C chosen (the one of C_GRID with the lowest out-of-fold log loss)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels).min(initial=0)) if len(labels) else 0
    folds = max(2, min(folds, smallest)) if smallest >= 2 else 2
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    best = None
    for c in C_GRID:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        probabilities = cross_val_predict(model, features, labels, cv=splitter, method="predict_proba")
        loss = log_loss(labels, np.clip(probabilities, 1e-12, 1), labels=np.arange(probabilities.shape[1]))
        if best is None or loss < best[0]:
            best = (loss, c, probabilities)
    return best[2], best[1]


def confident_learning(labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    """Rows whose given label is likely wrong: the confident joint of given and
    confidently predicted labels, calibrated to the class counts, and for every
    off-diagonal cell (given i, likely j) the rows of class i with the largest margin
    p_j - p_i, as many as the cell estimates; never a row the model agrees with, and
    at least one row of each class kept. Ranked by 1 - self-confidence."""
    n, classes = probabilities.shape
    counts = np.bincount(labels, minlength=classes)
    self_confidence = probabilities[np.arange(n), labels]
    thresholds = np.array([probabilities[labels == k, k].mean() if counts[k] else np.inf for k in range(classes)])
    above = probabilities >= thresholds - 1e-6 * np.abs(thresholds)
    confident = np.where(above.any(axis=1), np.where(above, probabilities, -np.inf).argmax(axis=1), -1)
    joint = np.zeros((classes, classes))
    for given, likely in zip(labels[confident >= 0], confident[confident >= 0]):
        joint[given, likely] += 1
    row_sums = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint * counts[:, None], row_sums, out=np.zeros_like(joint), where=row_sums > 0)
    to_remove = np.rint(calibrated).astype(int)
    np.fill_diagonal(to_remove, 0)
    predicted = probabilities.argmax(axis=1)
    flagged = np.zeros(n, dtype=bool)
    for given in range(classes):
        members = np.flatnonzero(labels == given)
        budget = max(0, len(members) - 1)  # keep at least one row of every class
        for likely in range(classes):
            take = min(to_remove[given, likely], budget)
            if likely == given or take <= 0:
                continue
            margin = probabilities[members, likely] - probabilities[members, given]
            chosen = members[np.argsort(-margin, kind="stable")[:take]]
            flagged[chosen] = True
    flagged &= predicted != labels
    rows = np.flatnonzero(flagged)
    rows = rows[np.argsort(self_confidence[rows], kind="stable")]
    return LabelIssues(rows, 1.0 - self_confidence[rows], predicted[rows], self_confidence)


def class_label_quality(labels: np.ndarray, issues: LabelIssues, names: list[str]) -> list[dict]:
    """Per class: examples, flagged examples and their share, mean self-confidence."""
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[issues.rows] = True
    out = []
    for k, name in enumerate(names):
        members = labels == k
        if members.any():
            out.append({"class": name, "n": int(members.sum()), "flagged": int(flagged[members].sum()),
                        "flagged_share": float(flagged[members].mean()),
                        "mean_self_confidence": float(issues.self_confidence[members].mean())})
    return out


def label_set_issues(features: np.ndarray, targets: np.ndarray, folds: int = 5, seed: int = 0) -> LabelIssues:
    """Label sets, label by label: each label's out-of-fold probability and confident
    learning on that two-class problem; a row may be flagged for several labels."""
    rows, scores, suggested, which = [], [], [], []
    confidence = np.ones(targets.shape)
    for label in range(targets.shape[1]):
        given = targets[:, label].astype(int)
        if given.min() == given.max():
            continue
        probabilities, _ = out_of_fold_probabilities(features, given, folds, seed)
        found = confident_learning(given, probabilities)
        confidence[:, label] = found.self_confidence
        rows += found.rows.tolist()
        scores += found.scores.tolist()
        suggested += found.suggested.tolist()
        which += [label] * len(found.rows)
    order = np.argsort(-np.asarray(scores), kind="stable")
    pick = lambda values, dtype: np.asarray(values, dtype=dtype)[order]  # noqa: E731
    return LabelIssues(pick(rows, int), pick(scores, float), pick(suggested, int), confidence.min(axis=1),
                       pick(which, int))


def value_issues(features: np.ndarray, values: np.ndarray, folds: int = 5, seed: int = 0,
                 z_limit: float = 3.5) -> LabelIssues:
    """Numbers: out-of-fold ridge predictions; rows whose residual lies more than
    ``z_limit`` robust standard deviations (1.4826 x the median absolute deviation) from
    the median residual, largest first; the suggestion is the predicted value."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    predicted = cross_val_predict(model, features, values, cv=KFold(folds, shuffle=True, random_state=seed))
    residual = values - predicted
    spread = 1.4826 * np.median(np.abs(residual - np.median(residual))) or float(np.std(residual)) or 1.0
    z = np.abs(residual - np.median(residual)) / spread
    rows = np.flatnonzero(z > z_limit)
    rows = rows[np.argsort(-z[rows], kind="stable")]
    return LabelIssues(rows, z[rows], predicted[rows], np.zeros(len(values)),
                       notes={"robust_sd_of_residuals": float(spread), "z_limit": z_limit})
