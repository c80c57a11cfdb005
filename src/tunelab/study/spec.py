"""Studies: an ordered list of steps (probe, finetune, zeroshot, clip-finetune), each a
normal run directory under one study directory, then one comparison report.

A study YAML::

    name: my-study
    variables:            # values steps can use as ${name}; --set name=value fills them
      clip_model: null
    settings:             # shared by every step whose command has the key
      seed: 42
      data: {max_eval_samples: 500}
    steps:
      - name: probe       # the step's run directory
        command: probe
        model: minilm
        data: {dataset: rotten_tomatoes}
      - name: zeroshot
        command: zeroshot
        requires: [clip_model]   # skipped, with the reason, while a variable is unset
        model: ${clip_model}
        data: {dataset: tiny_imagenet}

A step that fails is reported and the others still run. Rerunning with the same
``--out`` keeps steps whose run directory is complete with the same resolved
configuration, resumes interrupted training steps, and redoes the rest.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError
from tunelab.core.errors import counted
from tunelab.core.files import PLAIN_NAME
from tunelab.core.presets import load_yaml_source, matrix_suffix
from tunelab.core.registry import all_tasks, canonical_name, get_task
from tunelab.core.typed import from_dict, merge_settings, set_dotted
from tunelab.study.journal import load_optuna
from tunelab.study.questions import check_compare, check_published, check_target
from tunelab.study.search import parse_search

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


MAX_NAME_LENGTH = 100  # well inside any file system's limit for one path component


# Files of the study directory itself: no step may take these names.
RESERVED_NAMES = frozenset({"study.json", "report.md", "report.html", "report_files", "predictions", "model"})


@dataclasses.dataclass
class Step:
    name: str  # the run directory: the step's name, with its matrix values for an expanded run
    command: str
    settings: dict[str, Any]  # the step's own keys in the study file
    requires: list[str]
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set STEP.key=value
    group: str = ""  # the study step this run expands (its name in the study file)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # this run's matrix values
    search: Any = None  # tunelab.study.search.SearchSpec: trials instead of one run


@dataclasses.dataclass
class Study:
    name: str
    steps: list[Step]
    variables: dict[str, Any]
    settings: dict[str, Any]  # shared by every step whose command has the key
    baseline: str | None = None  # the step other runs are compared against in the report
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set key=value for every step
    published: dict[str, Any] = dataclasses.field(default_factory=dict)  # step -> {split: value}: a paper's numbers
    target: float | None = None  # the report answers: labels per class to reach this score, per method
    compare: list[list[str]] = dataclasses.field(default_factory=list)  # declared claims [A, B], tested in order


@dataclasses.dataclass
class StepOutcome:
    name: str
    command: str
    status: str  # completed | reused | skipped | failed
    detail: str = ""
    seconds: float = 0.0
    group: str = ""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    trial: bool = False  # one trial of a search (scored on validation only)


STUDY_KEYS = ("command", "name", "variables", "settings", "steps", "baseline", "matrix", "published", "target",
              "compare")


def load_study(source: str | dict, assignments: dict[str, Any] | None = None) -> Study:
    """Read a study YAML or preset, apply ``--set`` assignments (a variable name sets the
    variable, ``STEP.key`` one step's setting, ``matrix.key`` / ``STEP.matrix.key`` a
    sweep, any other key the shared settings), and expand every matrix into runs."""
    values, origin = (source, "the search") if isinstance(source, dict) else load_yaml_source(source)
    if values.get("command", "study") != "study" or "steps" not in values:
        raise ConfigError(f"{origin} is not a study (it needs a list of steps); "
                          f"for a single command use tunelab {values.get('command', 'COMMAND')} --config")
    unknown = set(values) - set(STUDY_KEYS)
    if unknown:
        raise ConfigError(f"{origin}: unknown study key '{sorted(unknown)[0]}' (known: {', '.join(STUDY_KEYS[1:])})")
    variables = dict(values.get("variables") or {})
    settings: dict[str, Any] = {}
    for dotted, value in flatten(dict(values.get("settings") or {})):  # data.shots and data: {shots} alike
        set_dotted(settings, dotted, value)
    study_matrix = dict(values.get("matrix") or {})

    commands = all_tasks()
    steps, matrices = [], {}
    for index, raw in enumerate(values["steps"] or []):
        if not isinstance(raw, dict) or "command" not in raw:
            raise ConfigError(f"{origin}: step {index + 1} needs a 'command' ({', '.join(commands)})")
        raw = dict(raw)
        command = canonical_name(raw.pop("command"))
        if command not in commands:
            raise ConfigError(f"{origin}: step {index + 1} has unknown command '{command}'; "
                              f"choose from {', '.join(commands)}")
        name = str(raw.pop("name", f"{index + 1:02d}-{command}"))
        check_name(name, origin)
        requires = list(raw.pop("requires", []) or [])
        matrices[name] = dict(raw.pop("matrix", None) or {})
        search = None
        if "search" in raw:
            cls = commands[command].config_class
            search = parse_search(raw.pop("search"), lambda key, cls=cls: has_key(cls, key),
                                  f"{origin}: step {name}")
        steps.append(Step(name, command, raw, requires, group=name, search=search))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: step names must be unique (they name run directories)")
    overrides: dict[str, Any] = {}
    target = values.get("target")
    for key, value in (assignments or {}).items():
        head, _, rest = key.partition(".")
        if key == "target":
            target = value
        elif key in variables:
            variables[key] = value
        elif head == "matrix" and rest:
            study_matrix[rest] = value
        elif head in names and rest.startswith("matrix."):
            matrices[head][rest[len("matrix."):]] = value
        elif head in names and rest:
            set_dotted(next(s for s in steps if s.name == head).overrides, rest, value)
        elif is_config_key(key):
            set_dotted(overrides, key, value)
        else:
            known = ", ".join(variables) or "none"
            candidates = [*variables, *(f"{n}.{k}" for n in names for k in config_keys()), *config_keys()]
            close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
            raise ConfigError(f"--set {key}=...: '{key}' is not a variable of this study (variables: {known}), "
                              f"a step (steps: {', '.join(names)}), or a setting any command has"
                              + (f"; did you mean {' or '.join(close)}?" if close else ""))
    for dotted, _ in flatten(settings):  # a shared setting no command has would be dropped silently
        if not is_config_key(dotted):
            close = difflib.get_close_matches(dotted, config_keys(), n=3, cutoff=0.6)
            raise ConfigError(f"{origin}: settings key '{dotted}' is a setting of no command"
                              + (f"; did you mean {' or '.join(close)}?" if close else ""))
    runs = []
    for step in steps:
        runs += expand_matrix(step, {**study_matrix, **matrices[step.name]}, variables, origin)
    _check_run_names(runs, origin)
    return Study(str(values.get("name") or Path(source).stem), runs, variables, settings, values.get("baseline"),
                 overrides, check_published(values.get("published"), origin), check_target(target, origin),
                 check_compare(values.get("compare"), origin))


def _check_run_names(runs: list[Step], origin: str) -> None:
    """No two runs may share a folder: names equal (or equal but for case, which is one
    folder on macOS and Windows), or a run named as a search's own runs
    (``<step>-best``, ``<step>-trial<N>``) or files (``<step>.search.json``)."""
    seen: dict[str, str] = {}
    for run in runs:
        other = seen.get(run.name.lower())
        if other is not None:
            raise ConfigError(f"{origin}: runs {other!r} and {run.name!r} would share one folder (names equal but "
                              "for case, or matrices giving two runs one name); rename a step")
        seen[run.name.lower()] = run.name
    for searched in (r for r in runs if r.search is not None):
        own = re.compile(re.escape(searched.name.lower()) + r"(-best|-trial\d+|\.search\.json|\.search\.journal)")
        for run in runs:
            if run is not searched and own.fullmatch(run.name.lower()):
                raise ConfigError(f"{origin}: step {run.name!r} takes a name of the search of step "
                                  f"{searched.name!r} ({searched.name}-best, {searched.name}-trial<N>); rename it")


def check_name(name: str, origin: str) -> None:
    if not PLAIN_NAME.fullmatch(name):
        raise ConfigError(f"{origin}: step name {name!r} is not a plain name; use letters, digits, '.', '_' "
                          "and '-' (it names the step's run directory inside the study directory)")
    if name.lower() in RESERVED_NAMES:
        raise ConfigError(f"{origin}: step name {name!r} is taken by the study's own files "
                          f"({', '.join(sorted(RESERVED_NAMES))}); rename the step")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{origin}: step name {name[:40]!r}... is {len(name)} characters long; a run directory "
                          f"name may have at most {MAX_NAME_LENGTH} (shorten the step name or its matrix values)")


# Short labels of matrix keys in run names (lora-shots8-seed1); others use their last part.
def expand_matrix(step: Step, matrix: dict[str, Any], variables: dict[str, Any], origin: str) -> list[Step]:
    """One run per combination of the matrix's values (keys are config keys, dotted, or
    study variables); a key the step's command lacks is left out for that step."""
    import itertools

    cls = get_task(step.command).config_class
    keys = []
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{origin}: matrix key '{key}' needs a list of values, got {values!r}")
        if key in variables or has_key(cls, key):
            keys.append(key)
        elif not is_config_key(key):
            raise ConfigError(f"{origin}: matrix key '{key}' is neither a study variable nor a setting of any "
                              "command")
    if not keys:
        return [step]
    keys.sort(key=lambda k: k == "seed")  # the seed last: lora-shots8-seed1
    runs = []
    for combination in itertools.product(*(matrix[k] for k in keys)):
        params = dict(zip(keys, combination))
        overrides = json.loads(json.dumps(step.overrides))
        settings = json.loads(json.dumps(step.settings))
        for key, value in params.items():
            if key in variables:
                settings = substitute(settings, {**variables, key: value})
            else:
                set_dotted(overrides, key, value)
        name = f"{step.name}-{matrix_suffix(params)}"
        check_name(name, origin)
        runs.append(dataclasses.replace(step, name=name, settings=settings, overrides=overrides, params=params))
    return runs


