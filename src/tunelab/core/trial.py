"""Intermediate results of a run for a hyperparameter search, without the run knowing
about the search: training code reports its validation metrics here (fine-tuning at
every evaluation, a probe at each value of its grid); when a search is driving the run,
its reporter receives them and may answer that the run should stop (pruned). With no
search, reporting costs nothing and never stops a run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

# The reporter of the search driving this process's run: (step, metrics) -> stop?
_REPORTERS: list[Callable[[int, Mapping[str, float]], bool]] = []


@contextlib.contextmanager
def reporting_to(reporter: Callable[[int, Mapping[str, float]], bool]) -> Iterator[None]:
    _REPORTERS.append(reporter)
    try:
        yield
    finally:
        _REPORTERS.remove(reporter)


def report(step: int, metrics: Mapping[str, float]) -> bool:
    """Validation metrics (names without a split prefix) at ``step``; True when the search
    says the run should stop now."""
    return any(reporter(step, metrics) for reporter in list(_REPORTERS))
