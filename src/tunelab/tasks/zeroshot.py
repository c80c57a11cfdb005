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

from tunelab.clip import class_embeddings, load_clip, load_templates, save_class_embeddings, score_loader
from tunelab.config import ImageLoadingConfig, TaskConfig, setting
from tunelab.data.images import ClipPreprocess, image_loader
from tunelab.errors import DataError
from tunelab.evaluation import ScoreAccumulator, evaluate_split
from tunelab.lifecycle import Outcome, Prepared, RunContext, recorded_model, throughput
from tunelab.models import count_parameters
from tunelab.registry import Task, register_task

logger = logging.getLogger(__name__)

COMMAND = "zeroshot"


@dataclasses.dataclass
class ZeroshotConfig(TaskConfig):
    model: str = setting("openai/clip-vit-base-patch16", "a CLIP hub id or local directory", flag="--model",
                         metavar="M")
    templates: str = setting("simple", "prompts: simple ('a photo of a {}'), ensemble (CLIP's 80 ImageNet "
                             "prompts, averaged per class), or a file of templates", flag="--templates",
                             metavar="simple|ensemble|FILE")
    images: ImageLoadingConfig = dataclasses.field(default_factory=ImageLoadingConfig)


def describe(metrics: dict) -> str:
    templates = metrics.get("task", {}).get("templates", {})
    return f"{templates.get('spec', '?')} prompts ({templates.get('count', '?')})"


def prepare(config: ZeroshotConfig) -> Prepared:
    """The images listed and labelled (no pixels read), the prompts read, CLIP loaded."""
    from tunelab.data.images import load_image_dataset
    from tunelab.models import resolve_model
    from tunelab.runtime import resolve_device, resolve_dtype

    source = resolve_model(config.model)
    templates = load_templates(config.templates)
    # Zero-shot needs no training data: a flat class folder is scored whole as "test".
    dataset = load_image_dataset(config.data, seed=config.seed, flat_split="test")
    eval_splits = dataset.eval_split_names(config.data.splits)
    if not eval_splits:
        raise DataError(f"{config.data.dataset} has only a train split; score it with --splits train")
    dtype = resolve_dtype(config.runtime.precision, resolve_device(config.runtime.device))
    model, tokenizer, processor = load_clip(source, dtype=dtype)
    return Prepared(config, source, dataset, eval_splits,
                    {"templates": templates, "model": model, "tokenizer": tokenizer, "processor": processor,
                     "dtype": dtype})


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Class embeddings once, then every evaluation split's images scored against them
    (sharded over processes under torchrun, gathered on rank 0)."""
    from tunelab.distributed import gather_to_zero, shard

    config, dataset, run, device = prepared.config, prepared.dataset, context.run, context.device
    parts = prepared.parts
    model, templates = parts["model"].to(device).eval(), parts["templates"]
    start = time.perf_counter()
    class_emb = class_embeddings(model, parts["tokenizer"], dataset.class_names, templates, device)
    text_seconds = time.perf_counter() - start
    if context.rank == 0:
        save_class_embeddings(run.path / "model" / "class_embeddings.safetensors", class_emb, dataset.class_names)
        run.write_json("model/zeroshot.json", {"class_names": dataset.class_names, "templates": templates})
        logger.info("%d classes x %d templates encoded in %.1f s", len(dataset.class_names), len(templates),
                    text_seconds)

    split_metrics, reports, skipped, images_seen = {}, {}, [], 0
    start = time.perf_counter()
    num_classes = len(dataset.class_names)
    for split in prepared.eval_splits:
        data = dataset.splits[split]
        rows = shard(len(data), context.rank, context.world)
        part = data.subset(rows)
        scored = ScoreAccumulator(len(part), num_classes, "similarity")
        loader = image_loader(part, ClipPreprocess(parts["processor"]), config.images.batch_size,
                              config.images.num_workers, config.images.strict)
        bad = score_loader(model, loader, class_emb.to(device), device, scored, parts["dtype"],
                           desc=f"{split} images")
        gathered = gather_to_zero((rows, scored, [part.ids[r] for r in bad]), context.rank, context.world)
        if context.rank != 0:
            continue
        accumulator = ScoreAccumulator(len(data), num_classes, "similarity")
        for part_rows, part_scores, part_bad in gathered:
            accumulator.absorb(part_scores, part_rows)
            skipped += part_bad
        images_seen += len(data)
        kept = data.subset(accumulator.seen.nonzero()[0])
        split_metrics[split], reports[split] = evaluate_split(
            run, split, dataset.class_names, kept.labels, accumulator.result(), kept.ids, {"file": kept.ids})
    if context.rank != 0:
        return None
    eval_seconds = time.perf_counter() - start
    if skipped:
        logger.warning("%d unreadable images were skipped (listed in metrics.json)", len(skipped))
    return Outcome(
        splits=split_metrics, reports=reports, params={**count_parameters(model), "trainable": 0},
        seconds={"train": 0.0, "text": text_seconds, "eval": eval_seconds},
        throughput={"train_samples_per_s": None, "eval_samples_per_s": throughput(images_seen, eval_seconds)},
        task={"templates": {"spec": config.templates, "count": len(templates)}},
        skipped=skipped,
    )


def load_predictor(run_dir: Path, config: ZeroshotConfig):
    """Classify image files against the class embeddings the run saved."""
    from tunelab.predict import image_predictor
    from tunelab.runtime import resolve_device

    model, _, processor = load_clip(recorded_model(run_dir, config.model))
    return image_predictor(run_dir, model, processor, resolve_device(config.runtime.device),
                           config.images.batch_size)


TASK = register_task(Task(
    name=COMMAND, config_class=ZeroshotConfig, prepare=prepare, execute=execute,
    summary="CLIP zero-shot image classification",
    description="CLIP zero-shot: class prompts against images, no training.",
    load_predictor=load_predictor, describe=describe,
))
