"""Problem kinds: single-label, multi-label, regression and ordinal, each one module.
Everything that differs between them lives here; elsewhere code asks
``get_problem(name)``. A new kind is one module and one line in ``register_problem``'s
list below: the command line's --problem choices, detection, the headline of a split's
metrics and which tasks take it all follow from the registry."""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.core.config import PROBLEM_NAMES
from tunelab.core.errors import ConfigError, DataError, counted
from tunelab.problems.base import Problem
from tunelab.problems.labels import is_list, is_real_number
from tunelab.problems.multi_label import MultiLabel
from tunelab.problems.ordinal import Ordinal
from tunelab.problems.regression import Regression
from tunelab.problems.single_label import SingleLabel

PROBLEMS: dict[str, Problem] = {}
DEFAULT = "single-label"


def register_problem(problem: Problem) -> Problem:
    """Make a problem kind known: --problem takes its name, detection asks it, tasks that
    take the kind it serves as take it."""
    PROBLEMS[problem.name] = problem
    if problem.name not in PROBLEM_NAMES:
        PROBLEM_NAMES.append(problem.name)
    return problem


for _kind in (SingleLabel(), MultiLabel(), Regression(), Ordinal()):
    register_problem(_kind)


def get_problem(name: str | None) -> Problem:
    """The problem of that name (None: single-label, the default of old run directories)."""
    problem = PROBLEMS.get(name or DEFAULT)
    if problem is None:
        raise ConfigError(f"unknown problem '{name}'; choose from {', '.join(PROBLEMS)}")
    return problem


def detect_problem(values: Sequence[object], requested: str | None, separator: str | None, source: str,
                   column: str | None = None) -> Problem:
    """The problem the labels describe: the kind that claims them (lists or a separator:
    multi-label; numbers not all whole: regression; a run of whole numbers in a rating
    column: ordinal), else single-label. A requested problem wins, unless it cannot hold
    the labels."""
    present = [v for v in values if v is not None]
    lists = [is_list(v) for v in present]
    if any(lists) and not all(lists):
        raise DataError(f"{source}: the label column mixes lists and single values; use one form "
                        "(a list per row for multi-label data)")
    odd = [v for v in present if not is_list(v) and not is_real_number(v)]
    if present and odd and all(_parses_as_number(v) for v in odd) and requested is None:
        raise DataError(f"{source}: the labels are numbers, but {counted(len(odd), 'is', 'are')} not finite "
                        f"({', '.join(sorted({repr(str(v)) for v in odd})[:3])}); regression needs finite numbers: "
                        "fix or remove those rows")
    detected = next((p for p in reversed(PROBLEMS.values()) if p.claims(values, separator, column)),
                    PROBLEMS[DEFAULT])
    if requested is None:
        return detected
    problem = get_problem(requested)
    if problem.exclusive_classes and detected.name == "multi-label" and not separator:
        raise DataError(f"{source}: the labels are lists; use --problem multi-label")
    return problem


def headline_metric(values: dict) -> str:
    """The headline metric of one split's metrics: that of the kind whose metrics they are
    (the most specific kind first), else the first metric."""
    for problem in reversed(PROBLEMS.values()):
        if problem.recognises(values):
            return problem.headline
    return next(iter(k for k in values if k != "n"))


def _parses_as_number(value: object) -> bool:
    """``inf``, ``nan``, ``1e400``: text a number parser takes, though no finite number."""
    try:
        float(str(value).strip())
        return not isinstance(value, bool)
    except ValueError:
        return False



__all__ = ["PROBLEMS", "Problem", "detect_problem", "get_problem", "headline_metric", "register_problem"]
