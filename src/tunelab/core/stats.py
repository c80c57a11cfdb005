"""The statistics behind every number and claim in a report, a model card or an analysis:
intervals of one run's metric, intervals over seeds, metrics recomputed from prediction
rows, and the paired, seed-aware test (corrected by the report) that decides whether a
difference between two methods is called significant.

Pure numbers in, numbers out: nothing here reads a run directory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.8  # the power a minimum detectable difference is stated at
RESAMPLES = 2000  # bootstrap resamples for metrics that are means over items (accuracy, micro F1)
SLOW_RESAMPLES = 1000  # for metrics recomputed whole per resample (correlations, macro averages)
# Where each metric can lie; intervals are clipped to these.
BOUNDS = {"spearman": (-1.0, 1.0), "pearson": (-1.0, 1.0), "r2": (-math.inf, 1.0), "mse": (0.0, math.inf),
          "mae": (0.0, math.inf)}
UNIT_INTERVAL = (0.0, 1.0)  # accuracies, F1s, ECE, hamming loss, ...
LOWER_IS_BETTER = frozenset({"loss", "mse", "mae", "hamming_loss", "ece"})
REGRESSION_METRICS = ("spearman", "pearson", "mse", "mae", "r2")
LABEL_SET_METRICS = ("f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss")


def bounds_of(metric: str) -> tuple[float, float]:
    return BOUNDS.get(metric, UNIT_INTERVAL)


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` of ``metric`` is better than ``b``."""
    return a < b if metric in LOWER_IS_BETTER else a > b


