"""The learning curves' look ahead in the report: the extrapolation drawn dashed with its
interval, and a table that shows every forecast beside its own backtest error (the
form chosen, what it predicted for the largest size when refitted without it), plus
the labels each method needs to reach a target."""

from __future__ import annotations

import numpy as np

from tunelab.analysis.extrapolation import FACTORS, LIMIT, Forecast, Z, target_text
from tunelab.core.errors import counted
from tunelab.report.render import Document


def draw_forecasts(ax, forecasts: list[Forecast], colours: dict[str, str]) -> None:
    """Each usable forecast as a dashed line from the largest size measured to the
    furthest size it was not refused at, with its interval as a light band."""
    for made in forecasts:
        usable = [p for p in made.points if "value" in p]
        if made.parameters is None or not usable:
            continue
        last = made.sizes[-1]
        grid = last * np.exp(np.linspace(0.0, np.log(max(p["factor"] for p in usable)), 40))
        centre = np.array([made.value_at(s) for s in grid])
        half = np.array([Z * made.spread + made.allowance_at(s) for s in grid])
        colour = colours.get(made.method)
        ax.plot(grid, centre, linestyle="--", color=colour, linewidth=1.2)
        ax.fill_between(grid, centre - half, centre + half, color=colour, alpha=0.08)
        ax.plot([p["size"] for p in usable], [p["value"] for p in usable], linestyle="none", marker="o",
                markerfacecolor="white", color=colour)


def mine(made: Forecast) -> list:
    return [b for b in made.backtests if b.form == made.form]


def forecast_section(doc: Document, forecasts: list[Forecast], targets: list[dict], unit: str) -> None:
    """The forecasts as a table, each with the backtest that chose its form."""
    if not forecasts:
        return
    doc.paragraph(
        "Looking ahead (dashed, open circles): for every curve measured at three or more sizes, candidate forms "
        "(no further gain, log-linear, a power law saturating at the perfect score, the three-parameter saturating "
        "power law, MMF; a form enters only where it can be refitted without the largest size) are refitted on the "
        "first sizes and asked to predict each larger one; the form with the smallest error per doubling ahead "
        "(root mean square over its backtests) is fitted to every size and extrapolated to "
        + " and ".join(f"{f:g}x" for f in FACTORS) + " the largest. Each interval is the seeds' noise "
        f"(seeds resampled within each size, and a new mean's own spread), ±{Z:g} standard errors, widened by the "
        "backtests' error per doubling times the doublings ahead, or by the distance to what another form that "
        f"backtests nearly as well forecasts, if larger; a forecast whose widening exceeds {LIMIT:g} of the "
        "metric's range is refused. The backtest error beside each forecast is the one to "
        "believe: extrapolation is a guess the data can only partly check.")
    rows = []
    for made in forecasts:
        test = made.first_backtest() if made.form else None
        backtest = (f"fitted on {', '.join(f'{s:g}' for s in test.fitted_on)}: predicted {test.predicted:.4f} at "
                    f"{test.size:g}, measured {test.measured:.4f} (error {test.error:+.4f}); "
                    f"{made.error_per_doubling:.4f} per doubling over {counted(len(mine(made)), 'backtest')}"
                    if test else "—")
        others = "; ".join(f"{form} {error:.4f}" for form, error in made.errors.items() if form != made.form) or "—"
        cells = []
        for point in made.points:
            cells.append(f"{point['value']:.4f} [{point['low']:.4f}, {point['high']:.4f}]" if "value" in point
                         else "refused: " + point["refused"].split(": ")[-1])
        cells += ["—"] * (len(FACTORS) - len(cells))
        rows.append([made.method, made.form or "none fits", backtest, others, *cells])
    doc.table(["method", "form (chosen by backtest)", "backtest of the chosen form", "other forms (error per doubling)",
               *[f"expected at {f:g}x" for f in FACTORS]], rows)
    for answer in targets:
        doc.paragraph("Labels to reach the target: " + target_text(answer, unit) + ".")
