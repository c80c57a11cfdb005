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
import logging
import re
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from tunelab.core.config import (
    ConfigError,
    dump_yaml,
    from_dict,
    load_yaml_source,
    matrix_suffix,
    merge_settings,
    set_dotted,
)
from tunelab.core.errors import TunelabError, counted
from tunelab.core.files import PLAIN_NAME, load_yaml
from tunelab.core.registry import all_tasks, canonical_name, get_task
from tunelab.core.runs import (
    MARKER,
    RUN_RECORDS,
    atomic_write_bytes,
    is_run_directory,
    lock_run_directory,
    marker_run_id,
)
from tunelab.data.sources import resolve_dataset
from tunelab.models.resolve import resolve_model
from tunelab.report.document import write_report
from tunelab.study.search import TrialRun, parse_search, run_search
from tunelab.tasks.lifecycle import read_inputs_record, run_task

logger = logging.getLogger(__name__)

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


STUDY_KEYS = ("command", "name", "variables", "settings", "steps", "baseline", "matrix", "published")


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
    for dotted, value in _flatten(dict(values.get("settings") or {})):  # data.shots and data: {shots} alike
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
        _check_name(name, origin)
        requires = list(raw.pop("requires", []) or [])
        matrices[name] = dict(raw.pop("matrix", None) or {})
        search = None
        if "search" in raw:
            cls = commands[command].config_class
            search = parse_search(raw.pop("search"), lambda key, cls=cls: _has_key(cls, key),
                                  f"{origin}: step {name}")
        steps.append(Step(name, command, raw, requires, group=name, search=search))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: step names must be unique (they name run directories)")
    overrides: dict[str, Any] = {}
    for key, value in (assignments or {}).items():
        head, _, rest = key.partition(".")
        if key in variables:
            variables[key] = value
        elif head == "matrix" and rest:
            study_matrix[rest] = value
        elif head in names and rest.startswith("matrix."):
            matrices[head][rest[len("matrix."):]] = value
        elif head in names and rest:
            set_dotted(next(s for s in steps if s.name == head).overrides, rest, value)
        elif _is_config_key(key):
            set_dotted(overrides, key, value)
        else:
            known = ", ".join(variables) or "none"
            candidates = [*variables, *(f"{n}.{k}" for n in names for k in _config_keys()), *_config_keys()]
            close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
            raise ConfigError(f"--set {key}=...: '{key}' is not a variable of this study (variables: {known}), "
                              f"a step (steps: {', '.join(names)}), or a setting any command has"
                              + (f"; did you mean {' or '.join(close)}?" if close else ""))
    for dotted, _ in _flatten(settings):  # a shared setting no command has would be dropped silently
        if not _is_config_key(dotted):
            close = difflib.get_close_matches(dotted, _config_keys(), n=3, cutoff=0.6)
            raise ConfigError(f"{origin}: settings key '{dotted}' is a setting of no command"
                              + (f"; did you mean {' or '.join(close)}?" if close else ""))
    runs = []
    for step in steps:
        runs += expand_matrix(step, {**study_matrix, **matrices[step.name]}, variables, origin)
    _check_run_names(runs, origin)
    return Study(str(values.get("name") or Path(source).stem), runs, variables, settings, values.get("baseline"),
                 overrides, _check_published(values.get("published"), origin))


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


def _check_published(published: Any, origin: str) -> dict[str, Any]:
    """``published: {step: {split: number}}``: a paper's numbers, checked before any run."""
    if published in (None, {}):
        return {}
    if not isinstance(published, dict):
        raise ConfigError(f"{origin}: published must map step names to {{split: number}}")
    for step, values in published.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: published.{step} must map splits to numbers, e.g. {{test: 0.84}}")
        for split, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigError(f"{origin}: published.{step}.{split} = {value!r} is not a number")
    return dict(published)


def _check_name(name: str, origin: str) -> None:
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
        if key in variables or _has_key(cls, key):
            keys.append(key)
        elif not _is_config_key(key):
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
                settings = _substitute(settings, {**variables, key: value})
            else:
                set_dotted(overrides, key, value)
        name = f"{step.name}-{matrix_suffix(params)}"
        _check_name(name, origin)
        runs.append(dataclasses.replace(step, name=name, settings=settings, overrides=overrides, params=params))
    return runs


