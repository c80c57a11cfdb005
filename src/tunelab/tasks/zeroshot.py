"""CLIP zero-shot classification: class prompts against images, no training.

The reference encoded one image at a time; here images are decoded lazily, encoded
in batches, and scored against class embeddings computed once, with top-k results
streamed so memory stays flat.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from tunelab.core.config import ImageLoadingConfig, TaskConfig, check_non_negative, setting
from tunelab.core.distributed import gather_to_zero, shard
from tunelab.core.errors import ConfigError, DataError, TunelabError
from tunelab.core.files import PREDICTOR_FILE, predictor_record, read_predictor
from tunelab.core.registry import Task, register_task
from tunelab.core.runtime import resolve_device, resolve_dtype
from tunelab.data.image_pipeline import ClipPreprocess, image_loader
from tunelab.data.images import is_image_dataset, load_image_dataset
from tunelab.data.text import load_text_dataset, resolved_data_config
from tunelab.encoders.clip import (
    class_embeddings,
    dual_encoder_predictor,
    files_predictor,
    is_sigmoid,
    load_clip,
    load_templates,
    save_class_embeddings,
    score_loader,
    scoring_record,
)
from tunelab.encoders.features import FeatureCache, cached_features
from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor
from tunelab.models.predictor import as_text_inputs, predictions_from
from tunelab.models.resolve import count_parameters, count_parameters_from_config, resolve_model
from tunelab.problems import get_problem
from tunelab.problems.scores import ClassScores, ValueScores
from tunelab.tasks.contract import Outcome, Prepared, RunContext, Scored
from tunelab.tasks.lifecycle import recorded_model
from tunelab.tasks.metrics_file import throughput
from tunelab.tasks.text_zeroshot import execute_texts, prepare_texts, text_predictor

logger = logging.getLogger(__name__)

COMMAND = "zeroshot"


@dataclasses.dataclass
class ZeroshotConfig(TaskConfig):
    model: str = setting("openai/clip-vit-base-patch16", "a CLIP hub id or local directory", flag="--model",
                         metavar="M")
    templates: str = setting("simple", "prompts: simple ('a photo of a {}'; text: the description alone, or "
                             "'This example is {}.' for nli), ensemble (CLIP's 80 ImageNet prompts, averaged per "
                             "class), a file of templates, or templates holding {} separated by |",
                             flag="--templates", metavar="simple|ensemble|FILE|TEMPLATE")
    method: str = setting("similarity", "text: similarity (cosine of a sentence encoder's embeddings of the text "
                          "and each class description), nli (an NLI cross-encoder's entailment of 'This example "
                          "is {}.') or likelihood (a decoder language model's log-likelihood of each label after "
                          "the prompt 'Text: ...\\nLabel:')", flag="--zeroshot-method",
                          choices=("similarity", "nli", "likelihood"))
    in_context: int = setting(0, "likelihood: K labelled training examples per class shown in the prompt "
                              "(drawn with --seed, recorded in the run)", flag="--in-context", metavar="K")
    label_names: list[str] | None = setting(None, "text: one name per class, in class order (names integer "
                                            "labels; default: the labels, or the dataset's meaning of them)",
                                            flag="--label-names", metavar="A,B,...")
    label_descriptions: str | None = setting(None, "text: a YAML or JSON file, label -> a description or a list "
                                             "of them (averaged)", flag="--label-descriptions", metavar="FILE")
    calibrate: bool = setting(False, "text: subtract each class's mean score over the training texts (their "
                              "labels unused)", flag="--calibrate", const=True)
    images: ImageLoadingConfig = dataclasses.field(default_factory=ImageLoadingConfig)
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)  # sentence pairs only

    def __post_init__(self) -> None:
        check_non_negative("in_context", self.in_context)


def pair_cosine(u, v):
    """The cosine similarity of each pair's two embeddings."""
    import numpy as np

    return (u * v).sum(1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-12)


def pair_scores(similarity, calibration: dict):
    """Scores from cosine similarities, the one way evaluation and predict make them:
    the linear map fitted on validation (numbers), or the margin to the threshold fitted
    there (two classes)."""
    import numpy as np

    if "slope" in calibration:
        return ValueScores(calibration["slope"] * similarity + calibration["intercept"])
    margin = similarity - calibration["threshold"]
    return ClassScores.from_full(np.stack([-margin, margin], axis=1), "similarity_margin")


