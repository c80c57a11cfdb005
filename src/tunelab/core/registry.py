"""The task registry: one table that the command line, studies, ``predict``, ``info``,
the report and the package root all read.

A task is one module that defines a config dataclass, a ``prepare`` step (validate
the data, load the model: everything that can fail before ``--out`` is touched) and
an ``execute`` step (train and score inside the run directory), then registers
itself::

    register_task(Task(name="probe", config_class=ProbeConfig, prepare=prepare, execute=execute,
                       summary="frozen encoder features + a classical classifier",
                       load_predictor=load_probe_predictor))

The shared run lifecycle (``tunelab.tasks.lifecycle.run_task``) does the rest: process
group, seeding, run directory, inputs record, tracker, metrics.json, report.md,
finishing. Tasks registered by users (``tunelab.register_task``) are first-class:
they get flags, study steps, predict and report like the built-in ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any

from tunelab.core.errors import ConfigError

# Built-in tasks, imported on first use (each module registers its task).
BUILTIN_MODULES = {
    "probe": "tunelab.tasks.probe",
    "finetune": "tunelab.tasks.finetune",
    "zeroshot": "tunelab.tasks.zeroshot",
    "clip-finetune": "tunelab.tasks.clip_finetune",
    "baseline": "tunelab.tasks.baseline",
    "setfit": "tunelab.tasks.setfit",
}


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything tunelab needs to know about a command that makes a run directory."""

    name: str  # the command: `tunelab <name>`, a study step's `command:`
    config_class: type  # a dataclass; its fields (and their `setting` metadata) give the flags
    prepare: Callable[[Any], Any]  # config -> Prepared: data read and checked, model loaded
    execute: Callable[[Any, Any], Any]  # (Prepared, RunContext) -> Outcome (None on ranks other than 0)
    summary: str = ""  # one line for `tunelab --help`
    description: str = ""  # the command's own help
    resumable: bool = False  # training: --resume continues a killed run from its checkpoints
    load_predictor: Callable[[Any, Any], Callable[[Sequence], list]] | None = None  # (run_dir, config) -> predict
    describe: Callable[[dict], str] | None = None  # metrics.json -> a few words for the report's tables
    # ONNX: the transformer part of a run's predictor as one graph ((run_dir, config) ->
    # tunelab.encoders.graphs.ExportGraph), and the predictor built around any function that
    # computes that graph's output for TextInputs ((run_dir, config, encode) -> predict).
    # A task with both is exported by `tunelab export` and served by `predict --backend onnx`.
    export_graph: Callable[[Any, Any], Any] | None = None
    predictor_from_graph: Callable[[Any, Any, Callable], Callable[[Sequence], list]] | None = None
    # Config keys whose flags this command does not offer: they mean nothing here (a floor
    # with no model has no device or precision), or another key owns the flag here.
    unused_settings: tuple[str, ...] = ()
    # What the task takes: problem kinds, and per kind of input (text, pairs, images) the
    # pretrained model it needs (text-encoder, clip, or None). The conformance tests run
    # every task through every combination it declares.
    # The precision predict computes in by default: "run" (the run's own, reproducing its
    # predictions files) or fp32 (what plain transformers gives with the saved model/).
    serve_precision: str = "run"
    # Other names the command answers to (on the command line and in a study's steps);
    # runs record the task's own name.
    aliases: tuple[str, ...] = ()
    problems: tuple[str, ...] = ("single-label", "multi-label", "regression")
    inputs: tuple[tuple[str, str | None], ...] = (("text", "text-encoder"), ("pairs", "text-encoder"))

    @property
    def api_name(self) -> str:
        """The package-root function name: ``tunelab.clip_finetune(config, out=...)``."""
        return self.name.replace("-", "_")


_TASKS: dict[str, Task] = {}

# Commands that are not tasks: no task (built in or plugin) may take these names.
RESERVED_COMMANDS = ("run", "search", "report", "info", "predict", "export", "serve", "audit", "select", "help")
# Flags every task command has besides its config's own.
COMMON_FLAGS = ("--config", "--set", "--out", "--overwrite", "--resume", "-q", "--quiet", "--debug", "-h", "--help")
TASK_NAME = re.compile(r"[a-z][a-z0-9-]*")


