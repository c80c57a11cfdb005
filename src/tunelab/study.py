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
import json
import logging
import re
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from tunelab.config import ConfigError, dump_yaml, from_dict, load_yaml_source, merge_settings, set_dotted
from tunelab.errors import TunelabError
from tunelab.lifecycle import run_task
from tunelab.registry import all_tasks, get_task

logger = logging.getLogger(__name__)

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Step names name run directories inside the study directory: plain names, never paths.
STEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclasses.dataclass
class Step:
    name: str
    command: str
    settings: dict[str, Any]  # the step's own keys in the study file
    requires: list[str]
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set STEP.key=value


@dataclasses.dataclass
class Study:
    name: str
    steps: list[Step]
    variables: dict[str, Any]
    settings: dict[str, Any]  # shared by every step whose command has the key
    baseline: str | None = None  # the step other runs are compared against in the report
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set key=value for every step


@dataclasses.dataclass
class StepOutcome:
    name: str
    command: str
    status: str  # completed | reused | skipped | failed
    detail: str = ""
    seconds: float = 0.0


def load_study(source: str, assignments: dict[str, Any] | None = None) -> Study:
    """Read a study YAML or preset and apply ``--set`` assignments: a variable name sets
    the variable, ``STEP.key`` one step's setting, any other key the shared settings."""
    values, origin = load_yaml_source(source)
    if values.get("command", "study") != "study" or "steps" not in values:
        raise ConfigError(f"{origin} is not a study (it needs a list of steps); "
                          f"for a single command use tunelab {values.get('command', 'COMMAND')} --config")
    unknown = set(values) - {"command", "name", "variables", "settings", "steps", "baseline"}
    if unknown:
        raise ConfigError(f"{origin}: unknown study key '{sorted(unknown)[0]}' "
                          "(known: name, variables, settings, steps, baseline)")
    variables = dict(values.get("variables") or {})
    settings = dict(values.get("settings") or {})
    commands = all_tasks()
    steps = []
    for index, raw in enumerate(values["steps"] or []):
        if not isinstance(raw, dict) or "command" not in raw:
            raise ConfigError(f"{origin}: step {index + 1} needs a 'command' ({', '.join(commands)})")
        raw = dict(raw)
        command = raw.pop("command")
        if command not in commands:
            raise ConfigError(f"{origin}: step {index + 1} has unknown command '{command}'; "
                              f"choose from {', '.join(commands)}")
        name = str(raw.pop("name", f"{index + 1:02d}-{command}"))
        if not STEP_NAME.fullmatch(name) or name in (".", ".."):
            raise ConfigError(f"{origin}: step name {name!r} is not a plain name; use letters, digits, '.', '_' "
                              "and '-' (it names the step's run directory inside the study directory)")
        requires = list(raw.pop("requires", []) or [])
        steps.append(Step(name, command, raw, requires))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: step names must be unique (they name run directories)")
    overrides: dict[str, Any] = {}
    for key, value in (assignments or {}).items():
        head = key.split(".", 1)[0]
        if key in variables:
            variables[key] = value
        elif head in names and "." in key:
            set_dotted(next(s for s in steps if s.name == head).overrides, key.split(".", 1)[1], value)
        elif _is_config_key(key):
            set_dotted(overrides, key, value)
        else:
            known = ", ".join(variables) or "none"
            raise ConfigError(f"--set {key}=...: '{key}' is not a variable of this study (variables: {known}), "
                              f"a step (steps: {', '.join(names)}), or a setting any command has")
    return Study(str(values.get("name") or Path(source).stem), steps, variables, settings, values.get("baseline"),
                 overrides)


def _is_config_key(dotted: str) -> bool:
    """Whether some command's config has the (dotted) key."""
    parts = dotted.split(".")
    for task in all_tasks().values():
        node = task.config_class
        for part in parts:
            fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
            if part not in fields:
                break
            field = fields[part]
            node = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
        else:
            return True
    return False


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
    return Path("runs") / f"study-{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _recorded_request(run_dir: Path) -> str | None:
    from tunelab.lifecycle import read_inputs_record

    recorded = read_inputs_record(run_dir)
    return recorded.get("requested_config") if recorded else None


