"""The run directory: one writer for every task's outputs, and the run's trackers.

Every file is written atomically (temporary file, then rename), and
``metrics.json`` is written last, so a run that fails or is killed never
leaves a torn or misleading ``metrics.json`` behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.core.config import TrackingConfig
from tunelab.core.errors import TunelabError
from tunelab.core.plots import figure, png

logger = logging.getLogger(__name__)

# Above this many classes a confusion matrix picture is unreadable; the most
# confused pairs are listed instead.
MAX_CLASSES_FOR_PICTURE = 30
# Written into every directory tunelab creates; only such directories are ever replaced.
MARKER = ".tunelab-run"


def default_run_path(command: str) -> Path:
    return Path("runs") / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def atomic_write_bytes(path: Path, data: bytes, own_folder: bool = True) -> None:
    """Write via a temporary file and a rename: readers see the old file or the whole
    new one, never a torn one. A symbolic link at ``path`` is replaced, never written
    through. In a folder tunelab owns (``own_folder``: a run directory, a report's
    images) a linked folder is refused, so a write never lands outside it; a folder of
    the user's (where --out or --output points, a cache) may be a link. The temporary
    file goes if anything fails. Files are readable by others (0644), like any output."""
    path = Path(path)
    if own_folder:
        _ensure_directory(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name[:100]}.", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise


def _ensure_directory(folder: Path) -> None:
    """Create ``folder`` (and its parents) unless it exists; refuse a symbolic link in its
    place, so that files meant for it never land in the link's target."""
    if folder.is_symlink():
        raise TunelabError(f"{folder} is a symbolic link; tunelab writes only into real folders it can see "
                           "(remove the link or choose another --out)")
    folder.mkdir(parents=True, exist_ok=True)


def is_run_directory(path: Path) -> bool:
    """Whether tunelab created ``path`` (it carries the marker file)."""
    marker = Path(path) / MARKER
    return marker.is_file() and not marker.is_symlink()


