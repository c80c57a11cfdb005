"""The frozen-feature probe: pretrained encoder features + a classical classifier.

The reference lab's first exercise (DistilBERT [CLS] features + ``SVC()`` on
Rotten Tomatoes), for any encoder and any text classification data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunelab.classifiers import ClassifierConfig, class_scores, fit_classifier, save_classifier
from tunelab.config import DataConfig, ImageLoadingConfig, RuntimeConfig, TrackingConfig, dump_yaml, to_dict
from tunelab.data.images import is_image_dataset, load_image_dataset
from tunelab.data.text import load_text_dataset
from tunelab.evaluation import ClassScores, evaluate_split, skipped_record
from tunelab.features import (
    FeatureCache,
    FeatureConfig,
    ImageFeatureExtractor,
    TextFeatureExtractor,
    cached_features,
)
from tunelab.models import count_parameters_from_config, resolve_model
from tunelab.runs import RunDirectory, environment
from tunelab.runtime import seed_everything
from tunelab.tasks.common import RunResult, abandon_on_failure, data_block, finish_run, record_inputs

logger = logging.getLogger(__name__)

COMMAND = "probe"


@dataclasses.dataclass
class ProbeConfig:
    """Everything that determines a probe run; saved as the run's config.yaml."""

    model: str = "distilbert-base-uncased"  # hub id, local directory, or alias (minilm)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    classifier: ClassifierConfig = dataclasses.field(default_factory=ClassifierConfig)
    images: ImageLoadingConfig = dataclasses.field(default_factory=ImageLoadingConfig)  # image datasets only
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    seed: int = 42  # sampling caps, made splits, classifier randomness


ProbeResult = RunResult


def run_probe(
    config: ProbeConfig,
    out: str | Path | None = None,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
) -> RunResult:
    """Extract (or reuse cached) features, fit the classifier on train, score every
    evaluation split, and write a complete run directory."""
    from tunelab.distributed import barrier, init_distributed, rank_zero_run_directory
    from tunelab.runtime import resolve_device

    rank, world = init_distributed(resolve_device(config.runtime.device).type)
    seed_everything(config.seed)
    source = resolve_model(config.model)  # paths only; nothing is loaded yet
    images = is_image_dataset(config.data.dataset)
    # Data is validated before any model loads, and the model loads before --out is touched.
    if images:
        dataset = load_image_dataset(config.data, seed=config.seed, flat_split="all")
        extractor = ImageFeatureExtractor(source, config.images, config.runtime)
    else:
        dataset = load_text_dataset(config.data, seed=config.seed)
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, text_column=dataset.text_column, label_column=dataset.label_column))
        extractor = TextFeatureExtractor(source, config.features, config.runtime)
    eval_splits = dataset.eval_split_names(config.data.splits)
    extractor.load()
    config_yaml = dump_yaml(config, COMMAND)
    run = rank_zero_run_directory(lambda: RunDirectory.start(out, COMMAND, config_yaml, argv, overwrite), rank, world)
    with abandon_on_failure(run):
        if rank == 0:
            record_inputs(run, source, config.data.dataset)
        result = _probe(config, dataset, extractor, eval_splits, source, run, config_yaml, rank, world, images)
    barrier(world)
    return result


def _probe(config, dataset, extractor, eval_splits, source, run, config_yaml, rank, world, images) -> RunResult:
    cache = FeatureCache() if config.features.cache else None
    features, from_cache, skipped = {}, {}, []
    for split in ["train", *[s for s in eval_splits if s != "train"]]:
        data = dataset.splits[split]
        vectors, from_cache[split] = cached_features(
            extractor, data if images else data.texts, f"{split} features", cache, rank, world)
        if rank != 0:
            continue
        usable = np.isfinite(vectors).all(axis=1)
        if not usable.all():  # unreadable images (or non-finite features): drop and report them
            skipped += [data.ids[i] for i in np.flatnonzero(~usable)]
            dataset.splits[split] = data.subset(np.flatnonzero(usable))
        features[split] = vectors[usable]
    if rank != 0:  # under torchrun, rank 0 fits and scores on the gathered features
        return RunResult(run.path, {})
    if skipped:
        logger.warning("%d examples without usable features were left out (listed in metrics.json)", len(skipped))
    if all(from_cache.values()):
        logger.info("all features came from the cache; pass --no-cache to recompute them")
    tracker = run.tracker(run.path.name, to_dict(config), config.tracking)

    train = dataset.splits["train"]
    start = time.perf_counter()
    validation = dataset.splits.get("validation")
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
    num_classes = len(dataset.class_names)
    for split in eval_splits:
        data = dataset.splits[split]
        full, score_kind = class_scores(estimator, features[split], num_classes)
        scores = ClassScores.from_full(full, score_kind, predicted=estimator.predict(features[split]))
        inputs = ("file", data.ids) if images else ("text", data.texts)
        split_metrics[split], reports[split] = evaluate_split(
            run, split, dataset.class_names, data.labels, scores, data.ids, inputs)
    eval_seconds = time.perf_counter() - start

    params = count_parameters_from_config(source)
    timing = {
        "seconds": {"features": extractor.seconds, "train": train_seconds, "eval": eval_seconds},
        "throughput": {
            "features_per_s": extractor.encoded / extractor.seconds if extractor.seconds else 0.0,
            "train_samples_per_s": len(train) / train_seconds if train_seconds else 0.0,
        },
    }
    metrics = {
        "command": COMMAND,
        "model": config.model,
        "dataset": config.data.dataset,
        "splits": split_metrics,
        "params": {"total": params, "trainable": 0, "note": "frozen encoder; only the classifier is fitted"},
        "timing": timing,
        "environment": {**environment(str(extractor.device)), "processes": world},
        "skipped": skipped_record(skipped),
        "classifier": {"kind": config.classifier.kind, "score": score_kind,
                       "C": tuning["chosen"] if tuning else config.classifier.c, "tuning": tuning},
        "features": {"pooling": config.features.pooling, "dim": int(features["train"].shape[1]),
                     "from_cache": from_cache},
        "data": data_block(dataset),
    }
    for split, values in split_metrics.items():
        tracker.log({f"{split}/{k}": v for k, v in values.items() if k != "n"})
    tracker.log({f"throughput/{k}": v for k, v in timing["throughput"].items()})
    return finish_run(run, metrics, config_yaml, reports, dataset.notes)