def config_flags(task: Task) -> dict[str, str]:
    """flag -> the dotted config key it sets, for every field that declares a flag; two
    fields with one flag (or a flag every command already has) stop in one line."""
    found: dict[str, str] = {}

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[field.name]):
                walk(hints[field.name], f"{prefix}{field.name}.")
                continue
            flag, key = field.metadata.get("flag"), prefix + field.name
            if not flag or key in task.unused_settings:
                continue
            if flag in found or flag in COMMON_FLAGS:
                raise ConfigError(f"task '{task.name}': {flag} would set both "
                                  f"{found.get(flag, 'a flag every command has')} and {key}")
            found[flag] = key
    walk(task.config_class, "")
    return found


def register_task(task: Task) -> Task:
    """Make a task available to the command line, studies, predict and report. Built-in
    command names and aliases cannot be taken, so a plugin never replaces one."""
    if not dataclasses.is_dataclass(task.config_class):
        raise ConfigError(f"task '{task.name}': config_class must be a dataclass")
    for name in (task.name, *task.aliases):
        if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
            raise ConfigError(f"task name {name!r}: use lower-case letters, digits and '-'")
        if name in RESERVED_COMMANDS:
            raise ConfigError(f"task '{task.name}': '{name}' is a tunelab command and cannot be a task's name")
        owner = BUILTIN_MODULES.get(canonical_builtin(name))
        registered = _TASKS.get(canonical_builtin(name))
        if owner is not None and (task.execute.__module__ != owner or registered not in (None, task)):
            raise ConfigError(f"task '{task.name}': '{name}' is a built-in command and cannot be replaced")
        taken = next((t for t in _TASKS.values() if name in (t.name, *t.aliases) and t.name != task.name), None)
        if taken is not None:
            raise ConfigError(f"task '{task.name}': '{name}' is taken by the task '{taken.name}'")
    fields = {f.name for f in dataclasses.fields(task.config_class)}
    missing = {"model", "data", "runtime", "tracking", "seed"} - fields
    if missing:
        raise ConfigError(f"task '{task.name}': its config needs the fields {', '.join(sorted(missing))} "
                          "(the lifecycle reads them)")
    config_flags(task)
    _TASKS[task.name] = task
    return task


# Aliases of built-in tasks, so that no plugin takes them before the built-ins load.
BUILTIN_ALIASES = {"image-text-finetune": "clip-finetune"}


def canonical_builtin(name: str) -> str:
    return BUILTIN_ALIASES.get(name, name)


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


ENTRY_POINT_GROUP = "tunelab.tasks"
_PLUGINS_LOADED: list[bool] = []


def _load_builtins() -> None:
    for name, module in BUILTIN_MODULES.items():
        if name not in _TASKS:
            importlib.import_module(module)
    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED.append(True)
        _load_plugins()


def _load_plugins() -> None:
    """Tasks of installed packages: each entry point of the group ``tunelab.tasks`` names
    a module that registers its task when imported, or a ``Task`` (registered here).
    Every process loads them (a --jobs worker, a Ray worker), so a plugin task runs
    wherever a built-in one does. A plugin that fails to load is reported, not fatal."""
    import logging
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            if isinstance(loaded, Task) and _TASKS.get(loaded.name) is not loaded:
                register_task(loaded)
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the built-in commands down
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            logging.getLogger(__name__).warning("tunelab task plugin %s (%s) is skipped: %s%s", entry.name,
                                                entry.value, type(exc).__name__, f": {first}" if first else "")


def get_task(name: str) -> Task:
    _load_builtins()
    name = canonical_name(name)
    if name not in _TASKS:
        raise ConfigError(f"unknown command '{name}'; choose from {', '.join(_TASKS)}")
    return _TASKS[name]


def canonical_name(name: str) -> str:
    """A task's own name for one of its aliases (any other name unchanged)."""
    _load_builtins()
    return next((task.name for task in _TASKS.values() if name in task.aliases), name)


def all_tasks() -> dict[str, Task]:
    _load_builtins()
    return dict(_TASKS)
