"""Problem kinds: single-label, multi-label and regression, each one module. Everything
that differs between them lives here; elsewhere code asks ``get_problem(name)``."""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.core.errors import ConfigError, DataError, counted
from tunelab.problems.base import Problem
from tunelab.problems.labels import is_list, is_real_number, is_whole_number
from tunelab.problems.multi_label import MultiLabel
from tunelab.problems.regression import Regression
from tunelab.problems.single_label import SingleLabel

PROBLEMS: dict[str, Problem] = {p.name: p for p in (SingleLabel(), MultiLabel(), Regression())}
DEFAULT = "single-label"


def get_problem(name: str | None) -> Problem:
    """The problem of that name (None: single-label, the default of old run directories)."""
    problem = PROBLEMS.get(name or DEFAULT)
    if problem is None:
        raise ConfigError(f"unknown problem '{name}'; choose from {', '.join(PROBLEMS)}")
    return problem


def detect_problem(values: Sequence[object], requested: str | None, separator: str | None, source: str) -> Problem:
    """The problem the labels describe: lists (or a separator) mean multi-label; numbers
    that are not all whole mean regression; anything else names classes. A requested
    problem wins, unless it cannot hold the labels."""
    lists = [is_list(v) for v in values if v is not None]
    if any(lists) and not all(lists):
        raise DataError(f"{source}: the label column mixes lists and single values; use one form "
                        "(a list per row for multi-label data)")
    detected = PROBLEMS[DEFAULT]
    present = [v for v in values if v is not None]
    odd = [v for v in present if not is_real_number(v)]
    if present and odd and all(_parses_as_number(v) for v in odd) and requested is None \
            and not all(is_whole_number(v) for v in present if is_real_number(v)):
        raise DataError(f"{source}: the labels are numbers, but {counted(len(odd), 'is', 'are')} not finite "
                        f"({', '.join(sorted({repr(str(v)) for v in odd})[:3])}); regression needs finite numbers: "
                        "fix or remove those rows")
    if (lists and all(lists)) or separator:
        detected = MULTI_LABEL
    elif values and all(is_real_number(v) for v in values if v is not None) \
            and not all(is_whole_number(v) for v in values if v is not None):
        detected = REGRESSION
    if requested is None:
        return detected
    problem = get_problem(requested)
    if problem.exclusive_classes and detected is MULTI_LABEL and not separator:
        raise DataError(f"{source}: the labels are lists; use --problem {MULTI_LABEL.name}")
    return problem


def _parses_as_number(value: object) -> bool:
    """``inf``, ``nan``, ``1e400``: text a number parser takes, though no finite number."""
    try:
        float(str(value).strip())
        return not isinstance(value, bool)
    except ValueError:
        return False


MULTI_LABEL, REGRESSION = PROBLEMS["multi-label"], PROBLEMS["regression"]

__all__ = ["PROBLEMS", "Problem", "detect_problem", "get_problem"]
