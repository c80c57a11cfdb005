"""A problem kind: everything that differs between classes, label sets and numbers, in
one place. Code elsewhere asks the problem (``get_problem(name)``) instead of comparing
its name; a new kind (token classification, say) is one new module here."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from tunelab.core.errors import DataError
from tunelab.problems.label_quality import LabelIssues, class_issues
from tunelab.problems.scores import ScoreAccumulator


class Problem:
    """The facts and behaviours of one problem kind (a stateless singleton)."""

    name: ClassVar[str]
    headline: ClassVar[str]  # the metric a run is summed up by (higher is better for all three)
    checkpoint_metric: ClassVar[str]  # what picks the best checkpoint by default
    selection_metrics: ClassVar[tuple[str, ...]]  # validation metrics that may pick checkpoints
    hf_problem_type: ClassVar[str]  # transformers' config.problem_type
    default_classifier: ClassVar[str]  # the probe's estimator when none is named
    classifiers: ClassVar[tuple[str, ...]]  # the estimators that suit it
    card_metrics: ClassVar[tuple[str, ...]]  # what a model card lists
    card_pipeline: ClassVar[str | None] = "text-classification"
    has_classes: ClassVar[bool] = True  # a class list (regression has none)
    exclusive_classes: ClassVar[bool] = False  # exactly one class per example
    tunes_threshold: ClassVar[bool] = False  # a decision threshold chosen on validation
    shots_allowed: ClassVar[bool] = True  # K examples per class make sense
    metric_names: ClassVar[tuple[str, ...]] = ()  # keys every split's metrics of this kind has
    # The kind a task that does not know this one may treat it as (ordered classes are
    # classes): a task declaring that kind takes this one too.
    serves_as: ClassVar[str | None] = None

    def __repr__(self) -> str:
        return f"<problem {self.name}>"

    def fits(self, kinds: tuple[str, ...]) -> bool:
        """Whether a task that declares ``kinds`` takes this problem."""
        return self.name in kinds or (self.serves_as is not None and self.serves_as in kinds)

    def claims(self, values, separator: str | None, column: str | None) -> bool:
        """Whether raw label cells (from ``column``) are of this kind, when no --problem
        says; single-label takes what no other kind claims."""
        return False

    def recognises(self, metrics: dict) -> bool:
        """Whether one split's metrics are this kind's (its headline and metric names)."""
        return self.headline in metrics and all(name in metrics for name in self.metric_names)

    # --------------------------------------------------------------- labels and data

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """What splitting stratifies on."""
        raise NotImplementedError

    def shares_class(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Per row, whether two examples' targets share a class: contrastive pairs (SetFit)
        are positive where they do."""
        raise DataError(f"{self.name} targets have no classes to pair examples by")

    def target_counts(self, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
        """How one split's targets spread: per class counts, or the numbers' range."""
        raise NotImplementedError

    def majority_accuracy(self, train_labels: np.ndarray, labels: np.ndarray) -> float | None:
        """The accuracy of always predicting the training split's most frequent class."""
        return None

    def encode_targets(self, labels: dict[str, tuple[list, str, list[str]]], train_key: str, cfg,
                       label_names: dict[str, str] | None):
        """The label space and each split's encoded targets from raw label cells:
        ``labels`` maps a split to (cells, source, row ids); ``cfg`` is a DataConfig."""
        raise NotImplementedError

    # --------------------------------------------------------------- models and scores

    def head_labels(self, class_names: list[str]) -> dict[int, str]:
        """id2label of a sequence classification head."""
        return dict(enumerate(class_names))

    def scores_from_outputs(self, outputs: np.ndarray, threshold: float = 0.5):
        """A model's raw outputs (logits or values) as scores evaluation takes."""
        raise NotImplementedError

    def collector(self, n: int, num_outputs: int, threshold: float = 0.5) -> OutputCollector:
        """What collects a model's outputs for ``n`` inputs, batch by batch, and gives
        their scores: by default every output is kept."""
        return OutputCollector(self, n, num_outputs, threshold)

    def similarity_accumulator(self, n: int, num_classes: int):
        """What collects a dual encoder's image-class logits (CLIP, SigLIP): the top-k of
        each image, every class for few classes."""
        return ScoreAccumulator(n, num_classes, "similarity")

    def scores_from_similarities(self, accumulator, threshold: float = 0.5):
        """The accumulated image-class logits as this problem's scores: one class each."""
        return accumulator.result()

    def compact_outputs(self, logits):
        """What evaluation during training keeps of a batch's logits (a torch tensor)."""
        raise NotImplementedError

    def scores_from_compact(self, outputs: np.ndarray, num_classes: int):
        raise NotImplementedError

    def loss(self, logits, labels, weights):
        """The weighted training loss (torch), where class weights are asked for."""
        raise NotImplementedError

    def splits_to_score(self, eval_splits: list[str], available, setting: str) -> list[str]:
        """The splits a task must score: the evaluation splits, and any the problem
        settles its decision threshold on."""
        return list(eval_splits)

    def threshold_for(self, scores: dict, labels: dict, setting: str) -> tuple[float | None, dict | None]:
        """The decision threshold of the run, chosen once from the scored splits (the
        lifecycle applies it to every split and records it): none for most problems."""
        return None, None

    def check_threshold_setting(self, setting: str, available) -> None:
        """Stop in one line, before training, where the threshold cannot be chosen as asked."""

    def scores_from_matrix(self, raw: np.ndarray, kind: str):
        """A zero-shot method's (texts, classes) scores (similarities, entailment logits,
        label likelihoods) as this problem's scores."""
        raise DataError(f"{self.name} targets have no classes to score texts against")

    def read_entailment(self, logits: np.ndarray, entailment: int, contradiction: int | None) -> np.ndarray:
        """(texts, classes) scores from an NLI model's (texts, classes, outputs) logits."""
        raise DataError(f"{self.name} targets have no classes to describe as hypotheses")

    def scores_from_similarity_matrix(self, logits: np.ndarray, threshold: float = 0.5):
        """A dual encoder's (images, classes) logits as this problem's scores."""
        raise DataError(f"{self.name} targets have no classes to score images against")

    def positive_class(self, class_names: list[str]) -> str | None:
        """The class scored as positive (binary precision, recall, F1), where there is one."""
        return None

    def jointly_fitted_outputs(self, y_train: np.ndarray, y_val: np.ndarray | None) -> int | None:
        """How many outputs one linear model fits at once (its memory grows with them);
        None where each is fitted alone."""
        return None

    def check_training_targets(self, labels: np.ndarray, where: str) -> None:
        """Stop in one line where the training targets cannot train this kind."""

    def keeps_every_class(self, split: str) -> bool:
        """Whether a capped ``split`` must keep an example of every class."""
        return False

    def check_shots(self) -> None:
        """--shots takes K examples per class: stop where the targets have no classes."""
        if not self.has_classes:
            raise DataError(f"--shots samples K examples per class, and a {self.name} task has no classes; "
                            "use --max-train-samples")

    @property
    def one_class_per_example(self) -> bool:
        """What a folder of class folders (one class per image) can give."""
        return self.exclusive_classes

    def needs_own_loss(self, weighted: bool) -> bool:
        """Whether training must use this problem's ``loss`` rather than the model's own
        (which is this problem's loss, unweighted)."""
        return weighted

    def class_weights(self, labels: np.ndarray) -> np.ndarray | None:
        """``balanced`` weights, or None where the problem has no classes."""
        return None

    def prior(self, labels: np.ndarray) -> np.ndarray:
        """What the majority floor predicts: the training prior (or mean)."""
        raise NotImplementedError

    def prior_scores(self, prior: np.ndarray, n: int, num_classes: int, threshold: float = 0.5):
        raise NotImplementedError

    # --------------------------------------------------------------- classical estimators

    def estimator(self, kind: str, c: float, seed: int, class_weight: str | None, max_iter: int):
        raise NotImplementedError

    def estimator_scores(self, estimator, features, num_classes: int, threshold: float = 0.5):
        raise NotImplementedError

    def fit_targets(self, labels: np.ndarray) -> np.ndarray:
        """What an estimator of this problem is fitted to, from the encoded targets."""
        return labels

    def label_issues(self, features: np.ndarray, labels: np.ndarray, class_names: list[str], folds: int = 5,
                     seed: int = 0) -> LabelIssues:
        """Rows whose label looks wrong, from out-of-fold predictions on ``features``."""
        return class_issues(features, labels, class_names, folds, seed)

    def label_texts(self, labels: np.ndarray, class_names: list[str]) -> list[str]:
        """Each row's label as written in an audit: the class name."""
        return [class_names[int(k)] for k in labels]

    def num_outputs(self, y_train: np.ndarray, y_val: np.ndarray | None) -> int:
        """How many classes (or labels) a fitted estimator scores."""
        return int(max(y_train.max(), y_val.max() if y_val is not None and len(y_val) else 0) + 1)


class OutputCollector:
    """A model's raw outputs for ``n`` rows, batch by batch (rows in any order), then the
    problem's scores of the rows kept."""

    def __init__(self, problem: Problem, n: int, num_outputs: int, threshold: float = 0.5):
        import torch

        self.problem, self.threshold = problem, threshold
        self.outputs = torch.full((n, num_outputs), float("nan"))

    def add(self, rows, logits) -> None:
        import torch

        self.outputs[torch.as_tensor(rows)] = logits.float().cpu().reshape(len(rows), -1)

    def result(self, keep=None):
        import torch

        outputs = self.outputs if keep is None else self.outputs[torch.as_tensor(keep)]
        return self.problem.scores_from_outputs(outputs, self.threshold)


# --------------------------------------------------------------- fitted estimators' outputs


def class_scores(estimator, features: np.ndarray, num_classes: int) -> tuple[np.ndarray, str]:
    """Per-class scores, (n, num_classes), column i for class index i: probabilities
    where the model gives them, else decision values (an SVC's signed distance; for two
    classes [-d, d]). Columns follow the fitted estimator's own ``classes_``; a class it
    never saw scores 0 (probability) or -inf (decision), so it is never predicted."""
    if hasattr(estimator, "predict_proba") and has_probabilities(estimator):
        scores, kind, fill = estimator.predict_proba(features), "probability", 0.0
    else:
        scores, kind, fill = estimator.decision_function(features), "decision", -np.inf
        if scores.ndim == 1:
            scores = np.stack([-scores, scores], axis=1)
    classes = np.asarray(estimator_classes(estimator), dtype=np.int64)
    if len(classes) == num_classes and np.array_equal(classes, np.arange(num_classes)):
        return scores, kind
    full = np.full((len(scores), num_classes), fill, dtype=np.float64)
    full[:, classes] = scores
    return full, kind


def estimator_classes(estimator) -> np.ndarray:
    """The class indices a fitted estimator (or a pipeline ending in one) knows."""
    return estimator.classes_ if hasattr(estimator, "classes_") else estimator[-1].classes_


def has_probabilities(estimator) -> bool:
    try:
        estimator.predict_proba  # noqa: B018  (SVC without probability=True raises here)
    except AttributeError:
        return False
    return True
