"""Hyperparameter search for one study step, so that methods are compared at their best.

A step's ``search:`` block names a space of config keys, a trial budget, the validation
metric to optimise, a sampler (Optuna's TPE, random, or a grid) and a pruner (median or
ASHA, fed by the validation metrics the run reports while it trains: see
tunelab.core.trial). Every trial is a run directory, ``<step>-trial<N>``, scored on
validation only; the best trial's configuration (chosen on validation) runs once more as
``<step>-best``, the only run of the search that scores the test split. Optuna's state
lives in the study directory (``<step>.search.journal``), so a killed search continues
where it stopped; ``<step>.search.json`` holds what the report shows.

Optuna is used as a library (ask and tell) rather than through ``study.optimize``: each
trial is a tunelab run with its own directory, resume rules and failure handling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError
from tunelab.core.errors import TunelabError
from tunelab.core.files import load_yaml
from tunelab.core.trial import ENVIRONMENT, PRUNED_AT, reporting_to, trial_reporter
from tunelab.problems import PROBLEMS
from tunelab.study.journal import is_interrupted, load_optuna, study_to_continue, trial_sampler

logger = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "asha", "none")
SEARCH_KEYS = ("space", "trials", "metric", "sampler", "pruner", "seed")
KINDS = ("loguniform", "uniform", "int")
# Settings that decide which examples are scored: searching them would let a trial be
# scored on test (or another split) while labelled validation.
SPLIT_SETTINGS = ("data.dataset", "data.dataset_config", "data.train_split", "data.validation_split",
                  "data.test_split", "data.splits", "data.split_seed", "data.max_eval_samples",
                  "data.validation_shots")


@dataclasses.dataclass(frozen=True)
class Dimension:
    key: str  # a dotted config key
    kind: str  # loguniform | uniform | int | choice
    low: float | None = None
    high: float | None = None
    values: tuple = ()


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    space: tuple[Dimension, ...]
    trials: int
    metric: str  # a validation metric: accuracy, f1_macro, spearman, ...
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0

    def record(self) -> dict:
        return {"space": {d.key: list(d.values) if d.kind == "choice" else {d.kind: [d.low, d.high]}
                          for d in self.space},
                "trials": self.trials, "metric": f"validation.{self.metric}", "sampler": self.sampler,
                "pruner": self.pruner, "seed": self.seed}


def known_metrics() -> set[str]:
    names: set[str] = set()
    for problem in PROBLEMS.values():
        names |= {*problem.selection_metrics, problem.headline, problem.checkpoint_metric}
    return names - {"loss"}


def parse_search(raw: Any, has_key: Callable[[str], bool], where: str) -> SearchSpec:
    """A ``search:`` block checked in full before any trial runs: every bad value stops
    with one line that names it."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: search needs a mapping of {', '.join(SEARCH_KEYS)}")
    unknown = sorted(set(raw) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown search key '{unknown[0]}' (known: {', '.join(SEARCH_KEYS)})")
    space = raw.get("space")
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{where}: search.space needs at least one key to search")
    dimensions = []
    for key, spec in space.items():
        key = str(key)
        if not has_key(key):
            raise ConfigError(f"{where}: search.space key '{key}' is not a setting of this step's command")
        if key in SPLIT_SETTINGS:
            raise ConfigError(f"{where}: search.space key '{key}' decides which examples are scored; trials are "
                              "chosen on the validation split as the step defines it (set it outside the search)")
        dimensions.append(_dimension(key, spec, where))
    trials = raw.get("trials", 20)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{where}: search.trials must be a whole number of at least 1, got {trials!r}")
    metric = str(raw.get("metric", "validation.accuracy"))
    split, _, name = metric.rpartition(".")
    if split != "validation":
        raise ConfigError(f"{where}: search.metric {metric!r}: trials are chosen on validation only "
                          "(validation.METRIC)")
    if name not in known_metrics():
        raise ConfigError(f"{where}: search.metric {metric!r}: no split has the metric '{name}'; choose one of "
                          f"{', '.join(sorted(known_metrics()))}")
    sampler, pruner = str(raw.get("sampler", "tpe")), str(raw.get("pruner", "median"))
    if sampler not in SAMPLERS:
        raise ConfigError(f"{where}: search.sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"{where}: search.pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if sampler == "grid" and any(d.kind != "choice" for d in dimensions):
        raise ConfigError(f"{where}: search.sampler grid needs a list of values for every key of the space")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}: search.seed must be a whole number")
    return SearchSpec(tuple(dimensions), trials, name, sampler, pruner, seed)


def _dimension(key: str, spec: Any, where: str) -> Dimension:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: search.space.{key} is an empty list of values")
        return Dimension(key, "choice", values=tuple(spec))
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: search.space.{key}: give a list of values or one of "
                          f"{', '.join(f'{{{k}: [low, high]}}' for k in KINDS)}")
    kind, bounds = next(iter(spec.items()))
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds):
        raise ConfigError(f"{where}: search.space.{key}: {kind} needs [low, high], two finite numbers")
    low, high = float(bounds[0]), float(bounds[1])
    if not low < high:
        raise ConfigError(f"{where}: search.space.{key}: the range [{bounds[0]}, {bounds[1]}] is empty "
                          "(low must be below high)")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: search.space.{key}: loguniform needs bounds above 0, got {bounds[0]}")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}: search.space.{key}: int needs whole-number bounds")
    return Dimension(key, kind, low, high)


