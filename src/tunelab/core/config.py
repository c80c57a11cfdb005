"""Typed configuration: dataclasses, YAML round trips, presets and overrides.

Each component owns a small dataclass with its defaults; a task config nests
them. A config is built from (1) the dataclass defaults, (2) a preset or YAML
file given with ``--config``, (3) command-line flags, in that order. The
resolved config is written to every run directory and is enough to rerun it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tunelab.core.errors import ConfigError
from tunelab.core.files import load_yaml, read_yaml_file
from tunelab.core.presets import load_yaml_source
from tunelab.core.typed import from_dict, merge_settings, set_dotted, to_dict

T = TypeVar("T")

# The problem kinds --problem takes: filled by tunelab.problems as each kind registers,
# so the choices follow the registry (a config checked before any kind registered skips
# the check; get_problem refuses an unknown name all the same).
PROBLEM_NAMES: list[str] = []


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
            flag: str | None = None, choices: tuple[str, ...] | None = None, metavar: str | None = None,
            const: Any = None, hidden: bool = False) -> Any:
    """A config field that also describes its command-line flag, so that flags, help
    texts, choices and defaults come from one place (``tunelab.cli`` reads them).

    ``flag``: the option name (``--lr``); None gives the field no flag (``--set`` still
    reaches it). ``const``: a switch that stores this value (``--no-cache`` stores False).
    ``choices``: the valid values, checked by ``check_settings`` too. ``hidden``: the flag
    is still accepted (old scripts) but not shown, because it no longer changes anything.
    Which commands offer a flag is the task's to say (``Task.unused_settings``), never the
    shared config's."""
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "const": const,
                "hidden": hidden}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(allowed)}")


def check_positive(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive number")


def check_non_negative(key: str, value: Any) -> None:
    if value is None or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}={value!r} must be 0 or more")


