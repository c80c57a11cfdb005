"""Running a study (``tunelab run``): the study directory taken for this study alone,
finished runs with the same inputs kept, killed training resumed, the rest run here,
in processes or on Ray (tunelab.study.executors), searched steps through
tunelab.study.search, then the study's state and its comparison report. What a study
file says is read in tunelab.study.spec."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, dump_yaml
from tunelab.core.errors import TunelabError, counted
from tunelab.core.registry import get_task
from tunelab.core.safety import (
    MARKER,
    RUN_RECORDS,
    atomic_write_bytes,
    is_run_directory,
    lock_run_directory,
    marker_run_id,
)
from tunelab.core.typed import set_dotted
from tunelab.data.sources import resolve_dataset
from tunelab.models.resolve import resolve_model
from tunelab.report.document import write_report
from tunelab.study.executors import EXECUTORS, PlannedRun, run_here, run_in_processes, run_on_ray, run_planned
from tunelab.study.search import TrialRun, run_search
from tunelab.study.spec import Step, StepOutcome, Study, default_study_path, resolve_step
from tunelab.tasks.lifecycle import read_inputs_record

logger = logging.getLogger(__name__)


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
        results = run_on_ray(todo, root, ray_address)
    elif jobs > 1 and len(todo) > 1:
        results = run_in_processes(todo, root, jobs)
    else:
        results = [run_here(planned, root) for planned in todo]
    for planned, (status, detail, seconds) in zip(todo, results):
        outcomes[planned.step.name] = [_outcome(planned.step, status, detail, seconds)]
        if status == "failed":
            logger.error("step %s failed: %s", planned.step.name, detail)
    ordered = [o for step in study.steps for o in outcomes[step.name]]
    _write_state(root, study, ordered)

    # A search's trials scored validation only: the report compares its best run.
    runs = [root / o.name for o in ordered if o.status in ("completed", "reused") and not o.trial]
    write_report(runs, root / "report.md", title=f"Study {study.name}", baseline=study.baseline, outcomes=ordered,
                 published=study.published, searches=searches, target=study.target, compare=study.compare)
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
            return run_on_ray(planned, root, ray_address)
        return run_in_processes(planned, root, jobs)

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


def _write_state(root: Path, study: Study, outcomes: list[StepOutcome]) -> None:
    state = {"run_id": marker_run_id(root), "name": study.name, "variables": study.variables,
             "settings": study.settings, "overrides": study.overrides, "baseline": study.baseline,
             "published": study.published, "target": study.target, "compare": study.compare,
             "steps": [dataclasses.asdict(o) for o in outcomes]}
    atomic_write_bytes(root / "study.json", (json.dumps(state, indent=2, default=str) + "\n").encode())
