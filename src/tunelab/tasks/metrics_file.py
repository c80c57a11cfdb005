"""metrics.json in the one schema of every task (tunelab/schemas/metrics.schema.json):
splits, parameters, time, throughput and peak memory, environment, skipped inputs, and
the data block (problem, classes, split sizes, class counts and floors of the splits
the run used)."""

from __future__ import annotations

from typing import Any

from tunelab.core.errors import TunelabError
from tunelab.core.tracking import environment
from tunelab.problems import get_problem, headline_metric
from tunelab.tasks.contract import Outcome, Prepared
from tunelab.tasks.evaluation import skipped_record

# timing.throughput's keys, the same for every task (None where a task has no such phase).
THROUGHPUT_KEYS = ("train_samples_per_s", "eval_samples_per_s")


def assemble_metrics(command: str, prepared: Prepared, outcome: Outcome, device, world: int,
                     wall_seconds: float) -> dict[str, Any]:
    """metrics.json in the one schema of every task (tunelab/schemas/metrics.schema.json)."""
    unknown = set(outcome.throughput) - set(THROUGHPUT_KEYS)
    if unknown:
        raise TunelabError(f"internal: throughput keys {sorted(unknown)} are not in the schema")
    # Label-derived figures only of the splits this run used: a search trial scored on
    # validation carries no number computed from test labels.
    used = {"train", "validation", *prepared.eval_splits}
    return {
        "command": command,
        "model": prepared.config.model,
        "dataset": prepared.config.data.dataset,
        "splits": outcome.splits,
        "params": outcome.params,
        "timing": {"seconds": {**outcome.seconds, "total": wall_seconds},
                   "throughput": {key: outcome.throughput.get(key) for key in THROUGHPUT_KEYS},
                   **peak_memory()},
        "environment": {**environment(str(device)), "processes": world},
        "skipped": skipped_record(outcome.skipped),
        "data": {**data_block(prepared.dataset, used), "labels_seen": labels_seen(prepared.dataset, outcome),
                 **({"majority_accuracy": floors} if (floors := majority_accuracy(prepared.dataset, used)) else {})},
        "task": outcome.task,
        **({"deduplicated": outcome.deduplicated} if outcome.deduplicated else {}),
    }


_PEAK_RESET = {"linux": False}


def reset_peak_memory() -> None:
    """Start this run's peak memory count afresh: several runs in one process (a serial
    study) each report their own peak, not the process's so far. Linux resets its
    high-water mark through /proc/self/clear_refs; elsewhere the process peak stays."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        _PEAK_RESET["linux"] = True
    except OSError:
        _PEAK_RESET["linux"] = False
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def peak_memory() -> dict[str, float]:
    """The run's peak resident memory (and the GPU's peak allocation where CUDA ran), in MB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    values = {"peak_rss_mb": peak / (1024 * 1024 if sys.platform == "darwin" else 1024)}
    if _PEAK_RESET["linux"]:
        try:
            with open("/proc/self/status", encoding="ascii") as handle:
                line = next(line for line in handle if line.startswith("VmHWM:"))
            values["peak_rss_mb"] = int(line.split()[1]) / 1024
        except (OSError, StopIteration, ValueError):
            pass
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            values["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return values


def majority_accuracy(dataset, used: set[str] | None = None) -> dict[str, float]:
    """Per evaluation split (of those ``used``), the accuracy of always predicting the
    training split's most frequent class: the floor every classifier must clear."""
    problem = get_problem(dataset.problem)
    if "train" not in dataset.splits or not len(dataset.splits["train"]):
        return {}
    floors = {name: problem.majority_accuracy(dataset.splits["train"].labels, split.labels)
              for name, split in dataset.splits.items() if name != "train" and len(split)
              and (used is None or name in used)}
    return {name: value for name, value in floors.items() if value is not None}


def headline_text(values: dict) -> str:
    metric = headline_metric(values)
    return f"{metric} {values[metric]:.4f}"


def data_block(dataset, used: set[str] | None = None) -> dict[str, Any]:
    """metrics.json's ``data``: the problem, classes, split sizes and class counts (or the
    targets' range; of the splits ``used`` only), what was inferred, the positive class."""
    problem = get_problem(dataset.problem)
    block = {"problem": problem.name, "class_names": dataset.class_names,
             "sizes": {k: len(v) for k, v in dataset.splits.items()}, "notes": dataset.notes,
             "class_counts": {name: problem.target_counts(split.labels, dataset.class_names)
                              for name, split in dataset.splits.items() if used is None or name in used}}
    positive = problem.positive_class(dataset.class_names)
    if positive is not None:
        block["positive_class"] = positive
    if getattr(dataset, "text_pair_column", None):
        block["columns"] = {"text": dataset.text_column, "text_pair": dataset.text_pair_column,
                            "label": dataset.label_column}
    return block


def labels_seen(dataset, outcome: Outcome) -> int:
    """How many labels a run used in all: what the task says, else its train and
    validation splits (training, and choosing checkpoints, thresholds or settings)."""
    if outcome.labels_seen is not None:
        return int(outcome.labels_seen)
    return sum(len(dataset.splits[name]) for name in ("train", "validation") if name in dataset.splits)


def throughput(examples: int, seconds: float) -> float | None:
    return examples / seconds if seconds > 0 else None