def parse_space_flag(text: str) -> tuple[str, Any]:
    """``train.lr=loguniform:1e-5,1e-2``, ``lora.r=4,8,16``: a --space flag as a space entry."""
    key, sep, spec = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--space {text!r}: give KEY=KIND:LOW,HIGH or KEY=V1,V2,...")

    kind, colon, rest = spec.partition(":")
    if colon and kind in KINDS:
        return key.strip(), {kind: [load_yaml(v) for v in rest.split(",")]}
    return key.strip(), [load_yaml(v) for v in spec.split(",") if v.strip()]


# --------------------------------------------------------------------------- running a search


def _suggest(trial, dimension: Dimension):
    if dimension.kind == "choice":
        return trial.suggest_categorical(dimension.key, list(dimension.values))
    if dimension.kind == "int":
        return trial.suggest_int(dimension.key, int(dimension.low), int(dimension.high))
    return trial.suggest_float(dimension.key, dimension.low, dimension.high, log=dimension.kind == "loguniform")


@dataclasses.dataclass
class TrialRun:
    """What the search needs from the study: how to make a step's config with some keys
    set, how to run one run here (status, detail, seconds), and how to run several at
    once elsewhere (processes, Ray tasks), each with its own environment."""

    config_for: Callable[[dict[str, Any], list[str] | None], Any]  # (params, splits or None) -> config
    run: Callable[[Any, Path], tuple[str, str, float]]
    complete: Callable[[Any, Path], bool]  # a finished run of this config is already there
    run_many: Callable[[list[tuple[Any, Path, dict]]], list[tuple[str, str, float]]] | None = None
    parallel: int = 1  # trials at a time (through run_many when above 1)


