"""What a study asks of its report, checked before any run: a paper's numbers to stand
beside ours (``published:``), a score whose label cost each curve should say
(``target:``), and comparisons declared in advance (``compare:``)."""

from __future__ import annotations

import math
from typing import Any

from tunelab.core.config import ConfigError


def check_published(published: Any, origin: str) -> dict[str, Any]:
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


def check_target(target: Any, origin: str) -> float | None:
    """``target: 0.8``: a score the report says how many labels each method needs to reach."""
    if target is None:
        return None
    try:
        value = float(target)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(target, bool) or not math.isfinite(value):
        raise ConfigError(f"{origin}: target must be a number (a score of the headline metric), not {target!r}")
    return value


def check_compare(compare: Any, origin: str) -> list[list[str]]:
    """``compare: ["lora-shots128 vs full-shots128", [probe, setfit]]``: the comparisons a
    study declares before it runs (report groups, or steps with one group each), tested
    in the order given and before the report's exploratory ones."""
    if compare in (None, []):
        return []
    if not isinstance(compare, list):
        raise ConfigError(f"{origin}: compare must be a list of pairs such as \"lora vs full\" or [lora, full]")
    pairs = []
    for item in compare:
        pair = [part.strip() for part in item.split(" vs ")] if isinstance(item, str) else item
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x for x in pair)
                and pair[0] != pair[1]):
            raise ConfigError(f"{origin}: compare entry {item!r} is not two different names (\"A vs B\" or [A, B])")
        pairs.append(pair)
    return pairs