def _complete_with(run_dir: Path, command: str, config) -> bool:
    """A finished run made from the same requested configuration and the same files: the
    model's and the data's fingerprints must still match what the run recorded."""
    from tunelab.data.sources import resolve_dataset
    from tunelab.lifecycle import read_inputs_record
    from tunelab.models import resolve_model

    if not (run_dir / "metrics.json").is_file() or _recorded_request(run_dir) != dump_yaml(config, command):
        return False
    recorded = read_inputs_record(run_dir)
    try:
        model_unchanged = recorded["model"] is None or \
            resolve_model(config.model).fingerprint() == recorded["model"]["fingerprint"]
        dataset = resolve_dataset(config.data.dataset, getattr(config.data, "dataset_config", None))
        return model_unchanged and dataset.fingerprint() == recorded["dataset"]["fingerprint"]
    except TunelabError:
        return False


def run_study(study: Study, out: str | Path | None = None) -> tuple[Path, list[StepOutcome]]:
    """Run every step in order; a failure is recorded and the next step runs.
    Returns (study directory, outcomes)."""
    root = Path(out) if out else default_study_path(study.name)
    root.mkdir(parents=True, exist_ok=True)
    outcomes: list[StepOutcome] = []
    for step in study.steps:
        run_dir = root / step.name
        missing = [v for v in step.requires if study.variables.get(v) in (None, "")]
        if missing:
            reason = f"needs {', '.join(missing)} (set it with --set {missing[0]}=...)"
            outcomes.append(StepOutcome(step.name, step.command, "skipped", reason))
            logger.info("step %s skipped: %s", step.name, reason)
            continue
        start = time.perf_counter()
        try:
            config = resolve_step(study, step)
            if _complete_with(run_dir, step.command, config):
                outcomes.append(StepOutcome(step.name, step.command, "reused",
                                            "complete with the same configuration"))
                logger.info("step %s: complete already, kept", step.name)
                continue
            task = get_task(step.command)
            logger.info("step %s: tunelab %s", step.name, step.command)
            kwargs: dict[str, Any] = {"out": run_dir, "argv": [step.command, "--config", str(run_dir / "config.yaml")]}
            resumable = (task.resumable and (run_dir / "config.yaml").is_file()
                         and not (run_dir / "metrics.json").exists() and (run_dir / "checkpoints").is_dir())
            if resumable and _recorded_request(run_dir) == dump_yaml(config, step.command):
                kwargs["resume"] = True
            else:
                kwargs["overwrite"] = run_dir.exists() and any(run_dir.iterdir())
            run_task(task, config, **kwargs)
            outcomes.append(StepOutcome(step.name, step.command, "completed", "",
                                        time.perf_counter() - start))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed step is reported; the study goes on
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, TunelabError):
                message = f"{type(exc).__name__}: {message}"
                logger.debug("%s", traceback.format_exc())
            outcomes.append(StepOutcome(step.name, step.command, "failed", message, time.perf_counter() - start))
            logger.error("step %s failed: %s", step.name, message)
    _write_state(root, study, outcomes)
    from tunelab.report import write_report

    runs = [root / o.name for o in outcomes if o.status in ("completed", "reused")]
    baseline = study.baseline if study.baseline in [o.name for o in outcomes] else None
    write_report(runs, root / "report.md", title=f"Study {study.name}", baseline=baseline, outcomes=outcomes)
    return root, outcomes


def _write_state(root: Path, study: Study, outcomes: list[StepOutcome]) -> None:
    from tunelab.runs import atomic_write_bytes

    state = {"name": study.name, "variables": study.variables, "settings": study.settings,
             "overrides": study.overrides,
             "steps": [dataclasses.asdict(o) for o in outcomes]}
    atomic_write_bytes(root / "study.json", (json.dumps(state, indent=2, default=str) + "\n").encode())
