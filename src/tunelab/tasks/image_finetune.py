"""``tunelab finetune`` on image data: any vision backbone transformers makes an image
classifier of (ViT, DeiT, BEiT, DINOv2, ConvNeXt, Swin, SigLIP's or CLIP's image
tower, ...), full or LoRA, with a fresh head for classes, label sets or a value.

The same lazy image pipeline as CLIP (decoded and resized in DataLoader workers,
normalised where the model is), the same Trainer (resume, bf16, torchrun), the same
evaluation and run directory as text fine-tuning. model/ is a plain transformers
folder that ``pipeline("image-classification")`` loads with the label names.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tunelab.core.errors import DataError, ModelError
from tunelab.core.files import PREDICTOR_FILE, predictor_record, read_predictor
from tunelab.core.runtime import resolve_device
from tunelab.data.image_pipeline import ClipPreprocess, image_loader
from tunelab.data.image_sources import files_split
from tunelab.data.images import load_image_dataset
from tunelab.encoders.vision import classify_loader, image_classifier_types
from tunelab.models.predictor import predictions_from
from tunelab.models.resolve import (
    ModelSource,
    count_parameters,
    hub_kwargs,
    load_config,
    load_pretrained,
    quiet_transformers,
)
from tunelab.problems import get_problem
from tunelab.problems.scores import split_metrics, validation_loss
from tunelab.tasks.contract import Outcome, Prepared, RunContext, Scored
from tunelab.tasks.lifecycle import trained_outcome
from tunelab.training.config import (
    ADAPTER_DIR,
    check_best_metric,
    class_weights,
    point_adapter_at_base,
    wrap_lora,
)
from tunelab.training.images import build_image_trainer

COMMAND = "finetune"


def build_image_classifier(source: ModelSource, dataset, config):
    """(model, image processor): the backbone with a fresh head, LoRA-wrapped when asked.
    A model that is no vision backbone stops in one line."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model_type = getattr(load_config(source), "model_type", "unknown")
    if model_type not in image_classifier_types():
        raise ModelError(f"'{source.name}' is a {model_type} model; fine-tuning on images needs a vision backbone "
                         "(ViT, DeiT, BEiT, DINOv2, ConvNeXt, Swin, SigLIP, CLIP, ...)")
    problem = get_problem(dataset.problem)
    id2label = problem.head_labels(dataset.class_names)
    what = f"'{source.name}' for image classification"
    model = load_pretrained(
        AutoModelForImageClassification, source.location, what,
        num_labels=len(id2label), id2label=id2label, label2id={n: i for i, n in id2label.items()},
        problem_type=problem.hf_problem_type, ignore_mismatched_sizes=True, **hub_kwargs(source),
    )
    processor = load_pretrained(AutoImageProcessor, source.location, what, **hub_kwargs(source))
    if config.train.method == "lora":
        model = wrap_lora(model, model_type, config.lora, sequence_classification=False, train_heads=True)
    return model, processor


def prepare_images(config, source: ModelSource) -> Prepared:
    """The images listed and labelled (no pixels read), the classifier built."""
    dataset = load_image_dataset(config.data, seed=config.seed, flat_split="all")
    if "validation" not in dataset.splits:
        raise DataError("fine-tuning picks its best checkpoint on a validation split, and there is none")
    best = config.train.best_metric or get_problem(dataset.problem).checkpoint_metric
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, best_metric=best),
                                 data=dataclasses.replace(config.data, problem=dataset.problem))  # as resolved
    check_best_metric(best, dataset.problem)
    model, processor = build_image_classifier(source, dataset, config)
    return Prepared(config, source, dataset, dataset.eval_split_names(config.data.splits),
                    {"model": model, "processor": processor, "images": True})


class ClassifierLoss:
    """The problem's loss (class weights where asked) on a batch of pixels."""

    def __init__(self, preprocess, problem: str, weights):
        self.preprocess, self.kind, self.weights = preprocess, get_problem(problem), weights
        self._on_device: dict = {}

    def __call__(self, model, pixel_values, labels):
        pixels = self.preprocess.model_input(pixel_values, labels.device)
        logits = model(pixel_values=pixels).logits.float()
        weights = self.weights
        if weights is not None:  # one copy to the GPU, not one per step
            weights = self._on_device.setdefault(str(logits.device), weights.to(logits.device))
        return self.kind.loss(logits, labels, weights)


def score_split(model, split, preprocess, config, device, problem, desc: str = "images"):
    """(scores, the readable rows, unreadable row indices) of one split (label sets at
    threshold 0.5: the caller sets the chosen one)."""
    loader = image_loader(split, preprocess, config.train.eval_batch_size, config.images.num_workers,
                          config.images.strict)
    return classify_loader(model, loader, device, problem, config.runtime.precision, desc)


