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

from tunelab.config import (
    DataConfig,
    RuntimeConfig,
    TrackingConfig,
    _choice,
    _non_negative,
    _positive,
    config_from_run,
    dump_yaml,
    to_dict,
)
from tunelab.data.text import TextDataset, load_text_dataset
from tunelab.errors import ConfigError, ModelError, TunelabError
from tunelab.evaluation import ClassScores, ScoreAccumulator, evaluate_split, skipped_record
from tunelab.models import (
    ModelSource,
    count_parameters,
    hub_kwargs,
    load_config,
    load_pretrained,
    load_tokenizer,
    resolve_model,
)
from tunelab.runs import RunDirectory, environment
from tunelab.runtime import resolve_device, seed_everything
from tunelab.tasks.common import RunResult, abandon_on_failure, data_block, finish_run, record_inputs

logger = logging.getLogger(__name__)

COMMAND = "finetune"
DEFAULT_LR = {"full": 2e-5, "lora": 1e-3}

# Attention query/value projections per architecture: the classic LoRA targets.
LORA_TARGETS = {
    "distilbert": ["q_lin", "v_lin"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "albert": ["query", "value"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "mpnet": ["q", "v"],
    "clip": ["q_proj", "v_proj"],
}
# Classification heads, always trained in full (also under LoRA).
HEAD_MODULES = ("pre_classifier", "classifier", "score")


@dataclasses.dataclass
class TrainConfig:
    """The schedule and optimisation settings. Defaults are the reference recipe."""

    method: str = "full"  # full | lora
    max_steps: int | None = 1000  # total optimiser steps; None: train for `epochs`
    epochs: float | None = None  # used when max_steps is None (default 3)
    lr: float | None = None  # None: 2e-5 for full, 1e-3 for LoRA (adapters need a larger rate)
    warmup: float = 0.0  # below 1: a fraction of all steps; else a number of steps
    weight_decay: float = 0.01
    batch_size: int = 16  # per device
    eval_batch_size: int = 64
    grad_accum: int = 1
    max_length: int = 512  # tokens per text; batches are padded to their longest text only
    eval_every: int = 100  # steps between evaluations (and checkpoints)
    save_total_limit: int = 2  # checkpoints kept; the best and the last always survive
    early_stopping: int | None = None  # stop after N evaluations without improvement
    best_metric: str = "accuracy"  # validation metric that picks the best checkpoint
    merge_lora: bool = False  # also save LoRA merged into full weights
    logging_steps: int = 10
    gradient_checkpointing: bool = False  # trade compute for memory on large models

    def __post_init__(self) -> None:
        _choice("train.method", self.method, ("full", "lora"))
        _choice("train.best_metric", self.best_metric, ("accuracy", "f1", "f1_macro", "loss"))
        for key in ("batch_size", "eval_batch_size", "grad_accum", "max_length", "eval_every",
                    "save_total_limit", "logging_steps"):
            _positive(f"train.{key}", getattr(self, key))
        _positive("train.max_steps", self.max_steps, allow_none=True)
        _positive("train.epochs", self.epochs, allow_none=True)
        _positive("train.lr", self.lr, allow_none=True)
        _positive("train.early_stopping", self.early_stopping, allow_none=True)
        _non_negative("train.warmup", self.warmup)
        _non_negative("train.weight_decay", self.weight_decay)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclasses.dataclass
class LoraConfig:
    """Low-rank adapters (used with train.method=lora)."""

    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    targets: list[str] | None = None  # None: the architecture's attention query/value projections

    def __post_init__(self) -> None:
        _positive("lora.r", self.r)
        _positive("lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout={self.dropout!r} must be in [0, 1)")


@dataclasses.dataclass
class FinetuneConfig:
    model: str = "distilbert-base-uncased"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    seed: int = 42


# --------------------------------------------------------------------------- model building


def lora_targets(model_type: str, config: LoraConfig) -> list[str]:
    if config.targets:
        return list(config.targets)
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    raise ConfigError(
        f"no default LoRA targets for model type '{model_type}'; name them with --lora-targets"
    )


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


def wrap_lora(model, model_type: str, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    targets = lora_targets(model_type, lora)
    heads = [name for name in HEAD_MODULES if hasattr(model, name)]
    peft_config = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets, modules_to_save=heads,
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise ConfigError(f"LoRA targets {targets} do not fit this model: {str(exc).splitlines()[0]}") from None


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


def run_finetune(
    config: FinetuneConfig,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    argv: Sequence[str] | None = None,
) -> RunResult:
    """Train on train, pick the best checkpoint on validation, score every evaluation
    split with it, and write a complete run directory. With ``resume``, continue the
    run in ``out`` from its last complete checkpoint."""
    from tunelab.distributed import barrier, init_distributed, rank_zero_run_directory
    from tunelab.training import open_run_directory

    device = resolve_device(config.runtime.device)
    rank, world = init_distributed(device.type)
    seed_everything(config.seed)
    source = resolve_model(config.model)
    dataset = load_text_dataset(config.data, seed=config.seed)  # before any model loads
    eval_splits = dataset.eval_split_names(config.data.splits)
    if "validation" not in dataset.splits:
        raise TunelabError("fine-tuning picks its best checkpoint on a validation split, and there is none")
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, text_column=dataset.text_column, label_column=dataset.label_column))
    config_yaml = dump_yaml(config, COMMAND)
    # The model loads before --out is touched: a model that cannot load leaves nothing behind.
    tokenizer = load_tokenizer(source)
    model = build_classifier_model(source, dataset.class_names, config.train, config.lora)
    params = count_parameters(model)
    logger.info("parameters: %s trainable of %s", f"{params['trainable']:,}", f"{params['total']:,}")

    run = rank_zero_run_directory(lambda: open_run_directory(out, COMMAND, config, config_yaml, overwrite, resume,
                                                             finetune_config_from_run, argv), rank, world)
    with abandon_on_failure(run):
        if rank == 0:
            record_inputs(run, source, config.data.dataset)
        result = _finetune(config, dataset, eval_splits, tokenizer, model, params, device, run, config_yaml,
                           resume, rank, world)
    barrier(world)
    return result


def _finetune(config, dataset, eval_splits, tokenizer, model, params, device, run, config_yaml, resume, rank,
              world) -> RunResult:
    from tunelab.training import train_resumable, training_summary

    tracker = run.tracker(run.path.name, to_dict(config), config.tracking) if rank == 0 else None
    trainer, interrupt = build_trainer(config, dataset, tokenizer, model, run.path / "checkpoints", tracker, world)
    train_stats = train_resumable(trainer, interrupt, run.path, resume, COMMAND)

    model = trainer.model
    if rank != 0:
        return RunResult(run.path, {})
    max_length = effective_max_length(tokenizer, model, config.train.max_length)
    split_metrics, reports = {}, {}
    start = time.perf_counter()
    for split in eval_splits:
        data = dataset.splits[split]
        scores = predict_scores(model, tokenizer, data.texts, config.train.eval_batch_size, max_length, device,
                                config.runtime.precision)
        split_metrics[split], reports[split] = evaluate_split(
            run, split, dataset.class_names, data.labels, scores, data.ids, ("text", data.texts))
        if tracker is not None:
            tracker.log({f"final/{split}/{k}": v for k, v in split_metrics[split].items() if k != "n"},
                        step=trainer.state.global_step)
    eval_seconds = time.perf_counter() - start
    _save_model(model, tokenizer, run, config.train)
    run.write_json("history.json", trainer.state.log_history)

    metrics = {
        "command": COMMAND,
        "model": config.model,
        "dataset": config.data.dataset,
        "method": config.train.method,
        "splits": split_metrics,
        "params": params,
        "timing": {
            "seconds": {"train": train_stats["train_runtime"], "eval": eval_seconds},
            "throughput": {"train_samples_per_s": train_stats["train_samples_per_second"],
                           "eval_samples_per_s": sum(m["n"] for m in split_metrics.values()) / eval_seconds},
        },
        "training": training_summary(trainer, config.train, run.path, world, resume),
        "environment": {**environment(str(device)), "processes": world},
        "skipped": skipped_record([]),
        "data": data_block(dataset),
    }
    return finish_run(run, metrics, config_yaml, reports, dataset.notes)


def build_trainer(config: FinetuneConfig, dataset: TextDataset, tokenizer, model, output_dir: Path,
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


def _save_model(model, tokenizer, run: RunDirectory, train: TrainConfig) -> None:
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

    from tunelab.models import load_pretrained
    from tunelab.tasks.common import recorded_model

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
