"""Floors that need no pretrained model, so that every report shows what pretraining adds:

- ``majority``: the most frequent class (label sets: every label present in more than
  half the training rows; numbers: the training mean), scored with the training
  priors;
- ``tfidf``: TF-IDF of word uni- and bigrams with logistic regression (one-vs-rest
  for label sets, ridge for numbers); sentence pairs use (a, b, |a - b|) of the two
  texts' vectors.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from tunelab.core.config import TaskConfig, setting
from tunelab.core.errors import DataError
from tunelab.core.files import PREDICTOR_FILE, predictor_record, read_predictor
from tunelab.core.registry import Task, register_task
from tunelab.data.images import is_image_dataset, load_image_dataset
from tunelab.data.text import TextSplit, load_text_dataset, resolved_data_config
from tunelab.models.classifiers import (
    ClassifierConfig,
    fit_classifier,
    load_classifier,
    predict_scores,
    save_classifier,
)
from tunelab.models.predictor import as_text_inputs, predictions_from
from tunelab.problems import get_problem
from tunelab.tasks.contract import Outcome, Prepared, RunContext, Scored
from tunelab.tasks.metrics_file import throughput

logger = logging.getLogger(__name__)

COMMAND = "baseline"


@dataclasses.dataclass
class BaselineConfig(TaskConfig):
    model: str | None = setting(None, "unused: baselines need no pretrained model")
    kind: str = setting("tfidf", "majority: the most frequent class (or the mean); tfidf: TF-IDF word n-grams with "
                        "a linear model", flag="--kind", choices=("majority", "tfidf"))
    c: float = setting(1.0, "tfidf: regularisation strength of the logistic regression (without --no-tune)",
                       flag="--C")
    tune: bool = setting(True, "tfidf: C (ridge: alpha) is chosen from c_grid on the validation split, as the "
                         "other methods choose their settings, so the floor is not set low by an untuned default; "
                         "--no-tune keeps --C", flag="--no-tune", const=False)
    c_grid: list[float] = setting(help="tfidf: values of C tried on validation",
                                  factory=lambda: [0.1, 1.0, 10.0, 100.0])
    max_features: int = setting(50000, "tfidf: vocabulary size (most frequent n-grams)", flag="--max-features",
                                metavar="N")


def describe(metrics: dict) -> str:
    return {"majority": "majority class (floor)", "tfidf": "TF-IDF + linear model (floor)"}.get(
        metrics.get("task", {}).get("kind", ""), "baseline")


def prepare(config: BaselineConfig) -> Prepared:
    if is_image_dataset(config.data.dataset):
        if config.kind != "majority":
            raise DataError("the tfidf baseline reads text; for images use --kind majority")
        dataset = load_image_dataset(config.data, seed=config.seed, flat_split="all")
    else:
        dataset = load_text_dataset(config.data, seed=config.seed)
        config = dataclasses.replace(config, data=resolved_data_config(config.data, dataset, "bi"))
    return Prepared(config, None, dataset, dataset.eval_split_names(config.data.splits))


class Majority:
    """Predicts the training prior (the class frequencies, each label's rate, or the mean
    of the numbers, as the problem defines it): a constant."""

    def fit(self, labels: np.ndarray, problem: str) -> Majority:
        self.problem = problem
        self.prior = get_problem(problem).prior(labels)
        return self

    def scores(self, n: int, num_classes: int):
        return get_problem(self.problem).prior_scores(np.atleast_1d(self.prior), n, num_classes)


def tfidf_features(vectorizer, split):
    """Sparse TF-IDF rows: one text, or (a, b, |a - b|) of a pair."""
    from scipy.sparse import hstack

    first = vectorizer.transform(split.texts)
    if split.pairs is None:
        return first
    second = vectorizer.transform(split.pairs)
    return hstack([first, second, abs(first - second)]).tocsr()


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    if context.rank != 0:
        return None
    config, dataset, run = prepared.config, prepared.dataset, context.run
    problem, num_classes = dataset.problem, len(dataset.class_names)
    train = dataset.splits["train"]
    validation = dataset.splits.get("validation")
    tuning = None
    start = time.perf_counter()
    if config.kind == "majority":
        majority = Majority().fit(train.labels, problem)

        def score(data):
            return majority.scores(len(data), num_classes)
    else:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=config.max_features)
        vectorizer.fit(train.texts + (train.pairs or []))
        x_val = tfidf_features(vectorizer, validation) if validation is not None else None
        estimator, tuning = fit_classifier(
            _classifier_config(config, problem, validation is not None), tfidf_features(vectorizer, train),
            train.labels, x_val, validation.labels if validation is not None else None, seed=config.seed,
            problem=problem, class_weight=config.data.class_weight,
            threshold=float(config.data.threshold) if config.data.threshold != "tune" else 0.5)

        def score(data):
            return predict_scores(estimator, tfidf_features(vectorizer, data), problem, num_classes)
    if config.kind == "majority":
        run.write_json(f"model/{PREDICTOR_FILE}", predictor_record(
            COMMAND, problem, dataset.class_names, kind="majority", threshold=0.5,
            prior=np.atleast_1d(majority.prior).tolist()))
    else:
        save_classifier(vectorizer, run.path / "model" / "vectorizer.skops")
        save_classifier(estimator, run.path / "model" / "classifier.skops")
        run.write_json(f"model/{PREDICTOR_FILE}", predictor_record(COMMAND, problem, dataset.class_names,
                                                                   kind="tfidf", threshold=0.5))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    predictions = {}
    for split in prepared.score_splits:  # a label-set threshold is the lifecycle's to choose
        data = dataset.splits[split]
        scores = score(data)
        inputs = {"file": data.ids} if not hasattr(data, "texts") else data.inputs.columns()
        predictions[split] = Scored(scores, data.labels, data.ids, inputs)
    eval_seconds = time.perf_counter() - start
    scored = sum(len(dataset.splits[s]) for s in prepared.eval_splits)
    return Outcome(scored=predictions, params={"total": 0, "trainable": 0, "note": "no neural network"},
                   seconds={"train": train_seconds, "eval": eval_seconds},
                   throughput={"train_samples_per_s": throughput(len(train), train_seconds),
                               "eval_samples_per_s": throughput(scored, eval_seconds)},
                   task={"kind": config.kind, **({"classifier": {"tuning": tuning}} if tuning else {})})


def _classifier_config(config: BaselineConfig, problem: str, has_validation: bool):
    """The TF-IDF floor's linear model as a probe classifier: logistic regression (one-vs-
    rest for label sets) or ridge, its setting chosen on validation like the probe's."""
    kind = "logreg" if "logreg" in get_problem(problem).classifiers else get_problem(problem).default_classifier
    return ClassifierConfig(kind=kind, c=config.c,
                            tune=config.tune and has_validation,
                            c_grid=list(config.c_grid), max_iter=2000)


