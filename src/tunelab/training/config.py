"""What every fine-tuning task shares: the schedule (``TrainConfig``), LoRA adapters
(``LoraConfig``, target modules, wrapping) and the classification heads that always
train. Light to import: peft loads only when a model is wrapped."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from tunelab.core.config import check_non_negative, check_positive, check_settings, setting
from tunelab.core.errors import ConfigError
from tunelab.core.provenance import hub_revision
from tunelab.problems import get_problem

# The reference recipe's length when neither epochs nor steps are given.
DEFAULT_MAX_STEPS = 1000

# LoRA targets for architectures peft's own table does not list (peft's table,
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, is asked first): the attention
# query/value projections, as in the LoRA paper.
EXTRA_LORA_TARGETS = {
    "distilbert": ["q_lin", "v_lin"],
    "camembert": ["query", "value"],
    "albert": ["query", "value"],
    "mpnet": ["q", "v"],
    "clip": ["q_proj", "v_proj"],
    "siglip": ["q_proj", "v_proj"],
    # transformers 5 names them q_proj/v_proj, 4.x query/value: peft adapts the ones there.
    "vit": ["q_proj", "v_proj", "query", "value"],
    "dinov2": ["q_proj", "v_proj", "query", "value"],
    # A convolutional backbone has no attention: LoRA on the pointwise (1x1, Linear) layers.
    "convnext": ["pwconv1", "pwconv2"],
}
# Classification heads, always trained in full (also under LoRA).
HEAD_MODULES = ("pre_classifier", "classifier", "score")


@dataclasses.dataclass
class TrainConfig:
    """The schedule and optimisation settings. Defaults are the reference recipe.

    ``epochs`` and ``max_steps`` are two ways to give the schedule's length: a layer of
    settings (a preset, a YAML file, flags, a study step) that sets one clears the
    other; with neither, training runs 1,000 steps (the reference recipe)."""

    EXCLUSIVE: ClassVar[tuple[tuple[str, ...], ...]] = (("epochs", "max_steps"),)

    method: str = setting("full", "full fine-tuning or LoRA adapters", flag="--method", choices=("full", "lora"))
    max_steps: int | None = setting(None, "optimiser steps (replaces --epochs; default: 1000 when no --epochs)",
                                    flag="--max-steps", metavar="N")
    epochs: float | None = setting(None, "passes over the training data (replaces --max-steps)", flag="--epochs",
                                   metavar="N")
    lr: float | None = setting(None, "learning rate (default: the method's, recorded in config.yaml)", flag="--lr")
    warmup: float = setting(0.0, "learning-rate warm-up: below 1 a fraction of all steps, else steps",
                            flag="--warmup")
    weight_decay: float = setting(0.01, "AdamW weight decay", flag="--weight-decay")
    batch_size: int = setting(16, "training examples per device and step", flag="--batch-size", metavar="N")
    eval_batch_size: int = setting(64, "examples per evaluation batch", flag="--eval-batch-size", metavar="N")
    grad_accum: int = setting(1, "gradient accumulation steps", flag="--grad-accum", metavar="N")
    max_length: int = setting(512, "tokens per text; batches pad to their longest text only", flag="--max-length",
                              metavar="N")
    eval_every: int = setting(100, "steps between evaluations (and checkpoints)", flag="--eval-every", metavar="N")
    save_total_limit: int = setting(2, "checkpoints kept while training; the best and the last always survive",
                                    flag="--save-total-limit", metavar="N")
    early_stopping: int | None = setting(None, "stop after N evaluations without improvement",
                                         flag="--early-stopping", metavar="N")
    best_metric: str | None = setting(None, "validation metric that picks the best checkpoint, one of the "
                                      "problem's selection metrics (default: accuracy; for label sets "
                                      "mean_average_precision, which needs no threshold; spearman for numbers; qwk "
                                      "for ordered classes)", flag="--metric", metavar="METRIC")
    merge_lora: bool = setting(False, "no longer needed: model/ always holds the LoRA adapters merged into full "
                               "weights (the adapter is in model/adapter/)", flag="--merge-lora", const=True,
                               hidden=True)
    keep_checkpoints: bool = setting(False, "keep every checkpoint (with its optimizer state) after the run "
                                     "completes; by default only the best model stays, in model/",
                                     flag="--keep-checkpoints", const=True)
    logging_steps: int = setting(10, "steps between logged training losses")
    gradient_checkpointing: bool = setting(False, "recompute activations to save memory on large models",
                                           flag="--gradient-checkpointing", const=True)

    def __post_init__(self) -> None:
        check_settings(self, "train.")
        for key in ("batch_size", "eval_batch_size", "grad_accum", "max_length", "eval_every",
                    "save_total_limit", "logging_steps"):
            check_positive(f"train.{key}", getattr(self, key))
        for key in ("max_steps", "epochs", "lr", "early_stopping"):
            check_positive(f"train.{key}", getattr(self, key), allow_none=True)
        check_non_negative("train.warmup", self.warmup)
        check_non_negative("train.weight_decay", self.weight_decay)
        if self.epochs is not None and self.max_steps is not None:
            raise ConfigError(f"train.epochs={self.epochs} and train.max_steps={self.max_steps} both give the "
                              "schedule's length; set one of them")

    @property
    def learning_rate(self) -> float:
        if self.lr is None:
            raise ConfigError("train.lr is unset; the task's config fills in its method's default")
        return self.lr


def fill_learning_rate(train: TrainConfig, defaults: dict[str, float]) -> TrainConfig:
    """The method's default learning rate where none was given, so that config.yaml
    records the rate actually used."""
    if train.lr is not None:
        return train
    return dataclasses.replace(train, lr=defaults[train.method])


@dataclasses.dataclass
class LoraConfig:
    """Low-rank adapters (used with train.method=lora)."""

    r: int = setting(8, "adapter rank", flag="--lora-r")
    alpha: float = setting(32.0, "adapter scale", flag="--lora-alpha")
    dropout: float = setting(0.1, "dropout on the adapters' input", flag="--lora-dropout")
    targets: list[str] | None = setting(None, "module names to adapt (default: the architecture's attention "
                                        "query/value projections)", flag="--lora-targets", metavar="NAME[,NAME]")

    def __post_init__(self) -> None:
        check_settings(self, "lora.")
        check_positive("lora.r", self.r)
        check_positive("lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout={self.dropout!r} must be in [0, 1)")


def default_lora_targets(model_type: str) -> list[str] | None:
    """peft's table of default targets, then tunelab's additions."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    targets = PEFT_TARGETS.get(model_type) or EXTRA_LORA_TARGETS.get(model_type)
    return list(targets) if targets else None


