"""The frozen-feature probe: pretrained encoder features + a classical classifier.

The reference lab's first exercise (DistilBERT [CLS] features + ``SVC()`` on
Rotten Tomatoes), for any encoder and any text classification data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunelab.classifiers import (
    ClassifierConfig,
    class_scores,
    fit_classifier,
    load_classifier,
    save_classifier,
)
from tunelab.config import ImageDecodingConfig, TaskConfig, setting
from tunelab.evaluation import ClassScores, evaluate_split
from tunelab.features import FeatureCache, FeatureConfig, cached_features
from tunelab.lifecycle import Outcome, Prepared, RunContext, recorded_model, throughput
from tunelab.registry import Task, register_task

logger = logging.getLogger(__name__)

COMMAND = "probe"


@dataclasses.dataclass
class ProbeConfig(TaskConfig):
    """Everything that determines a probe run; saved as the run's config.yaml."""

    model: str = setting("distilbert-base-uncased", "hub id, local directory, or the alias minilm (CLIP models "
                         "probe image data)", flag="--model", metavar="M")
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    classifier: ClassifierConfig = dataclasses.field(default_factory=ClassifierConfig)
    images: ImageDecodingConfig = dataclasses.field(default_factory=ImageDecodingConfig)  # image datasets only


def describe(metrics: dict) -> str:
    task = metrics.get("task", {})
    pooling = task.get("features", {}).get("pooling")
    return ", ".join(x for x in (f"{pooling} pooling" if pooling else "image features",
                                 task.get("classifier", {}).get("kind", "")) if x)


def prepare(config: ProbeConfig) -> Prepared:
    """Read and check the data, then load the encoder (text, or CLIP for images)."""
    from tunelab.data.images import is_image_dataset, load_image_dataset
    from tunelab.data.text import load_text_dataset
    from tunelab.features import ImageFeatureExtractor, TextFeatureExtractor
    from tunelab.models import resolve_model

    source = resolve_model(config.model)  # paths only; nothing is loaded yet
    images = is_image_dataset(config.data.dataset)
    if images:
        dataset = load_image_dataset(config.data, seed=config.seed, flat_split="all")
        extractor = ImageFeatureExtractor(source, config.images, config.features.batch_size, config.runtime)
    else:
        dataset = load_text_dataset(config.data, seed=config.seed)
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, text_column=dataset.text_column, label_column=dataset.label_column))
        extractor = TextFeatureExtractor(source, config.features, config.runtime)
    eval_splits = dataset.eval_split_names(config.data.splits)
    extractor.load()
    return Prepared(config, source, dataset, eval_splits, {"extractor": extractor, "images": images})


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Features for every split (cached), the classifier fitted on train, every evaluation
    split scored."""
    from tunelab.models import count_parameters_from_config

    config, dataset, run = prepared.config, prepared.dataset, context.run
    extractor, images = prepared.parts["extractor"], prepared.parts["images"]
    cache = FeatureCache() if config.features.cache else None
    features, from_cache, skipped, feature_seconds = {}, {}, [], {}
    for split in ["train", *[s for s in prepared.eval_splits if s != "train"]]:
        data = dataset.splits[split]
        before = extractor.seconds
        vectors, from_cache[split] = cached_features(
            extractor, data if images else data.texts, f"{split} features", cache, context.rank, context.world)
        feature_seconds[split] = extractor.seconds - before
        if context.rank != 0:
            continue
        usable = np.isfinite(vectors).all(axis=1)
        if not usable.all():  # unreadable images (or non-finite features): drop and report them
            skipped += [data.ids[i] for i in np.flatnonzero(~usable)]
            dataset.splits[split] = data.subset(np.flatnonzero(usable))
        features[split] = vectors[usable]
    if context.rank != 0:  # under torchrun, rank 0 fits and scores on the gathered features
        return None
    if skipped:
        logger.warning("%d examples without usable features were left out (listed in metrics.json)", len(skipped))
    if all(from_cache.values()):
        logger.info("all features came from the cache; pass --no-cache to recompute them")

    train, validation = dataset.splits["train"], dataset.splits.get("validation")
    start = time.perf_counter()
    estimator, tuning = fit_classifier(
        config.classifier, features["train"], train.labels,
        features.get("validation") if validation is not None else None,
        validation.labels if validation is not None else None,
        seed=config.seed,
    )
    train_seconds = time.perf_counter() - start
    save_classifier(estimator, run.path / "model" / "classifier.skops")
    run.write_json("model/probe.json", {
        "class_names": dataset.class_names,
        "label_values": list(dataset.label_space.values),
        "feature_dim": int(features["train"].shape[1]),
    })

    start = time.perf_counter()
    split_metrics, reports, score_kind = {}, {}, "score"
    for split in prepared.eval_splits:
        data = dataset.splits[split]
        full, score_kind = class_scores(estimator, features[split], len(dataset.class_names))
        scores = ClassScores.from_full(full, score_kind, predicted=estimator.predict(features[split]))
        inputs = {"file": data.ids} if images else data.inputs.columns()
        split_metrics[split], reports[split] = evaluate_split(
            run, split, dataset.class_names, data.labels, scores, data.ids, inputs)
    eval_seconds = time.perf_counter() - start
    scored = sum(len(dataset.splits[s]) for s in prepared.eval_splits)
    return Outcome(
        splits=split_metrics, reports=reports,
        params={"total": count_parameters_from_config(prepared.source), "trainable": 0,
                "note": "frozen encoder; only the classifier is fitted"},
        seconds={"features": extractor.seconds, "train": train_seconds, "eval": eval_seconds},
        throughput={
            "train_samples_per_s": throughput(len(train), feature_seconds["train"] + train_seconds),
            "eval_samples_per_s": throughput(scored, eval_seconds + sum(
                feature_seconds[s] for s in prepared.eval_splits if s != "train")),
        },
        task={"classifier": {"kind": config.classifier.kind, "score": score_kind,
                             "C": tuning["chosen"] if tuning else config.classifier.c, "tuning": tuning},
              "features": {"pooling": None if images else config.features.pooling,
                           "dim": int(features["train"].shape[1]), "from_cache": from_cache,
                           "per_s": throughput(extractor.encoded, extractor.seconds)}},
        skipped=skipped,
    )


def load_predictor(run_dir: Path, config: ProbeConfig):
    """Classify new texts with a finished probe run: the recorded encoder, the saved classifier."""
    from tunelab.features import TextFeatureExtractor
    from tunelab.predict import Prediction, check_texts

    info = json.loads((run_dir / "model" / "probe.json").read_text(encoding="utf-8"))
    estimator = load_classifier(run_dir / "model" / "classifier.skops")
    extractor = TextFeatureExtractor(recorded_model(run_dir, config.model), config.features, config.runtime)
    names = info["class_names"]

    def predict(inputs: Sequence[str]) -> list:
        texts = check_texts(inputs)
        features = extractor.encode(texts, desc="features")
        full, kind = class_scores(estimator, features, len(names))
        scores = ClassScores.from_full(full, kind, predicted=estimator.predict(features))
        return [Prediction(t, names[p], float(s), kind) for t, p, s in zip(texts, scores.predicted, scores.score)]

    return predict


TASK = register_task(Task(
    name=COMMAND, config_class=ProbeConfig, prepare=prepare, execute=execute,
    summary="frozen encoder features + a classical classifier",
    description="Frozen-feature probe: encoder features (cached) + SVC or logistic regression.",
    load_predictor=load_predictor, describe=describe,
))