def check_settings(config: Any, prefix: str) -> None:
    """Call from __post_init__: checks every field declared with ``choices`` against them,
    and stores whole numbers given for float fields as floats, so that a config built in
    Python (``epochs=2``) saves the same config.yaml as one read from flags or YAML."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        choices = field.metadata.get("choices")
        if choices and not (value is None and type(None) in typing.get_args(hints[field.name])):
            check_choice(prefix + field.name, value, choices)
        if isinstance(value, int) and not isinstance(value, bool) and float in _number_types(hints[field.name]):
            setattr(config, field.name, float(value))


def _number_types(tp: Any) -> tuple:
    args = typing.get_args(tp)
    return args if args else (tp,)


@dataclasses.dataclass
class DataConfig:
    """Where the examples come from, what shape they have, and how much of them to use."""

    dataset: str = setting("", "rotten_tomatoes, tiny_imagenet, a hub dataset id, or a local file or folder",
                           flag="--dataset", metavar="D")
    dataset_config: str | None = setting(None, "the dataset's configuration (e.g. mrpc of glue)",
                                         flag="--dataset-config", metavar="NAME")
    train_split: str | None = setting(None, "split to train on (default: train)", flag="--train-split",
                                      metavar="NAME")
    validation_split: str | None = setting(None, "split that picks checkpoints and settings (default: validation, "
                                           "else dev or val)", flag="--validation-split", metavar="NAME")
    test_split: str | None = setting(None, "held-out split (default: test)", flag="--test-split", metavar="NAME")
    text_column: str | None = setting(None, "text column (default: text, or the one usual alternative present)",
                                      flag="--text-column", metavar="COLUMN")
    text_pair_column: str | None = setting(None, "second text of sentence pairs (default: none, or the usual "
                                           "pair present, e.g. sentence1/sentence2)", flag="--text-pair-column",
                                           metavar="COLUMN")
    pair_encoding: str | None = setting(None, "sentence pairs: cross (the two texts encoded jointly) or bi (each "
                                        "on its own; default)", flag="--pair-encoding", choices=("cross", "bi"))
    label_column: str | None = setting(None, "label column (default: label, or the one usual alternative present)",
                                       flag="--label-column", metavar="COLUMN")
    problem: str | None = setting(None, "the problem kind (default: detected from the labels)", flag="--problem",
                                  choices=PROBLEM_NAMES)
    label_separator: str | None = setting(None, "multi-label: the separator inside a label cell (e.g. ';')",
                                          flag="--label-separator", metavar="SEP")
    positive_label: str | None = setting(None, "two classes: the class scored as positive (default: the second)",
                                         flag="--positive-label", metavar="LABEL")
    class_weight: str | None = setting(None, "balanced: weigh classes inversely to their frequency (probe: the "
                                       "classifier; finetune: the loss)", flag="--class-weight",
                                       choices=("balanced",))
    threshold: str = setting("0.5", "multi-label: the probability above which a label is predicted, or tune "
                             "(chosen on validation)", flag="--threshold", metavar="P|tune")
    shots: int | None = setting(None, "K training examples per class, seeded (learning curves)", flag="--shots",
                                metavar="K")
    validation_shots: int | None = setting(None, "with --shots: validation examples per class that choose "
                                           "checkpoints, thresholds and settings (default: the same K; 0: the "
                                           "whole validation split)", flag="--validation-shots", metavar="K")
    split_seed: int = setting(42, "seed of the splits tunelab makes (80/10/10, validation from train) and of "
                              "--max-eval-samples: fixed across a study's seeds, so every seed scores the same "
                              "examples", flag="--split-seed", metavar="N")
    max_train_samples: int | None = setting(None, "cap the train split (stratified, seeded; every class kept)",
                                            flag="--max-train-samples", metavar="N")
    max_eval_samples: int | None = setting(None, "cap each evaluation split (stratified, seeded)",
                                           flag="--max-eval-samples", metavar="N")
    splits: list[str] | None = setting(None, "evaluation splits (default: every labelled split but train)",
                                       flag="--splits", metavar="SPLIT[,SPLIT]")
    dedup: bool = setting(False, "drop from train the copies of validation or test rows, repeated rows and copies "
                          "whose labels disagree (exact after normalising, or near), before shots and caps",
                          flag="--dedup", const=True)

    def __post_init__(self) -> None:
        check_settings(self, "data.")
        for key in ("max_train_samples", "max_eval_samples", "shots"):
            check_positive(f"data.{key}", getattr(self, key), allow_none=True)
        if self.validation_shots is not None:
            check_non_negative("data.validation_shots", self.validation_shots)
        if self.threshold != "tune":
            try:
                value = float(self.threshold)
            except ValueError:
                raise ConfigError(f"data.threshold={self.threshold!r} must be a probability or tune") from None
            if not 0 < value < 1:
                raise ConfigError(f"data.threshold={self.threshold!r} must be between 0 and 1")
        if isinstance(self.splits, str):
            self.splits = [s.strip() for s in self.splits.split(",") if s.strip()]

    @property
    def split_names(self) -> dict[str, str | None]:
        """The dataset's own names for tunelab's train / validation / test splits."""
        return {"train": self.train_split, "validation": self.validation_split, "test": self.test_split}


@dataclasses.dataclass
class ImageDecodingConfig:
    """How images are decoded: worker processes, and what to do with broken files."""

    num_workers: int | None = setting(None, "processes that decode images (default: up to 8 with a GPU, "
                                      "none on a CPU, where they compete with the model for cores)",
                                      flag="--num-workers", metavar="N")
    strict: bool = setting(False, "stop at the first unreadable image instead of skipping it",
                           flag="--strict", const=True)

    def __post_init__(self) -> None:
        if self.num_workers is not None:
            check_non_negative("images.num_workers", self.num_workers)


@dataclasses.dataclass
class ImageLoadingConfig(ImageDecodingConfig):
    """Image inference: the decoding settings and the batch size."""

    batch_size: int | None = setting(None, "images per batch (default: 256 on a GPU; 16 on a CPU, where larger "
                                     "batches outgrow the caches and run slower per image)", flag="--batch-size",
                                     metavar="N")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("images.batch_size", self.batch_size, allow_none=True)

    def batch_for(self, device) -> int:
        return self.batch_size or (256 if device.type == "cuda" else 16)


@dataclasses.dataclass
class RuntimeConfig:
    """Where and how numbers are crunched."""

    device: str = setting("auto", "where to compute: auto, cpu, cuda[:N] or mps", flag="--device", metavar="DEVICE")
    precision: str = setting("auto", "auto: bf16 where the hardware computes it natively (GPUs, CPUs with "
                             "bf16 units), fp16 on older GPUs, else fp32; config.yaml records the one used",
                             flag="--precision", choices=("auto", "fp32", "bf16", "fp16"))

    def __post_init__(self) -> None:
        check_choice("runtime.device", self.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
        check_settings(self, "runtime.")


@dataclasses.dataclass
class TrackingConfig:
    """Experiment tracking. TensorBoard is always on; W&B only when asked."""

    wandb: bool = setting(False, "also log to Weights & Biases (honours WANDB_MODE)", flag="--wandb", const=True)
    wandb_project: str = setting("tunelab", "the W&B project", flag="--wandb-project", metavar="NAME")


@dataclasses.dataclass
class TaskConfig:
    """The settings every task has; the run lifecycle reads them. A task's config
    subclasses it, redeclaring ``model`` with its own default and adding its groups."""

    model: str | None = setting(None, "hub id, local directory, or an alias (minilm)", flag="--model", metavar="M")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    seed: int = setting(42, "random seed: shots and the train cap, initialisation, batch order (made splits and "
                        "evaluation caps use --split-seed)", flag="--seed")


# --------------------------------------------------------------------------- dict <-> dataclass


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` from ``--set``; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


# --------------------------------------------------------------------------- presets and files


def build_config(
    cls: type[T],
    command: str,
    source: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Defaults, then the preset/YAML ``source``, then ``overrides`` (dotted keys allowed)."""
    values: dict[str, Any] = {}
    if source:
        values, origin = load_yaml_source(source)
        values = dict(values)
        declared = values.pop("command", command)
        if declared != command:
            raise ConfigError(f"{origin} is a '{declared}' config; use it with 'tunelab {declared}'")
    nested: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        set_dotted(nested, key, value)
    return from_dict(cls, merge_settings(cls, values, nested))


def dump_yaml(config: Any, command: str | None = None) -> str:
    values = to_dict(config)
    if command:
        values = {"command": command, **values}
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def config_from_run(cls: type[T], run_dir: Path | str) -> T:
    """The typed configuration a run directory was made with (its config.yaml)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a tunelab run directory (no config.yaml)")
    values = read_yaml_file(path)
    values.pop("command", None)
    return from_dict(cls, values)