def run_search(step_name: str, spec: SearchSpec, root: Path, runner: TrialRun,
               identity: dict[str, Any] | None = None) -> dict:
    """Run the trials still missing (a killed search continues), then the best trial
    once more on every split; returns the record written to ``<step>.search.json``.
    ``identity`` is what is searched (settings, data and model fingerprints, the space,
    metric, sampler and seed), recorded in the journal: a rerun whose search differs
    starts a new search instead of reusing trials chosen on other data or settings."""
    optuna = load_optuna()
    from optuna.trial import TrialState

    journal = root / f"{step_name}.search.journal"
    study, budget = study_to_continue(optuna, journal, root, step_name, spec, identity)

    def finished() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                         TrialState.FAIL))
                   if not is_interrupted(t))

    while finished() < budget:
        batch = []
        for _ in range(min(max(runner.parallel, 1), budget - finished())):
            # The index among trials that count (an interrupted one is rerun under its own
            # index): the same sequence of settings whether or not the search was killed.
            index = sum(1 for t in study.get_trials(deepcopy=False)
                        if t.state != TrialState.WAITING and not is_interrupted(t))
            study.sampler = trial_sampler(optuna, spec, index)
            trial = study.ask()
            params = {d.key: _suggest(trial, d) for d in spec.space}
            name = f"{step_name}-trial{trial.number}"
            trial.set_user_attr("run", name)
            logger.info("search %s: trial %d: %s", step_name, trial.number,
                        ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()))
            try:
                batch.append((trial, runner.config_for(params, ["validation"])))
            except TunelabError as exc:
                trial.set_user_attr("note", f"failed: {exc}")
                study.tell(trial, state=TrialState.FAIL)
        if not batch:
            continue
        if runner.parallel > 1 and runner.run_many is not None:
            # Optuna names a trial in its storage by its id (no public accessor in 4.x/5.x).
            environments = [{ENVIRONMENT: json.dumps({"journal": str(journal.resolve()), "study": step_name,
                                                      "trial": trial._trial_id, "metric": spec.metric,
                                                      "pruner": spec.pruner})} for trial, _ in batch]
            results = runner.run_many([(config, root / trial.user_attrs["run"], env)
                                       for (trial, config), env in zip(batch, environments)])
        else:
            results = []
            for trial, config in batch:
                with reporting_to(trial_reporter(optuna, study, trial, spec.metric)):
                    results.append(runner.run(config, root / trial.user_attrs["run"]))
        for (trial, _), (status, detail, seconds) in zip(batch, results):
            _tell(study, trial, spec, root, status, detail, seconds)
    record = _record(study, spec, step_name)
    best = record.get("best")
    if best is not None:
        config = runner.config_for(best["params"], None)
        target = root / f"{step_name}-best"
        if runner.complete(config, target):
            record["best"]["status"] = "reused"
        else:
            status, detail, _ = runner.run(config, target)
            record["best"]["status"] = status if status == "completed" else f"failed: {detail}"
        record["best"]["run"] = target.name
    (root / f"{step_name}.search.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def _tell(study, trial, spec: SearchSpec, root: Path, status: str, detail: str, seconds: float) -> None:
    """The trial's end: complete with its validation value, pruned (the run stopped where
    the pruner said and kept what it wrote), or failed, with a note that says which."""
    from optuna.trial import TrialState

    trial.set_user_attr("seconds", round(seconds, 2))
    stored = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    pruned = stored.user_attrs.get(PRUNED_AT)  # left by the run's reporter, here or in another process
    value = _validation_value(root / trial.user_attrs["run"], spec.metric) if status == "completed" else None
    if status != "completed":
        trial.set_user_attr("note", f"failed: {detail}")
        study.tell(trial, state=TrialState.FAIL)
    elif pruned:
        trial.set_user_attr("note", f"pruned at evaluation {pruned['step']}: validation {spec.metric} "
                                    f"{pruned['value']:.4f} fell behind the {spec.pruner} rule; the run stopped "
                                    "training there and kept what it wrote")
        study.tell(trial, state=TrialState.PRUNED)
    elif value is None:
        trial.set_user_attr("note", f"failed: the run recorded no validation {spec.metric}")
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)


def _validation_value(run_dir: Path, metric: str) -> float | None:
    try:
        value = json.loads((run_dir / "metrics.json").read_text())["splits"]["validation"].get(metric)
    except (OSError, ValueError, KeyError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _record(study, spec: SearchSpec, step_name: str) -> dict:
    """What the report shows: every trial, the counts, the importances, the best."""
    optuna = load_optuna()
    from optuna.trial import TrialState

    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({"number": t.number, "run": t.user_attrs.get("run"), "state": t.state.name.lower(),
                       "value": t.value, "params": t.params, "note": t.user_attrs.get("note", ""),
                       "seconds": t.user_attrs.get("seconds"),
                       "curve": {str(k): v for k, v in sorted(t.intermediate_values.items())}})
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    counts = {state: sum(1 for t in trials if t["state"] == state) for state in ("complete", "pruned", "fail")}
    counts["interrupted"] = sum(1 for t in trials if "interrupted" in t["note"])
    importances = None
    if len(complete) >= 2 and len(spec.space) > 1:
        try:
            importances = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        except (RuntimeError, ValueError, ZeroDivisionError):
            importances = None
    best = None
    if complete:
        chosen = study.best_trial
        best = {"trial": chosen.number, "params": chosen.params, "value": chosen.value,
                "chosen_on": f"validation.{spec.metric}"}
    return {"step": step_name, "spec": spec.record(), "trials": trials, "counts": counts,
            "importances": importances, "best": best}