def _has_key(cls: type, dotted: str) -> bool:
    node = cls
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return False
        field = fields[part]
        node = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
    return True


def _config_keys() -> list[str]:
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


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{data: {shots: 8}, seed: 1}`` -> ``[("data.shots", 8), ("seed", 1)]`` (a dotted key stays as written)."""
    pairs: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((prefix + str(key), value))
    return pairs


def _is_config_key(dotted: str) -> bool:
    """Whether some command's config has the (dotted) key."""
    return any(_has_key(task.config_class, dotted) for task in all_tasks().values())


def _substitute(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, str):
        whole = VARIABLE.fullmatch(value)
        if whole:
            return variables.get(whole.group(1))
        return VARIABLE.sub(lambda m: str(variables.get(m.group(1), "")), value)
    return value


def _shared_for(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
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
    layers = [_shared_for(cls, study.settings), step.settings, _shared_for(cls, study.overrides), step.overrides]
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge_settings(cls, merged, _substitute(layer, study.variables))
    return from_dict(cls, merged)


def default_study_path(name: str) -> Path:
    """``runs/study-NAME-TIME``, the name reduced to one safe path component."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")[:MAX_NAME_LENGTH] or "study"
    return Path("runs") / f"study-{safe}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def open_study_directory(root: Path):
    """Take the study directory for this study alone: a folder that holds files but no
    tunelab marker is refused (it is the user's), and the marker's lock is held until
    the study ends, so a second study on the same --out stops at once."""
    if root.exists() and not root.is_dir():
        raise TunelabError(f"--out {root} is a file; pass a directory")
    if root.is_symlink():
        raise TunelabError(f"--out {root} is a symbolic link; pass a real directory")
    if root.is_dir() and any(root.iterdir()):
        check_study_directory(root)
    try:
        lock = lock_run_directory(root)
    except TunelabError:
        raise TunelabError(f"another tunelab study is running in {root}; wait for it or choose another --out") \
            from None
    if root.is_dir() and any(root.iterdir()):
        try:
            check_study_directory(root)  # again, now that no other process can change it
        except TunelabError:
            lock.close() if lock is not None else None
            raise
    return lock


def check_study_directory(root: Path) -> None:
    """A folder a study may continue in: a study directory tunelab made (its marker holds
    a run id that study.json repeats, where the study got that far) holding only its own
    runs. A run directory, a folder of the user's, or a planted or empty marker is
    refused, so nothing in it is ever overwritten."""
    if not is_run_directory(root):
        raise TunelabError(f"--out {root} holds files that tunelab did not write (no {MARKER} file); "
                           "choose a new or empty directory")
    records = [name for name in RUN_RECORDS if (root / name).exists()]
    if records:
        raise TunelabError(f"--out {root} is a single run's directory ({records[0]}), not a study's; choose a new "
                           "or empty directory for the study")
    run_id = marker_run_id(root)
    if run_id is None:
        raise TunelabError(f"--out {root}: its {MARKER} holds no run id, so tunelab cannot tell it made this folder; "
                           "choose a new or empty directory")
    if (root / "study.json").exists():
        try:
            recorded = json.loads((root / "study.json").read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != run_id:
            raise TunelabError(f"--out {root}: its study.json and {MARKER} do not agree, so tunelab cannot tell it "
                               "made this folder; choose a new or empty directory")


def _recorded_request(run_dir: Path) -> str | None:
    recorded = read_inputs_record(run_dir)
    return recorded.get("requested_config") if recorded else None


def _complete_with(run_dir: Path, command: str, config) -> bool:
    """A finished run made from the same requested configuration and the same files: the
    model's and the data's fingerprints must still match what the run recorded."""
    if not (run_dir / "metrics.json").is_file() or _recorded_request(run_dir) != dump_yaml(config, command):
        return False
    recorded = read_inputs_record(run_dir)
    try:
        model_unchanged = recorded["model"] is None or \
            resolve_model(config.model).fingerprint_like(recorded["model"]["fingerprint"]) == \
            recorded["model"]["fingerprint"]
        dataset = resolve_dataset(config.data.dataset, getattr(config.data, "dataset_config", None))
        return model_unchanged and dataset.fingerprint() == recorded["dataset"]["fingerprint"]
    except TunelabError:
        return False


EXECUTORS = ("local", "ray")


@dataclasses.dataclass
class PlannedRun:
    step: Step
    config: Any
    mode: str  # new | resume | overwrite
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # a search trial's TUNELAB_TRIAL


def run_study(study: Study, out: str | Path | None = None, jobs: int = 1, executor: str = "local",
              ray_address: str | None = None) -> tuple[Path, list[StepOutcome]]:
    """Run every run of the study: finished ones with the same inputs are kept, killed
    training runs resume, the rest run (``jobs`` at a time on this machine, or as Ray
    tasks); a failure is recorded and the others go on. Returns (study directory,
    outcomes in study order)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be 1 or more")
    root = Path(out) if out else default_study_path(study.name)
    lock = open_study_directory(root)
    try:
        return root, _run_study_locked(study, root, jobs, executor, ray_address)
    finally:
        if lock is not None:
            lock.close()


def _run_study_locked(study: Study, root: Path, jobs: int, executor: str,
                      ray_address: str | None) -> list[StepOutcome]:
    if not (root / "study.json").exists():  # recorded at once: a killed study's folder is still known as its
        _write_state(root, study, [])
    outcomes: dict[str, list[StepOutcome]] = {}
    todo: list[PlannedRun] = []
    searches: list[dict] = []
    for step in study.steps:
        run_dir = root / step.name
        missing = [v for v in step.requires if study.variables.get(v) in (None, "")]
        if missing:
            reason = f"needs {', '.join(missing)} (set it with --set {missing[0]}=...)"
            outcomes[step.name] = [_outcome(step, "skipped", reason)]
            logger.info("step %s skipped: %s", step.name, reason)
            continue
        try:
            config = resolve_step(study, step)
        except TunelabError as exc:
            outcomes[step.name] = [_outcome(step, "failed", str(exc))]
            continue
        if step.search is not None:
            record, outcomes[step.name] = _run_searched_step(study, step, root, jobs, executor, ray_address)
            searches.append(record)
            continue
        if _complete_with(run_dir, step.command, config):
            outcomes[step.name] = [_outcome(step, "reused", "complete with the same configuration and inputs")]
            logger.info("step %s: complete already, kept", step.name)
            continue
        resumable = (get_task(step.command).resumable and (run_dir / "config.yaml").is_file()
                     and not (run_dir / "metrics.json").exists() and (run_dir / "checkpoints").is_dir()
                     and _recorded_request(run_dir) == dump_yaml(config, step.command))
        mode = "resume" if resumable else "overwrite" if run_dir.exists() and any(run_dir.iterdir()) else "new"
        todo.append(PlannedRun(step, config, mode))
    if executor == "ray":
        results = _run_on_ray(todo, root, ray_address)
    elif jobs > 1 and len(todo) > 1:
        results = _run_in_processes(todo, root, jobs)
    else:
        results = [_run_here(planned, root) for planned in todo]
    for planned, (status, detail, seconds) in zip(todo, results):
        outcomes[planned.step.name] = [_outcome(planned.step, status, detail, seconds)]
        if status == "failed":
            logger.error("step %s failed: %s", planned.step.name, detail)
    ordered = [o for step in study.steps for o in outcomes[step.name]]
    _write_state(root, study, ordered)

    # A search's trials scored validation only: the report compares its best run.
    runs = [root / o.name for o in ordered if o.status in ("completed", "reused") and not o.trial]
    write_report(runs, root / "report.md", title=f"Study {study.name}", baseline=study.baseline, outcomes=ordered,
                 published=study.published, searches=searches)
    return ordered


def _run_searched_step(study: Study, step: Step, root: Path, jobs: int, executor: str,
                       ray_address: str | None) -> tuple[dict, list[StepOutcome]]:
    """The step's trials (validation only; ``jobs`` at a time in processes, or as Ray
    tasks), then its best configuration on every split."""
    def config_for(params: dict[str, Any], splits: list[str] | None):
        overrides = json.loads(json.dumps(step.overrides))
        for key, value in params.items():
            set_dotted(overrides, key, value)
        config = resolve_step(study, dataclasses.replace(step, overrides=overrides))
        if splits is not None:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, splits=splits))
        return config

    def run(config, out: Path) -> tuple[str, str, float]:
        mode = "overwrite" if out.exists() and any(out.iterdir()) else "new"
        logger.info("step %s: tunelab %s", out.name, step.command)
        return run_planned(step.command, config, out, mode)

    def run_many(items: list[tuple[Any, Path, dict]]) -> list[tuple[str, str, float]]:
        planned = [PlannedRun(dataclasses.replace(step, name=out.name), config,
                              "overwrite" if out.exists() and any(out.iterdir()) else "new", env)
                   for config, out, env in items]
        if executor == "ray":
            return _run_on_ray(planned, root, ray_address)
        return _run_in_processes(planned, root, jobs)

    parallel = jobs if executor != "ray" else max(jobs, 2)
    try:
        record = run_search(step.name, step.search, root, TrialRun(
            config_for, run, lambda config, out: _complete_with(out, step.command, config), run_many, parallel),
            identity=_search_identity(step, config_for({}, ["validation"])))
    except TunelabError as exc:
        return {"step": step.name, "error": str(exc)}, [_outcome(step, "failed", str(exc))]
    found = []
    for trial in record["trials"]:
        if trial.get("run"):
            outcome = _outcome(step, {"complete": "completed"}.get(trial["state"], trial["state"]), trial["note"],
                               trial.get("seconds") or 0.0)
            outcome.name, outcome.group, outcome.trial = trial["run"], f"{step.group}-trials", True
            found.append(outcome)
    best = record.get("best")
    if best is not None:
        status = best.get("status", "failed")
        outcome = _outcome(step, status if status in ("completed", "reused") else "failed",
                           f"best of {counted(len(record['trials']), 'trial')}: trial {best['trial']}, chosen on "
                           f"{best['chosen_on']}" if status in ("completed", "reused") else status)
        outcome.name = best["run"]
        found.append(outcome)
    else:
        found.append(_outcome(step, "failed", "no trial completed"))
    return record, found


