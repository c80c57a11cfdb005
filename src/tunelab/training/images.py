"""The Trainer every image task trains with: images decoded lazily in DataLoader workers
(unreadable ones skipped and named), the loss a task gives on a batch of pixels, and an
evaluation the task computes itself by streaming validation (CLIP scores against class
embeddings recomputed at each evaluation; a classifier its own logits)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tunelab.data.image_pipeline import ProcessedImages, collate_images, default_workers


def build_image_trainer(config, dataset, model, preprocess, loss_fn: Callable, validation_metrics: Callable,
                        output_dir: Path, tracker=None, world: int = 1, evaluate: bool = True):
    """A Trainer over ``dataset``'s train images. ``loss_fn(model, pixel_values, labels)``
    gives a batch's loss (pixels as the workers hand them over; ``preprocess.model_input``
    finishes them on the device); ``validation_metrics(model, skipped)`` scores
    validation, adding unreadable files to ``skipped``, and returns the metrics without
    prefix. Returns (trainer, interrupt callback); ``trainer.skipped_files`` collects the
    unreadable images met."""
    from transformers import EarlyStoppingCallback, Trainer

    from tunelab.training.trainer import (  # here, not at the top: loads transformers
        InterruptCallback,
        SearchCallback,
        TrackerCallback,
        quiet_progress,
        training_arguments,
    )

    train_split = dataset.splits["train"]
    validation = dataset.splits.get("validation")
    workers = default_workers() if config.images.num_workers is None else config.images.num_workers
    args = training_arguments(config.train, config.runtime, config.seed, output_dir, len(train_split), world,
                              evaluate, dataloader_num_workers=workers, remove_unused_columns=False,
                              label_names=["labels"],
                              **(dict(dataloader_prefetch_factor=4, dataloader_persistent_workers=True)
                                 if workers else {}))

    class ImageTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            for row in inputs.get("skipped", []):
                self.skipped_files.add(train_split.ids[row])
            labels = inputs["labels"]
            if len(labels) == 0:  # every image of the batch was unreadable
                loss = sum(p.sum() * 0 for p in model.parameters() if p.requires_grad)
            else:
                loss = loss_fn(model, inputs["pixel_values"], labels)
            return (loss, None) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            net = self.accelerator.unwrap_model(self.model)
            was_training = net.training
            net.eval()
            start = time.perf_counter()
            values = validation_metrics(net, self.skipped_files)
            values["runtime"] = time.perf_counter() - start
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in values.items()}
            net.train(was_training)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    interrupt = InterruptCallback()
    samples_per_step = config.train.batch_size * config.train.grad_accum * world
    callbacks = [TrackerCallback(tracker, samples_per_step), interrupt, SearchCallback()]
    if evaluate and config.train.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.train.early_stopping))
    trainer = ImageTrainer(
        model=model, args=args, data_collator=collate_images, callbacks=callbacks,
        train_dataset=ProcessedImages(train_split, preprocess, config.images.strict),
        # Only to satisfy the Trainer's checks: evaluate() above streams validation itself.
        eval_dataset=ProcessedImages(validation, preprocess, config.images.strict) if evaluate else None,
    )
    trainer.skipped_files = set()  # unreadable images met while training, per trainer
    quiet_progress(trainer)
    return trainer, interrupt
