"""Ordered classes (star ratings, severity levels): classes whose order matters, so that
predicting 4 stars for a 5-star review is a smaller error than predicting 1.

- Training: cross-entropy plus the squared earth mover's distance between the predicted
  and the true cumulative distributions (Hou et al., 2016), an order-respecting loss on
  the usual classifier head, so ``model/`` still loads as a plain classifier.
- Prediction: the median of the predicted distribution (the class that minimises the
  expected absolute error), a class, never a number between classes.
- Probes: Frank and Hall's (2001) decomposition, one logistic regression per threshold
  "above class k" (a scikit-learn MultiOutputClassifier, saved with skops like every
  other head), combined into class probabilities.
- Metrics: those of classes plus MAE (in classes), quadratic weighted kappa (the
  headline) and Spearman's correlation of predicted and true ranks.
- Detection: whole-number labels forming a run of three or more values in a column
  named like a rating (``rating``, ``stars``, ``score``, ``grade``, ...); otherwise
  ``--problem ordinal``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tunelab.problems.base import OutputCollector
from tunelab.problems.labels import is_whole_number
from tunelab.problems.scores import ClassScores
from tunelab.problems.single_label import SingleLabel

RATING_COLUMNS = ("rating", "ratings", "stars", "star", "score", "scores", "grade", "severity", "level", "rank")


def median_class(probabilities: np.ndarray) -> np.ndarray:
    """The median of each row's distribution over ordered classes."""
    cumulative = np.cumsum(probabilities, axis=1)
    return np.minimum((cumulative < 0.5 - 1e-9).sum(axis=1), probabilities.shape[1] - 1).astype(np.int64)


