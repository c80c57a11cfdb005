"""What makes a folder safe to write into or delete: the marker a run directory carries
(a random run id its own records repeat), the entries a run or study may hold, staging
folders of killed runs, the lock a writing process holds, atomic writes that never
follow a link, and reads that never leave a run directory."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

from tunelab.core.errors import TunelabError

logger = logging.getLogger(__name__)


# Written into every directory tunelab creates; only such directories are ever replaced.
MARKER = ".tunelab-run"


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


def make_marked_directory(path: Path) -> None:
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
               "audit.json", "audit.csv", "audit.md", "active.json",
               "predictions", "checkpoints", "model", "onnx", "wandb", MARKER, "confusion_*.json", "confusion_*.png",
               "scatter_*.png", "events.out.tfevents.*", ".*.tunelab-new*", ".*.tmp*", ".*.????????")


# What a study directory may hold besides its runs.
STUDY_ENTRIES = ("study.json", "report.md", "report.html", "report_files", "analysis.json", ".configs", MARKER,
                 ".*.????????",
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
        make_marked_directory(Path(path))
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


def make_shareable(folder: Path) -> None:
    """Files readable by others (0644) and folders enterable (0755), as any output: a
    library that saves with its own temporary files can leave them 0600, and a model
    folder is meant to be copied or uploaded. Links are not followed."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        try:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        except OSError:  # a file another user made: left as it is
            pass


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