def _search_identity(step: Step, base_config) -> dict[str, Any]:
    """What a search searches: the step's settings, the data's and the model's content,
    the space, metric, sampler, pruner and seed (not the trial budget: raising it
    continues the same search)."""
    spec = {k: v for k, v in step.search.record().items() if k != "trials"}
    dataset = resolve_dataset(base_config.data.dataset, getattr(base_config.data, "dataset_config", None))
    model = getattr(base_config, "model", None)
    return {"settings": dump_yaml(base_config, step.command), "data": dataset.fingerprint(),
            "model": resolve_model(model).fingerprint() if model else None, **spec}


def _outcome(step: Step, status: str, detail: str = "", seconds: float = 0.0) -> StepOutcome:
    return StepOutcome(step.name, step.command, status, detail, seconds, step.group or step.name, step.params)


def _failure_text(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, TunelabError):
        message = f"{type(exc).__name__}: {message}"
        logger.debug("%s", traceback.format_exc())
    return message


def run_planned(command: str, config, out: Path, mode: str) -> tuple[str, str, float]:
    """One run, in this process: (status, detail, seconds)."""
    start = time.perf_counter()
    try:
        run_task(get_task(command), config, out=out, resume=mode == "resume", overwrite=mode == "overwrite",
                 argv=[command, "--config", str(out / "config.yaml")])
        return "completed", "", time.perf_counter() - start
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failed run is reported; the study goes on
        return "failed", _failure_text(exc), time.perf_counter() - start