def execute_images(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Train with evaluation on validation, then score every split with the best model."""
    from tunelab.training.trainer import train_resumable  # here, not at the top: loads transformers

    config, dataset, run, device = prepared.config, prepared.dataset, context.run, context.device
    model, processor = prepared.parts["model"], prepared.parts["processor"]
    problem, num_classes = dataset.problem, len(dataset.class_names)
    params = count_parameters(model)
    preprocess = ClipPreprocess.for_device(processor, resolve_device(config.runtime.device))
    validation = dataset.splits["validation"]
    loss_fn = ClassifierLoss(preprocess, problem, class_weights(dataset.splits["train"].labels, problem,
                                                                config.data.class_weight))

    def validation_metrics(net, skipped_files: set) -> dict:
        scores, seen, bad = score_split(net, validation, preprocess, config, next(net.parameters()).device, problem,
                                        desc="validation")
        skipped_files.update(validation.ids[row] for row in bad)
        values = split_metrics(validation.labels[seen], scores, num_classes)
        values["loss"] = validation_loss(scores, validation.labels[seen])
        values.pop("n")
        values.pop("classes_present", None)
        values.pop("classes_predicted", None)
        return values

    trainer, interrupt = build_image_trainer(config, dataset, model, preprocess, loss_fn, validation_metrics,
                                             run.path / "checkpoints", context.tracker, context.world)
    stats = train_resumable(trainer, interrupt, run.path, context.resume, COMMAND)
    if context.rank != 0:
        return None
    model = trainer.model.eval()
    start = time.perf_counter()
    predictions, skipped = {}, set(trainer.skipped_files)
    for split in prepared.score_splits:
        data = dataset.splits[split]
        scores, seen, bad = score_split(model, data, preprocess, config, device, problem, desc=f"{split} images")
        skipped.update(data.ids[row] for row in bad)
        kept = data.subset(seen.nonzero()[0])
        predictions[split] = Scored(scores, kept.labels, kept.ids, {"file": kept.ids})
    eval_seconds = time.perf_counter() - start
    save_image_classifier(model, processor, run.path / "model", config, dataset, 0.5, prepared.source)
    task = {"method": config.train.method, "inputs": "images"}
    return trained_outcome(trainer, stats, context, config.train, predictions, params, eval_seconds, task, skipped)


def save_image_classifier(model, processor, target: Path, config, dataset, threshold: float,
                          source: ModelSource) -> None:
    """A self-contained image classifier folder (AutoModelForImageClassification and
    pipeline("image-classification") load it from anywhere, label names included); a LoRA
    run's adapters merged in, and kept in adapter/ pointing at the base."""
    import json

    if config.train.method == "lora":
        model.save_pretrained(str(target / ADAPTER_DIR), safe_serialization=True)
        point_adapter_at_base(target / ADAPTER_DIR, source)
        model = model.merge_and_unload()
    with quiet_transformers():
        model.save_pretrained(str(target), safe_serialization=True)
    processor.save_pretrained(str(target))
    (target / PREDICTOR_FILE).write_text(json.dumps(predictor_record(
        COMMAND, dataset.problem, dataset.class_names, threshold=threshold, layout=2, inputs="images"), indent=1))


def load_image_classifier(run_dir: Path):
    """(model, image processor) of a finished image fine-tuning run; nothing in the folder
    is executed."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model_dir = run_dir / "model"
    what = f"the fine-tuned image classifier in {model_dir}"
    model = load_pretrained(AutoModelForImageClassification, model_dir, what, use_safetensors=True)
    return model.eval(), load_pretrained(AutoImageProcessor, model_dir, what)


def image_export_graph(run_dir: Path):
    """The classifier's logits from pixels, in fp32, as one graph; the image processor
    that makes the pixels travels with it."""
    from tunelab.encoders.graphs import ExportGraph, ImageClassifierLogits  # here, not at the top: loads torch

    model, processor = load_image_classifier(run_dir)
    return ExportGraph(ImageClassifierLogits(model.float()).eval(), None, 0, "logits", processor=processor)


def image_classifier_predictor(run_dir: Path, config, device):
    """New image files scored exactly as the run scored its splits: the same streaming
    loop (score_split: the DataLoader, the processor's preprocessing, the problem's
    collector), the run's threshold. An unreadable file stops with one line."""
    model, processor = load_image_classifier(run_dir)
    model.to(device).eval()
    record = read_predictor(run_dir)
    names, problem = record["class_names"], record.get("problem") or config.data.problem
    preprocess = ClipPreprocess.for_device(processor, device)
    served = dataclasses.replace(config, images=dataclasses.replace(config.images, num_workers=0, strict=True))

    def predict(paths) -> list:
        split = files_split(list(getattr(paths, "texts", paths)))
        scores, _, _ = score_split(model, split, preprocess, served, device, problem)
        return predictions_from(split.ids, scores.with_threshold(record.get("threshold", 0.5)), names)

    return predict
