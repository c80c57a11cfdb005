"""What a set of runs says together: seed groups, which runs may be compared (the same
data, split and examples), the floor and the chosen method (chosen on validation),
paired seed-aware tests corrected over pre-ordered chains, learning curves and where one method
overtakes another, cost fronts and calibration. Everything is recomputed from the
runs' own files (metrics, configuration, inputs record, prediction files), so the
report's numbers can be checked against them; the statistics live in ``tunelab.core.stats``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.analysis.runs import SIZE_KEYS, RunRecord, read_predictions
from tunelab.core.presets import matrix_suffix
from tunelab.core.safety import read_inside
from tunelab.core.stats import (
    ALPHA,
    PairedTest,
    better,
    correlation_interval,
    paired_test,
    seed_summary,
    wilson_interval,
)
from tunelab.problems import headline_metric

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading runs


# --------------------------------------------------------------------------- seed groups


@dataclasses.dataclass
class Group:
    """Runs that differ only in their seed."""

    name: str
    method: str  # the study step (or run) the group belongs to: one line of a learning curve
    runs: list[RunRecord]
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

    def data_identity(self) -> str:
        return self.runs[0].data_identity()

    def values(self, split: str | None = None, metric: str | None = None) -> list[float]:
        split, metric = split or self.main_split(), metric or self.metric()
        return [r.metrics["splits"][split][metric] for r in self.runs if metric in r.metrics["splits"].get(split, {})]

    def mean(self, split: str | None = None) -> float | None:
        values = self.values(split)
        return float(np.mean(values)) if values else None

    def labels_seen(self) -> int | None:
        return self.runs[0].labels_seen()


def group_runs(records: list[RunRecord], outcomes: list | None = None) -> list[Group]:
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
            name = outcome.group + (f"-{matrix_suffix(params)}" if params else "")
            group = groups.setdefault(key, Group(name, outcome.group, [], params.get(size_key), size_key))
        else:
            key = record.identity()
            group = groups.setdefault(key, Group(record.name, record.name, []))
        group.runs.append(record)
    for group in groups.values():
        group.runs.sort(key=lambda r: (str(type(r.seed)), r.seed if r.seed is not None else 0))
    return list(groups.values())


def group_summary(group: Group, split: str | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of a group's headline metric: over seeds, or one run's interval."""
    split = split or group.main_split()
    values, metric = group.values(split), group.metric()
    if not values:
        return float("nan"), float("nan"), float("nan")
    if len(values) > 1:
        summary = seed_summary(values, metric)
        return summary["mean"], summary["low"], summary["high"]
    run_values = group.runs[0].metrics["splits"][split]
    if metric == "accuracy":
        return (values[0], *wilson_interval(values[0], run_values["n"]))
    if metric in ("spearman", "pearson"):
        return (values[0], *correlation_interval(values[0], run_values["n"], spearman=metric == "spearman"))
    return values[0], float("nan"), float("nan")


# --------------------------------------------------------------------------- families, floor, choice


@dataclasses.dataclass
class Family:
    """Groups scored on the same examples with the same headline metric: only these are
    compared with each other."""

    groups: list[Group]
    split: str
    metric: str
    dataset: str  # the dataset as the runs name it


def families(groups: list[Group]) -> list[Family]:
    out: dict[tuple, Family] = {}
    for group in groups:
        key = (group.data_identity(), group.main_split(), group.metric())
        family = out.setdefault(key, Family([], group.main_split(), group.metric(),
                                            str(group.runs[0].metrics.get("dataset"))))
        family.groups.append(group)
    return list(out.values())


CHOICE_SPLIT = "validation"


def choose_best(groups: list[Group], metric: str) -> tuple[Group | None, str]:
    """The group with the best mean on the validation split, and the split that chose it
    (the main split, said as such, only where no group has a validation split)."""
    scored = [g for g in groups if g.values(CHOICE_SPLIT, metric)]
    split = CHOICE_SPLIT
    if not scored:
        scored, split = [g for g in groups if g.values()], groups[0].main_split() if groups else CHOICE_SPLIT
    best = None
    for group in scored:
        if best is None or better(metric, float(np.mean(group.values(split, metric))),
                                  float(np.mean(best.values(split, metric)))):
            best = group
    return best, split


