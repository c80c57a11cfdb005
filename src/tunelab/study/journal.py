"""A search's Optuna journal: opened (a line cut short by a kill dropped and said),
replaced when the search it records differs from the one asked for, and the sampler of
each trial seeded by the search's seed and the trial's index, so a resumed search asks
for what an uninterrupted one would."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any

from tunelab.core.errors import TunelabError
from tunelab.core.safety import atomic_write_bytes, check_replaceable, is_run_directory
from tunelab.core.trial import make_pruner
from tunelab.problems.metrics import LOWER_IS_BETTER

logger = logging.getLogger(__name__)


def load_optuna():
    try:
        import optuna
    except ImportError:
        raise TunelabError("a search needs Optuna: pip install optuna (from a clone: pip install -e \".[search]\")") \
            from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def trial_sampler(optuna, spec, index: int = 0):
    """The sampler for the search's ``index``-th trial, seeded from the search's seed and
    that index: a search resumed after a kill asks for the same settings an uninterrupted
    one would (a sampler seeded once would start its sequence again at the resume).
    Grid: every combination is enqueued (see run_search); Optuna's GridSampler stops the
    study from inside tell(), which the ask-and-tell loop here cannot take."""
    seed = (spec.seed * 1_000_003 + index) % 2**32
    if spec.sampler in ("random", "grid"):
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def is_interrupted(trial) -> bool:
    return "interrupted" in trial.user_attrs.get("note", "")


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def recover_journal(journal: Path) -> None:
    """Keep a damaged journal's complete records: a line cut short by a kill (or garbage
    after the last complete record) is dropped, said in one line naming the file, and
    the file rewritten with what precedes it, so the search can continue."""
    if not journal.is_file():
        return
    data = journal.read_bytes()
    lines = data.split(b"\n")
    kept = 0
    for line in lines:
        if not line.strip() or not _is_record(line):
            break
        kept += 1
    complete = b"".join(line + b"\n" for line in lines[:kept])
    if complete == data:
        return
    if any(_is_record(line) for line in lines[kept + 1:]):  # damage in the middle: records after it
        raise TunelabError(f"the search journal {journal} is damaged at line {kept + 1} with complete records "
                           "after it; move it away to start the search anew")
    dropped = len([line for line in lines[kept:] if line.strip()])
    logger.warning("search journal %s: %d damaged or incomplete line%s after record %d dropped; the search "
                   "continues from the %d complete record%s", journal, dropped, "s" if dropped != 1 else "", kept,
                   kept, "s" if kept != 1 else "")
    atomic_write_bytes(journal, complete, own_folder=False)


def open_study(optuna, journal: Path, step_name: str, spec):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal.parent.mkdir(parents=True, exist_ok=True)
    recover_journal(journal)
    direction = "minimize" if spec.metric in LOWER_IS_BETTER else "maximize"
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        return optuna.create_study(study_name=step_name, storage=storage, load_if_exists=True, direction=direction,
                                   sampler=trial_sampler(optuna, spec), pruner=make_pruner(optuna, spec.pruner))
    except Exception as exc:  # a journal whose complete records still do not replay
        raise TunelabError(f"the search journal {journal} is damaged ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); move it away to start the "
                           "search anew") from None


def start_anew(journal: Path, root: Path, step_name: str, why: str) -> None:
    """A rerun whose search differs from the journal's: the old journal and trial runs go
    (only trial folders tunelab provably made; anything else stops the study in one line)."""
    trials = [p for p in root.glob(f"{step_name}-trial*") if re.fullmatch(re.escape(step_name) + r"-trial\d+", p.name)]
    for folder in trials:
        if folder.is_symlink() or not folder.is_dir() or not is_run_directory(folder):
            raise TunelabError(f"{folder} is in the way of a new search of {step_name} and tunelab did not make it; "
                               "move it away")
        check_replaceable(folder, "inputs.json")
    logger.info("search %s: %s; its old trials are replaced by a new search", step_name, why)
    for folder in trials:
        shutil.rmtree(folder)
    for leftover in (journal, journal.with_name(journal.name + ".lock")):
        if leftover.is_symlink() or leftover.is_file():
            leftover.unlink()


def study_to_continue(optuna, journal: Path, root: Path, step_name: str, spec, identity: dict[str, Any] | None):
    """The search's Optuna study, ready for its next trial, and its trial budget: the
    journal's (a new one where the search it records differs from this one), a grid's
    combinations enqueued, a killed search's running trial marked interrupted and its
    settings enqueued to run again."""
    from optuna.trial import TrialState

    identity = json.loads(json.dumps(identity if identity is not None else spec.record(), default=str))
    study = open_study(optuna, journal, step_name, spec)
    if study.trials and study.user_attrs.get("searched") != identity:
        recorded = study.user_attrs.get("searched")
        why = "the journal records no description of its search" if recorded is None else \
            "its " + ", ".join(k for k in identity if identity.get(k) != (recorded or {}).get(k)) + \
            " changed since the journal was written"
        del study
        start_anew(journal, root, step_name, why)
        study = open_study(optuna, journal, step_name, spec)
    if not study.trials:
        study.set_user_attr("searched", identity)
    if spec.sampler == "grid" and not study.trials:
        combinations = list(itertools.product(*(d.values for d in spec.space)))
        if spec.trials > len(combinations):
            logger.info("search %s: the grid has %d combinations; %d trials run", step_name, len(combinations),
                        len(combinations))
        for values in combinations[:spec.trials]:
            study.enqueue_trial(dict(zip((d.key for d in spec.space), values)))
    budget = spec.trials if spec.sampler != "grid" else min(spec.trials, math.prod(len(d.values) for d in spec.space))
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # a killed search's trial
        handle = optuna.trial.Trial(study, stale._trial_id)
        handle.set_user_attr("note", "interrupted: the search was stopped during this trial; it runs again")
        study.tell(handle, state=TrialState.FAIL)
        study.enqueue_trial(stale.params)  # tried again, from the start
    return study, budget
