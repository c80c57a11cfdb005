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
from tunelab.core.files import PREDICTOR_FILE, read_json_file
from tunelab.core.registry import get_task
from tunelab.core.runs import RunDirectory
from tunelab.core.runtime import resolve_device, resolve_precision, seed_everything
from tunelab.core.safety import make_shareable
from tunelab.data.sources import resolve_dataset
from tunelab.models.resolve import model_from_record, resolve_model
from tunelab.problems import get_problem
from tunelab.problems.metrics import below_majority
from tunelab.tasks.card import write_model_card
from tunelab.tasks.contract import Outcome, Prepared, RunContext, RunResult, Scored
from tunelab.tasks.evaluation import deduplicated_metrics, evaluate_split
from tunelab.tasks.metrics_file import assemble_metrics, headline_text, reset_peak_memory, throughput
from tunelab.tasks.run_report import render_run_report

logger = logging.getLogger(__name__)

INPUTS_FILE = "inputs.json"


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
    get_problem(prepared.dataset.problem).check_threshold_setting(
        getattr(prepared.config.data, "threshold", "0.5"), prepared.dataset.splits)
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
            settle_threshold(run, prepared, outcome)
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
    if problem is not None and not get_problem(problem).fits(task.problems):
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


def settle_threshold(run: RunDirectory, prepared: Prepared, outcome: Outcome) -> None:
    """The decision threshold, chosen once for every task by its problem (label sets:
    given, or tuned on validation), applied to every evaluation split's scores and
    recorded in metrics.json and the run's predictor.json; a split scored only to choose
    it (validation outside --splits) is not evaluated."""
    problem = get_problem(prepared.dataset.problem)
    threshold, record = problem.threshold_for({s: p.scores for s, p in outcome.scored.items()},
                                              {s: p.labels for s, p in outcome.scored.items()},
                                              getattr(prepared.config.data, "threshold", "0.5")) \
        if outcome.scored else (None, None)
    outcome.scored = {split: dataclasses.replace(scored, scores=scored.scores.with_threshold(threshold))
                      if threshold is not None else scored
                      for split, scored in outcome.scored.items() if split in prepared.eval_splits}
    if record is None:
        return
    outcome.task["threshold"] = record
    if record.get("tuned") and outcome.labels_seen is not None and not outcome.counts_validation:
        outcome.labels_seen += len(prepared.dataset.splits["validation"])
    saved = run.path / "model" / PREDICTOR_FILE
    if saved.is_file():
        run.write_json(f"model/{PREDICTOR_FILE}", {**read_json_file(saved), "threshold": threshold})


def evaluate(run: RunDirectory, dataset, outcome: Outcome) -> None:
    """The one evaluation of every task: each split's metrics, predictions file and
    picture, in the order the task scored them; the time it takes counts as evaluation."""
    start = time.perf_counter()
    for split, scored in outcome.scored.items():
        outcome.splits[split], outcome.reports[split] = evaluate_split(
            run, split, dataset.class_names, scored.labels, scored.scores, scored.ids, scored.inputs)
    outcome.deduplicated = deduplicated_metrics(dataset, outcome.scored, len(dataset.class_names))
    for split, record in outcome.deduplicated.items():
        logger.warning("%s: %d of %d rows copy training rows; without them %s (deduplicated, in metrics.json)",
                       split, record["copies_of_train"], record["copies_of_train"] + record["n"],
                       headline_text(record["metrics"]))
    if outcome.scored:
        outcome.seconds["eval"] = outcome.seconds.get("eval", 0.0) + time.perf_counter() - start


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
        make_shareable(run.path / "model")
    run.write_metrics(metrics)
    path = run.commit()
    for split, values in metrics["splits"].items():
        logger.info("%s: %s (n=%d)", split, headline_text(values), values["n"])  # whatever the problem

    for warning in below_majority(metrics):
        logger.warning("%s", warning)
    logger.info("run directory: %s (report: %s)", path, path / "report.md")
    return RunResult(path, metrics)


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