def pair_predictor(run_dir: Path, config: ZeroshotConfig):
    """New sentence pairs scored as the run scored its splits (pair_scores)."""
    saved = read_predictor(run_dir)
    extractor = TextFeatureExtractor(recorded_model(run_dir, config.model), config.features, config.runtime)

    def predict(inputs) -> list:
        inputs = as_text_inputs(inputs)
        if inputs.pairs is None:
            raise TunelabError("this run scores sentence pairs: give them with --pair FIRST SECOND")
        similarity = pair_cosine(extractor.encode(inputs.texts), extractor.encode(inputs.pairs))
        return predictions_from(inputs, pair_scores(similarity, saved), saved["class_names"])

    return predict


def describe(metrics: dict) -> str:
    text = metrics.get("task", {}).get("text")
    if text:
        return f"text {text.get('method', '?')}, {len(text.get('templates', []))} template(s)" + \
            (", calibrated" if text.get("calibration") else "")
    if "pairs" in metrics.get("task", {}):
        return "cosine similarity of mean-pooled embeddings"
    templates = metrics.get("task", {}).get("templates", {})
    return f"{templates.get('spec', '?')} prompts ({templates.get('count', '?')})"


def prepare(config: ZeroshotConfig) -> Prepared:
    """Images: listed and labelled (no pixels read), the prompts read, CLIP loaded.
    Sentence pairs: read and checked, the text encoder loaded."""
    source = resolve_model(config.model)
    if not is_image_dataset(config.data.dataset):
        return prepare_pairs(config, source)
    if config.data.shots is not None:
        raise ConfigError("--shots samples K training examples per class, and image zero-shot learns from none; "
                          "drop --shots (probe, finetune or clip-finetune take it)")
    templates = load_templates(config.templates)
    # Zero-shot needs no training data: a flat class folder is scored whole as "test".
    dataset = load_image_dataset(config.data, seed=config.seed, flat_split="test")
    eval_splits = dataset.eval_split_names(config.data.splits)
    if not eval_splits:
        raise DataError(f"{config.data.dataset} has only a train split; score it with --splits train")
    dtype = resolve_dtype(config.runtime.precision, resolve_device(config.runtime.device))
    model, tokenizer, processor = load_clip(source, dtype=dtype)
    if not dataset.class_names:
        raise DataError(f"{config.data.dataset} holds numbers; zero-shot image classification picks classes")
    if next(iter(dataset.splits.values())).labels.ndim == 2 and not is_sigmoid(model):  # a row of labels each
        raise DataError(f"{config.data.dataset} holds label sets; CLIP's softmax picks one class per image: use a "
                        "SigLIP model (a sigmoid per label), or fit a probe on the CLIP features")
    return Prepared(config, source, dataset, eval_splits,
                    {"templates": templates, "model": model, "tokenizer": tokenizer, "processor": processor,
                     "dtype": dtype})


def prepare_pairs(config: ZeroshotConfig, source) -> Prepared:
    """Zero-shot for sentence pairs: the cosine similarity of the two texts' mean-pooled
    embeddings, the floor every trained pair method must beat."""
    dataset = load_text_dataset(config.data, seed=config.seed)
    if dataset.text_pair_column is None or config.method == "likelihood":  # a prompt can hold both texts

        return prepare_texts(config, source, dataset)
    if dataset.class_names and (len(dataset.class_names) != 2 or dataset.splits["train"].labels.ndim == 2):
        raise DataError(f"zero-shot pair similarity predicts a number or one of two classes; this {dataset.problem} "
                        f"task has {len(dataset.class_names)} classes")
    if "validation" not in dataset.splits:
        raise DataError("zero-shot pair similarity fits its scale or threshold on a validation split, and there "
                        "is none")
    data = dataclasses.replace(resolved_data_config(config.data, dataset, "bi"), pair_encoding="bi")
    features = dataclasses.replace(config.features, pooling=config.features.pooling or "mean")
    config = dataclasses.replace(config, data=data, features=features)
    extractor = TextFeatureExtractor(source, config.features, config.runtime)
    extractor.load()
    eval_splits = dataset.eval_split_names(config.data.splits)
    return Prepared(config, source, dataset, eval_splits, {"extractor": extractor})


