"""Fine-tuning a pretrained encoder for sequence classification: full or LoRA.

The reference lab's exercise 2 done carefully: dynamic padding and
length-grouped batches (no padding to 512), evaluation on validation during
training with the best checkpoint kept, final metrics from the best model on
every evaluation split in the same form as the probe, resumable after any kill.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunelab.config import TaskConfig, config_from_run, setting
from tunelab.errors import DataError, ModelError
from tunelab.evaluation import ClassScores, ScoreAccumulator, evaluate_split
from tunelab.lifecycle import Outcome, Prepared, RunContext, recorded_model, throughput
from tunelab.models import ModelSource, count_parameters, hub_kwargs, load_config, load_pretrained, load_tokenizer
from tunelab.registry import Task, register_task
from tunelab.train_config import LoraConfig, TrainConfig, fill_learning_rate, wrap_lora

logger = logging.getLogger(__name__)

COMMAND = "finetune"
DEFAULT_LR = {"full": 2e-5, "lora": 1e-3}  # adapters need a larger rate


@dataclasses.dataclass
class FinetuneConfig(TaskConfig):
    model: str = setting("distilbert-base-uncased", "hub id, local directory, or the alias minilm", flag="--model",
                         metavar="M")
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # lr None: 2e-5 full, 1e-3 LoRA
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        self.train = fill_learning_rate(self.train, DEFAULT_LR)


# --------------------------------------------------------------------------- model building


def build_classifier_model(source: ModelSource, class_names: Sequence[str], train: TrainConfig,
                           lora: LoraConfig):
    """A sequence-classification model with a fresh head sized for ``class_names``;
    wrapped in LoRA adapters when asked."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(source)
    model_type = getattr(config, "model_type", "")
    if model_type in ("clip", "siglip") or getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"'{source.name}' is a {model_type} model; text fine-tuning needs a text encoder")
    id2label = dict(enumerate(class_names))
    model = load_pretrained(
        AutoModelForSequenceClassification, source.location, f"'{source.name}' for sequence classification",
        num_labels=len(class_names), id2label=id2label, label2id={n: i for i, n in id2label.items()},
        ignore_mismatched_sizes=True, **hub_kwargs(source),
    )
    if train.method == "lora":
        model = wrap_lora(model, model_type, lora)
    return model


# --------------------------------------------------------------------------- data


class TokenizedTexts:
    """Unpadded token ids and labels, one dict per example, for the Trainer; padding
    happens per batch in the collator."""

    def __init__(self, ids: list[list[int]], labels: np.ndarray):
        self.ids = ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index], "labels": int(self.labels[index])}

    @property
    def lengths(self) -> list[int]:
        return [len(s) for s in self.ids]


