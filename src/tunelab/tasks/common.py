"""Pieces every task shares: the result type and the run's closing steps."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

from tunelab.report import render_run_report
from tunelab.runs import RunDirectory

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    """What a task returns: where its run directory is and what it measured."""

    run_dir: Path
    metrics: dict[str, Any]

    def split(self, name: str) -> dict[str, float]:
        return self.metrics["splits"][name]


INPUTS_FILE = "inputs.json"


def finish_run(run: RunDirectory, metrics: dict[str, Any], config_yaml: str,
               class_reports: dict[str, str], notes: list[str]) -> RunResult:
    """Write report.md, then metrics.json last: its presence marks a complete run; then
    put the run in place (replacing an old one only now) and release its lock."""
    run.write_text("report.md", render_run_report(metrics, config_yaml, class_reports, notes))
    run.write_metrics(metrics)
    path = run.commit()
    for split, values in metrics["splits"].items():
        logger.info("%s: accuracy %.4f, f1 %.4f (n=%d)", split, values["accuracy"], values["f1"], values["n"])
    logger.info("run directory: %s", path)
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


def record_inputs(run: RunDirectory, model_source, dataset_spec: str) -> None:
    """inputs.json: the model (absolute path or hub id, fingerprint) and the data files'
    fingerprint, so that predict uses exactly this model and a study reuses a run only
    while neither changed."""
    from tunelab.data.sources import resolve_dataset

    run.write_json(INPUTS_FILE, {"model": model_source.record(), "dataset": resolve_dataset(dataset_spec).record()})


def read_inputs_record(run_dir: Path) -> dict | None:
    import json

    path = Path(run_dir) / INPUTS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def data_block(dataset) -> dict[str, Any]:
    """metrics.json's ``data``: classes, split sizes, what was inferred, the positive class."""
    block = {"class_names": dataset.class_names, "sizes": {k: len(v) for k, v in dataset.splits.items()},
             "notes": dataset.notes}
    if len(dataset.class_names) == 2:
        block["positive_class"] = dataset.class_names[1]
    return block


def recorded_model(run_dir: Path, configured: str):
    """The base model a run was made with: the absolute path (or hub id) it recorded,
    checked against the recorded fingerprint, never the configured name re-resolved
    from the current directory. Runs made before inputs.json existed fall back to
    the configured name, with a warning."""
    from tunelab.models import model_from_record, resolve_model

    record = read_inputs_record(run_dir)
    if record is None:
        logger.warning("%s records no model fingerprint; using '%s' as configured", run_dir, configured)
        return resolve_model(configured)
    return model_from_record(record["model"], run_dir)