def execute_pairs(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Cosine similarities for every split; on validation, a linear map from similarity to
    the label scale (regression) or the threshold that best separates two classes."""
    import numpy as np

    config, dataset, run = prepared.config, prepared.dataset, context.run
    extractor = prepared.parts["extractor"]
    cache = FeatureCache() if config.features.cache else None
    similarity = {}
    for split in dict.fromkeys(["validation", *prepared.eval_splits]):
        data = dataset.splits[split]
        u, _ = cached_features(extractor, data.texts, f"{split} first texts", cache, context.rank, context.world)
        v, _ = cached_features(extractor, data.pairs, f"{split} second texts", cache, context.rank, context.world)
        if context.rank == 0:
            similarity[split] = pair_cosine(u, v)
    if context.rank != 0:
        return None
    start = time.perf_counter()
    validation = dataset.splits["validation"].labels
    if not dataset.class_names:  # numbers
        slope, intercept = np.polyfit(similarity["validation"], validation, 1)
        calibration = {"map": "label = slope * cosine + intercept, fitted on validation",
                       "slope": float(slope), "intercept": float(intercept)}
    else:
        candidates = np.unique(similarity["validation"])
        accuracy = [np.mean((similarity["validation"] >= t) == (validation == 1)) for t in candidates]
        threshold = float(candidates[int(np.argmax(accuracy))])
        calibration = {"threshold": threshold, "rule": f"{dataset.class_names[1]} when cosine >= threshold, "
                       "chosen on validation for accuracy"}
    predictions = {split: Scored(pair_scores(similarity[split], calibration), dataset.splits[split].labels,
                                 dataset.splits[split].ids, dataset.splits[split].inputs.columns())
                   for split in prepared.eval_splits}
    run.write_json(f"model/{PREDICTOR_FILE}", predictor_record(COMMAND, dataset.problem, dataset.class_names,
                                                               kind="pair-similarity", **calibration))
    scored = sum(len(dataset.splits[s]) for s in prepared.eval_splits)
    return Outcome(
        scored=predictions,
        params={"total": count_parameters_from_config(prepared.source), "trainable": 0},
        seconds={"train": 0.0, "features": extractor.seconds, "eval": extractor.seconds + time.perf_counter() - start},
        throughput={"train_samples_per_s": None,
                    "eval_samples_per_s": throughput(scored, extractor.seconds + time.perf_counter() - start)},
        task={"pairs": {"similarity": "cosine", "pooling": config.features.pooling, **calibration}},
        labels_seen=len(dataset.splits["validation"]),  # the scale or threshold is fitted there
    )


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Class embeddings once, then every evaluation split's images scored against them
    (sharded over processes under torchrun, gathered on rank 0)."""
    if "text" in prepared.parts:
        return execute_texts(prepared, context, COMMAND)
    if "extractor" in prepared.parts:
        return execute_pairs(prepared, context)
    config, dataset, run, device = prepared.config, prepared.dataset, context.run, context.device
    parts = prepared.parts
    model, templates = parts["model"].to(device).eval(), parts["templates"]
    start = time.perf_counter()
    class_emb = class_embeddings(model, parts["tokenizer"], dataset.class_names, templates, device)
    text_seconds = time.perf_counter() - start
    if context.rank == 0:
        logger.info("%d classes x %d templates encoded in %.1f s", len(dataset.class_names), len(templates),
                    text_seconds)

    skipped, images_seen = [], 0
    start = time.perf_counter()
    num_classes = len(dataset.class_names)
    problem = get_problem(dataset.problem)  # SigLIP on label sets: a sigmoid per label
    predictions = {}
    for split in prepared.score_splits:
        data = dataset.splits[split]
        rows = shard(len(data), context.rank, context.world)
        part = data.subset(rows)
        scored = problem.similarity_accumulator(len(part), num_classes)
        loader = image_loader(part, ClipPreprocess.for_device(parts["processor"], device),
                              config.images.batch_for(device), config.images.num_workers, config.images.strict)
        bad = score_loader(model, loader, class_emb.to(device), device, scored, parts["dtype"],
                           desc=f"{split} images")
        gathered = gather_to_zero((rows, scored, [part.ids[r] for r in bad]), context.rank, context.world)
        if context.rank != 0:
            continue
        accumulator = problem.similarity_accumulator(len(data), num_classes)
        for part_rows, part_scores, part_bad in gathered:
            accumulator.absorb(part_scores, part_rows)
            skipped += part_bad
        images_seen += len(data)
        kept = data.subset(accumulator.seen.nonzero()[0])
        predictions[split] = Scored(problem.scores_from_similarities(accumulator), kept.labels, kept.ids,
                                    {"file": kept.ids})
    if context.rank != 0:
        return None
    save_class_embeddings(run.path / "model" / "class_embeddings.safetensors", class_emb, dataset.class_names)
    run.write_json(f"model/{PREDICTOR_FILE}", predictor_record(
        COMMAND, dataset.problem, dataset.class_names, kind="clip", templates=templates, threshold=0.5,
        **scoring_record(model)))
    eval_seconds = time.perf_counter() - start
    if skipped:
        logger.warning("%d unreadable images were skipped (listed in metrics.json)", len(skipped))
    return Outcome(
        scored=predictions, params={**count_parameters(model), "trainable": 0},
        seconds={"train": 0.0, "text": text_seconds, "eval": eval_seconds},
        throughput={"train_samples_per_s": None, "eval_samples_per_s": throughput(images_seen, eval_seconds)},
        task={"templates": {"spec": config.templates, "count": len(templates)},
              "scores": "sigmoid" if is_sigmoid(model) else "softmax"},
        skipped=skipped,
        labels_seen=0,  # and the validation split, where a threshold is chosen on it
    )


def load_predictor(run_dir: Path, config: ZeroshotConfig):
    """Classify image files against the class embeddings the run saved; or score sentence
    pairs by similarity with the calibration the run fitted."""
    saved = read_predictor(run_dir)
    if str(saved.get("kind", "")).startswith("text-"):
        return text_predictor(run_dir, config, recorded_model(run_dir, config.model))
    if saved.get("kind") == "pair-similarity" or (saved.get("kind") != "clip" and ("slope" in saved
                                                                                 or "threshold" in saved)):
        # (old pair runs recorded no kind)
        return pair_predictor(run_dir, config)
    device = resolve_device(config.runtime.device)
    dtype = resolve_dtype(config.runtime.precision, device)
    model, _, processor = load_clip(recorded_model(run_dir, config.model), dtype=dtype)
    return files_predictor(run_dir, model, processor, device, config.images.batch_for(device), 0, dtype)


def export_graph(run_dir: Path, config: ZeroshotConfig):
    """Image runs: the model's image tower; the class embeddings follow in NumPy."""
    from tunelab.encoders.graphs import dual_encoder_export  # here, not at the top: loads torch

    if read_predictor(run_dir).get("kind") != "clip":
        raise TunelabError(f"{run_dir} is a zero-shot run on texts; ONNX export covers its image runs")
    model, _, processor = load_clip(recorded_model(run_dir, config.model))
    return dual_encoder_export(run_dir, model, processor)


def predictor_from_graph(run_dir: Path, config: ZeroshotConfig, encode):
    return dual_encoder_predictor(run_dir, encode)


TASK = register_task(Task(
    name=COMMAND, config_class=ZeroshotConfig, prepare=prepare, execute=execute,
    summary="zero-shot: CLIP prompts against images, texts against class descriptions, sentence-pair similarity",
    # --batch-size is the images' (images.batch_size); sentence pairs take --set features.batch_size.
    unused_settings=("data.class_weight", "data.pair_encoding", "features.batch_size"),
    description="Zero-shot, no training: CLIP class prompts against images; texts against class descriptions "
                "(a sentence encoder's cosine, or an NLI cross-encoder's entailment); or, for sentence pairs, the "
                "cosine similarity of a text encoder's mean-pooled embeddings (scaled or thresholded on "
                "validation).",
    load_predictor=load_predictor, describe=describe, export_graph=export_graph,
    predictor_from_graph=predictor_from_graph,
    problems=("single-label", "multi-label", "regression"),
    inputs=(("images", "clip"), ("pairs", "text-encoder"), ("text", "text-encoder")),
))