def wilson_interval(proportion: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion (an accuracy) over n examples. Unlike
    the normal approximation it never shrinks to zero width at 0% or 100%, nor leaves [0, 1]."""
    if n <= 0:
        return float("nan"), float("nan")
    denominator = 1 + z * z / n
    centre = (proportion + z * z / (2 * n)) / denominator
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def correlation_interval(r: float, n: int, z: float = 1.96, spearman: bool = True) -> tuple[float, float]:
    """A 95% interval of a correlation through Fisher's z; for Spearman's rho with the
    Bonett-Wright standard error sqrt(1 + rho^2 / 2) / sqrt(n - 3)."""
    if n <= 3 or not -1 < r < 1:
        return float("nan"), float("nan")
    se = (math.sqrt(1 + r * r / 2) if spearman else 1.0) / math.sqrt(n - 3)
    centre = math.atanh(r)
    return math.tanh(centre - z * se), math.tanh(centre + z * se)


def t_interval(values: Sequence[float], confidence: float = 0.95,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """The interval of the mean over seeds (Student's t), clipped to where the metric can
    lie; one seed gives no interval."""
    if len(values) < 2:
        return float("nan"), float("nan")
    from scipy.stats import t

    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def seed_summary(values: Sequence[float], metric: str = "accuracy") -> dict[str, float]:
    """Mean, spread and the t interval of a metric over seeds (clipped to the metric's range)."""
    low, high = t_interval(values, bounds=bounds_of(metric))
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "min": float(np.min(values)), "max": float(np.max(values)), "low": low, "high": high,
            "seeds": len(values)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false "significant" among
    the family at ALPHA. (Five lines; statsmodels is not a dependency for this alone.)"""
    order = np.argsort(pvalues, kind="stable")
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * float(pvalues[index])))
        adjusted[index] = running
    return adjusted


# --------------------------------------------------------------------------- metrics from prediction rows


def label_matrices(pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label rows ("a; b") as (gold, predicted) indicator matrices."""
    labels = sorted({x.strip() for a, b in pairs for x in (a + ";" + b).split(";") if x.strip()})
    index = {label: i for i, label in enumerate(labels)}

    def matrix(texts):
        out = np.zeros((len(texts), max(len(labels), 1)), dtype=bool)
        for row, text in enumerate(texts):
            for x in text.split(";"):
                if x.strip():
                    out[row, index[x.strip()]] = True
        return out
    return matrix([a for a, _ in pairs]), matrix([b for _, b in pairs])


def metric_from_predictions(pairs: Sequence[tuple[str, str]], metric: str) -> float:
    """A split metric recomputed from (label, prediction) rows as the predictions file
    holds them, with scikit-learn's definitions (the ones metrics.json uses)."""
    from sklearn import metrics as sk

    if metric in REGRESSION_METRICS:
        gold = np.array([float(a) for a, _ in pairs])
        predicted = np.array([float(b) for _, b in pairs])
        if metric in ("spearman", "pearson"):
            from scipy.stats import pearsonr, spearmanr

            if np.ptp(gold) == 0 or np.ptp(predicted) == 0:
                return 0.0
            return float((spearmanr if metric == "spearman" else pearsonr)(gold, predicted)[0])
        return float({"mse": sk.mean_squared_error, "mae": sk.mean_absolute_error, "r2": sk.r2_score}[metric](
            gold, predicted))
    if metric in LABEL_SET_METRICS:
        gold, predicted = label_matrices(pairs)
        if metric == "subset_accuracy":
            return float(sk.accuracy_score(gold, predicted))
        if metric == "hamming_loss":
            return float(sk.hamming_loss(gold, predicted))
        return float(sk.f1_score(gold, predicted, average=metric.split("_")[1], zero_division=0))
    if metric == "accuracy":
        return float(np.mean([a == b for a, b in pairs]))
    if metric == "balanced_accuracy":
        return float(sk.balanced_accuracy_score([a for a, _ in pairs], [b for _, b in pairs]))
    raise ValueError(f"{metric} cannot be recomputed from labels and predictions alone")


# --------------------------------------------------------------------------- the paired, seed-aware test


@dataclasses.dataclass
class PairedTest:
    """A against B on the same examples, over seed pairs."""

    delta: float  # mean over seed pairs of metric(A) - metric(B)
    low: float  # 95% interval of delta: a t-interval over seed pairs, else over items (one run)
    high: float
    p: float  # the seed-aware p-value, before any correction
    n: int  # examples both scored
    seed_pairs: int
    method: str  # how p was computed, in words
    per_seed: list[tuple[float, float]]  # (delta, p) of each seed pair on its own
    p_adjusted: float | None = None  # after the report's correction over its family
    sd: float | None = None  # spread of the per-seed differences (two or more seed pairs)
    discordant: float | None = None  # one run, accuracy: share of items exactly one of A and B gets right
    one_run: bool = False  # the seeds gave the same predictions (deterministic methods): one pair tested

    @property
    def significant(self) -> bool:
        p = self.p_adjusted if self.p_adjusted is not None else self.p
        return p < ALPHA

    @property
    def level(self) -> float:
        """The level this test was held to after correction (ALPHA x p / adjusted p)."""
        if self.p_adjusted is None or self.p_adjusted <= 0 or self.p <= 0:
            return ALPHA
        return ALPHA * min(1.0, self.p / self.p_adjusted)

    def corrected_interval(self) -> tuple[float, float]:
        """The interval at this test's corrected level (95% before correction), so that it
        excludes 0 exactly when the corrected verdict is 'significant' (seed pairs, McNemar;
        a bootstrap interval is widened by the same normal ratio)."""
        from scipy.stats import norm
        from scipy.stats import t as t_dist

        level = self.level
        if self.seed_pairs >= 2 and self.sd:
            half = float(t_dist.ppf(1 - level / 2, self.seed_pairs - 1)) * self.sd / math.sqrt(self.seed_pairs)
        elif self.discordant is not None:
            half = float(norm.ppf(1 - level / 2)) * math.sqrt(max(self.discordant - self.delta ** 2, 0.0) / self.n)
        else:
            half = (self.high - self.low) / 2 * float(norm.ppf(1 - level / 2) / norm.ppf(0.975))
        return self.delta - half, self.delta + half

    def detectable(self, power: float = POWER) -> dict:
        """What this design could detect and what would separate the observed difference:
        the minimum detectable difference at ``power`` and this test's level, and how many
        seed pairs (or, for one run, test items) the observed difference would need to
        reach that power, the spread kept as measured. Empty where nothing is known."""
        from scipy.stats import nct, norm
        from scipy.stats import t as t_dist

        level, observed = self.level, abs(self.delta)
        if self.seed_pairs >= 2 and self.sd:
            def t_power(effect: float, k: int) -> float:
                critical = t_dist.ppf(1 - level / 2, k - 1)
                shift = effect * math.sqrt(k) / self.sd
                return float(nct.sf(critical, k - 1, shift) + nct.cdf(-critical, k - 1, shift))

            k = self.seed_pairs
            low, high = 0.0, 50 * self.sd
            for _ in range(60):  # bisection: power grows with the effect
                middle = (low + high) / 2
                low, high = (middle, high) if t_power(middle, k) < power else (low, middle)
            needed = next((m for m in range(2, 1001) if observed and t_power(observed, m) >= power), None)
            return {"mde": float(high), "unit": "seeds", "needed": needed, "power": power, "level": level}
        z = norm.ppf(1 - level / 2) + norm.ppf(power)
        if self.discordant is not None:
            spread = math.sqrt(max(self.discordant - self.delta ** 2, 1e-12))
            needed = math.ceil((z * spread / observed) ** 2) if observed else None
            return {"mde": float(z * spread / math.sqrt(self.n)), "unit": "items", "needed": needed, "power": power,
                    "level": level}
        se = (self.high - self.low) / (2 * 1.959964)
        if not se > 0:
            return {}
        needed = math.ceil(self.n * (z * se / observed) ** 2) if observed else None
        return {"mde": float(z * se), "unit": "items", "needed": needed, "power": power, "level": level}


def _micro_f1(counts: np.ndarray) -> np.ndarray:
    """Micro F1 from summed (tp, fp, fn) counts along the last axis."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)


def _per_item_scores(pairs: Sequence[tuple[str, str]], metric: str) -> np.ndarray:
    """(n,) per-item values whose mean is the metric (accuracy, subset accuracy, hamming),
    or (n, 3) per-item (tp, fp, fn) counts for micro F1."""
    if metric == "accuracy":
        return np.array([a == b for a, b in pairs], dtype=float)
    gold, predicted = label_matrices(pairs)
    if metric == "subset_accuracy":
        return (gold == predicted).all(1).astype(float)
    if metric == "hamming_loss":
        return (gold != predicted).mean(1)
    return np.stack([(gold & predicted).sum(1), (predicted & ~gold).sum(1), (gold & ~predicted).sum(1)],
                    axis=1).astype(float)


def paired_test(couples: Sequence[tuple[Sequence[tuple[str, str]], Sequence[tuple[str, str]]]], metric: str,
                seed: int = 0) -> PairedTest:
    """The difference of ``metric`` between A and B over seed pairs of prediction rows on
    the same items (each couple: A's rows, B's rows, aligned item by item).

    With two or more seed pairs the seeds are the replicates: a paired t-test over the
    per-seed differences and its t-interval (item-level tests on seed-averaged
    predictions, mixed models and hierarchical bootstraps let the error rate run far
    above 5% once seed variance is real; the seed-level test holds it). Seed pairs that
    gave exactly the same predictions (deterministic methods) are one run: then the exact
    McNemar test for accuracy (its interval from the discordant items), else a bootstrap
    over items. Each seed pair's own difference and p-value are kept too."""
    from scipy.stats import binomtest, ttest_1samp
    from scipy.stats import t as t_dist

    replicas = len(couples)
    if replicas > 1 and all(a == couples[0][0] and b == couples[0][1] for a, b in couples[1:]):
        couples = couples[:1]  # deterministic methods: their seeds are one run, not replicates
    k = len(couples)
    deltas = np.array([metric_from_predictions(a, metric) - metric_from_predictions(b, metric) for a, b in couples])
    rng = np.random.default_rng(seed)
    n = len(couples[0][0])
    fast = metric in ("accuracy", "subset_accuracy", "hamming_loss", "f1_micro")
    draws = RESAMPLES if fast else SLOW_RESAMPLES
    items = rng.integers(0, n, size=(draws, n))
    seeds = rng.integers(0, k, size=(draws, k)) if k > 1 else np.zeros((draws, 1), dtype=int)
    per_couple = np.empty((k, draws))  # each couple's resampled difference, for every draw
    parts = [(_per_item_scores(a, metric), _per_item_scores(b, metric)) for a, b in couples] if fast else []
    for c, (rows_a, rows_b) in enumerate(couples):
        if fast:
            part_a, part_b = parts[c]
            for start in range(0, draws, 250):
                chunk = items[start:start + 250]
                if metric == "f1_micro":
                    per_couple[c, start:start + 250] = (_micro_f1(part_a[chunk].sum(1))
                                                        - _micro_f1(part_b[chunk].sum(1)))
                else:
                    per_couple[c, start:start + 250] = part_a[chunk].mean(1) - part_b[chunk].mean(1)
        else:
            for d in range(draws):
                rows = items[d]
                per_couple[c, d] = (metric_from_predictions([rows_a[i] for i in rows], metric)
                                    - metric_from_predictions([rows_b[i] for i in rows], metric))
    statistic = per_couple[seeds, np.arange(draws)[:, None]].mean(1)
    low, high = (float(v) for v in np.percentile(statistic, [2.5, 97.5]))

    def bootstrap_p(values: np.ndarray) -> float:
        below, above = int((values <= 0).sum()), int((values >= 0).sum())
        return float(min(1.0, 2 * (min(below, above) + 1) / (len(values) + 1)))

    per_seed = []
    for c in range(k):
        if metric == "accuracy":
            right_a, right_b = parts[c][0] == 1, parts[c][1] == 1  # per-item correctness
            only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
            p_seed = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
        else:
            p_seed = bootstrap_p(per_couple[c])
        per_seed.append((float(deltas[c]), p_seed))
    sd = float(np.std(deltas, ddof=1)) if k >= 2 else None
    discordant = None
    if k >= 2 and sd > 0:
        # Seeds are the replicates: the paired t over their differences holds its error rate
        # where item-level tests on seed-averaged predictions do not, and its t-interval
        # agrees with its verdict.
        p = float(ttest_1samp(deltas, 0.0).pvalue)
        half = float(t_dist.ppf(0.975, k - 1)) * sd / math.sqrt(k)
        low, high = float(deltas.mean()) - half, float(deltas.mean()) + half
        method = f"paired t-test over the {k} seed pairs (t-interval)"
    elif k >= 2:
        p = bootstrap_p(statistic)
        method = (f"bootstrap over seed pairs and items ({draws} resamples): the {k} seed pairs differ by exactly "
                  "the same amount")
    elif metric == "accuracy":
        p = per_seed[0][1]
        right_a, right_b = parts[0][0] == 1, parts[0][1] == 1
        discordant = float((right_a != right_b).mean())
        half = 1.959964 * math.sqrt(max(discordant - deltas[0] ** 2, 0.0) / n)
        low, high = float(deltas[0]) - half, float(deltas[0]) + half
        method = "exact McNemar test (1 run: " + (
            f"the {replicas} seeds gave the same predictions)" if replicas > 1 else "one seed pair)")
    else:
        p = bootstrap_p(statistic)
        method = f"paired bootstrap over items ({draws} resamples; 1 run)"
    return PairedTest(float(deltas.mean()), low, high, p, n, k, method, per_seed, sd=sd, discordant=discordant,
                      one_run=k == 1)
