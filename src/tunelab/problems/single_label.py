"""One class per example."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tunelab.core.errors import DataError
from tunelab.problems.base import Problem, class_scores
from tunelab.problems.labels import build_label_space, encode_labels, is_list
from tunelab.problems.scores import ClassScores, ScoreAccumulator


class SingleLabel(Problem):
    name = "single-label"
    headline = "accuracy"
    checkpoint_metric = "accuracy"
    selection_metrics = ("accuracy", "f1", "f1_macro", "balanced_accuracy", "loss")
    hf_problem_type = "single_label_classification"
    default_classifier = "svc"
    classifiers = ("svc", "logreg")
    card_metrics = ("accuracy", "f1", "f1_macro")
    metric_names = ("accuracy", "f1_macro", "balanced_accuracy")
    exclusive_classes = True

    def encode_targets(self, labels, train_key, cfg, label_names):
        import re

        normalised = {}
        for name, (cells, source, ids) in labels.items():
            if any(is_list(v) for v in cells):
                raise DataError(f"{source}: the {name} split holds label lists; use --problem multi-label")
            if cells and all(isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip()) for v in cells):
                cells = [int(v) for v in cells]  # CSV labels arrive as text: integers when all are
            normalised[name] = (cells, source, ids)
        space = dataclasses.replace(build_label_space(normalised[train_key][0], cfg.positive_label, label_names),
                                    problem=self.name)  # ordered classes (a subclass) keep their own name
        return space, {name: encode_labels(cells, space, name, source, ids)
                       for name, (cells, source, ids) in normalised.items()}

    def positive_class(self, class_names):
        return class_names[1] if len(class_names) == 2 else None

    def jointly_fitted_outputs(self, y_train, y_val):
        return self.num_outputs(y_train, y_val if y_val is not None else y_train)

    def check_training_targets(self, labels, where):
        if len(np.unique(np.asarray(labels))) < 2:
            raise DataError(f"{where} holds a single class; use more data or a larger --shots")

    def keeps_every_class(self, split):
        return split == "train"

    def strata(self, labels):
        return np.asarray(labels)

    def shares_class(self, first, second):
        return np.asarray(first) == np.asarray(second)

    def target_counts(self, labels, class_names) -> dict[str, Any]:
        per_class = np.bincount(np.asarray(labels), minlength=len(class_names))
        return {cls: int(c) for cls, c in zip(class_names, per_class)}

    def majority_accuracy(self, train_labels, labels) -> float | None:
        majority = int(np.argmax(np.bincount(np.asarray(train_labels))))
        return float(np.mean(np.asarray(labels) == majority))

    def scores_from_outputs(self, outputs, threshold: float = 0.5):
        import torch

        return ClassScores.from_full(torch.softmax(torch.as_tensor(outputs).float(), dim=-1).numpy(), "probability")

    def collector(self, n: int, num_outputs: int, threshold: float = 0.5):
        return ClassCollector(n, num_outputs)

    def scores_from_matrix(self, raw, kind):
        if kind == "probability":  # entailment logits or likelihoods compete across the classes: a softmax
            shifted = raw - raw.max(1, keepdims=True)
            raw = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        return ClassScores.from_full(raw, kind)

    def read_entailment(self, logits, entailment, contradiction):
        return logits[:, :, entailment]  # entailment logits compete across the classes

    def scores_from_similarity_matrix(self, logits, threshold: float = 0.5):
        return ClassScores.from_full(logits, "similarity")

    def compact_outputs(self, logits):
        return logits.argmax(dim=-1)

    def scores_from_compact(self, outputs, num_classes: int):
        return ClassScores.from_full(np.eye(num_classes)[np.asarray(outputs)], "indicator")

    def loss(self, logits, labels, weights):
        import torch.nn.functional as F

        return F.cross_entropy(logits, labels.long(), weight=weights)

    def class_weights(self, labels):
        counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(np.float64)
        return len(labels) / (len(counts) * np.maximum(counts, 1))

    def prior(self, labels):
        return np.bincount(labels) / len(labels)

    def prior_scores(self, prior, n, num_classes, threshold: float = 0.5):
        full = np.zeros(num_classes)
        full[: len(prior)] = prior
        return ClassScores.from_full(np.tile(full, (n, 1)), "probability")

    def estimator(self, kind, c, seed, class_weight, max_iter):
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import SVC

        if kind == "svc":
            return SVC(C=c, class_weight=class_weight)  # the reference used SVC() defaults: rbf kernel, C=1
        return LogisticRegression(C=c, max_iter=max_iter, class_weight=class_weight, random_state=seed)

    def estimator_scores(self, estimator, features, num_classes, threshold: float = 0.5):
        full, kind = class_scores(estimator, features, num_classes)
        return ClassScores.from_full(full, kind, predicted=estimator.predict(features))


class ClassCollector:
    """Class probabilities straight into an accumulator: O(n) memory for many classes
    (every class's probability for few classes, the top-5 for many)."""

    def __init__(self, n: int, num_outputs: int):
        self.accumulator = ScoreAccumulator(n, num_outputs, "probability")

    def add(self, rows, logits) -> None:
        import torch

        self.accumulator.add(rows, torch.softmax(logits.float(), dim=-1))

    def result(self, keep=None) -> ClassScores:
        return self.accumulator.result(keep)
