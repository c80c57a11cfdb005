"""The run directory: one writer for every task's outputs (trackers in core.tracking, the
safety rules in core.safety).

Every file is written atomically (temporary file, then rename), and
``metrics.json`` is written last, so a run that fails or is killed never
leaves a torn or misleading ``metrics.json`` behind.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.core.config import TrackingConfig
from tunelab.core.errors import TunelabError
from tunelab.core.safety import (
    MARKER,
    atomic_write_bytes,
    check_replaceable,
    is_run_directory,
    lock_run_directory,
    make_marked_directory,
    marker_run_id,
    remove_stale_staging,
)
from tunelab.core.tracking import Tracker, confusion_png, package_versions, scatter_png

logger = logging.getLogger(__name__)

# Above this many classes a confusion matrix picture is unreadable; the most
# confused pairs are listed instead.
MAX_CLASSES_FOR_PICTURE = 30


def default_run_path(command: str) -> Path:
    return Path("runs") / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class RunDirectory:
    """Writes a run's files in the layout of DESIGN.md.

    Safety rules, because a run directory is the one place tunelab deletes from:
    every directory tunelab creates carries the marker file ``.tunelab-run``, and
    ``overwrite`` refuses any folder without it; while a run writes, it holds an
    exclusive lock on that marker, so two processes never write one directory; and
    an overwritten run is built beside the old one (``.<name>.tunelab-new-<pid>``)
    and swapped in only by ``commit()``, so a failed run never replaces a good one.
    """

    def __init__(self, path: Path, final: Path | None = None, lock=None, created: bool = False):
        self.path = Path(path)  # where files are written now
        self.final = Path(final) if final is not None else self.path  # where the run lives once committed
        self.started = time.time()
        self._tracker: Tracker | None = None
        self._lock = lock
        self._created = created  # this process made ``path`` (so it may remove it when abandoned)

    @staticmethod
    def check_target(out: str | os.PathLike | None, overwrite: bool = False, resume: bool = False) -> None:
        """Refuse an unusable ``--out`` before any data is read or model loaded."""
        if out is None or resume:
            return
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise TunelabError(f"--out {path} is a file; pass a directory")
        if path.is_symlink():
            raise TunelabError(f"--out {path} is a symbolic link; pass a real directory")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                try:
                    check_replaceable(path, "inputs.json") if is_run_directory(path) else None
                except TunelabError:
                    replaceable = False
                else:
                    replaceable = is_run_directory(path)
                raise TunelabError(f"--out {path} already holds files; choose a new directory" + (
                    " or pass --overwrite" if replaceable else " (--overwrite would refuse too: tunelab replaces "
                    "only a complete run directory it made, and this is not one)"))
            if not is_run_directory(path):
                raise TunelabError(f"--overwrite refused: {path} was not created by tunelab (no {MARKER} file), "
                                   "and tunelab only replaces directories it created; choose another --out")
            check_replaceable(path, "inputs.json")

    @classmethod
    def create(cls, out: str | os.PathLike | None, command: str, overwrite: bool = False,
               resume: bool = False) -> RunDirectory:
        path = Path(out) if out else default_run_path(command)
        if path.exists() and not path.is_dir():
            raise TunelabError(f"--out {path} is a file; pass a directory")
        remove_stale_staging(path)
        if resume:
            return cls(path, lock=lock_run_directory(path, create_marker=False))
        cls.check_target(path, overwrite)
        if path.is_dir() and any(path.iterdir()):  # an overwrite that check_target allowed
            lock = lock_run_directory(path)  # the old run stays locked until it is replaced
            try:
                check_replaceable(path, "inputs.json")  # again, now that no other process can change it
            except TunelabError:
                lock.close() if lock is not None else None
                raise
            staging = path.parent / f".{path.name}.tunelab-new-{os.getpid()}"
            if staging.exists():
                shutil.rmtree(staging)
            make_marked_directory(staging)
            return cls(staging, final=path, lock=lock, created=True)
        created = not path.exists()
        make_marked_directory(path)
        return cls(path, lock=lock_run_directory(path), created=created)

    @classmethod
    def start(cls, out: str | os.PathLike | None, command: str, config_yaml: str, argv: Sequence[str] | None,
              overwrite: bool = False) -> RunDirectory:
        """A new run directory holding the resolved config and the command line."""
        run = cls.create(out, command, overwrite=overwrite)
        run.write_config(config_yaml)
        run.write_command(argv)
        return run

    @property
    def run_id(self) -> str | None:
        return marker_run_id(self.path)

    def commit(self) -> Path:
        """Finish: put a run built beside an old one in its place, and release the lock."""
        self.close()
        if self.path != self.final:
            retired = self.final.parent / f".{self.final.name}.tunelab-old-{os.getpid()}"
            os.replace(self.final, retired)
            os.replace(self.path, self.final)
            shutil.rmtree(retired, ignore_errors=True)
            self.path = self.final
        self._unlock()
        return self.final

    def abandon(self) -> None:
        """After a failure: remove what this process created, unless it holds checkpoints
        that ``--resume`` can continue from; release the lock. An old run being
        overwritten is left untouched."""
        self.close()
        keep = (self.path / "checkpoints").is_dir() and self.path == self.final
        if self._created and not keep and is_run_directory(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    # ------------------------------------------------------------------ plain files

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        return target

    def write_json(self, name: str, value: Any) -> Path:
        return self.write_text(name, json.dumps(value, indent=2, ensure_ascii=False, default=_json_default) + "\n")

    def write_config(self, config_yaml: str) -> Path:
        return self.write_text("config.yaml", config_yaml)

    def write_command(self, argv: Sequence[str] | None) -> Path:
        line = shlex.join(["tunelab", *argv]) if argv is not None else shlex.join(sys.argv)
        versions = "\n".join(f"{k}=={v}" for k, v in package_versions().items())
        return self.write_text("command.txt", f"{line}\n\n# run {self.run_id}\n# versions\n{versions}\n")

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        return self.write_json("metrics.json", metrics)

    # ------------------------------------------------------------------ per-split outputs

    def write_predictions(self, split: str, columns: Mapping[str, Sequence[Any]]) -> Path:
        return self.write_table(f"predictions/{split}.csv", columns)

    def write_table(self, name: str, columns: Mapping[str, Sequence[Any]]) -> Path:
        """A CSV file of equal-length columns, written atomically."""
        return self.write_text(name, csv_text(columns))

    def write_confusion(self, split: str, matrix: np.ndarray, class_names: Sequence[str],
                        top_pairs: list[dict] | None = None) -> None:
        payload = {"labels": list(class_names), "matrix": matrix.tolist(),
                   "rows": "true class", "columns": "predicted class"}
        if top_pairs is not None:
            payload["top_confused_pairs"] = top_pairs
        self.write_json(f"confusion_{split}.json", payload)
        if len(class_names) <= MAX_CLASSES_FOR_PICTURE:
            atomic_write_bytes(self.path / f"confusion_{split}.png", confusion_png(matrix, class_names, split))

    def write_sparse_confusion(self, split: str, cells: np.ndarray, counts: np.ndarray, class_names: Sequence[str],
                               top_pairs: list[dict]) -> None:
        """Many classes: the confusion matrix as its non-zero cells (true, predicted,
        count), with the class list and the most frequent mistakes; no picture."""
        self.write_json(f"confusion_{split}.json", {
            "labels": list(class_names), "format": "cells", "rows": "true class", "columns": "predicted class",
            "cells": [[int(t), int(p), int(n)] for (t, p), n in zip(cells.tolist(), counts.tolist())],
            "top_confused_pairs": top_pairs})

    def write_scatter(self, split: str, gold: np.ndarray, predicted: np.ndarray) -> None:
        """Regression: predicted against gold values, where classification has a confusion matrix."""
        atomic_write_bytes(self.path / f"scatter_{split}.png", scatter_png(gold, predicted, split))

    # ------------------------------------------------------------------ tracking

    def tracker(self, run_name: str, config: Mapping[str, Any], tracking: TrackingConfig) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.path, run_name, config, tracking)
        return self._tracker

    def tracker_if_open(self) -> Tracker | None:
        return self._tracker

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None


def csv_text(columns: Mapping[str, Sequence[Any]]) -> str:
    """Equal-length columns as CSV, numbers written as every tunelab table writes them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = list(columns)
    writer.writerow(names)
    for row in zip(*(columns[n] for n in names)):
        writer.writerow([_csv_cell(v) for v in row])
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


