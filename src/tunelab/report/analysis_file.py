"""analysis.json beside report.md: what the report decided, machine-readable. Every
method's summary and every test it ran (its purpose, difference, interval at the
corrected level, p before and after correction, verdict, and what it could detect),
and every learning curve's extrapolation and target answer, in the schema
tunelab/schemas/analysis.schema.json."""

from __future__ import annotations

import math

from tunelab.analysis.comparisons import Group, group_summary
from tunelab.core.stats import ALPHA, PairedTest
from tunelab.report.glance import Findings

ANALYSIS_FORMAT = "tunelab-analysis"
ANALYSIS_VERSION = 1


def _number(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def group_entry(group: Group) -> dict:
    mean, low, high = group_summary(group)
    return {"name": group.name, "method": group.method, "size": group.size, "split": group.main_split(),
            "metric": group.metric(), "mean": _number(mean), "low": _number(low), "high": _number(high),
            "seeds": len(group.runs)}


def claim_entry(claim) -> dict:
    entry = {"a": claim.a.name, "b": claim.b.name, "purpose": claim.purpose, "split": claim.split,
             "metric": claim.metric}
    if getattr(claim, "size", None) is not None:
        entry["size"] = claim.size
    result = claim.result
    if not isinstance(result, PairedTest):
        return {**entry, "tested": False, "reason": str(result)}
    low, high = result.corrected_interval()
    detectable = result.detectable()
    return {**entry, "tested": True, "delta": result.delta, "low": low, "high": high, "p": result.p,
            "p_adjusted": result.p_adjusted, "significant": result.significant, "alpha": ALPHA,
            "level": result.level, "n": result.n, "seed_pairs": result.seed_pairs, "one_run": result.one_run,
            "method": result.method, "per_seed": [{"delta": d, "p": p} for d, p in result.per_seed],
            "minimum_detectable": detectable.get("mde"), "power": detectable.get("power"),
            "needed_to_separate": detectable.get("needed"), "needed_unit": detectable.get("unit")}


def analysis_record(groups: list[Group], findings: Findings) -> dict:
    """The report's decisions as data."""
    chosen = []
    for family in findings.families:
        best, split, runner = findings.chosen.get(id(family), (None, None, None))
        floor, how = findings.floors.get(id(family), (None, ""))
        chosen.append({"dataset": family.dataset, "metric": family.metric,
                       "chosen": best.name if best is not None else None, "chosen_on": split,
                       "runner_up": runner.name if runner is not None else None,
                       "floor": floor.name if floor is not None else None, "floor_rule": how,
                       "chosen_wins_share": findings.stability.get(id(family))})
    return {"format": ANALYSIS_FORMAT, "version": ANALYSIS_VERSION,
            "correction": "fixed-sequence chains, weighted Bonferroni across chains (graphical procedure)",
            "groups": [group_entry(g) for g in groups], "families": chosen,
            "comparisons": [claim_entry(c) for c in findings.claims],
            "extrapolations": [forecast_entry(f) for f in findings.forecasts], "targets": findings.targets,
            "label_savings": findings.savings}


def forecast_entry(made) -> dict:
    return {"method": made.method, "metric": made.metric, "sizes": made.sizes, "means": made.means,
            "form": made.form, "error_per_doubling": made.error_per_doubling, "form_errors": made.errors,
            "backtests": [{"form": b.form, "fitted_on": b.fitted_on, "size": b.size, "predicted": b.predicted,
                           "measured": b.measured, "error": b.error} for b in made.backtests],
            "forecasts": made.points}
