"""Classical classifiers on frozen features, saved without pickle (skops)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from tunelab.config import check_positive, check_settings, setting
from tunelab.errors import ConfigError, TunelabError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ClassifierConfig:
    """The estimator fitted on frozen features."""

    kind: str | None = setting(None, "svc: scikit-learn's SVC() (the reference; default for classes); logreg: "
                               "logistic regression (default for multi-label, one-vs-rest); ridge: ridge "
                               "regression (regression, alpha chosen on validation)", flag="--classifier",
                               choices=("svc", "logreg", "ridge"))
    standardize: bool = setting(False, "scale features to zero mean and unit variance first", flag="--standardize",
                                const=True)
    c: float = setting(1.0, "regularisation strength C", flag="--C")
    tune: bool = setting(False, "choose C from classifier.c_grid on the validation split (every value is "
                         "recorded)", flag="--tune", const=True)
    c_grid: list[float] = setting(help="values of C that --tune tries",
                                  factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    alpha_grid: list[float] = setting(help="ridge: values of alpha tried on the validation split",
                                      factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    tune_metric: str | None = setting(None, "validation metric that --tune maximises (default: the problem's "
                                      "headline: accuracy, f1_micro or spearman)",
                                      choices=("accuracy", "f1", "f1_macro", "balanced_accuracy", "f1_micro",
                                               "spearman", "pearson"))
    max_iter: int = setting(5000, "logistic regression solver iterations")

    def __post_init__(self) -> None:
        check_settings(self, "classifier.")
        check_positive("classifier.c", self.c)
        for value in [*self.c_grid, *self.alpha_grid]:
            check_positive("classifier grid value", value)
        if self.tune and not self.c_grid:
            raise ConfigError("classifier.c_grid is empty; --tune needs values of C to try")
        if not self.alpha_grid:
            raise ConfigError("classifier.alpha_grid is empty; ridge needs values of alpha to try")


DEFAULT_KIND = {"single-label": "svc", "multi-label": "logreg", "regression": "ridge"}


def resolve_kind(config: ClassifierConfig, problem: str) -> ClassifierConfig:
    """The problem's default estimator where none was named; a named one must suit the problem."""
    kind = config.kind or DEFAULT_KIND[problem]
    if (problem == "regression") != (kind == "ridge"):
        raise ConfigError(f"--classifier {kind} does not fit a {problem} task; use "
                          + ("ridge" if problem == "regression" else "svc or logreg"))
    return dataclasses.replace(config, kind=kind)


