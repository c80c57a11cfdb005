"""Any number of labels per example (a set of classes)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tunelab.core.errors import DataError
from tunelab.problems.base import Problem, has_probabilities
from tunelab.problems.label_quality import LabelIssues, label_set_issues_named
from tunelab.problems.labels import build_multilabel_space, encode_label_sets, is_list, label_sets
from tunelab.problems.scores import LabelScores, ScoreAccumulator, choose_threshold


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

    def splits_to_score(self, eval_splits, available, setting):
        """Validation too, where there is one: the threshold may be chosen on it."""
        return list(dict.fromkeys([*eval_splits, *(["validation"] if "validation" in available else [])]))

    def threshold_for(self, scores, labels, setting):
        """A given value; 0.5 for probabilities and 0 for decision values by default; or
        the value of THRESHOLD_GRID (quantiles of the scores, where they are no
        probabilities) that maximises micro F1 on validation, with ``tune``, and by
        default for scores that have no natural threshold (a zero-shot similarity)."""
        sample = next(iter(scores.values()))
        if setting not in ("0.5", "tune"):
            value = float(setting) if sample.kind == "probability" or not sample.natural_threshold else 0.0
            return value, {"value": value, "tuned": False}
        if setting == "0.5" and sample.natural_threshold:
            return choose_threshold(sample, None, setting)
        if "validation" not in scores:
            raise DataError("label sets take the labels above a threshold chosen on validation, and there is no "
                            "validation split; give --threshold")
        basis = scores["validation"] if setting == "tune" else dataclasses.replace(scores["validation"], kind="score")
        return choose_threshold(basis, labels["validation"], "tune")

    def check_threshold_setting(self, setting, available):
        if setting == "tune" and "validation" not in available:
            raise DataError("--threshold tune chooses the threshold on a validation split, and there is none; "
                            "give --threshold P")

    def scores_from_matrix(self, raw, kind):
        return LabelScores(raw, 0.5, kind, natural_threshold=False)  # zero-shot scores: chosen on validation

    def read_entailment(self, logits, entailment, contradiction):
        """Each label's entailment against contradiction (or against all outputs): a
        probability per label, as transformers' zero-shot pipeline does."""
        if contradiction is not None:
            logits = logits[:, :, [contradiction, entailment]]
            entailment = 1
        shifted = logits - logits.max(-1, keepdims=True)
        return (np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True))[:, :, entailment]

    def scores_from_similarity_matrix(self, logits, threshold: float = 0.5):
        return LabelScores(1 / (1 + np.exp(-logits)), threshold, "probability")  # SigLIP: a sigmoid per label

    def similarity_accumulator(self, n, num_classes):
        return ScoreAccumulator(n, num_classes, "similarity", keep_full=True)  # every label's score

    def scores_from_similarities(self, accumulator, threshold: float = 0.5):
        """A sigmoid of each label's logit (SigLIP): a probability per label."""
        return accumulator.label_scores(threshold)

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

    def label_issues(self, features, labels, class_names, folds: int = 5, seed: int = 0) -> LabelIssues:
        return label_set_issues_named(features, labels, class_names, folds, seed)

    def label_texts(self, labels, class_names) -> list[str]:
        return ["; ".join(class_names[k] for k in np.flatnonzero(row)) for row in labels]

    def num_outputs(self, y_train, y_val) -> int:
        return int(y_train.shape[1])