def marker_run_id(path: Path) -> str | None:
    """The random id in a folder's marker (also recorded in the run's inputs.json or the
    study's study.json), or None for a missing, empty or foreign marker."""
    marker = Path(path) / MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return None
        value = json.loads(marker.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None
    run_id = value.get("run_id") if isinstance(value, dict) else None
    return run_id if isinstance(run_id, str) and len(run_id) >= 16 else None


def _make_marked_directory(path: Path) -> None:
    """Create ``path`` with a marker holding a fresh run id. The marker is created with
    O_EXCL and never replaced: two processes making the same folder lock the same file,
    so only one of them gets the lock."""
    _ensure_directory(path)
    marker = path / MARKER
    stamp = {"created_by": "tunelab", "created": datetime.now().isoformat(timespec="seconds"),
             "run_id": uuid.uuid4().hex}
    try:
        descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(stamp) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# What a run directory may hold: every name tunelab writes there (and its temporary files).
RUN_ENTRIES = ("config.yaml", "command.txt", "metrics.json", "report.md", "inputs.json", "history.json",
               "predictions", "checkpoints", "model", "onnx", "wandb", MARKER, "confusion_*.json", "confusion_*.png",
               "scatter_*.png", "events.out.tfevents.*", ".*.tunelab-new*", ".*.tmp*", ".*.????????")
# What a study directory may hold besides its runs.
STUDY_ENTRIES = ("study.json", "report.md", "report.html", "report_files", ".configs", MARKER, ".*.????????",
                 ".*.tunelab-new-*", ".*.tunelab-old-*", "*.search.json", "*.search.journal",
                 "*.search.journal.lock")
# Files only a single run's directory holds: a folder with them is a run, not a study.
RUN_RECORDS = ("config.yaml", "inputs.json", "metrics.json", "command.txt")


def foreign_entries(path: Path) -> list[str]:
    """Names in ``path`` that tunelab did not write: anything an overwrite would delete
    that is not a run's (or a study's) own file. A study's runs are checked in turn."""
    import fnmatch

    path = Path(path)
    study = (path / "study.json").is_file()
    allowed = STUDY_ENTRIES if study else RUN_ENTRIES
    foreign = []
    for entry in sorted(os.listdir(path)):
        if any(fnmatch.fnmatchcase(entry, pattern) for pattern in allowed):
            continue
        child = path / entry
        if study and child.is_dir() and not child.is_symlink() and is_run_directory(child):
            foreign += [f"{entry}/{name}" for name in foreign_entries(child)]
            continue
        foreign.append(entry)
    return foreign


def check_replaceable(path: Path, record_name: str) -> None:
    """Refuse to delete ``path`` unless tunelab made it: a marker with a run id that the
    run's own record (``record_name``: inputs.json or study.json) repeats, and nothing
    inside that tunelab did not write."""
    run_id = marker_run_id(path)
    try:
        recorded = json.loads((Path(path) / record_name).read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        recorded = _command_run_id(path)  # a run killed before it recorded its inputs
    if run_id is None or recorded != run_id:
        raise TunelabError(f"--overwrite refused: {path} does not hold a complete tunelab run (its {MARKER} "
                           f"and {record_name} do not agree), and tunelab only replaces what it made; "
                           "choose another --out or remove the folder yourself")
    foreign = foreign_entries(path)
    if foreign:
        raise TunelabError(f"--overwrite refused: {path} holds files tunelab did not write "
                           f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them away "
                           "or choose another --out")


def _command_run_id(path: Path) -> str | None:
    try:
        text = (Path(path) / "command.txt").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found = re.search(r"^# run ([0-9a-f]{16,})$", text, re.MULTILINE)
    return found.group(1) if found else None


def remove_stale_staging(path: Path) -> None:
    """Remove what killed runs left beside ``path``: staging folders of an overwrite
    (``.NAME.tunelab-new-PID``) and retired old runs (``.NAME.tunelab-old-PID``) whose
    process is gone. Only a folder tunelab provably made goes: its marker holds a run id
    (which its command.txt or inputs.json repeats, where it got that far), and it holds
    nothing but a run's own files. Anything else is left and named once."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for entry in path.parent.glob(f".{path.name}.tunelab-[no][el][wd]-*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _process_alive(int(pid)) or entry.is_symlink() or not entry.is_dir():
            continue
        if not _is_stale_run(entry):
            logger.warning("%s looks like a killed run's staging folder but holds files tunelab did not write; "
                           "left as it is", entry)
            continue
        logger.info("removing %s, left by a run that was killed", entry)
        shutil.rmtree(entry, ignore_errors=True)


def _is_stale_run(entry: Path) -> bool:
    run_id = marker_run_id(entry)
    if run_id is None:
        return False
    for record in ("inputs.json", "command.txt"):
        if (entry / record).exists():
            try:
                recorded = json.loads((entry / record).read_text(encoding="utf-8")).get("run_id") \
                    if record == "inputs.json" else _command_run_id(entry)
            except (OSError, ValueError, AttributeError):
                return False
            if recorded != run_id:
                return False
    try:
        return not foreign_entries(entry)
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run_directory(path: Path, create_marker: bool = True):
    """An exclusive lock on the run directory's marker, held by the returned file object
    until it is closed (or the process dies); fails with one line when another process
    holds it. Where ``fcntl`` is missing (Windows) no lock is taken."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        if not create_marker:
            return None
        _make_marked_directory(Path(path))
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    handle = open(marker, "rb")  # noqa: SIM115 - held open as the lock
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise TunelabError(f"another tunelab process is writing to {path}; wait for it or choose another --out") \
            from None
    return handle


def read_inside(run_dir: Path, name: str) -> bytes | None:
    """A file of a run directory, or None when it is missing, a symbolic link, or resolves
    outside the directory: a report never embeds a file from elsewhere."""
    path = Path(run_dir) / name
    try:
        if path.is_symlink() or not path.is_file():
            return None
        if not path.resolve().is_relative_to(Path(run_dir).resolve()):
            return None
        return path.read_bytes()
    except OSError:
        return None


def read_text_inside(run_dir: Path, name: str) -> str | None:
    """``read_inside`` as text (undecodable bytes replaced)."""
    data = read_inside(run_dir, name)
    return data.decode("utf-8", errors="replace") if data is not None else None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("tunelab", "torch", "transformers", "datasets", "peft", "accelerate", "scikit-learn"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


class Tracker:
    """TensorBoard always; W&B when asked and installed. Absence never breaks a run."""

    def __init__(self, log_dir: Path, run_name: str, config: Mapping[str, Any], tracking: TrackingConfig):
        self._tb = None
        self._wandb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(log_dir))
        except ImportError:
            logger.warning("tensorboard is not installed; no event files will be written")
        if tracking.wandb:
            try:
                import wandb

                self._wandb = wandb.init(
                    project=tracking.wandb_project, name=run_name, config=dict(config), dir=str(log_dir)
                )
            except Exception as exc:  # missing package, no login, offline: report and go on
                logger.warning("W&B tracking is off: %s", str(exc).splitlines()[0] if str(exc) else exc)

    def log(self, values: Mapping[str, float], step: int = 0) -> None:
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(dict(values), step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


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
                raise TunelabError(f"--out {path} already holds files; choose a new directory or pass --overwrite")
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
            _make_marked_directory(staging)
            return cls(staging, final=path, lock=lock, created=True)
        created = not path.exists()
        _make_marked_directory(path)
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
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        names = list(columns)
        writer.writerow(names)
        for row in zip(*(columns[n] for n in names)):
            writer.writerow([_csv_cell(v) for v in row])
        return self.write_text(f"predictions/{split}.csv", buffer.getvalue())

    def write_confusion(self, split: str, matrix: np.ndarray, class_names: Sequence[str],
                        top_pairs: list[dict] | None = None) -> None:
        payload = {"labels": list(class_names), "matrix": matrix.tolist(),
                   "rows": "true class", "columns": "predicted class"}
        if top_pairs is not None:
            payload["top_confused_pairs"] = top_pairs
        self.write_json(f"confusion_{split}.json", payload)
        if len(class_names) <= MAX_CLASSES_FOR_PICTURE:
            atomic_write_bytes(self.path / f"confusion_{split}.png", _confusion_png(matrix, class_names, split))

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
        atomic_write_bytes(self.path / f"scatter_{split}.png", _scatter_png(gold, predicted, split))

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


def environment(device: str) -> dict[str, str]:
    versions = package_versions()
    return {
        "tunelab": versions.get("tunelab", "unknown"),
        "torch": versions.get("torch", "unknown"),
        "transformers": versions.get("transformers", "unknown"),
        "python": versions["python"],
        "device": device,
        "platform": platform.platform(),
    }


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


def _confusion_png(matrix: np.ndarray, class_names: Sequence[str], split: str) -> bytes:
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = figure(size, size * 0.9)
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: {split}")
    threshold = matrix.max() / 2 if matrix.size else 0
    if n <= 15:
        for (t, p), count in np.ndenumerate(matrix):
            ax.text(p, t, str(count), ha="center", va="center",
                    color="white" if count > threshold else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return png(fig)


def _scatter_png(gold: np.ndarray, predicted: np.ndarray, split: str) -> bytes:
    fig, ax = figure(4.5, 4.5)
    ax.scatter(gold, predicted, s=6, alpha=0.4)
    low = float(min(np.min(gold), np.min(predicted))) if len(gold) else 0.0
    high = float(max(np.max(gold), np.max(predicted))) if len(gold) else 1.0
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set_xlabel("gold")
    ax.set_ylabel("predicted")
    ax.set_title(f"predicted vs gold: {split}")
    return png(fig)