def load_predictor(run_dir: Path, config: BaselineConfig):
    saved = read_predictor(run_dir)
    names, problem = saved["class_names"], saved["problem"]
    if saved["kind"] == "majority":
        majority = Majority()
        majority.problem, majority.prior = problem, np.asarray(saved["prior"])
    else:
        vectorizer = load_classifier(run_dir / "model" / "vectorizer.skops")
        estimator = load_classifier(run_dir / "model" / "classifier.skops")

    def predict(inputs) -> list:
        inputs = as_text_inputs(inputs)
        if saved["kind"] == "majority":
            scores = majority.scores(len(inputs), len(names)).with_threshold(float(saved.get("threshold", 0.5)))
        else:
            split = TextSplit(inputs.texts, np.zeros(len(inputs)), [], inputs.pairs)
            scores = predict_scores(estimator, tfidf_features(vectorizer, split), problem, len(names),
                                    float(saved.get("threshold", 0.5)))
        return predictions_from(inputs, scores, names)

    return predict


DESCRIPTION = ("Baselines that need no pretrained model, so reports show what pretraining adds: the majority class, "
               "or TF-IDF word n-grams with logistic regression (ridge for numbers).")
TASK = register_task(Task(COMMAND, BaselineConfig, prepare, execute, load_predictor=load_predictor, describe=describe,
                          summary="floors with no pretrained model: majority class, TF-IDF + linear model",
                          unused_settings=("runtime.device", "runtime.precision"),
                          inputs=(("text", None), ("pairs", None)),
                          description=DESCRIPTION))
