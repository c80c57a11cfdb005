"""Pieces every task shares: the result type and the run's closing steps."""

from __future__ import annotations

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


def finish_run(run: RunDirectory, metrics: dict[str, Any], config_yaml: str,
               class_reports: dict[str, str], notes: list[str]) -> RunResult:
    """Write report.md, then metrics.json last: its presence marks a complete run."""
    run.write_text("report.md", render_run_report(metrics, config_yaml, class_reports, notes))
    run.write_metrics(metrics)
    run.close()
    for split, values in metrics["splits"].items():
        logger.info("%s: accuracy %.4f, f1 %.4f (n=%d)", split, values["accuracy"], values["f1"], values["n"])
    logger.info("run directory: %s", run.path)
    return RunResult(run.path, metrics)
