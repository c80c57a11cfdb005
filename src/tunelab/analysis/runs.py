"""Finished runs as records: found in run or study directories (never through links),
their metrics and configuration read with damaged ones left out and named, and their
predictions files read for pairing only when their rows match metrics.json."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from tunelab.core.safety import read_inside, read_text_inside

logger = logging.getLogger(__name__)


SIZE_KEYS = ("data.shots", "data.max_train_samples", "active.labels")  # matrix keys that set the training-set size


@dataclasses.dataclass
class RunRecord:
    name: str
    path: Path
    metrics: dict
    config: dict
    command_line: str
    history: list
    inputs: dict | None = None  # inputs.json: the model's and the data's fingerprints

    @property
    def command(self) -> str:
        return self.metrics["command"]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def identity(self) -> str:
        """The configuration without its seed: runs equal here differ only in seed."""
        config = {k: v for k, v in self.config.items() if k != "seed"}
        return json.dumps(config, sort_keys=True, default=str)

    def data_identity(self) -> str:
        """Which examples a split holds: the data's content fingerprint and the settings
        that choose splits and columns. Runs whose identities differ are never paired."""
        data = self.config.get("data") or {}
        dataset = (self.inputs or {}).get("dataset") or {}
        # Runs made before inputs.json existed: the dataset as named (no content fingerprint).
        fingerprint = dataset.get("fingerprint") or f"named:{self.metrics.get('dataset')}"
        chosen = {key: data.get(key) for key in ("dataset_config", "train_split", "validation_split", "test_split",
                                                 "text_column", "text_pair_column", "label_column", "problem",
                                                 "label_separator", "split_seed", "max_eval_samples")}
        return json.dumps([fingerprint, chosen], sort_keys=True, default=str)

    def labels_seen(self) -> int | None:
        """How many labelled examples the run learnt from or chose settings on: train
        and validation, as sizes in metrics.json record them."""
        sizes = self.metrics.get("data", {}).get("sizes", {})
        seen = self.metrics.get("data", {}).get("labels_seen")
        if seen is not None:
            return int(seen)
        return int(sizes.get("train", 0) + sizes.get("validation", 0)) if sizes else None


def find_runs(paths: list[Path | str], problems: list[str] | None = None) -> list[RunRecord]:
    """Run directories given directly, or inside study directories (not through
    symbolic links), in order. A run whose files are damaged is left out, and why is
    appended to ``problems``."""
    found = []
    for path in map(Path, paths):
        if (path / "metrics.json").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.glob("*/metrics.json") if not p.parent.is_symlink())
    records = []
    for path in found:
        try:
            records.append(_read_record(path))
        except ValueError as exc:
            if problems is not None:
                problems.append(f"{path.name}: left out ({exc})")
            logger.warning("%s is left out of the report: %s", path, exc)
    return records


def _read_record(path: Path) -> RunRecord:
    import yaml

    metrics_text, config_text = read_text_inside(path, "metrics.json"), read_text_inside(path, "config.yaml")
    if metrics_text is None or config_text is None:
        raise ValueError("metrics.json or config.yaml is missing or a link")
    try:
        metrics = json.loads(metrics_text)
    except ValueError:
        raise ValueError("metrics.json is not valid JSON") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("splits"), dict) or "command" not in metrics:
        raise ValueError("metrics.json lacks the command or the splits")
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        raise ValueError("config.yaml is not valid YAML or holds tags that would build objects") from None
    if not isinstance(config, dict):
        raise ValueError("config.yaml holds no mapping")
    history, command, inputs = (read_text_inside(path, name) for name in ("history.json", "command.txt",
                                                                              "inputs.json"))
    try:
        history_value = json.loads(history) if history else []
        inputs_value = json.loads(inputs) if inputs else None
    except ValueError:
        history_value, inputs_value = [], None
    return RunRecord(path.name, path, metrics, config, command.splitlines()[0] if command else "",
                     history_value if isinstance(history_value, list) else [],
                     inputs_value if isinstance(inputs_value, dict) else None)


def read_predictions(run_path: Path, split: str, expected: int | None = None) -> dict[str, tuple[str, str]] | str:
    """id -> (label, prediction) as written in predictions/<split>.csv, or why it cannot be
    paired: missing, a link, damaged (a torn row, a missing column, a repeated id), or
    holding another number of rows than the ``expected`` n its run's metrics.json records
    (a file cut short between rows would otherwise pair silently on fewer examples)."""
    name = f"predictions/{split}.csv"
    data = read_inside(run_path, name)
    if data is None:
        return f"has no readable {name}"
    try:
        text = data.decode("utf-8")
        if text and not text.endswith("\n"):
            raise ValueError("its last row is cut short (no line end)")
        out = {}
        for row in csv.DictReader(text.splitlines()):
            if not all(isinstance(row.get(key), str) for key in ("id", "label", "prediction")) or None in row \
                    or any(value is None for value in row.values()):
                raise ValueError("a row lacks fields")
            if row["id"] in out:
                raise ValueError(f"the id {row['id'][:40]!r} appears twice")
            out[row["id"]] = (row["label"], row["prediction"])
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        logger.warning("%s/%s is damaged (%s); not used in paired tests", run_path, name, exc)
        return f"{name} is damaged ({exc})"
    if expected is not None and len(out) != expected:
        logger.warning("%s/%s holds %d rows where metrics.json records n %d; not used in paired tests", run_path,
                       name, len(out), expected)
        return f"{name} holds {len(out):,} rows where its metrics.json records n {expected:,}"
    return out
