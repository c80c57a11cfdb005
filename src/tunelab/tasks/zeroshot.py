"""CLIP zero-shot classification: class prompts against images, no training.

The reference encoded one image at a time; here images are decoded in
DataLoader workers, encoded in batches, and scored against class embeddings
computed once, with top-k results streamed so memory stays flat.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from tunelab.clip import class_embeddings, load_clip, load_templates, save_class_embeddings, score_loader
from tunelab.config import DataConfig, ImageLoadingConfig, RuntimeConfig, TrackingConfig, dump_yaml, to_dict
from tunelab.data.images import ClipPreprocess, image_loader, load_image_dataset
from tunelab.errors import DataError
from tunelab.evaluation import ScoreAccumulator, evaluate_split, skipped_record
from tunelab.models import count_parameters, resolve_model
from tunelab.runs import RunDirectory, environment
from tunelab.runtime import resolve_device, resolve_dtype, seed_everything
from tunelab.tasks.common import RunResult, abandon_on_failure, data_block, finish_run, record_inputs

logger = logging.getLogger(__name__)

COMMAND = "zeroshot"


@dataclasses.dataclass
class ZeroshotConfig:
    model: str = "openai/clip-vit-base-patch16"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    templates: str = "simple"  # simple ("a photo of a {}"), ensemble (80 ImageNet prompts), or a file
    images: ImageLoadingConfig = dataclasses.field(default_factory=ImageLoadingConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    seed: int = 42


def run_zeroshot(config: ZeroshotConfig, out: str | Path | None = None, overwrite: bool = False,
                 argv: Sequence[str] | None = None) -> RunResult:
    from tunelab.distributed import barrier, init_distributed, rank_zero_run_directory

    device = resolve_device(config.runtime.device)
    rank, world = init_distributed(device.type)
    seed_everything(config.seed)
    source = resolve_model(config.model)
    templates = load_templates(config.templates)
    # Zero-shot needs no training data: a flat class folder is scored whole as "test".
    dataset = load_image_dataset(config.data, seed=config.seed, flat_split="test")
    eval_splits = dataset.eval_split_names(config.data.splits)
    if not eval_splits:
        raise DataError(f"{config.data.dataset} has only a train split; score it with --splits train")
    config_yaml = dump_yaml(config, COMMAND)
    dtype = resolve_dtype(config.runtime.precision, device)
    model, tokenizer, processor = load_clip(source, dtype=dtype)  # before --out is touched
    model.to(device).eval()
    run = rank_zero_run_directory(lambda: RunDirectory.start(out, COMMAND, config_yaml, argv, overwrite), rank, world)
    with abandon_on_failure(run):
        if rank == 0:
            record_inputs(run, source, config.data.dataset)
        result = _zeroshot(config, dataset, eval_splits, templates, model, tokenizer, processor, dtype, device,
                           run, config_yaml, rank, world)
    barrier(world)
    return result


def _zeroshot(config, dataset, eval_splits, templates, model, tokenizer, processor, dtype, device, run,
              config_yaml, rank, world) -> RunResult:
    from tunelab.distributed import gather_to_zero, shard

    start = time.perf_counter()
    class_emb = class_embeddings(model, tokenizer, dataset.class_names, templates, device)
    text_seconds = time.perf_counter() - start
    if rank == 0:
        save_class_embeddings(run.path / "model" / "class_embeddings.safetensors", class_emb, dataset.class_names)
        run.write_json("model/zeroshot.json", {"class_names": dataset.class_names, "templates": templates})
        logger.info("%d classes x %d templates encoded in %.1f s", len(dataset.class_names), len(templates),
                    text_seconds)

    split_metrics, reports, skipped, images_seen = {}, {}, [], 0
    start = time.perf_counter()
    for split in eval_splits:
        data = dataset.splits[split]
        # Under torchrun each process scores every world-th image; rank 0 gathers.
        rows = shard(len(data), rank, world)
        part = data.subset(rows)
        scored = ScoreAccumulator(len(part), len(dataset.class_names), "similarity")
        loader = image_loader(part, ClipPreprocess(processor), config.images.batch_size,
                              config.images.num_workers, config.images.strict)
        bad = score_loader(model, loader, class_emb.to(device), device, scored, dtype, desc=f"{split} images")
        parts = gather_to_zero((rows, scored, [part.ids[r] for r in bad]), rank, world)
        if rank != 0:
            continue
        accumulator = ScoreAccumulator(len(data), len(dataset.class_names), "similarity")
        for part_rows, part_scores, part_bad in parts:
            accumulator.absorb(part_scores, part_rows)
            skipped += part_bad
        images_seen += len(data)
        kept = data.subset(accumulator.seen.nonzero()[0])
        split_metrics[split], reports[split] = evaluate_split(
            run, split, dataset.class_names, kept.labels, accumulator.result(), kept.ids, ("file", kept.ids))
    if rank != 0:
        return RunResult(run.path, {})
    eval_seconds = time.perf_counter() - start
    if skipped:
        logger.warning("%d unreadable images were skipped (listed in metrics.json)", len(skipped))

    metrics = {
        "command": COMMAND,
        "model": config.model,
        "dataset": config.data.dataset,
        "splits": split_metrics,
        "params": {**count_parameters(model), "trainable": 0},
        "timing": {"seconds": {"text": text_seconds, "eval": eval_seconds},
                   "throughput": {"images_per_s": images_seen / eval_seconds if eval_seconds else 0.0}},
        "skipped": skipped_record(skipped),
        "templates": {"spec": config.templates, "count": len(templates)},
        "environment": {**environment(str(device)), "processes": world},
        "data": data_block(dataset),
    }
    tracker = run.tracker(run.path.name, to_dict(config), config.tracking)
    for split, values in split_metrics.items():
        tracker.log({f"{split}/{k}": v for k, v in values.items() if k != "n"})
    tracker.log({"throughput/images_per_s": metrics["timing"]["throughput"]["images_per_s"]})
    return finish_run(run, metrics, config_yaml, reports, dataset.notes)