def _run_here(planned: PlannedRun, root: Path) -> tuple[str, str, float]:
    logger.info("step %s: tunelab %s", planned.step.name, planned.step.command)
    return run_planned(planned.step.command, planned.config, root / planned.step.name, planned.mode)


def _run_in_processes(todo: list[PlannedRun], root: Path, jobs: int) -> list[tuple[str, str, float]]:
    """``jobs`` runs at a time, each a ``python -m tunelab`` process of its own: the CPU
    threads shared out between them, or one GPU each where there are GPUs."""
    import os
    import queue
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        gpus = 0
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    configs = root / ".configs"
    configs.mkdir(exist_ok=True)

    def run(planned: PlannedRun) -> tuple[str, str, float]:
        slot = slots.get()
        start = time.perf_counter()
        try:
            path = configs / f"{planned.step.name}.yaml"
            atomic_write_bytes(path, dump_yaml(planned.config, planned.step.command).encode("utf-8"))
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                       TOKENIZERS_PARALLELISM="false", **planned.env)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            command = [sys.executable, "-m", "tunelab", "-q", planned.step.command, "--config", str(path),
                       "--out", str(root / planned.step.name)]
            command += {"resume": ["--resume"], "overwrite": ["--overwrite"]}.get(planned.mode, [])
            logger.info("step %s: tunelab %s (job %d)", planned.step.name, planned.step.command, slot + 1)
            done = subprocess.run(command, env=env, capture_output=True, text=True, errors="replace")
            if done.returncode == 0:
                return "completed", "", time.perf_counter() - start
            return "failed", failure_from_process(done.returncode, done.stderr), time.perf_counter() - start
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run, todo))


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def last_log_line(text: str) -> str:
    """The last line of a log that says something: terminal escapes, control characters
    and progress-bar redraws stripped."""
    for line in reversed(re.split(r"[\r\n]+", text or "")):
        line = _CONTROL.sub("", _ESCAPES.sub("", line)).strip()
        if not line or re.search(r"\d+%\|", line) or re.fullmatch(r"[\s|#=>.-]*", line):
            continue
        return line[:300]
    return ""