def ordinal_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """MAE in classes, quadratic weighted kappa and Spearman's rank correlation."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if not len(y_true):
        return {"mae": 0.0, "qwk": 0.0, "spearman": 0.0}
    agree = len(set(y_true.tolist()) | set(y_pred.tolist())) > 1
    qwk = float(cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(range(num_classes)))) \
        if agree else 0.0
    rho = spearmanr(y_true, y_pred).statistic if len(set(y_pred.tolist())) > 1 and len(set(y_true.tolist())) > 1 \
        else 0.0
    return {"mae": float(np.mean(np.abs(y_true - y_pred))), "qwk": qwk if np.isfinite(qwk) else 0.0,
            "spearman": float(rho) if np.isfinite(rho) else 0.0}


@dataclasses.dataclass
class OrdinalScores(ClassScores):
    """Class scores of ordered classes: the prediction is a class, the metrics add MAE,
    quadratic weighted kappa and Spearman."""

    def metrics(self, y_true: np.ndarray, num_classes: int) -> dict:
        metrics = super().metrics(y_true, num_classes)
        return {**metrics, **ordinal_metrics(y_true, self.predicted, num_classes)}

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, kind: str = "probability") -> OrdinalScores:
        return cls.from_full(probabilities, kind, predicted=median_class(probabilities))


class Ordinal(SingleLabel):
    name = "ordinal"
    headline = "qwk"
    checkpoint_metric = "qwk"
    selection_metrics = ("qwk", "mae", "accuracy", "spearman", "f1_macro", "loss")
    metric_names = ("accuracy", "f1_macro", "mae", "qwk", "spearman")
    default_classifier = "logreg"
    classifiers = ("logreg",)
    card_metrics = ("qwk", "mae", "accuracy")
    serves_as = "single-label"  # a task that takes classes takes ordered classes

    def claims(self, values: Sequence[object], separator: str | None, column: str | None) -> bool:
        present = [v for v in values if v is not None]
        if separator or not present or str(column or "").lower() not in RATING_COLUMNS:
            return False
        if not all(is_whole_number(v) for v in present):
            return False
        distinct = sorted({int(float(v)) for v in present})
        return len(distinct) >= 3 and distinct == list(range(distinct[0], distinct[-1] + 1))

    # ------------------------------------------------------------------ models and scores

    def scores_from_matrix(self, raw, kind):
        scores = super().scores_from_matrix(raw, kind)
        return OrdinalScores(*(getattr(scores, f.name) for f in dataclasses.fields(scores)))

    def scores_from_outputs(self, outputs, threshold: float = 0.5):
        import torch

        probabilities = torch.softmax(torch.as_tensor(outputs).float(), dim=-1).numpy()
        return OrdinalScores.from_probabilities(probabilities)

    def collector(self, n: int, num_outputs: int, threshold: float = 0.5):
        return OutputCollector(self, n, num_outputs, threshold)  # every class's probability: the median needs them

    def compact_outputs(self, logits):
        import torch

        cumulative = torch.softmax(logits.float(), dim=-1).cumsum(dim=-1)
        return (cumulative < 0.5 - 1e-9).sum(dim=-1).clamp(max=logits.shape[-1] - 1)

    def scores_from_compact(self, outputs, num_classes: int):
        return OrdinalScores.from_full(np.eye(num_classes)[np.asarray(outputs)], "indicator")

    def loss(self, logits, labels, weights):
        """Cross-entropy plus the squared EMD of the cumulative distributions (the
        distance between neighbouring classes is one)."""
        import torch
        import torch.nn.functional as F

        labels = labels.long()
        cross_entropy = F.cross_entropy(logits, labels, weight=weights)
        predicted = torch.softmax(logits.float(), dim=-1).cumsum(dim=-1)
        target = (torch.arange(logits.shape[-1], device=logits.device)[None, :] >= labels[:, None]).float()
        return cross_entropy + ((predicted - target) ** 2).sum(dim=-1).mean()

    def jointly_fitted_outputs(self, y_train, y_val):
        return None  # one binary model per threshold

    def needs_own_loss(self, weighted: bool) -> bool:
        return True  # the model's own loss (cross-entropy) knows no order

    def prior_scores(self, prior, n, num_classes, threshold: float = 0.5):
        full = np.zeros(num_classes)
        full[: len(prior)] = prior
        return OrdinalScores.from_probabilities(np.tile(full, (n, 1)))

    # ------------------------------------------------------------------ classical estimators

    def estimator(self, kind, c, seed, class_weight, max_iter):
        from sklearn.linear_model import LogisticRegression
        from sklearn.multioutput import MultiOutputClassifier

        return MultiOutputClassifier(LogisticRegression(C=c, max_iter=max_iter, class_weight=class_weight,
                                                        random_state=seed))

    def fit_targets(self, labels: np.ndarray) -> np.ndarray:
        """Frank and Hall's targets: for every threshold k, whether the class is above k."""
        labels = np.asarray(labels, dtype=np.int64)
        return (labels[:, None] > np.arange(max(int(labels.max()), 1))[None, :]).astype(np.int64)

    def estimator_scores(self, estimator, features, num_classes, threshold: float = 0.5):
        model = estimator[-1] if hasattr(estimator, "steps") else estimator
        if hasattr(estimator, "steps"):
            features = estimator[:-1].transform(features)
        above = np.stack([p[:, 1] if p.shape[1] > 1 else np.zeros(len(p)) for p in model.predict_proba(features)],
                         axis=1)  # P(y > k), k = 0 .. K-2
        above = np.minimum.accumulate(above, axis=1)  # each threshold no likelier than the one below it
        cumulative = np.concatenate([1 - above, np.ones((len(above), 1))], axis=1)
        probabilities = np.clip(np.diff(np.concatenate([np.zeros((len(above), 1)), cumulative], axis=1), axis=1),
                                0, 1)
        if probabilities.shape[1] < num_classes:  # classes above the highest one train had
            probabilities = np.pad(probabilities, ((0, 0), (0, num_classes - probabilities.shape[1])))
        return OrdinalScores.from_probabilities(probabilities)
