"""One run lifecycle for every task.

``run_task`` does, in this order, for any registered task: join the process group
(torchrun), seed, ``task.prepare`` (read and check the data, load the model:
nothing is written yet), open the run directory (new, overwriting through a staged
copy, or resumed), record the inputs, open the tracker, ``task.execute`` (train,
score), then write ``metrics.json`` in the one schema every task shares, write
``report.md``, and put the run in place. A failure on the way removes what this run
created (checkpoints that ``--resume`` can use stay), and never touches a run it was
to replace. A task module holds only what is its own: its config, ``prepare`` and
``execute``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.core.config import config_from_run, dump_yaml
from tunelab.core.distributed import barrier, init_distributed, rank_zero_run_directory
from tunelab.core.errors import DataError, TunelabError, counted
from tunelab.core.files import read_json_file
from tunelab.core.registry import get_task
from tunelab.core.runs import RunDirectory
from tunelab.core.runtime import resolve_device, resolve_precision, seed_everything
from tunelab.core.tracking import environment
from tunelab.data.sources import resolve_dataset
from tunelab.models.resolve import model_from_record, resolve_model
from tunelab.problems import get_problem
from tunelab.problems.metrics import below_majority, headline_metric
from tunelab.problems.scores import choose_threshold
from tunelab.tasks.card import write_model_card
from tunelab.tasks.evaluation import evaluate_split, skipped_record
from tunelab.tasks.run_report import render_run_report

logger = logging.getLogger(__name__)

INPUTS_FILE = "inputs.json"
# timing.throughput's keys, the same for every task (None where a task has no such phase).
THROUGHPUT_KEYS = ("train_samples_per_s", "eval_samples_per_s")


@dataclasses.dataclass
class RunResult:
    """What a task returns: where its run directory is and what it measured."""

    run_dir: Path
    metrics: dict[str, Any]

    def split(self, name: str) -> dict[str, float]:
        return self.metrics["splits"][name]


@dataclasses.dataclass
class Prepared:
    """What ``prepare`` hands to ``execute``: the resolved config (columns found in the
    data filled in), the model's files, the checked data, and whatever the task loaded."""

    config: Any
    source: Any  # tunelab.models.resolve.ModelSource, or None for a task that uses no pretrained model
    dataset: Any  # tunelab.data.labels.LabelledData
    eval_splits: list[str]
    parts: dict[str, Any] = dataclasses.field(default_factory=dict)  # model, tokenizer, extractor, ...


@dataclasses.dataclass
class RunContext:
    """Where ``execute`` writes, and how it runs."""

    run: RunDirectory
    tracker: Any  # tunelab.core.runs.Tracker on rank 0, else None
    device: Any  # torch.device
    rank: int
    world: int
    resume: bool


@dataclasses.dataclass
class Scored:
    """One split's predictions, as a task hands them over: the lifecycle evaluates every
    task's splits the same way (metrics, predictions file, confusion matrix or scatter)."""

    scores: Any  # tunelab.tasks.evaluation ClassScores, LabelScores or ValueScores
    labels: Any  # the gold targets, encoded
    ids: list[str]
    inputs: dict[str, Any]  # the input columns of the predictions file (text, pair, file)


@dataclasses.dataclass
class Outcome:
    """What ``execute`` measured; the lifecycle evaluates its predictions and turns it
    into metrics.json."""

    params: dict[str, Any]  # total, trainable (and a note)
    seconds: dict[str, float]  # train, eval, and the task's own phases
    throughput: dict[str, float | None]  # THROUGHPUT_KEYS
    task: dict[str, Any]  # what only this task has (classifier, method, templates, training summary, ...)
    scored: dict[str, Scored] = dataclasses.field(default_factory=dict)  # per split: its predictions
    splits: dict[str, dict] = dataclasses.field(default_factory=dict)  # per split: metrics (filled by evaluate)
    reports: dict[str, str] = dataclasses.field(default_factory=dict)  # per split: the per-class text report
    skipped: list[str] = dataclasses.field(default_factory=list)  # inputs that could not be used
    # Labelled examples the method learnt from or chose settings on; None: train and validation.
    labels_seen: int | None = None


def image_predictions(scored: dict, eval_splits: Sequence[str], label_sets: bool, threshold_setting: str):
    """Every evaluation split's Scored from ``scored`` (split -> (a function from the
    label-set threshold to that split's scores, the split's readable images)), with the
    threshold: chosen on validation with ``tune``, else the setting's; 0.5 and None for
    one class per image. Returns (predictions, threshold, threshold record)."""
    threshold, record = 0.5, None
    if label_sets:
        scores_at, kept = scored["validation" if threshold_setting == "tune" else eval_splits[0]]
        threshold, record = choose_threshold(scores_at(0.5), kept.labels, threshold_setting)
    predictions = {split: Scored(scored[split][0](threshold), scored[split][1].labels, scored[split][1].ids,
                                 {"file": scored[split][1].ids}) for split in eval_splits}
    return predictions, threshold, record


