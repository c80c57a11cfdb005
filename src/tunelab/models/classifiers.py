"""Classical classifiers on frozen features, saved without pickle (skops)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from tunelab.core.config import check_positive, check_settings, setting
from tunelab.core.errors import ConfigError, TunelabError
from tunelab.core.safety import atomic_write_bytes
from tunelab.core.trial import report
from tunelab.problems import get_problem
from tunelab.problems.scores import split_metrics

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


def resolve_kind(config: ClassifierConfig, problem: str) -> ClassifierConfig:
    """The problem's default estimator where none was named; a named one must suit the problem."""
    kind_of = get_problem(problem)
    kind = config.kind or kind_of.default_classifier
    if kind not in kind_of.classifiers:
        raise ConfigError(f"--classifier {kind} does not fit a {kind_of.name} task; use "
                          + " or ".join(kind_of.classifiers))
    return dataclasses.replace(config, kind=kind)


def build_classifier(config: ClassifierConfig, c: float, seed: int, problem: str | None = None,
                     class_weight: str | None = None):
    """The problem's estimator of ``config.kind`` (tunelab.problems): SVC / logistic
    regression for classes, one-vs-rest for label sets, ridge for numbers; ``c`` is C, or
    alpha for ridge."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = get_problem(problem).estimator(config.kind, c, seed, class_weight, config.max_iter)
    return make_pipeline(StandardScaler(), estimator) if config.standardize else estimator


def machine_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def check_fits_in_memory(config: ClassifierConfig, features: int, outputs: int, what: str) -> None:
    """A linear model over many classes and features can need more memory than the
    machine has (L-BFGS keeps about 24 copies of its classes x features weights): say so
    in one line before fitting, instead of a MemoryError after minutes."""
    if config.kind not in ("logreg", "svc") or outputs <= 2:
        return
    need = 24 * 8 * outputs * features
    have = machine_memory_bytes()
    if have is not None and need > have // 2:
        raise TunelabError(f"{what}: a linear model over {outputs:,} classes and {features:,} features needs about "
                           f"{need / 2**30:.1f} GiB, more than half of this machine's {have / 2**30:.1f} GiB; use "
                           "fewer features (tfidf: --max-features) or merge rare classes")


def fit_classifier(config: ClassifierConfig, x_train, y_train, x_val=None, y_val=None, seed: int = 42,
                   problem: str | None = None, class_weight: str | None = None, threshold: float = 0.5):
    """Fit one estimator, or one per grid value (C with ``tune``; ridge's alpha always, when
    there is a validation split), keeping the best on validation. Returns (estimator,
    tuning record or None)."""
    outputs = get_problem(problem).jointly_fitted_outputs(y_train, y_val)
    if outputs is not None:
        check_fits_in_memory(config, int(x_train.shape[1]), int(outputs),
                             {"logreg": "logistic regression", "svc": "SVC"}.get(config.kind, str(config.kind)))
    grid, parameter = (config.alpha_grid, "alpha") if config.kind == "ridge" else (config.c_grid, "C")
    if not config.tune and not (config.kind == "ridge" and x_val is not None):
        value = 1.0 if config.kind == "ridge" else config.c
        targets = get_problem(problem).fit_targets(y_train)
        return build_classifier(config, value, seed, problem, class_weight).fit(x_train, targets), None
    if x_val is None or y_val is None:
        raise TunelabError(f"--tune picks {parameter} on the validation split, and this dataset has none")
    metric = config.tune_metric or get_problem(problem).headline
    num_classes = get_problem(problem).num_outputs(y_train, y_val)
    scores, best, best_score, best_value = {}, None, -np.inf, None

    for position, value in enumerate(grid):
        estimator = build_classifier(config, value, seed, problem, class_weight).fit(
            x_train, get_problem(problem).fit_targets(y_train))
        score = validation_score(estimator, x_val, y_val, problem, num_classes, metric, threshold)
        scores[str(value)] = score
        logger.info("%s=%g: validation %s %.4f", parameter, value, metric, score)
        report(position, {metric: score}, can_stop=False)  # a search sees the grid; a probe is never stopped
        if score > best_score:  # strict: ties keep the earlier (more regularised for C) value
            best, best_score, best_value = estimator, score, value
    return best, {"parameter": parameter, "chosen": best_value, "metric": metric,
                  "split": "validation", "scores": scores}


def validation_score(estimator, x, y, problem: str | None, num_classes: int, metric: str, threshold: float) -> float:
    predictions = predict_scores(estimator, x, problem, num_classes, threshold)
    return float(split_metrics(y, predictions, num_classes)[metric])


def predict_scores(estimator, features: np.ndarray, problem: str | None, num_classes: int, threshold: float = 0.5):
    """The estimator's predictions in the form evaluation takes: ClassScores, LabelScores
    (probabilities, or decision values thresholded at 0) or ValueScores."""
    return get_problem(problem).estimator_scores(estimator, features, num_classes, threshold)


def save_classifier(estimator, path: Path) -> None:
    import skops.io as sio

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