def choice_stability(groups: list[Group], best: Group, split: str, metric: str, read: dict,
                     draws: int = 1000, seed: int = 0) -> float | None:
    """How firmly ``split`` chose ``best``: the share of bootstrap resamples in which
    ``best`` still has the highest accuracy, each run's own examples resampled (few-shot
    runs keep their own validation rows) and averaged over the group's seeds as the choice
    averages them. None where the metric is not accuracy or predictions are missing."""
    if metric != "accuracy":
        return None
    rng = np.random.default_rng(seed)
    means, keys = [], []
    for group in groups:
        per_run = []
        for run in group.runs:
            n = run.metrics["splits"].get(split, {}).get("n")
            if (run.path, split) not in read:
                read[run.path, split] = read_predictions(run.path, split, n if isinstance(n, int) else None)
            rows = read[run.path, split]
            if isinstance(rows, str) or not rows:
                break
            right = np.array([label == predicted for label, predicted in rows.values()], dtype=float)
            per_run.append(right[rng.integers(0, len(right), size=(draws, len(right)))].mean(axis=1))
        else:
            if per_run:
                means.append(np.mean(per_run, axis=0))
                keys.append(id(group))
    if id(best) not in keys or len(keys) < 2:
        return None
    winners = np.stack(means).argmax(axis=0)
    return float((winners == keys.index(id(best))).mean())


def find_floor(family: Family, baseline: str | None) -> tuple[Group | None, str]:
    """The one floor every comparison of a family is made against: the study's declared
    baseline step (the best of its groups on validation, if it has several), else the
    best on validation of the runs that need no pretrained model. Returns (group, how it
    was defined)."""
    named = [g for g in family.groups if baseline and (g.method == baseline or g.name == baseline)]
    if named:
        floor, split = choose_best(named, family.metric)
        return floor, f"the declared baseline {baseline}" + (
            f", best of its groups on {split}" if len(named) > 1 else "")
    pool = [g for g in family.groups if g.command == "baseline"]
    if pool:
        floor, split = choose_best(pool, family.metric)
        return floor, f"the best on {split} of the runs that need no pretrained model"
    return None, ""


# --------------------------------------------------------------------------- paired comparisons


def seed_couples(a: Group, b: Group) -> list[tuple[RunRecord, RunRecord]]:
    """Runs of A and B paired by seed. A group of one run (a deterministic floor, say) is
    paired with every run of the other; otherwise only seeds both have are paired."""
    if len(a.runs) == 1 or len(b.runs) == 1:
        return [(ra, rb) for ra in a.runs for rb in b.runs]
    by_seed = {repr(r.seed): r for r in b.runs}
    return [(ra, by_seed[repr(ra.seed)]) for ra in a.runs if repr(ra.seed) in by_seed]


def compare(a: Group, b: Group, split: str, metric: str, read: dict | None = None) -> PairedTest | str:
    """A against B on the examples both scored, by the seed-aware paired test; or, where
    they cannot be paired, the reason in words. ``read`` keeps prediction files already
    parsed (a report compares the floor with every method: its file is read once)."""
    if a.data_identity() != b.data_identity():
        return "different data (dataset content, splits or evaluation caps differ)"
    couples = seed_couples(a, b)
    if not couples:
        return "no seed in common"
    rows, read = {}, {} if read is None else read
    for run in {id(r): r for pair in couples for r in pair}.values():
        if (run.path, split) not in read:
            n = run.metrics["splits"].get(split, {}).get("n")
            read[run.path, split] = read_predictions(run.path, split, n if isinstance(n, int) else None)
        predictions = read[run.path, split]
        if isinstance(predictions, str):
            return f"{run.name} left out of pairing: {predictions}"
        rows[id(run)] = predictions
    ids = sorted(set.intersection(*(set(p) for p in rows.values())))
    if len(ids) < 2:
        return "fewer than two examples in common"
    aligned = [([rows[id(ra)][i] for i in ids], [rows[id(rb)][i] for i in ids]) for ra, rb in couples]
    try:
        return paired_test(aligned, metric)
    except ValueError as exc:
        return str(exc)


@dataclasses.dataclass
class Claim:
    """One comparison a report states, with its test; the report's correction runs over
    pre-ordered chains of claims (see ``correct``)."""

    a: Group
    b: Group
    split: str
    metric: str
    purpose: str  # declared | floor | runner-up | crossover | zero-shot
    result: PairedTest | str
    direction: str = "ahead"  # zero-shot claims: ahead (a overtakes b) or behind (b beats a)


