"""Any number of labels per example (a set of classes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tunelab.problems.base import Problem, has_probabilities
from tunelab.problems.labels import build_multilabel_space, encode_label_sets, is_list, label_sets
from tunelab.problems.scores import LabelScores


class MultiLabel(Problem):
    name = "multi-label"
    headline = "f1_micro"
    # Micro F1 depends on a threshold tuned only after training (at 0.5 an early checkpoint
    # can score 0 and never be beaten); mean average precision needs none.
    checkpoint_metric = "mean_average_precision"
    selection_metrics = ("f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "mean_average_precision", "loss")
    hf_problem_type = "multi_label_classification"
    default_classifier = "logreg"
    classifiers = ("svc", "logreg")
    card_metrics = ("f1_micro", "f1_macro")
    tunes_threshold = True
    metric_names = ("f1_micro", "f1_samples", "hamming_loss")

    def claims(self, values, separator, column) -> bool:
        present = [v for v in values if v is not None]
        return bool(separator) or (bool(present) and all(is_list(v) for v in present))

    def encode_targets(self, labels, train_key, cfg, label_names):
        sets = {name: label_sets(cells, cfg.label_separator) for name, (cells, _, _) in labels.items()}
        space = build_multilabel_space(sets[train_key], label_names)
        return space, {name: encode_label_sets(sets[name], space, name, source, ids)
                       for name, (_, source, ids) in labels.items()}

    def shares_class(self, first, second):
        return (np.asarray(first).astype(bool) & np.asarray(second).astype(bool)).any(1)

    def strata(self, labels):
        labels = np.asarray(labels)
        return np.where(labels.any(1), labels.argmax(1), -1)  # the first label; rows with none form a group

    def target_counts(self, labels, class_names) -> dict[str, Any]:
        per_class = np.asarray(labels).sum(0)
        return {cls: int(c) for cls, c in zip(class_names, per_class)}

    def scores_from_outputs(self, outputs, threshold: float = 0.5):
        import torch

        return LabelScores(torch.sigmoid(torch.as_tensor(outputs).float()).numpy(), threshold, "probability")

    def compact_outputs(self, logits):
        return logits.float().sigmoid()

    def scores_from_compact(self, outputs, num_classes: int):
        return LabelScores(np.asarray(outputs))

    def loss(self, logits, labels, weights):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weights)

    def class_weights(self, labels):
        positives = labels.sum(0)
        return (len(labels) - positives) / np.maximum(positives, 1)  # negatives / positives of each label

    def prior(self, labels):
        return labels.mean(0)

    def prior_scores(self, prior, n, num_classes, threshold: float = 0.5):
        full = np.zeros(num_classes)
        full[: len(np.atleast_1d(prior))] = prior
        return LabelScores(np.tile(full, (n, 1)), threshold)

    def estimator(self, kind, c, seed, class_weight, max_iter):
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.svm import LinearSVC

        base = LinearSVC(C=c, class_weight=class_weight, random_state=seed) if kind == "svc" else \
            LogisticRegression(C=c, max_iter=max_iter, class_weight=class_weight, random_state=seed)
        return OneVsRestClassifier(base)

    def estimator_scores(self, estimator, features, num_classes, threshold: float = 0.5):
        if has_probabilities(estimator):
            return LabelScores(np.asarray(estimator.predict_proba(features)), threshold, "probability")
        return LabelScores(np.asarray(estimator.decision_function(features)), 0.0, "decision")

    def num_outputs(self, y_train, y_val) -> int:
        return int(y_train.shape[1])
