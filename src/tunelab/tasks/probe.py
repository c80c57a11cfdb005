"""The frozen-feature probe: pretrained encoder features + a classical classifier.

The reference lab's first exercise (DistilBERT [CLS] features + ``SVC()`` on
Rotten Tomatoes), for any encoder and any text classification data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.core.config import ImageDecodingConfig, RuntimeConfig, TaskConfig, setting
from tunelab.core.errors import DataError, TunelabError, counted
from tunelab.core.files import PREDICTOR_FILE, predictor_record, read_json_file, read_predictor
from tunelab.core.registry import Task, register_task
from tunelab.data.image_sources import files_split
from tunelab.data.images import is_image_dataset, load_image_dataset
from tunelab.data.text import load_text_dataset, resolved_data_config
from tunelab.encoders.features import FeatureCache, ImageFeatureExtractor, cached_features, pair_features
from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor, default_text_pooling, pair_vectors
from tunelab.encoders.vision import default_pooling
from tunelab.models.classifiers import (
    ClassifierConfig,
    fit_classifier,
    load_classifier,
    predict_scores,
    resolve_kind,
    save_classifier,
)
from tunelab.models.predictor import as_text_inputs, predictions_from
from tunelab.models.resolve import count_parameters_from_config, is_dual_encoder, load_config, resolve_model
from tunelab.tasks.active import ActiveConfig, active_rows, check_active
from tunelab.tasks.contract import Outcome, Prepared, RunContext, Scored
from tunelab.tasks.lifecycle import recorded_model
from tunelab.tasks.metrics_file import throughput

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
    active: ActiveConfig = dataclasses.field(default_factory=ActiveConfig)  # active learning, played on train


def describe(metrics: dict) -> str:
    task = metrics.get("task", {})
    features = task.get("features", {})
    what = f"{features['pooling']} pooling" if features.get("pooling") else "image features"
    if features.get("pair_encoding"):
        what += f", {features['pair_encoding']} pairs"
    return f"{what}, {task.get('classifier', {}).get('kind', '')}"


def prepare(config: ProbeConfig) -> Prepared:
    """Read and check the data, then load the encoder (text, or CLIP for images)."""
    source = resolve_model(config.model)  # paths only; nothing is loaded yet
    check_active(config.active, config.data.shots)
    images = is_image_dataset(config.data.dataset)
    if images:
        dataset = load_image_dataset(config.data, seed=config.seed, flat_split="all")
        backbone = load_config(source)
        # CLIP gives one embedding per image; another vision backbone is pooled as asked.
        pooling = None if is_dual_encoder(backbone) else config.features.pooling or default_pooling(backbone)
        config = dataclasses.replace(config, features=dataclasses.replace(config.features, pooling=pooling))
        extractor = ImageFeatureExtractor(source, config.images, config.features.batch_size, config.runtime, pooling)
    else:
        dataset = load_text_dataset(config.data, seed=config.seed)
        data = resolved_data_config(config.data, dataset, pair_default="bi")

        pooling = config.features.pooling
        if pooling is None:
            pooling, why = default_text_pooling(source, load_config(source), data.pair_encoding)
            logger.info("pooling: %s (%s; --pooling chooses another)", pooling, why)
        config = dataclasses.replace(config, data=data,
                                     features=dataclasses.replace(config.features, pooling=pooling))
        extractor = TextFeatureExtractor(source, config.features, config.runtime)
    config = dataclasses.replace(config, classifier=resolve_kind(config.classifier, dataset.problem))
    eval_splits = dataset.eval_split_names(config.data.splits)
    extractor.load()
    return Prepared(config, source, dataset, eval_splits, {"extractor": extractor, "images": images})


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Features for every split (cached), the estimator fitted on train (and its setting
    chosen on validation), every evaluation split scored."""
    config, dataset, run = prepared.config, prepared.dataset, context.run
    extractor, images = prepared.parts["extractor"], prepared.parts["images"]
    cache = FeatureCache() if config.features.cache else None
    features, from_cache, skipped, feature_seconds = {}, {}, [], {}
    for split in ["train", *[s for s in prepared.score_splits if s != "train"]]:
        data = dataset.splits[split]
        before = extractor.seconds
        if images:
            vectors, from_cache[split] = cached_features(extractor, data, f"{split} features", cache,
                                                         context.rank, context.world)
        else:
            vectors, from_cache[split] = pair_features(extractor, data.inputs, config.data.pair_encoding,
                                                       f"{split} features", cache, context.rank, context.world)
        feature_seconds[split] = extractor.seconds - before
        if context.rank != 0:
            continue
        usable = np.isfinite(vectors).all(axis=1)
        if images and config.images.strict and not usable.all():  # also when the features came from the cache
            bad = [str(data.ids[i]) for i in np.flatnonzero(~usable)]
            raise DataError(f"--strict: {counted(len(bad), 'image')} in {split} could not be read ({bad[0]}"
                            f"{', ...' if len(bad) > 1 else ''}); mend or remove them, or drop --strict to skip them")
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

    active = None
    if config.active.strategy is not None:  # the examples a strategy selected, round by round
        rows, active = active_rows(config.active, config.classifier, dataset, features["train"], config.seed,
                                   config.data.class_weight)
        dataset.splits["train"], features["train"] = dataset.splits["train"].subset(rows), features["train"][rows]
        run.write_json("active.json", active)
    train, validation = dataset.splits["train"], dataset.splits.get("validation")
    head = fit_head(config.classifier, config.data, dataset, features, prepared.score_splits, config.seed,
                    lambda data: {"file": data.ids} if images else data.inputs.columns())
    save_classifier(head.estimator, run.path / "model" / "classifier.skops")
    run.write_json(f"model/{PREDICTOR_FILE}", predictor_record(
        COMMAND, dataset.problem, dataset.class_names, label_values=list(dataset.label_space.values),
        threshold=0.5, feature_dim=int(features["train"].shape[1]), inputs="images" if images else "text",
        # The head alone is no model: the encoder it needs, as the run recorded it (copy that too).
        encoder=prepared.source.record() if prepared.source is not None else None,
        pooling=config.features.pooling))
    tuning, score_kind = head.tuning, head.score_kind
    train_seconds, eval_seconds, predictions = head.train_seconds, head.eval_seconds, head.predictions
    scored = sum(len(dataset.splits[s]) for s in prepared.eval_splits)
    parameter, value = ("alpha", 1.0) if config.classifier.kind == "ridge" else ("C", config.classifier.c)
    task = {"classifier": {"kind": config.classifier.kind, "score": score_kind,
                           parameter: tuning["chosen"] if tuning else value, "tuning": tuning},
            "features": {"pooling": config.features.pooling,
                         "pair_encoding": None if images else config.data.pair_encoding,
                         "dim": int(features["train"].shape[1]), "from_cache": from_cache,
                         "per_s": throughput(extractor.encoded, extractor.seconds)}}
    if active is not None:
        task["active"] = {k: v for k, v in active.items() if k != "rounds"} | {"rounds": len(active["rounds"]) - 1}
    return Outcome(
        scored=predictions,
        params={"total": count_parameters_from_config(prepared.source), "trainable": 0,
                "note": "frozen encoder; only the classifier is fitted"},
        seconds={"features": extractor.seconds, "train": train_seconds, "eval": eval_seconds,
                 **({"features_reused": extractor.reused_seconds} if getattr(extractor, "reused_seconds", 0) else {})},
        throughput={
            "train_samples_per_s": throughput(len(train), feature_seconds["train"] + train_seconds),
            "eval_samples_per_s": throughput(scored, eval_seconds + sum(
                feature_seconds[s] for s in prepared.eval_splits if s != "train")),
        },
        task=task,
        skipped=skipped,
        # Validation labels count only where they chose something (C, ridge's alpha; a threshold: the lifecycle).
        labels_seen=len(train) + (len(validation) if validation is not None and tuning is not None else 0),
        counts_validation=tuning is not None,
    )