def trained_outcome(trainer, stats: dict, context: RunContext, train_config, predictions: dict[str, Scored],
                    params: dict, eval_seconds: float, task: dict, skipped=()) -> Outcome:
    """The Outcome of a task that trained with the Trainer: history.json written, the
    training summary (checkpoints pruned as configured) as ``task["training"]``, time
    and throughput from the Trainer's own figures."""
    from tunelab.training.trainer import prune_checkpoints, training_summary  # here, not at the top: loads transformers

    run = context.run
    run.write_json("history.json", trainer.state.log_history)
    training = training_summary(trainer, train_config, run.path, context.world, context.resume)
    training["checkpoints"] = prune_checkpoints(run.path, train_config) or "kept"
    return Outcome(
        scored=predictions, params=params,
        seconds={"train": stats["train_runtime"], "eval": eval_seconds},
        throughput={"train_samples_per_s": stats["train_samples_per_second"],
                    "eval_samples_per_s": throughput(sum(len(p.ids) for p in predictions.values()), eval_seconds)},
        task={**task, "training": training}, skipped=sorted(set(skipped)),
    )


def run_task(task, config, out: str | Path | None = None, overwrite: bool = False, resume: bool = False,
             argv: Sequence[str] | None = None) -> RunResult:
    """Run a registered task (a ``Task`` or its name) with a typed config and write a
    complete run directory at ``out``."""
    task = get_task(task) if isinstance(task, str) else task
    if not isinstance(config, task.config_class):
        raise TunelabError(f"tunelab {task.name} takes a {task.config_class.__name__}, not {type(config).__name__}")
    if resume and not task.resumable:
        raise TunelabError(f"tunelab {task.name} runs cannot be resumed; rerun them")
    started = time.perf_counter()
    device = resolve_device(config.runtime.device)
    rank, world = init_distributed(device.type)
    seed_everything(config.seed)

    requested_yaml = dump_yaml(config, task.name)  # before the data fills in columns, problem, ...
    requested_precision = config.runtime.precision
    precision = resolve_precision(config.runtime.precision, device)
    config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, precision=precision))
    if rank == 0:
        RunDirectory.check_target(out, overwrite, resume)  # before seconds of data reading and model loading
        check_tracking(config.tracking)
        if requested_precision == "auto" and config.model is not None:
            logger.info("precision: %s (--precision auto on %s)", precision, device.type)
    reset_peak_memory()
    prepared = task.prepare(config)  # data checked and model loaded before --out is touched
    check_problem(task, prepared.dataset)
    if rank == 0:
        describe_data(prepared.dataset)
    config_yaml = dump_yaml(prepared.config, task.name)
    run = rank_zero_run_directory(
        lambda: open_run_directory(out, task, prepared.config, config_yaml, overwrite, resume, argv), rank, world)
    with abandon_on_failure(run):
        tracker = None
        if rank == 0:
            record_inputs(run, prepared.source, prepared.config.data.dataset, requested_yaml,
                          getattr(prepared.config.data, "dataset_config", None))
            tracker = run.tracker(run.path.name, dataclasses.asdict(prepared.config), prepared.config.tracking)
        context = RunContext(run, tracker, device, rank, world, resume)
        outcome = task.execute(prepared, context)
        if rank == 0:
            evaluate(run, prepared.dataset, outcome)
            metrics = assemble_metrics(task.name, prepared, outcome, device, world, time.perf_counter() - started)
            result = finish_run(run, metrics, config_yaml, outcome.reports, prepared.dataset.notes)
        else:
            result = RunResult(run.path, {})
    barrier(world)
    return result


def check_problem(task, dataset) -> None:
    """A task runs the problem kinds it declares; any other stops in one line (a
    multi-label table of images given to a method that picks one class)."""
    problem = getattr(dataset, "problem", None)
    if problem is not None and problem not in task.problems:
        raise DataError(f"tunelab {task.name} takes {' or '.join(task.problems)} data; {dataset.name} is "
                        f"{problem}")


def check_tracking(tracking) -> None:
    """W&B asked for but not installed stops the run before anything is done."""
    import importlib.util

    if tracking.wandb and importlib.util.find_spec("wandb") is None:
        raise TunelabError("--wandb needs the wandb package: pip install wandb (from a clone: pip install -e "
                           "\".[wandb]\"), or drop --wandb")


def describe_data(dataset) -> None:
    """Say on the console what was decided about the data: columns, problem, splits."""
    for note in dataset.notes:
        logger.info("data: %s", note)
    sizes = ", ".join(f"{name} {len(split):,}" for name, split in dataset.splits.items())
    classes = counted(len(dataset.class_names), "class", "classes") if dataset.class_names else "numeric targets"
    logger.info("data: %s, %s; splits: %s", dataset.problem, classes, sizes)


