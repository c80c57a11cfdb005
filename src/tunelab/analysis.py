"""What a study's runs say together: seed groups with intervals over seeds, paired tests
between methods on the same examples (exact McNemar, paired bootstrap), learning
curves, cost fronts, calibration. Everything is recomputed from the runs' own
prediction files, so the report's numbers can be checked against them."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.metrics import headline_metric

SIZE_KEYS = ("data.shots", "data.max_train_samples")  # matrix keys that set the training-set size
RESAMPLES = 2000  # paired bootstrap resamples


@dataclasses.dataclass
class Group:
    """Runs that differ only in their seed."""

    name: str
    method: str  # the study step (or run) the group belongs to: one line of a learning curve
    runs: list  # RunRecord
    size: Any = None  # shots per class or training examples, when a matrix set it
    size_key: str | None = None

    @property
    def command(self) -> str:
        return self.runs[0].command

    def main_split(self) -> str:
        splits = self.runs[0].metrics["splits"]
        return "test" if "test" in splits else next(iter(splits))

    def metric(self) -> str:
        return headline_metric(self.runs[0].metrics["splits"][self.main_split()])

    def values(self, split: str | None = None, metric: str | None = None) -> list[float]:
        split, metric = split or self.main_split(), metric or self.metric()
        return [r.metrics["splits"][split][metric] for r in self.runs if metric in r.metrics["splits"].get(split, {})]


def group_runs(records: list, outcomes: list | None = None) -> list[Group]:
    """Seed groups: in a study, runs of one step whose matrix values differ only in seed;
    elsewhere, runs whose configurations differ only in seed."""
    by_name = {o.name: o for o in (outcomes or [])}
    groups: dict[str, Group] = {}
    for record in records:
        outcome = by_name.get(record.name)
        if outcome is not None:
            params = {k: v for k, v in (outcome.params or {}).items() if k != "seed"}
            key = outcome.group + "|" + repr(sorted(params.items()))
            size_key = next((k for k in SIZE_KEYS if k in params), None)
            name = outcome.group + "".join(f"-{_short(k)}{'all' if v is None else v}" for k, v in params.items())
            group = groups.setdefault(key, Group(name, outcome.group, [], params.get(size_key), size_key))
        else:
            key = record.identity()
            group = groups.setdefault(key, Group(record.name, record.name, []))
        group.runs.append(record)
    for group in groups.values():
        group.runs.sort(key=lambda r: r.config.get("seed", 0))
    return list(groups.values())


def _short(key: str) -> str:
    return {"data.shots": "shots", "data.max_train_samples": "n"}.get(key, key.rsplit(".", 1)[-1])


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The 95% interval of the mean over seeds (Student's t); one seed gives no interval."""
    if len(values) < 2:
        return float("nan"), float("nan")
    from scipy.stats import t

    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem
    return mean - half, mean + half


def seed_summary(values: list[float]) -> dict[str, float]:
    low, high = t_interval(values)
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "min": float(np.min(values)), "max": float(np.max(values)), "low": low, "high": high,
            "seeds": len(values)}


# --------------------------------------------------------------------------- predictions and paired tests


def read_predictions(run_path: Path, split: str) -> dict[str, tuple[str, str]] | None:
    """id -> (label, prediction) as written in predictions/<split>.csv."""
    from tunelab.report import read_inside

    data = read_inside(run_path, f"predictions/{split}.csv")
    if data is None:
        return None
    rows = csv.DictReader(data.decode("utf-8").splitlines())
    return {row["id"]: (row["label"], row["prediction"]) for row in rows}


def _arrays(pairs: list[tuple[str, str]], metric: str):
    if metric in ("spearman", "pearson", "mse", "mae", "r2"):
        return np.array([[float(a), float(b)] for a, b in pairs])
    if metric in ("f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss",
                  "mean_average_precision"):
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
    return np.array([a == b for a, b in pairs], dtype=float)


def metric_from_predictions(pairs: list[tuple[str, str]], metric: str, rows: np.ndarray | None = None) -> float:
    """The headline metric recomputed from (label, prediction) rows (optionally resampled)."""
    data = _arrays(pairs, metric)
    if isinstance(data, tuple):
        gold, predicted = data
        if rows is not None:
            gold, predicted = gold[rows], predicted[rows]
        tp = (gold & predicted).sum()
        denominator = 2 * tp + (predicted & ~gold).sum() + (gold & ~predicted).sum()
        return float(2 * tp / denominator) if denominator else 0.0
    if rows is not None:
        data = data[rows]
    if data.ndim == 2:
        from scipy.stats import pearsonr, spearmanr

        if np.ptp(data[:, 0]) == 0 or np.ptp(data[:, 1]) == 0:
            return 0.0
        return float((spearmanr if metric == "spearman" else pearsonr)(data[:, 0], data[:, 1])[0])
    return float(data.mean())