@dataclasses.dataclass
class FittedHead:
    estimator: Any
    tuning: dict | None  # C (or alpha) chosen on validation, with every score
    predictions: dict[str, Scored]
    score_kind: str
    train_seconds: float
    eval_seconds: float


def fit_head(classifier, data_config, dataset, features: dict, score_splits, seed: int, inputs_of) -> FittedHead:
    """A classical head on fixed vectors (a probe's frozen features, SetFit's tuned
    embeddings): fitted on train (C or alpha chosen on validation where asked), every
    split the run scores scored (the lifecycle chooses a label-set threshold).
    ``inputs_of(split data)`` gives a predictions file's input columns."""
    problem, num_classes = dataset.problem, len(dataset.class_names)
    train, validation = dataset.splits["train"], dataset.splits.get("validation")
    start = time.perf_counter()
    estimator, tuning = fit_classifier(
        classifier, features["train"], train.labels,
        features.get("validation") if validation is not None else None,
        validation.labels if validation is not None else None,
        seed=seed, problem=problem, class_weight=data_config.class_weight,
        threshold=float(data_config.threshold) if data_config.threshold != "tune" else 0.5,
    )
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    predictions, score_kind = {}, "score"
    for split in score_splits:
        data = dataset.splits[split]
        scores = predict_scores(estimator, features[split], problem, num_classes)
        score_kind = scores.kind
        predictions[split] = Scored(scores, data.labels, data.ids, inputs_of(data))
    return FittedHead(estimator, tuning, predictions, score_kind, train_seconds,
                      time.perf_counter() - start)


