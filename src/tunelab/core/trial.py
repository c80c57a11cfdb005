"""Intermediate results of a run for a hyperparameter search, without the run knowing
about the search: training code reports its validation metrics here (fine-tuning at
every evaluation, a probe at each value of its grid); when a search is driving the run,
its reporter receives them and may answer that the run should stop (pruned). With no
search, reporting costs nothing and never stops a run.

A search that runs trials in this process installs its reporter with ``reporting_to``;
one that runs them in other processes (``--jobs``, Ray) names the trial in the
environment variable TUNELAB_TRIAL, and the run reports straight to the search's
Optuna journal."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping

ENVIRONMENT = "TUNELAB_TRIAL"  # JSON: journal, study, trial (id), metric, pruner
PRUNED_AT = "pruned_at"  # the trial's user attribute a pruned run leaves: {step, value}

# The reporter of the search driving this process's run: (step, metrics, can_stop) -> stop?
Reporter = Callable[[int, Mapping[str, float], bool], bool]
_REPORTERS: list[Reporter] = []
_FROM_ENVIRONMENT: dict[str, Reporter | None] = {}


@contextlib.contextmanager
def reporting_to(reporter: Reporter) -> Iterator[None]:
    _REPORTERS.append(reporter)
    try:
        yield
    finally:
        _REPORTERS.remove(reporter)


def report(step: int, metrics: Mapping[str, float], can_stop: bool = True) -> bool:
    """Validation metrics (names without a split prefix) at ``step`` (fine-tuning: the
    evaluation's number, 1, 2, ...; a probe: the grid position); True when the search says
    the run should stop now. ``can_stop`` False: the run goes on whatever the search says
    (a probe's grid, a training's last evaluation), so it is never called pruned."""
    reporters = list(_REPORTERS)
    remote = _environment_reporter()
    if remote is not None:
        reporters.append(remote)
    return any([reporter(step, metrics, can_stop) for reporter in reporters])


def make_pruner(optuna, name: str):
    """median: a trial is compared with the median of the others from its second
    evaluation on (steps count from 1), once three trials have finished; asha: Optuna's
    successive halving; none: never."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def trial_reporter(optuna, study, trial, metric: str) -> Reporter:
    """Reports ``metric`` to an Optuna trial; on pruning, leaves where and at what value
    in the trial's user attribute PRUNED_AT and answers stop."""
    import math

    def reporter(step: int, metrics: Mapping[str, float], can_stop: bool = True) -> bool:
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            return False
        trial.report(float(value), step)
        if can_stop and trial.should_prune():
            trial.set_user_attr(PRUNED_AT, {"step": int(step), "value": float(value)})
            return True
        return False

    return reporter


def _environment_reporter():
    spec = os.environ.get(ENVIRONMENT)
    if not spec:
        return None
    if spec not in _FROM_ENVIRONMENT:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        values = json.loads(spec)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=values["study"],
                                  storage=JournalStorage(JournalFileBackend(values["journal"])),
                                  pruner=make_pruner(optuna, values["pruner"]))
        trial = optuna.trial.Trial(study, values["trial"])
        _FROM_ENVIRONMENT[spec] = trial_reporter(optuna, study, trial, values["metric"])
    return _FROM_ENVIRONMENT[spec]
