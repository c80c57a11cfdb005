"""A number per example."""

from __future__ import annotations

from typing import Any

import numpy as np

from tunelab.core.errors import DataError
from tunelab.problems.base import Problem
from tunelab.problems.label_quality import LabelIssues, value_issues_named
from tunelab.problems.labels import LabelSpace, is_real_number, is_whole_number, regression_targets
from tunelab.problems.scores import ValueScores


class Regression(Problem):
    name = "regression"
    headline = "spearman"
    checkpoint_metric = "spearman"
    selection_metrics = ("spearman", "pearson", "mse", "mae", "r2", "loss")
    hf_problem_type = "regression"
    default_classifier = "ridge"
    classifiers = ("ridge",)
    card_metrics = ("spearman", "pearson", "mse")
    has_classes = False
    shots_allowed = False
    metric_names = ("pearson", "spearman", "mse", "r2")

    def claims(self, values, separator, column) -> bool:
        present = [v for v in values if v is not None]
        return bool(present) and not separator and all(is_real_number(v) for v in present) \
            and not all(is_whole_number(v) for v in present)

    def encode_targets(self, labels, train_key, cfg, label_names):
        if cfg.class_weight:
            raise DataError("--class-weight balances classes, and a regression task has none; drop it")
        return LabelSpace((), (), self.name), {name: regression_targets(cells, name, source, ids)
                                               for name, (cells, source, ids) in labels.items()}

    def strata(self, labels):
        labels = np.asarray(labels)
        ranks = np.argsort(np.argsort(labels, kind="stable"), kind="stable")
        return (ranks * 10 // max(len(labels), 1)).astype(np.int64)  # deciles

    def target_counts(self, labels, class_names) -> dict[str, Any]:
        labels = np.asarray(labels)
        return {stat: float(fn(labels)) if len(labels) else 0.0
                for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}

    def head_labels(self, class_names):
        return {0: "value"}

    def scores_from_outputs(self, outputs, threshold: float = 0.5):
        return ValueScores(np.asarray(outputs, dtype=np.float32).reshape(-1).astype(np.float64))

    def compact_outputs(self, logits):
        return logits.float().reshape(-1)

    def scores_from_compact(self, outputs, num_classes: int):
        return ValueScores(np.asarray(outputs).reshape(-1))

    def loss(self, logits, labels, weights):
        import torch.nn.functional as F

        return F.mse_loss(logits.reshape(-1), labels.float())

    def prior(self, labels):
        return np.atleast_1d(labels.mean(0))

    def prior_scores(self, prior, n, num_classes, threshold: float = 0.5):
        return ValueScores(np.full(n, float(np.atleast_1d(prior)[0])))

    def estimator(self, kind, c, seed, class_weight, max_iter):
        from sklearn.linear_model import Ridge

        return Ridge(alpha=c)

    def estimator_scores(self, estimator, features, num_classes, threshold: float = 0.5):
        return ValueScores(np.asarray(estimator.predict(features), dtype=np.float64))

    def label_issues(self, features, labels, class_names, folds: int = 5, seed: int = 0) -> LabelIssues:
        return value_issues_named(features, np.asarray(labels, dtype=np.float64), folds, seed)

    def label_texts(self, labels, class_names) -> list[str]:
        return [f"{float(v):.6g}" for v in labels]

    def num_outputs(self, y_train, y_val) -> int:
        return 0