def tokenized_dataset(tokenizer, texts: Sequence[str], labels: np.ndarray, max_length: int,
                      order: np.ndarray | None = None) -> TokenizedTexts:
    """One fast-tokenizer call over all texts (no ``.map``, no padding), optionally reordered."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    if order is not None:
        ids = [ids[i] for i in order]
        labels = labels[order]
    return TokenizedTexts(ids, np.asarray(labels))


def effective_max_length(tokenizer, model, requested: int) -> int:
    limits = [requested]
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        limits.append(positions)
    return int(min(limits))


# --------------------------------------------------------------------------- inference


def predict_scores(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int, device,
                   precision: str = "fp32") -> ClassScores:
    """Class probabilities in the texts' order, from length-sorted, dynamically padded
    batches, kept in O(n) memory (every class for few classes, the top-5 for many)."""
    import torch
    from tqdm.auto import tqdm

    from tunelab.features import pad_token_id, sorted_padded_batches

    ids = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    accumulator = ScoreAccumulator(len(ids), model.config.num_labels, "probability")
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast, tqdm(total=len(ids), desc="evaluate", unit="text", disable=None) as bar:
        for batch, input_ids, mask in sorted_padded_batches(ids, batch_size, pad_token_id(tokenizer), device):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            accumulator.add(batch, torch.softmax(logits.float(), dim=-1))
            bar.update(len(batch))
    model.train(was_training)
    return accumulator.result()


# --------------------------------------------------------------------------- the task


def describe(metrics: dict) -> str:
    training = metrics.get("task", {}).get("training", {})
    return f"{metrics.get('task', {}).get('method', '?')}, {training.get('steps', '?')} steps, " \
           f"lr {training.get('learning_rate', '?')}"


def prepare(config: FinetuneConfig) -> Prepared:
    """Read and check the data, then load the tokenizer and the model to train."""
    from tunelab.data.text import load_text_dataset
    from tunelab.models import resolve_model

    source = resolve_model(config.model)
    dataset = load_text_dataset(config.data, seed=config.seed)  # before any model loads
    eval_splits = dataset.eval_split_names(config.data.splits)
    if "validation" not in dataset.splits:
        raise DataError("fine-tuning picks its best checkpoint on a validation split, and there is none")
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, text_column=dataset.text_column, label_column=dataset.label_column))
    tokenizer = load_tokenizer(source)
    model = build_classifier_model(source, dataset.class_names, config.train, config.lora)
    return Prepared(config, source, dataset, eval_splits, {"tokenizer": tokenizer, "model": model})


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Train with evaluation on validation, then score every split with the best model."""
    from tunelab.training import train_resumable, training_summary

    config, dataset, run = prepared.config, prepared.dataset, context.run
    tokenizer, model = prepared.parts["tokenizer"], prepared.parts["model"]
    params = count_parameters(model)
    logger.info("parameters: %s trainable of %s", f"{params['trainable']:,}", f"{params['total']:,}")
    trainer, interrupt = build_trainer(config, dataset, tokenizer, model, run.path / "checkpoints", context.tracker,
                                       context.world)
    train_stats = train_resumable(trainer, interrupt, run.path, context.resume, COMMAND)
    model = trainer.model
    if context.rank != 0:
        return None
    max_length = effective_max_length(tokenizer, model, config.train.max_length)
    split_metrics, reports = {}, {}
    start = time.perf_counter()
    for split in prepared.eval_splits:
        data = dataset.splits[split]
        scores = predict_scores(model, tokenizer, data.texts, config.train.eval_batch_size, max_length,
                                context.device, config.runtime.precision)
        split_metrics[split], reports[split] = evaluate_split(
            run, split, dataset.class_names, data.labels, scores, data.ids, data.inputs.columns())
    eval_seconds = time.perf_counter() - start
    _save_model(model, tokenizer, run, config.train)
    run.write_json("history.json", trainer.state.log_history)
    return Outcome(
        splits=split_metrics, reports=reports, params=params,
        seconds={"train": train_stats["train_runtime"], "eval": eval_seconds},
        throughput={"train_samples_per_s": train_stats["train_samples_per_second"],
                    "eval_samples_per_s": throughput(sum(m["n"] for m in split_metrics.values()), eval_seconds)},
        task={"method": config.train.method,
              "training": training_summary(trainer, config.train, run.path, context.world, context.resume)},
    )


def load_predictor(run_dir: Path, config: FinetuneConfig):
    """Classify new texts with a finished fine-tuning run's model."""
    from tunelab.predict import Prediction, check_texts
    from tunelab.runtime import resolve_device

    device = resolve_device(config.runtime.device)
    model, tokenizer = load_finetuned(run_dir, config)
    model.to(device)
    names = _class_names(run_dir)
    max_length = effective_max_length(tokenizer, model, config.train.max_length)

    def predict(inputs: Sequence[str]) -> list:
        texts = check_texts(inputs)
        scores = predict_scores(model, tokenizer, texts, config.train.eval_batch_size, max_length, device,
                                config.runtime.precision)
        return [Prediction(t, names[p], float(s), "probability")
                for t, p, s in zip(texts, scores.predicted, scores.score)]

    return predict


