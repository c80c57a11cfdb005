"""Learning curves that look ahead: candidate curve forms fitted to a method's means at
three or more training sizes, the form chosen by backtest (refit without the largest
size, predict it), and forecasts at 2x and 4x the labels whose interval carries both
the seeds' noise and the backtest's own error, or a plain refusal where that error is
too large. Also the inverse: how many labels reach a target score.

The forms are the ones the learning-curve literature compares (Viering & Loog 2022,
"The shape of learning curves"; Mohr et al., LCDB): log-linear, a power law saturating
at the metric's perfect score, the three-parameter saturating power law, the
four-parameter MMF curve, and "no further gain" (the last measured value), which is
what a curve that has flattened looks like. A form is only a candidate when the
backtest can fit it on fewer sizes than it has parameters' worth of points: a form
whose backtest cannot be run has no error to show beside its forecast.

Why our own code rather than a package: the curve-fitting packages (e.g. LCDB's) fit
many forms to many anchors; here a handful of sizes must give a forecast whose error
is the backtest's, stated beside it, and the fits are a few lines of scipy."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import numpy as np
from scipy.optimize import least_squares

from tunelab.core.stats import LOWER_IS_BETTER, bounds_of

FACTORS = (2.0, 4.0)  # forecasts at these multiples of the largest size measured
MIN_SIZES = 3  # a curve needs this many sizes before it is extrapolated
RESAMPLES = 200  # seed resamples for the forecast's interval
LIMIT = 0.05  # a forecast whose backtest allowance exceeds this share of the metric's range is refused
Z = 1.96  # the interval's normal quantile (95%)
NO_GAIN = "no further gain"


@dataclasses.dataclass(frozen=True)
class Form:
    name: str
    parameters: int
    curve: Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (x, params, perfect) -> score
    start: Callable[[np.ndarray, np.ndarray, float], list[float]]  # (x, y, perfect) -> initial params
    bounds: Callable[[float], tuple[list[float], list[float]]]  # perfect -> (lower, upper)
    exact: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (x, y) -> params, where no fit is needed


def _log_linear(x, p, perfect):
    return p[0] + p[1] * np.log(x)


def _power_to_perfect(x, p, perfect):
    return perfect - p[0] * np.power(x, -p[1])


def _saturating_power(x, p, perfect):
    return p[2] - p[0] * np.power(x, -p[1])


def _mmf(x, p, perfect):  # Morgan-Mercer-Flodin: from a at x=0 towards c, d the steepness
    a, b, c, d = p
    return (a * b + c * np.power(x, d)) / (b + np.power(x, d))


def _gap_start(x, y, perfect):
    gap = np.maximum(perfect - y, 1e-6)
    slope = np.polyfit(np.log(x), np.log(gap), 1)[0] if len(x) > 1 else -0.5
    return [float(gap[0] * x[0] ** max(-slope, 1e-3)), float(min(max(-slope, 1e-3), 3.0))]


FORMS = (
    Form(NO_GAIN, 1, lambda x, p, perfect: np.full_like(x, p[0], dtype=float),
         lambda x, y, perfect: [float(y[-1])], lambda perfect: ([-np.inf], [np.inf]),
         exact=lambda x, y: np.array([float(y[-1])])),  # the last value, not a mean of every size
    Form("log-linear", 2, _log_linear, lambda x, y, perfect: list(np.polyfit(np.log(x), y, 1)[::-1]),
         lambda perfect: ([-np.inf, -np.inf], [np.inf, np.inf])),
    Form("power law to perfect", 2, _power_to_perfect, _gap_start,
         lambda perfect: ([0.0, 0.0], [np.inf, 5.0])),
    Form("saturating power law", 3, _saturating_power,
         lambda x, y, perfect: [*_gap_start(x, y, perfect), float(min(perfect, y[-1] + 0.5 * (perfect - y[-1])))],
         lambda perfect: ([0.0, 0.0, -np.inf], [np.inf, 5.0, perfect])),
    Form("MMF", 4, _mmf, lambda x, y, perfect: [float(y[0]) - 0.05, float(x[0]), float(min(perfect, y[-1] + 0.05)),
                                                  1.0],
         lambda perfect: ([-np.inf, 1e-6, -np.inf, 0.05], [np.inf, np.inf, perfect, 5.0])),
)


def fit(form: Form, x: np.ndarray, y: np.ndarray, perfect: float) -> np.ndarray | None:
    """Least-squares parameters of ``form`` through (x, y), or None where it does not
    converge to finite values (a form with an exact solution is solved, not fitted)."""
    if form.exact is not None:
        return form.exact(x, y)
    lower, upper = form.bounds(perfect)
    start = np.clip(np.asarray(form.start(x, y, perfect), dtype=float), np.array(lower) + 1e-9,
                    np.array(upper) - 1e-9)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            found = least_squares(lambda p: form.curve(x, p, perfect) - y, start, bounds=(lower, upper))
        except (ValueError, FloatingPointError):
            return None
    return found.x if np.all(np.isfinite(found.x)) else None


@dataclasses.dataclass
class Backtest:
    form: str
    fitted_on: list[float]  # sizes the refit saw
    size: float  # the size it predicted
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        return self.predicted - self.measured

    @property
    def per_doubling(self) -> float:
        return abs(self.error) / math.log2(self.size / self.fitted_on[-1])


@dataclasses.dataclass
class Forecast:
    """One method's look ahead: the form the backtests chose, their error, and the
    expected score at each multiple of the largest size (None where refused)."""

    method: str
    metric: str
    sizes: list[float]
    means: list[float]
    form: str | None
    backtests: list[Backtest]  # every candidate's refits on the first sizes, predicting each later size
    error_per_doubling: float | None  # the chosen form's backtest error (root mean square) per doubling ahead
    points: list[dict]  # {factor, size, value, low, high, backtest_allowance} or {factor, size, refused: reason}
    parameters: list[float] | None = None
    perfect: float = 1.0
    sign: float = 1.0  # +1 where higher is better; the fit runs on sign * metric
    spread: float = 0.0  # the forecast's seed and test noise (its standard error), without the allowance
    errors: dict[str, float] = dataclasses.field(default_factory=dict)  # form -> its backtest error per doubling
    rivals: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # plausible forms -> their parameters

    def value_at(self, size: float, form_name: str | None = None, parameters=None) -> float:
        form = next(f for f in FORMS if f.name == (form_name or self.form))
        at = np.array([size], dtype=float)
        return float(self.sign * form.curve(at, np.asarray(self.parameters if parameters is None else parameters),
                                            self.perfect)[0])

    def allowance_at(self, size: float) -> float:
        """How far the forecast at ``size`` may be off by the backtests: the chosen form's
        error per doubling times the doublings ahead, or the distance to what another
        form that backtests about as well (within twice the error) forecasts, if larger."""
        ahead = float(self.error_per_doubling or 0.0) * max(math.log2(size / self.sizes[-1]), 0.0)
        value = self.value_at(size)
        return max([ahead, *(abs(self.value_at(size, name, params) - value) for name, params in self.rivals.items())])

    def first_backtest(self, form_name: str | None = None) -> Backtest | None:
        """The backtest a reader checks first: refit without the largest size, predict it."""
        mine = [b for b in self.backtests if b.form == (form_name or self.form) and b.size == self.sizes[-1]]
        return max(mine, key=lambda b: len(b.fitted_on)) if mine else None


def _scale(metric: str) -> float:
    low, high = bounds_of(metric)
    return high - low if math.isfinite(high - low) else 1.0


def backtest(x: np.ndarray, y: np.ndarray, perfect: float, sign: float) -> list[Backtest]:
    """Every form refitted on the first k sizes (as many as it has parameters, and at
    least two), predicting each larger size: the rolling origin of forecast evaluation."""
    found = []
    for form in FORMS:
        for k in range(max(form.parameters, 2), len(x)):
            params = fit(form, x[:k], y[:k], perfect)
            if params is None:
                continue
            predicted = form.curve(x[k:], params, perfect)
            found += [Backtest(form.name, list(map(float, x[:k])), float(size), float(sign * p), float(sign * m))
                      for size, p, m in zip(x[k:], predicted, y[k:])]
    return found


def forecast(method: str, metric: str, values_by_size: list[tuple[float, list[float]]],
             seed: int = 0, one_run_se: float = 0.0) -> Forecast | None:
    """The look ahead of one learning curve: ``values_by_size`` is [(size, per-seed values)]
    at three or more sizes. None for fewer sizes. ``one_run_se``: the noise a single run's
    value carries (its test items'), used where one seed cannot show the spread."""
    points = sorted((float(s), [float(v) for v in vs]) for s, vs in values_by_size if vs and s > 0)
    if len(points) < MIN_SIZES:
        return None
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    low, high = bounds_of(metric)
    perfect = sign * (low if sign < 0 else high)
    if not math.isfinite(perfect):
        perfect = max(sign * v for _, vs in points for v in vs) + 1.0
    x = np.array([s for s, _ in points])
    y = np.array([sign * float(np.mean(vs)) for _, vs in points])
    means = [float(np.mean(vs)) for _, vs in points]
    tests = backtest(x, y, perfect, sign)
    # Only forms whose refit without the largest size could be run are candidates.
    candidates = [f for f in FORMS if any(b.form == f.name and b.size == x[-1] and len(b.fitted_on) == len(x) - 1
                                          for b in tests)]
    errors = {f.name: math.sqrt(float(np.mean([b.per_doubling ** 2 for b in tests if b.form == f.name])))
              for f in candidates}
    if not errors:
        return Forecast(method, metric, list(x), means, None, tests, None, [])
    # The chosen form: the smallest backtest error; ties go to the simpler form (FORMS is in that order).
    chosen = min(candidates, key=lambda f: round(errors[f.name], 6))
    per_doubling = errors[chosen.name]
    params = fit(chosen, x, y, perfect)
    tests.sort(key=lambda b: (b.form != chosen.name, errors[b.form], -b.size, -len(b.fitted_on)))
    made = Forecast(method, metric, list(x), means, chosen.name, tests, per_doubling, [],
                    None if params is None else list(map(float, params)), perfect, sign, errors=errors)
    if params is None:
        return made
    # Forms the backtest cannot tell from the chosen one (within twice its error, plus what the
    # held-out mean's own seed noise allows) are rivals: their forecasts bound the interval too.
    last = points[-1][1]
    held_out_se = float(np.std(last, ddof=1) / math.sqrt(len(last))) if len(last) > 1 else one_run_se
    noise = Z * held_out_se / math.log2(x[-1] / x[-2])
    for form in candidates:
        if form is not chosen and errors[form.name] <= 2 * per_doubling + noise + 1e-3:
            rival = fit(form, x, y, perfect)
            if rival is not None:
                made.rivals[form.name] = list(map(float, rival))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(RESAMPLES):  # seeds resampled within each size, the chosen form refitted
        resampled = np.array([sign * float(np.mean(rng.choice(vs, size=len(vs)))) for _, vs in points])
        again = fit(chosen, x, resampled, perfect)
        if again is not None:
            draws.append([chosen.curve(np.array([x[-1] * f]), again, perfect)[0] for f in FACTORS])
    draws_array = np.array(draws) if draws else np.zeros((0, len(FACTORS)))
    # A new mean over as many seeds has its own noise, as the last one had.
    spreads = [math.sqrt((float(np.std(draws_array[:, c], ddof=1)) if len(draws_array) > 1 else 0.0) ** 2
                         + held_out_se ** 2) for c in range(len(FACTORS))]
    made.spread = spreads[-1]  # the furthest forecast's, the widest: what the plot and --target use between
    for factor, spread in zip(FACTORS, spreads):
        size = float(x[-1] * factor)
        value = made.value_at(size)
        allowance = made.allowance_at(size)
        half = Z * spread + allowance
        if allowance > LIMIT * _scale(metric):
            made.points.append({"factor": factor, "size": size, "refused": (
                f"the backtests allow ±{allowance:.3f} at {factor:g}x (error {per_doubling:.3f} per doubling), "
                f"more than {LIMIT * _scale(metric):.3f}: too large to extrapolate")})
            continue
        made.points.append({"factor": factor, "size": size, "value": _clip(value, metric),
                            "low": _clip(value - half, metric), "high": _clip(value + half, metric),
                            "backtest_allowance": allowance})
    return made


def _clip(value: float, metric: str) -> float:
    low, high = bounds_of(metric)
    return float(min(max(value, low), high))


def labels_to_reach(made: Forecast, target: float, factor: float = FACTORS[-1], steps: int = 400) -> dict:
    """Labels (in the curve's size unit) to reach ``target``: a size measured already, or
    the forecast's point and range within ``factor`` x the largest size, or not within it."""
    reached = [s for s, m in zip(made.sizes, made.means) if made.sign * (m - target) >= 0]
    answer = {"method": made.method, "target": target, "metric": made.metric}
    if reached:
        return {**answer, "status": "measured", "size": reached[0]}
    usable = [p for p in made.points if "value" in p]
    if made.parameters is None or not usable:
        return {**answer, "status": "cannot extrapolate", "reason": "the backtest error is too large"}
    horizon = min(factor, max(p["factor"] for p in usable))
    grid = made.sizes[-1] * np.exp(np.linspace(0.0, math.log(horizon), steps))
    half = [Z * made.spread + made.allowance_at(s) for s in grid]
    centre = [made.value_at(s) for s in grid]

    def first(offset: float) -> float | None:
        hits = [s for s, c, h in zip(grid, centre, half) if made.sign * (c + offset * h - target) >= 0]
        return float(hits[0]) if hits else None

    point, optimistic, pessimistic = first(0.0), first(made.sign), first(-made.sign)
    if point is None:
        return {**answer, "status": "not within", "factor": horizon, "low": optimistic}
    return {**answer, "status": "forecast", "size": point, "low": optimistic, "high": pessimistic,
            "factor": horizon}


def curve_forecasts(curves: dict, metric: str) -> list[Forecast]:
    """A forecast for every learning curve ({method: [(size, group)]}) measured at
    MIN_SIZES or more sizes whose values vary (a majority floor's do not)."""
    made = [forecast(method, metric, [(size, group.values()) for size, group in points],
                     one_run_se=_item_se(points[-1][1], metric))
            for method, points in curves.items()
            if np.ptp([v for _, group in points for v in group.values()]) > 0]  # a flat floor learns nothing
    return [f for f in made if f is not None]


def _item_se(group, metric: str) -> float:
    """An accuracy's standard error over its test items (0 for other metrics)."""
    n = group.runs[0].metrics["splits"][group.main_split()].get("n")
    value = group.mean()
    if metric != "accuracy" or not isinstance(n, int) or n < 1 or value is None:
        return 0.0
    return math.sqrt(value * (1 - value) / n)


def target_text(answer: dict, unit: str) -> str:
    """One line: 'probe: about 310 shots per class [190, beyond 4x] to reach 0.75'."""
    method, target = answer["method"], answer["target"]
    if answer["status"] == "measured":
        return f"{method}: {target:g} reached already at {answer['size']:g} {unit} (measured)"
    if answer["status"] == "cannot extrapolate":
        return f"{method}: cannot say ({answer['reason']})"
    beyond = f"beyond {answer['factor']:g}x"
    if answer["status"] == "not within":
        return (f"{method}: {target:g} is not reached within {answer['factor']:g}x the labels measured"
                + (f" (the interval's optimistic end reaches it at {answer['low']:.0f} {unit})"
                   if answer.get("low") else ""))
    low = f"{answer['low']:.0f}" if answer.get("low") else "?"
    high = f"{answer['high']:.0f}" if answer.get("high") else beyond
    return f"{method}: about {answer['size']:.0f} {unit} [{low}, {high}] to reach {target:g}"
