"""Reading the files of a run directory with one-line errors that name the file.

A run directory can be damaged (a copy cut short, a file edited by hand, a disk
full); whatever reads it says which file is wrong and how to mend it, instead of a
parser's traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tunelab.core.errors import TunelabError


class RunFileError(TunelabError):
    """A file of a run directory is missing, unreadable or damaged."""


class NumberLoader(yaml.SafeLoader):
    """YAML as a user writes numbers: PyYAML follows YAML 1.1, where ``1e-5`` (no dot)
    is text; here it is the number it looks like, in study files, configs, ``--set``
    and ``--space`` alike."""


NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


# A name that becomes one path component (a study step, a run, an image of a report):
# letters, digits, '.', '_' and '-', never a path, never '.' or '..', never hidden.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def is_plain_name(name: object, max_length: int = 100) -> bool:
    """Whether ``name`` (read from a file or typed by a user) is safe as one path component."""
    return isinstance(name, str) and bool(PLAIN_NAME.fullmatch(name)) and len(name) <= max_length


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the number rule of ``NumberLoader`` (no tags that build objects)."""
    return yaml.load(text, Loader=NumberLoader)  # noqa: S506 - a SafeLoader subclass


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunFileError(f"{path} is missing; the run is incomplete (rerun it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{path} cannot be read ({type(exc).__name__}: not UTF-8 text); rerun the run that "
                           "made it") from None


def read_json_file(path: Path | str, expect: type | None = dict) -> Any:
    """A JSON file's value; a missing, truncated or malformed file fails in one line."""
    path = Path(path)
    text = _read_text(path)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RunFileError(f"{path} is damaged (not valid JSON: {str(exc).splitlines()[0]}); "
                           "rerun the run that made it") from None
    if expect is not None and not isinstance(value, expect):
        raise RunFileError(f"{path} is damaged (it holds a {type(value).__name__}, not a {expect.__name__}); "
                           "rerun the run that made it")
    return value


def read_yaml_file(path: Path | str) -> dict:
    """A YAML mapping; tags that would build Python objects, bad bytes and syntax errors
    fail in one line (the loader is always the safe one)."""
    path = Path(path)
    text = _read_text(path)
    try:
        value = load_yaml(text)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())[:160]
        raise RunFileError(f"{path} is not valid YAML, or holds tags that would build objects ({first})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RunFileError(f"{path} must hold a mapping of settings, not {type(value).__name__}")
    return value


def read_safetensors(path: Path | str, framework: str = "numpy") -> dict:
    """The tensors of a safetensors file; a missing, truncated or foreign file fails in
    one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path} is missing; the run is incomplete (rerun it)")
    try:
        if framework == "numpy":
            from safetensors.numpy import load_file
        else:
            from safetensors.torch import load_file
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for torn or foreign files
        raise RunFileError(f"{path} is damaged (not a complete safetensors file: {type(exc).__name__}); "
                           "rerun the run that made it") from None


PREDICTOR_FILE = "predictor.json"
PREDICTOR_VERSION = 1
# What runs made before model/predictor.json wrote instead, one file per task.
OLD_PREDICTOR_FILES = ("tunelab.json", "probe.json", "baseline.json", "pair_similarity.json", "zeroshot.json")


def predictor_record(task: str, problem: str | None, class_names: list, **fields: Any) -> dict:
    """The one description of how a run's predictor loads, whatever the task: written to
    model/predictor.json, read back by ``read_predictor``."""
    return {"format": "tunelab-predictor", "version": PREDICTOR_VERSION, "task": task, "problem": problem,
            "class_names": list(class_names), **fields}


def read_predictor(run_dir: Path | str) -> dict:
    """model/predictor.json, or what a run made before it wrote that file (its task's own
    sidecar); a record of a newer version is refused in one line."""
    model_dir = Path(run_dir) / "model"
    path = model_dir / PREDICTOR_FILE
    if path.is_file():
        record = read_json_file(path)
        if not isinstance(record.get("version"), int) or record["version"] > PREDICTOR_VERSION:
            raise RunFileError(f"{path} is version {record.get('version')!r}, newer than this tunelab reads "
                               f"({PREDICTOR_VERSION}); upgrade tunelab, or rerun the run")
        return record
    for name in OLD_PREDICTOR_FILES:
        if (model_dir / name).is_file():
            return {"version": 0, **read_json_file(model_dir / name)}
    raise RunFileError(f"{path} is missing; the run is incomplete or was made by another tool (rerun it)")