TASK = register_task(Task(
    name=COMMAND, config_class=FinetuneConfig, prepare=prepare, execute=execute, resumable=True,
    summary="fine-tune an encoder for classification (full or LoRA)",
    description="Fine-tune for sequence classification: full or LoRA; resumable; data-parallel under torchrun.",
    load_predictor=load_predictor, describe=describe,
))


def build_trainer(config: FinetuneConfig, dataset, tokenizer, model, output_dir: Path,
                  tracker=None, world: int = 1, evaluate: bool = True):
    """The Trainer tunelab trains with: dynamic padding, seeded length-grouped batches,
    length-sorted evaluation batches, metrics from argmax ids only. Returns
    (trainer, interrupt callback)."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer

    from tunelab.metrics import classification_metrics
    from tunelab.training import (
        InterruptCallback,
        SeededLengthGroupedSampler,
        TrackerCallback,
        quiet_progress,
        training_arguments,
    )

    train_cfg = config.train
    max_length = effective_max_length(tokenizer, model, train_cfg.max_length)
    train = dataset.splits["train"]
    train_ds = tokenized_dataset(tokenizer, train.texts, train.labels, max_length)
    val_ds = None
    if evaluate:
        # Evaluation batches in length order: little padding; metrics do not depend on order.
        validation = dataset.splits["validation"]
        val_ds = tokenized_dataset(tokenizer, validation.texts, validation.labels, max_length,
                                   order=np.argsort([len(t) for t in validation.texts], kind="stable"))

    args = training_arguments(config.train, config.runtime, config.seed, output_dir, len(train_ds), world,
                              evaluate, remove_unused_columns=False)
    num_classes = len(dataset.class_names)
    samples_per_step = train_cfg.batch_size * train_cfg.grad_accum * world

    def preprocess_logits(logits, labels):
        # Keep one integer per example, not a (n, classes) block of logits.
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    def compute_metrics(prediction):
        values = classification_metrics(prediction.label_ids, prediction.predictions, num_classes)
        values.pop("n")
        values.pop("classes_present")
        return values

    train_lengths = train_ds.lengths

    class LengthGroupedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SeededLengthGroupedSampler(train_lengths, train_cfg.batch_size * train_cfg.grad_accum,
                                              config.seed)

    interrupt = InterruptCallback()
    callbacks = [TrackerCallback(tracker, samples_per_step), interrupt]
    if evaluate and train_cfg.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train_cfg.early_stopping))
    trainer = LengthGroupedTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        compute_metrics=compute_metrics if evaluate else None,
        preprocess_logits_for_metrics=preprocess_logits if evaluate else None,
        callbacks=callbacks,
    )
    quiet_progress(trainer)
    return trainer, interrupt


def _save_model(model, tokenizer, run, train: TrainConfig) -> None:
    """Weights (or the LoRA adapter) and tokenizer as safetensors; merged weights on request."""
    target = run.path / "model"
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    if train.method == "lora" and train.merge_lora:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(target / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(target / "merged"))


def load_finetuned(run_dir: Path, config: FinetuneConfig):
    """(model, tokenizer) from a finished fine-tuning run directory. Nothing in the folder
    is executed; a LoRA adapter goes onto the base model the run recorded (checked by
    fingerprint)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = run_dir / "model"
    what = f"the fine-tuned model in {model_dir}"
    tokenizer = load_pretrained(AutoTokenizer, model_dir, what)
    if config.train.method == "lora":
        from peft import PeftModel

        source = recorded_model(run_dir, config.model)
        base = load_pretrained(AutoModelForSequenceClassification, source.location, f"base model '{source.name}'",
                               num_labels=len(_class_names(run_dir)), ignore_mismatched_sizes=True,
                               **hub_kwargs(source))
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = load_pretrained(AutoModelForSequenceClassification, model_dir, what, use_safetensors=True)
    return model.eval(), tokenizer


def _class_names(run_dir: Path) -> list[str]:
    import json

    return json.loads((run_dir / "metrics.json").read_text())["data"]["class_names"]


def finetune_config_from_run(run_dir: Path) -> FinetuneConfig:
    return config_from_run(FinetuneConfig, run_dir)