def failure_from_process(returncode: int, stderr: str) -> str:
    """Why a job's process failed: tunelab's own one-line error where it printed one,
    else the exit status (or the signal that killed it) and the last log line."""
    import signal

    lines = [last_log_line(line) for line in (stderr or "").splitlines() if line.startswith("tunelab:")]
    if lines and returncode > 0:
        return lines[-1].split(": ", 1)[-1].removeprefix("error: ")
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        status = f"killed by signal {-returncode} ({name})"
    else:
        status = f"exit status {returncode}"
    last = last_log_line(stderr)
    return status + (f"; last log line: {last}" if last else "")


def _remote_run(command: str, config_yaml: str, out: str, mode: str,
                env: dict[str, str] | None = None) -> tuple[str, str, float]:
    """A Ray task: rebuild the typed config from its YAML and run it on the worker (with
    a search trial's environment while it runs)."""
    import os

    values = load_yaml(config_yaml)
    values.pop("command", None)
    config = from_dict(get_task(command).config_class, values)
    before = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        return run_planned(command, config, Path(out), mode)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_on_ray(todo: list[PlannedRun], root: Path, address: str | None) -> list[tuple[str, str, float]]:
    """Each run a Ray task (one GPU each where the cluster has GPUs); without an address a
    local Ray instance is started here and shut down when done. Run directories must lie
    on a path every worker reaches."""
    try:
        import ray
    except ImportError:
        raise TunelabError("--executor ray needs Ray: pip install 'tunelab[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        # No automatic retry: a retried run would find its own half-written directory and fail
        # with a misleading message; the cause is reported and a rerun of the study resumes it.
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=0)(_remote_run)
        futures = [remote.remote(p.step.command, dump_yaml(p.config, p.step.command), str(root.resolve() /
                                 p.step.name), p.mode, p.env) for p in todo]
        results = []
        for future in futures:
            try:
                results.append(tuple(ray.get(future)))
            except Exception as exc:  # the worker died (killed, out of memory) or the task raised
                cause = last_log_line(str(exc).split("\n", 1)[0]) or type(exc).__name__
                results.append(("failed", f"the Ray task failed ({type(exc).__name__}): {cause}", 0.0))
        return results
    finally:
        if started:
            ray.shutdown()


def _write_state(root: Path, study: Study, outcomes: list[StepOutcome]) -> None:
    state = {"run_id": marker_run_id(root), "name": study.name, "variables": study.variables,
             "settings": study.settings, "overrides": study.overrides, "baseline": study.baseline,
             "published": study.published,
             "steps": [dataclasses.asdict(o) for o in outcomes]}
    atomic_write_bytes(root / "study.json", (json.dumps(state, indent=2, default=str) + "\n").encode())