def paired_comparison(a: Group, b: Group, split: str, metric: str, seed: int = 0) -> dict | None:
    """``a`` against ``b`` on the examples both scored: the difference of the headline
    metric (mean over seed pairs), its paired-bootstrap 95% interval, and for accuracy
    the exact McNemar test (pooled over seed pairs). None when they share no examples."""
    pairs_a = [read_predictions(r.path, split) for r in a.runs]
    pairs_b = [read_predictions(r.path, split) for r in b.runs]
    if any(p is None for p in pairs_a + pairs_b):
        return None
    ids = sorted(set.intersection(*(set(p) for p in pairs_a + pairs_b)))
    if len(ids) < 2:
        return None
    if len(pairs_b) == 1:  # every seed of a against the one run of b
        pairs_b = pairs_b * len(pairs_a)
    elif len(pairs_a) == 1:
        pairs_a = pairs_a * len(pairs_b)
    couples = [([pa[i] for i in ids], [pb[i] for i in ids]) for pa, pb in zip(pairs_a, pairs_b)]
    delta = float(np.mean([metric_from_predictions(x, metric) - metric_from_predictions(y, metric)
                           for x, y in couples]))
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(ids), size=(RESAMPLES, len(ids)))
    if metric == "accuracy":
        correct = [(_arrays(x, metric), _arrays(y, metric)) for x, y in couples]
        diffs = np.mean([(ca[resamples].mean(1) - cb[resamples].mean(1)) for ca, cb in correct], axis=0)
    else:
        diffs = np.array([np.mean([metric_from_predictions(x, metric, rows) - metric_from_predictions(y, metric, rows)
                                   for x, y in couples]) for rows in resamples[:500]])
    low, high = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
    result = {"delta": delta, "low": low, "high": high, "n": len(ids), "seed_pairs": len(couples),
              "significant": bool(low > 0 or high < 0)}
    if metric == "accuracy":
        from scipy.stats import binomtest

        only_a = sum(int(((ca == 1) & (cb == 0)).sum()) for ca, cb in correct)
        only_b = sum(int(((ca == 0) & (cb == 1)).sum()) for ca, cb in correct)
        p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        result.update(mcnemar_p=float(p), only_a=only_a, only_b=only_b, significant=bool(p < 0.05))
    return result


def describe_comparison(name_a: str, name_b: str, metric: str, result: dict) -> str:
    verdict = "significant at 0.05" if result["significant"] else "within noise"
    test = f"McNemar p = {result['mcnemar_p']:.3g}; " if "mcnemar_p" in result else ""
    return (f"{name_a} vs {name_b}: {metric} {result['delta']:+.4f} (paired bootstrap 95% interval "
            f"[{result['low']:+.4f}, {result['high']:+.4f}]; {test}n = {result['n']}): {verdict}.")


# --------------------------------------------------------------------------- curves, fronts, calibration


def learning_curves(groups: list[Group]) -> dict[str, list[tuple[float, dict]]]:
    """method -> [(size, seed summary)] for groups a size matrix made, sorted by size."""
    curves: dict[str, list[tuple[float, dict]]] = {}
    for group in groups:
        if group.size_key is None or not group.values():
            continue
        size = group.size if group.size is not None else _full_size(group)
        curves.setdefault(group.method, []).append((float(size), seed_summary(group.values())))
    return {m: sorted(points, key=lambda p: p[0]) for m, points in curves.items()}


def _full_size(group: Group) -> float:
    """A size of None means all the data: place it at the training split's size (per class
    for shots)."""
    data = group.runs[0].metrics.get("data", {})
    train = data.get("sizes", {}).get("train", 1)
    classes = max(len(data.get("class_names", [])), 1)
    return train / classes if group.size_key == "data.shots" else train


def crossovers(curves: dict[str, list[tuple[float, dict]]]) -> list[str]:
    """Sentences naming the size where one method overtakes another."""
    sentences = []
    methods = list(curves)
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            common = sorted(set(x for x, _ in curves[a]) & set(x for x, _ in curves[b]))
            if len(common) < 2:
                continue
            ya = {x: s["mean"] for x, s in curves[a]}
            yb = {x: s["mean"] for x, s in curves[b]}
            signs = [np.sign(ya[x] - yb[x]) for x in common]
            for k in range(1, len(common)):
                if signs[k] != signs[k - 1] and signs[k] != 0:
                    leader, other = (a, b) if signs[k] > 0 else (b, a)
                    sentences.append(f"{leader} overtakes {other} at {common[k]:g}.")
    return sentences


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats at lower or equal cost (cost, score)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def reliability(run_path: Path, split: str, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(bin centres, accuracy per bin, count per bin) from a run's predictions CSV."""
    from tunelab.report import read_inside

    data = read_inside(run_path, f"predictions/{split}.csv")
    if data is None:
        return None
    rows = list(csv.DictReader(data.decode("utf-8").splitlines()))
    if not rows or "probability" not in rows[0]:
        return None
    confidence = np.array([float(r["probability"]) for r in rows])
    correct = np.array([r["label"] == r["prediction"] for r in rows], dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    accuracy = np.array([correct[which == b].mean() if counts[b] else np.nan for b in range(bins)])
    return (edges[:-1] + edges[1:]) / 2, accuracy, counts