def lora_targets(model_type: str, config: LoraConfig) -> list[str]:
    if config.targets:
        return list(config.targets)
    targets = default_lora_targets(model_type)
    if targets:
        return targets
    raise ConfigError(f"no default LoRA targets for model type '{model_type}'; name them with --lora-targets")


def wrap_lora(model, model_type: str, lora: LoraConfig, sequence_classification: bool = True,
              train_heads: bool = False):
    """The model with LoRA adapters on ``lora_targets``; a classifier's head trains in full
    (a sequence classifier's always; another model's with ``train_heads``: an image
    classifier takes pixels, which peft's sequence-classification wrapper would not pass)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    targets = lora_targets(model_type, lora)
    extra: dict = {}
    if sequence_classification or train_heads:
        extra = {"modules_to_save": [n for n in HEAD_MODULES if hasattr(model, n)]}
    if sequence_classification:
        extra["task_type"] = TaskType.SEQ_CLS
    peft_config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=targets, **extra)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise ConfigError(f"LoRA targets {targets} do not fit this model: {str(exc).splitlines()[0]}") from None


def class_weights(labels, problem: str | None, setting: str | None):
    """``balanced`` weights as the problem defines them (classes: n / (classes * count),
    scikit-learn's rule; label sets: negatives / positives of each label), as a tensor;
    None without a setting or for a problem without classes."""
    import torch

    weights = get_problem(problem).class_weights(labels) if setting is not None else None
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)


def check_best_metric(metric: str, problem: str) -> None:
    """The metric that picks checkpoints must be one the problem's evaluation gives."""
    allowed = get_problem(problem).selection_metrics
    if metric not in allowed:
        raise ConfigError(f"--metric {metric} is not a {problem} metric; choose one of: {', '.join(allowed)}")


# A LoRA run's model/ holds the merged weights; the adapter itself goes here beside them.
ADAPTER_DIR = "adapter"


def point_adapter_at_base(adapter_dir, source) -> None:
    """The adapter's base_model_name_or_path: the hub id (and the cached revision) when
    the base came from the hub, else the base folder's absolute path, so that peft's
    AutoPeftModel loads it from any working directory."""
    import json
    from pathlib import Path

    adapter_config = Path(adapter_dir) / "adapter_config.json"
    values = json.loads(adapter_config.read_text(encoding="utf-8"))
    if source.is_local:
        values["base_model_name_or_path"] = str(Path(source.location).resolve())
    else:
        values["base_model_name_or_path"] = source.location
        revision = hub_revision(source.location)
        if revision:
            values["revision"] = revision
    adapter_config.write_text(json.dumps(values, indent=2), encoding="utf-8")