def correct(chains: list[list[Claim]]) -> None:
    """Fixed-sequence testing within pre-ordered chains, weighted Bonferroni across them
    (a graphical procedure, Bretz et al. 2009): every chain starts with an equal share
    of ALPHA and tests its claims in order, moving on only while they hold; a chain whose
    claims all hold passes its share on to the chains still testing. The family-wise
    error stays at ALPHA under any dependence, and the claims a reader asks first (the
    chosen method against the floor and the runner-up; each curve from its largest size
    down) are not diluted by every exploratory comparison, as one flat Holm family
    dilutes them. ``p_adjusted`` is p over the share its claim was tested at (below
    ALPHA exactly when it holds); a claim after one that did not hold is never tested."""
    chains = [[c for c in chain if isinstance(c.result, PairedTest)] for chain in chains]
    chains = [chain for chain in chains if chain]
    if not chains:
        return
    weights = [1.0 / len(chains)] * len(chains)
    position = [0] * len(chains)
    active = set(range(len(chains)))
    moved = True
    while moved and active:
        moved = False
        for i in sorted(active):
            claim = chains[i][position[i]]
            if claim.result.p < ALPHA * weights[i]:
                claim.result.p_adjusted = claim.result.p / weights[i]
                position[i] += 1
                moved = True
                if position[i] == len(chains[i]):
                    active.discard(i)
                    for j in active:
                        weights[j] += weights[i] / len(active)
                    weights[i] = 0.0
    for i in active:
        running = 0.0
        for claim in chains[i][position[i]:]:
            running = max(running, min(1.0, claim.result.p / weights[i]))
            claim.result.p_adjusted = running


# --------------------------------------------------------------------------- curves, fronts, calibration


def learning_curves(groups: list[Group]) -> dict[str, list[tuple[float, Group]]]:
    """method -> [(size, group)] for groups a size matrix made, sorted by size. Methods
    that learn from no label (zero-shot) are references, not curves."""
    curves: dict[str, list[tuple[float, Group]]] = {}
    for group in groups:
        if group.size_key is None or not group.values() or group.labels_seen() == 0:
            continue
        size = group.size if group.size is not None else _full_size(group)
        curves.setdefault(group.method, []).append((float(size), group))
    return {m: sorted(points, key=lambda p: p[0]) for m, points in curves.items()}


def _full_size(group: Group) -> float:
    """A size of None means all the data: place it at the training split's size (per class
    for shots)."""
    data = group.runs[0].metrics.get("data", {})
    train = data.get("sizes", {}).get("train", 1)
    classes = max(len(data.get("class_names", [])), 1)
    return train / classes if group.size_key == "data.shots" else train


def zero_label_references(groups: list[Group]) -> list[Group]:
    """Groups that learnt from no label at all (zero-shot): the point at 0 labels and the
    level every learning curve is measured against."""
    return [g for g in groups if g.labels_seen() == 0 and g.values()]


def crossover_candidates(curves: dict[str, list[tuple[float, Group]]]) -> list[tuple[Group, Group, float, float]]:
    """(leader, other, size, previous size) wherever the mean of one method's curve passes
    another's between two sizes both tried; each is claimed only if its test holds."""
    found = []
    methods = list(curves)
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            at_a, at_b = dict(curves[a]), dict(curves[b])
            common = sorted(set(at_a) & set(at_b))
            signs = [np.sign(at_a[x].mean() - at_b[x].mean()) for x in common]
            metric = at_a[common[0]].metric() if common else "accuracy"
            for k in range(1, len(common)):
                if signs[k] != signs[k - 1] and signs[k] != 0:
                    x = common[k]
                    ahead = at_a[x] if better(metric, at_a[x].mean(), at_b[x].mean()) else at_b[x]
                    behind = at_b[x] if ahead is at_a[x] else at_a[x]
                    found.append((ahead, behind, x, common[k - 1]))
    return found


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats at lower or equal cost (cost, score)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_optimal(costs: list[tuple[float, ...]], scores: list[float]) -> list[bool]:
    """Whether each point is on the front of several costs at once: no other point scores
    at least as well at no more of every cost, and better or cheaper somewhere."""
    flags = []
    for i, (cost, score) in enumerate(zip(costs, scores)):
        dominated = any(
            scores[j] >= score and all(a <= b for a, b in zip(costs[j], cost))
            and (scores[j] > score or any(a < b for a, b in zip(costs[j], cost)))
            for j in range(len(costs)) if j != i)
        flags.append(not dominated)
    return flags


def reliability(run_path: Path, split: str, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(bin centres, accuracy per bin, count per bin) from a run's predictions CSV."""
    data = read_inside(run_path, f"predictions/{split}.csv")
    if data is None:
        return None
    try:
        rows = list(csv.DictReader(data.decode("utf-8").splitlines()))
        if not rows or "probability" not in rows[0]:
            return None
        confidence = np.array([float(r["probability"]) for r in rows])
        correct_rows = np.array([r["label"] == r["prediction"] for r in rows], dtype=float)
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error):
        return None
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    accuracy = np.array([correct_rows[which == b].mean() if counts[b] else np.nan for b in range(bins)])
    return (edges[:-1] + edges[1:]) / 2, accuracy, counts