def has_key(cls: type, dotted: str) -> bool:
    node = cls
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return False
        field = fields[part]
        node = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
    return True


def config_keys() -> list[str]:
    """Every dotted config key of every registered command."""
    keys: set[str] = set()

    def walk(cls, prefix: str) -> None:
        for field in dataclasses.fields(cls):
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{field.name}.")
            else:
                keys.add(prefix + field.name)
    for task in all_tasks().values():
        walk(task.config_class, "")
    return sorted(keys)


def flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{data: {shots: 8}, seed: 1}`` -> ``[("data.shots", 8), ("seed", 1)]`` (a dotted key stays as written)."""
    pairs: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            pairs += flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((prefix + str(key), value))
    return pairs


def is_config_key(dotted: str) -> bool:
    """Whether some command's config has the (dotted) key."""
    return any(has_key(task.config_class, dotted) for task in all_tasks().values())


def substitute(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, str):
        whole = VARIABLE.fullmatch(value)
        if whole:
            return variables.get(whole.group(1))
        return VARIABLE.sub(lambda m: str(variables.get(m.group(1), "")), value)
    return value


def shared_for(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """The shared settings this config class has (nested groups filtered key by key)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    picked = {}
    for key, value in settings.items():
        if key not in fields:
            continue
        field_type = cls.__dataclass_fields__[key].default_factory if isinstance(value, dict) else None
        if isinstance(value, dict) and field_type not in (None, dataclasses.MISSING):
            inner = {f.name for f in dataclasses.fields(field_type())}
            value = {k: v for k, v in value.items() if k in inner}
        picked[key] = value
    return picked


def resolve_step(study: Study, step: Step):
    """The step's typed config, from layers where the later wins: the shared settings,
    the step's own, the shared --set values, the step's --set values; variables filled."""
    cls = get_task(step.command).config_class
    layers = [shared_for(cls, study.settings), step.settings, shared_for(cls, study.overrides), step.overrides]
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge_settings(cls, merged, substitute(layer, study.variables))
    return from_dict(cls, merged)


def default_study_path(name: str) -> Path:
    """``runs/study-NAME-TIME``, the name reduced to one safe path component."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")[:MAX_NAME_LENGTH] or "study"
    return Path("runs") / f"study-{safe}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclasses.dataclass