def open_run_directory(out, task, config, config_yaml: str, overwrite: bool, resume: bool,
                       argv: Sequence[str] | None) -> RunDirectory:
    """A new run directory, or with ``resume`` the unfinished one in ``out``, whose saved
    configuration must equal ``config``."""
    if not resume:
        return RunDirectory.start(out, task.name, config_yaml, argv, overwrite)
    if out is None:
        raise TunelabError("--resume needs --out DIR: the run directory to continue")
    if not (Path(out) / "config.yaml").is_file():
        raise TunelabError(f"nothing to resume in {out}: no config.yaml")
    if (Path(out) / "metrics.json").is_file():
        raise TunelabError(f"{out} holds a finished run (metrics.json); nothing to resume")
    if config_from_run(task.config_class, Path(out)) != config:
        raise TunelabError(f"{out} was started with a different configuration; resume it with its own "
                           f"config.yaml (tunelab {task.name} --out {out} --resume, no other settings)")
    run = RunDirectory.create(out, task.name, resume=True)
    run.write_command(argv)
    return run


def evaluate(run: RunDirectory, dataset, outcome: Outcome) -> None:
    """The one evaluation of every task: each split's metrics, predictions file and
    picture, in the order the task scored them; the time it takes counts as evaluation."""
    start = time.perf_counter()
    for split, scored in outcome.scored.items():
        outcome.splits[split], outcome.reports[split] = evaluate_split(
            run, split, dataset.class_names, scored.labels, scored.scores, scored.ids, scored.inputs)
    if outcome.scored:
        outcome.seconds["eval"] = outcome.seconds.get("eval", 0.0) + time.perf_counter() - start


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


def finish_run(run: RunDirectory, metrics: dict[str, Any], config_yaml: str,
               class_reports: dict[str, str], notes: list[str]) -> RunResult:
    """Log the final metrics, write report.md, then metrics.json last (its presence marks a
    complete run); then put the run in place (replacing an old one only now)."""
    tracker = run.tracker_if_open()
    if tracker is not None:
        for split, values in metrics["splits"].items():
            tracker.log({f"final/{split}/{k}": v for k, v in values.items() if isinstance(v, (int, float))})
        tracker.log({f"throughput/{k}": v for k, v in metrics["timing"]["throughput"].items() if v is not None})

    run.write_text("report.md", render_run_report(metrics, config_yaml, class_reports,
                                                  [*below_majority(metrics), *notes]))
    if (run.path / "model").is_dir():
        inputs = read_inputs_record(run.path) or {}
        write_model_card(run.path / "model", metrics, config_yaml, inputs.get("model"))
    run.write_metrics(metrics)
    path = run.commit()
    for split, values in metrics["splits"].items():
        logger.info("%s: %s (n=%d)", split, headline_text(values), values["n"])  # whatever the problem

    for warning in below_majority(metrics):
        logger.warning("%s", warning)
    logger.info("run directory: %s (report: %s)", path, path / "report.md")
    return RunResult(path, metrics)


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


@contextlib.contextmanager
def abandon_on_failure(run: RunDirectory):
    """A run that fails leaves nothing half-made: what it created goes (checkpoints that
    --resume can use stay), and an old run it was to replace is untouched."""
    try:
        yield run
    except BaseException:
        run.abandon()
        raise


def record_inputs(run: RunDirectory, model_source, dataset_spec: str, requested_yaml: str = "",
                  dataset_config: str | None = None) -> None:
    """inputs.json: the model (absolute path or hub id, fingerprint), the data files'
    fingerprint, and the configuration as requested (before the data filled in columns
    and defaults), so that predict uses exactly this model and a study reuses a run only
    while none of them changed."""
    model = model_source.record() if model_source is not None else None
    dataset = resolve_dataset(dataset_spec, dataset_config).record()
    run.write_json(INPUTS_FILE, {"run_id": run.run_id, "model": model, "dataset": dataset,
                                 "requested_config": requested_yaml})


def read_inputs_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / INPUTS_FILE
    if not path.is_file():
        return None

    return read_json_file(path)


def recorded_model(run_dir: Path, configured: str):
    """The base model a run was made with: the absolute path (or hub id) it recorded,
    checked against the recorded fingerprint, never the configured name re-resolved
    from the current directory. Runs made before inputs.json existed fall back to
    the configured name, with a warning."""
    record = read_inputs_record(run_dir)
    if record is None or record.get("model") is None:
        logger.warning("%s records no model fingerprint; using '%s' as configured", run_dir, configured)
        return resolve_model(configured)
    return model_from_record(record["model"], run_dir)


def data_block(dataset, used: set[str] | None = None) -> dict[str, Any]:
    """metrics.json's ``data``: the problem, classes, split sizes and class counts (or the
    targets' range; of the splits ``used`` only), what was inferred, the positive class."""
    problem = get_problem(dataset.problem)
    block = {"problem": problem.name, "class_names": dataset.class_names,
             "sizes": {k: len(v) for k, v in dataset.splits.items()}, "notes": dataset.notes,
             "class_counts": {name: problem.target_counts(split.labels, dataset.class_names)
                              for name, split in dataset.splits.items() if used is None or name in used}}
    if problem.exclusive_classes and len(dataset.class_names) == 2:
        block["positive_class"] = dataset.class_names[1]
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