def load_predictor(run_dir: Path, config: ProbeConfig):
    """Predict for new texts (or pairs) with a finished probe run: the recorded encoder, the
    saved estimator."""
    if read_predictor(run_dir).get("inputs") == "images":  # the recorded backbone, the run's pooling

        extractor = ImageFeatureExtractor(recorded_model(run_dir, config.model),
                                          dataclasses.replace(config.images, strict=True, num_workers=0),
                                          config.features.batch_size, config.runtime, config.features.pooling)
        return predictor_from_graph(run_dir, config, lambda paths: extractor.encode_all(files_split(paths), "images"))
    check_text_run(run_dir)
    extractor = TextFeatureExtractor(recorded_model(run_dir, config.model), config.features, config.runtime)
    return predictor_from_graph(run_dir, config, lambda inputs: extractor.encode(inputs, "features"))


def check_text_run(run_dir: Path) -> None:
    if read_predictor(run_dir).get("inputs") == "images" or \
            (read_json_file(run_dir / "metrics.json").get("task") or {}).get("features", {}).get("pooling") is None:
        # (runs made before predictor.json said "inputs": image probes recorded no pooling)
        raise TunelabError(f"{run_dir} is a probe on image features made before runs recorded their inputs; "
                           "rerun it to predict with it or export it")


def export_graph(run_dir: Path, config: ProbeConfig):
    """The frozen encoder (text, or image backbone) with the run's pooling, in fp32 on the
    CPU, as one graph; the saved classifier follows in ``predictor_from_graph``."""
    from tunelab.encoders.graphs import ExportGraph, PooledEncoder  # here, not at the top: loads torch

    if read_predictor(run_dir).get("inputs") == "images":
        from tunelab.encoders.graphs import ImageVectors  # here, not at the top: loads torch

        extractor = ImageFeatureExtractor(recorded_model(run_dir, config.model), config.images,
                                          config.features.batch_size, RuntimeConfig(device="cpu", precision="fp32"),
                                          config.features.pooling)
        model, processor, kind = extractor.loaded
        module = ImageVectors(model.float(), None if kind == "clip" else config.features.pooling or "cls")
        return ExportGraph(module.eval(), None, 0, "features", processor=processor)
    check_text_run(run_dir)
    extractor = TextFeatureExtractor(recorded_model(run_dir, config.model), config.features,
                                     RuntimeConfig(device="cpu", precision="fp32"))
    module = PooledEncoder(extractor.model.float(), config.features.pooling or "cls").eval()
    return ExportGraph(module, extractor.tokenizer, extractor.max_length, "features")


def predictor_from_graph(run_dir: Path, config: ProbeConfig, encode):
    """The saved classifier on features from ``encode`` (PyTorch or ONNX Runtime)."""
    info = read_predictor(run_dir)
    estimator = load_classifier(run_dir / "model" / "classifier.skops")
    names, problem = info["class_names"], info.get("problem")  # None in old runs: single-label

    images = info.get("inputs") == "images"

    def predict(inputs) -> list:
        inputs = as_text_inputs(inputs)  # image files: their paths
        if images:
            features = encode(files_split(inputs.texts).ids)
        else:
            features = pair_vectors(encode, inputs, config.data.pair_encoding)
        scores = predict_scores(estimator, features, problem, len(names), info.get("threshold", 0.5))
        return predictions_from(inputs, scores, names)

    return predict


TASK = register_task(Task(
    name=COMMAND, config_class=ProbeConfig, prepare=prepare, execute=execute,
    summary="frozen encoder features + a classical classifier",
    description="Frozen-feature probe: encoder features (cached) + SVC or logistic regression.",
    load_predictor=load_predictor, describe=describe, export_graph=export_graph,
    predictor_from_graph=predictor_from_graph,
    inputs=(("text", "text-encoder"), ("pairs", "text-encoder"), ("images", "clip"), ("images", "vision")),
))
