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
import json
import logging
import time
from pathlib import Path

import numpy as np

from tunelab.config import TaskConfig, setting
from tunelab.errors import DataError
from tunelab.evaluation import evaluate_split
from tunelab.lifecycle import Outcome, Prepared, RunContext, throughput
from tunelab.registry import Task, register_task

logger = logging.getLogger(__name__)

COMMAND = "baseline"


@dataclasses.dataclass
class BaselineConfig(TaskConfig):
    model: str | None = setting(None, "unused: baselines need no pretrained model")
    kind: str = setting("tfidf", "majority: the most frequent class (or the mean); tfidf: TF-IDF word n-grams with "
                        "a linear model", flag="--kind", choices=("majority", "tfidf"))
    c: float = setting(1.0, "tfidf: regularisation strength of the logistic regression", flag="--C")
    max_features: int = setting(50000, "tfidf: vocabulary size (most frequent n-grams)", flag="--max-features",
                                metavar="N")


def describe(metrics: dict) -> str:
    return {"majority": "majority class (floor)", "tfidf": "TF-IDF + linear model (floor)"}.get(
        metrics.get("task", {}).get("kind", ""), "baseline")


def prepare(config: BaselineConfig) -> Prepared:
    from tunelab.data.images import is_image_dataset, load_image_dataset
    from tunelab.data.text import load_text_dataset, resolved_data_config

    if is_image_dataset(config.data.dataset):
        if config.kind != "majority":
            raise DataError("the tfidf baseline reads text; for images use --kind majority")
        dataset = load_image_dataset(config.data, seed=config.seed, flat_split="all")
    else:
        dataset = load_text_dataset(config.data, seed=config.seed)
        config = dataclasses.replace(config, data=resolved_data_config(config.data, dataset, "bi"))
    return Prepared(config, None, dataset, dataset.eval_split_names(config.data.splits))


class Majority:
    """Predicts the training prior: a constant, scored with the class frequencies."""

    def fit(self, labels: np.ndarray, problem: str) -> Majority:
        self.problem = problem
        self.prior = labels.mean(0) if problem != "single-label" else np.bincount(labels) / len(labels)
        return self

    def scores(self, n: int, num_classes: int):
        from tunelab.evaluation import ClassScores, LabelScores, ValueScores

        if self.problem == "regression":
            return ValueScores(np.full(n, float(self.prior)))
        prior = np.zeros(num_classes)
        prior[: len(np.atleast_1d(self.prior))] = self.prior
        if self.problem == "multi-label":
            return LabelScores(np.tile(prior, (n, 1)), 0.5)
        return ClassScores.from_full(np.tile(prior, (n, 1)), "probability")


def tfidf_features(vectorizer, split):
    """Sparse TF-IDF rows: one text, or (a, b, |a - b|) of a pair."""
    from scipy.sparse import hstack

    first = vectorizer.transform(split.texts)
    if split.pairs is None:
        return first
    second = vectorizer.transform(split.pairs)
    return hstack([first, second, abs(first - second)]).tocsr()


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    from tunelab.classifiers import predict_scores, save_classifier

    if context.rank != 0:
        return None
    config, dataset, run = prepared.config, prepared.dataset, context.run
    problem, num_classes = dataset.problem, len(dataset.class_names)
    train = dataset.splits["train"]
    start = time.perf_counter()
    if config.kind == "majority":
        majority = Majority().fit(train.labels, problem)
        run.write_json("model/baseline.json", {"kind": "majority", "problem": problem,
                                               "class_names": dataset.class_names,
                                               "prior": np.atleast_1d(majority.prior).tolist()})
    else:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=config.max_features)
        vectorizer.fit(train.texts + (train.pairs or []))
        estimator = _estimator(config, problem).fit(tfidf_features(vectorizer, train), train.labels)
        save_classifier(vectorizer, run.path / "model" / "vectorizer.skops")
        save_classifier(estimator, run.path / "model" / "classifier.skops")
        run.write_json("model/baseline.json", {"kind": "tfidf", "problem": problem,
                                               "class_names": dataset.class_names})
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    split_metrics, reports = {}, {}
    for split in prepared.eval_splits:
        data = dataset.splits[split]
        scores = majority.scores(len(data), num_classes) if config.kind == "majority" else \
            predict_scores(estimator, tfidf_features(vectorizer, data), problem, num_classes)
        inputs = {"file": data.ids} if not hasattr(data, "texts") else data.inputs.columns()
        split_metrics[split], reports[split] = evaluate_split(run, split, dataset.class_names, data.labels, scores,
                                                              data.ids, inputs)
    eval_seconds = time.perf_counter() - start
    scored = sum(len(dataset.splits[s]) for s in prepared.eval_splits)
    return Outcome(splits=split_metrics, reports=reports, params={"total": 0, "trainable": 0,
                                                                  "note": "no neural network"},
                   seconds={"train": train_seconds, "eval": eval_seconds},
                   throughput={"train_samples_per_s": throughput(len(train), train_seconds),
                               "eval_samples_per_s": throughput(scored, eval_seconds)},
                   task={"kind": config.kind})


def _estimator(config: BaselineConfig, problem: str):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    if problem == "regression":
        return Ridge(alpha=1.0)
    model = LogisticRegression(C=config.c, max_iter=2000, class_weight=config.data.class_weight,
                               random_state=config.seed)
    return OneVsRestClassifier(model) if problem == "multi-label" else model


def load_predictor(run_dir: Path, config: BaselineConfig):
    from tunelab.classifiers import load_classifier, predict_scores
    from tunelab.data.text import TextSplit
    from tunelab.predict import as_text_inputs, predictions_from

    saved = json.loads((run_dir / "model" / "baseline.json").read_text(encoding="utf-8"))
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
            scores = majority.scores(len(inputs), len(names))
        else:
            split = TextSplit(inputs.texts, np.zeros(len(inputs)), [], inputs.pairs)
            scores = predict_scores(estimator, tfidf_features(vectorizer, split), problem, len(names))
        return predictions_from(inputs, scores, names)

    return predict


DESCRIPTION = ("Baselines that need no pretrained model, so reports show what pretraining adds: the majority class, "
               "or TF-IDF word n-grams with logistic regression (ridge for numbers).")
TASK = register_task(Task(COMMAND, BaselineConfig, prepare, execute, load_predictor=load_predictor, describe=describe,
                          summary="floors with no pretrained model: majority class, TF-IDF + linear model",
                          description=DESCRIPTION))
