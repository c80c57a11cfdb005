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
    """The classifier fitted on frozen features."""

    kind: str = setting("svc", "svc: scikit-learn's SVC() with its defaults (the reference); logreg: logistic "
                        "regression", flag="--classifier", choices=("svc", "logreg"))
    standardize: bool = setting(False, "scale features to zero mean and unit variance first", flag="--standardize",
                                const=True)
    c: float = setting(1.0, "regularisation strength C", flag="--C")
    tune: bool = setting(False, "choose C from classifier.c_grid on the validation split (every value is "
                         "recorded)", flag="--tune", const=True)
    c_grid: list[float] = setting(help="values of C that --tune tries",
                                  factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    tune_metric: str = setting("accuracy", "validation metric --tune maximises",
                               choices=("accuracy", "f1", "f1_macro", "balanced_accuracy"))
    max_iter: int = setting(5000, "logistic regression solver iterations")

    def __post_init__(self) -> None:
        check_settings(self, "classifier.")
        check_positive("classifier.c", self.c)
        for value in self.c_grid:
            check_positive("classifier.c_grid", value)
        if self.tune and not self.c_grid:
            raise ConfigError("classifier.c_grid is empty; --tune needs values of C to try")


def build_classifier(config: ClassifierConfig, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if config.kind == "svc":
        estimator = SVC(C=c)  # the reference used SVC() defaults: rbf kernel, C=1
    else:
        estimator = LogisticRegression(C=c, max_iter=config.max_iter, random_state=seed)
    return make_pipeline(StandardScaler(), estimator) if config.standardize else estimator


def fit_classifier(config: ClassifierConfig, x_train, y_train, x_val=None, y_val=None, seed: int = 42):
    """Fit one classifier, or with ``tune`` one per C, keeping the best on validation.
    Returns (estimator, tuning record or None)."""
    from tunelab.metrics import classification_metrics

    if not config.tune:
        return build_classifier(config, config.c, seed).fit(x_train, y_train), None
    if x_val is None or y_val is None:
        raise TunelabError("--tune picks C on the validation split, and this dataset has none")
    num_classes = int(max(y_train.max(), y_val.max()) + 1)
    scores, best, best_score, best_c = {}, None, -np.inf, None
    for c in config.c_grid:
        estimator = build_classifier(config, c, seed).fit(x_train, y_train)
        value = classification_metrics(y_val, estimator.predict(x_val), num_classes)[config.tune_metric]
        scores[str(c)] = value
        logger.info("C=%g: validation %s %.4f", c, config.tune_metric, value)
        if value > best_score:  # strict: ties keep the smaller C (grid order)
            best, best_score, best_c = estimator, value, c
    return best, {"parameter": "C", "chosen": best_c, "metric": config.tune_metric,
                  "split": "validation", "scores": scores}


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
    untrusted = sio.get_untrusted_types(file=path)
    if untrusted:
        raise TunelabError(f"{path} holds types that are not trusted: {', '.join(untrusted[:5])}")
    return sio.load(path)