def build_classifier(config: ClassifierConfig, c: float, seed: int, problem: str = "single-label",
                     class_weight: str | None = None):
    """The estimator for a problem: SVC / logistic regression for classes (one-vs-rest
    linear SVC / logistic regression for label sets), ridge regression for numbers;
    ``c`` is C, or alpha for ridge."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    if config.kind == "ridge":
        estimator = Ridge(alpha=c)
    elif problem == "multi-label":
        base = LinearSVC(C=c, class_weight=class_weight, random_state=seed) if config.kind == "svc" else \
            LogisticRegression(C=c, max_iter=config.max_iter, class_weight=class_weight, random_state=seed)
        estimator = OneVsRestClassifier(base)
    elif config.kind == "svc":
        estimator = SVC(C=c, class_weight=class_weight)  # the reference used SVC() defaults: rbf kernel, C=1
    else:
        estimator = LogisticRegression(C=c, max_iter=config.max_iter, class_weight=class_weight, random_state=seed)
    return make_pipeline(StandardScaler(), estimator) if config.standardize else estimator


def fit_classifier(config: ClassifierConfig, x_train, y_train, x_val=None, y_val=None, seed: int = 42,
                   problem: str = "single-label", class_weight: str | None = None, threshold: float = 0.5):
    """Fit one estimator, or one per grid value (C with ``tune``; ridge's alpha always, when
    there is a validation split), keeping the best on validation. Returns (estimator,
    tuning record or None)."""
    from tunelab.metrics import HEADLINE

    grid, parameter = (config.alpha_grid, "alpha") if config.kind == "ridge" else (config.c_grid, "C")
    if not config.tune and not (config.kind == "ridge" and x_val is not None):
        value = 1.0 if config.kind == "ridge" else config.c
        return build_classifier(config, value, seed, problem, class_weight).fit(x_train, y_train), None
    if x_val is None or y_val is None:
        raise TunelabError(f"--tune picks {parameter} on the validation split, and this dataset has none")
    metric = config.tune_metric or HEADLINE[problem]
    num_classes = y_train.shape[1] if problem == "multi-label" else int(max(y_train.max(), y_val.max()) + 1)
    scores, best, best_score, best_value = {}, None, -np.inf, None
    for value in grid:
        estimator = build_classifier(config, value, seed, problem, class_weight).fit(x_train, y_train)
        score = validation_score(estimator, x_val, y_val, problem, num_classes, metric, threshold)
        scores[str(value)] = score
        logger.info("%s=%g: validation %s %.4f", parameter, value, metric, score)
        if score > best_score:  # strict: ties keep the earlier (more regularised for C) value
            best, best_score, best_value = estimator, score, value
    return best, {"parameter": parameter, "chosen": best_value, "metric": metric,
                  "split": "validation", "scores": scores}


def validation_score(estimator, x, y, problem: str, num_classes: int, metric: str, threshold: float) -> float:
    from tunelab.evaluation import split_metrics

    predictions = predict_scores(estimator, x, problem, num_classes, threshold)
    return float(split_metrics(y, predictions, num_classes)[metric])


def predict_scores(estimator, features: np.ndarray, problem: str, num_classes: int, threshold: float = 0.5):
    """The estimator's predictions in the form evaluation takes: ClassScores, LabelScores
    (probabilities, or decision values thresholded at 0) or ValueScores."""
    from tunelab.evaluation import ClassScores, LabelScores, ValueScores

    if problem == "regression":
        return ValueScores(np.asarray(estimator.predict(features), dtype=np.float64))
    if problem == "multi-label":
        if _has_proba(estimator):
            return LabelScores(np.asarray(estimator.predict_proba(features)), threshold, "probability")
        return LabelScores(np.asarray(estimator.decision_function(features)), 0.0, "decision")
    full, kind = class_scores(estimator, features, num_classes)
    return ClassScores.from_full(full, kind, predicted=estimator.predict(features))


def class_scores(estimator, features: np.ndarray, num_classes: int) -> tuple[np.ndarray, str]:
    """Per-class scores, (n, num_classes), column i for class index i: probabilities
    where the model gives them, else decision values (an SVC's signed distance; for two
    classes [-d, d]). Columns follow the fitted estimator's own ``classes_``; a class it
    never saw scores 0 (probability) or -inf (decision), so it is never predicted."""
    if hasattr(estimator, "predict_proba") and _has_proba(estimator):
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


def _has_proba(estimator) -> bool:
    try:
        estimator.predict_proba  # noqa: B018  (SVC without probability=True raises here)
    except AttributeError:
        return False
    return True


def save_classifier(estimator, path: Path) -> None:
    import skops.io as sio

    from tunelab.runs import atomic_write_bytes

    atomic_write_bytes(path, sio.dumps(estimator))


def load_classifier(path: Path):
    """Load a fitted classifier; refuses any type that is not scikit-learn or numpy."""
    import skops.io as sio

    if not path.is_file():
        raise TunelabError(f"no fitted classifier at {path}")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # a truncated zip (BadZipFile), a foreign file, ...
        raise TunelabError(f"{path} is damaged (not a complete skops file: {type(exc).__name__}); rerun the run "
                           "that made it") from None
    if untrusted:
        raise TunelabError(f"{path} holds types that are not trusted: {', '.join(untrusted[:5])}")
    try:
        return sio.load(path)
    except Exception as exc:  # skops raises many types for a damaged archive
        raise TunelabError(f"{path} is damaged ({type(exc).__name__}); rerun the run that made it") from None