class PlannedStep:
    """One run of a study as a dry run shows it: what it is and how many runs it makes."""

    step: Step
    detail: str
    runs: int  # 1, the trials and the best run of a search, or 0 when skipped


def plan_study(study: Study) -> list[PlannedStep]:
    """What the study will run, checked as the real run checks it before its first step:
    every step's configuration resolved (a misspelt key stops here with one line), every
    search able to run (Optuna installed), and the runs each step makes counted (a
    search's trials and its best run)."""
    planned = []
    for step in study.steps:
        params = ", ".join(f"{k}={v}" for k, v in step.params.items())
        missing = [v for v in step.requires if study.variables.get(v) in (None, "")]
        if missing:
            planned.append(PlannedStep(step, f"skipped: needs {', '.join(missing)} (--set {missing[0]}=...)", 0))
            continue
        try:
            resolve_step(study, step)
        except ConfigError as exc:
            raise ConfigError(f"step {step.name}: {exc}") from None
        if step.search is None:
            planned.append(PlannedStep(step, params, 1))
            continue
        load_optuna()
        trials = step.search.trials if step.search.sampler != "grid" else \
            min(step.search.trials, math.prod(len(d.values) for d in step.search.space))
        keys = ", ".join(d.key for d in step.search.space)
        detail = (params + "; " if params else "") + \
            f"search: {counted(trials, 'trial')} over {keys}, then {step.name}-best"
        planned.append(PlannedStep(step, detail, trials + 1))
    return planned
