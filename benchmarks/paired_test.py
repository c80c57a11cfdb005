"""Does the report's paired test hold its error rate, and what power does it have?
Replays real prediction files: from a run's predictions (its per-item correctness),
seeds are simulated with real seed variance (each seed flips a seed-specific share of
items, so seeds differ in accuracy as fine-tuning seeds do), then

- the null: two "methods" drawn from the same distribution, a family of comparisons
  corrected with Holm; the family-wise error is the share of families with any
  "significant";
- the alternatives: A's wrong items flipped to right until A is ahead by +0.02, +0.05
  or +0.10, in a family of the same size; power is the share called significant.

Both procedures see the same simulated families: the previous one (the larger p of a
seeds-and-items bootstrap and a paired t over seeds, Holm over the family) and today's
(the paired t over seeds, corrected over pre-ordered chains by tunelab's own
``correct``: the tested alternative is the report's first claim, the chosen method
against the floor, in a chain with the runner-up claim; a curve of three sizes; the rest
one chain each).

    python benchmarks/paired_test.py [--predictions FILE.csv] [--seeds 3] [--family 10] [--trials 400] [--quick]
    python benchmarks/paired_test.py --runs runs/lab03-curve/probe-shots128-seed* [--seeds 3]

Without ``--predictions`` it uses a Rotten Tomatoes-sized run drawn at accuracy 0.78.
With ``--runs`` (at least twice ``--seeds`` run directories of one method, its seeds)
no seed is simulated: every comparison draws 2 x seeds of the real runs, and half pose
as method A, half as method B (the null with the seed variance the method really has).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

import numpy as np


def correctness_of(path: str | None, rng: np.random.Generator) -> np.ndarray:
    if path is None:
        return rng.random(1066) < 0.78
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([r["label"] == r["prediction"] for r in rows])


def run_correctness(runs: list[str]) -> list[np.ndarray]:
    """Per run directory, its test items right or wrong, in one item order."""
    out = []
    for run in runs:
        with open(f"{run}/predictions/test.csv", newline="", encoding="utf-8") as handle:
            rows = sorted(csv.DictReader(handle), key=lambda r: r["id"])
        out.append(np.array([r["label"] == r["prediction"] for r in rows]))
    return out


def seeds_of(base: np.ndarray, k: int, rng: np.random.Generator, spread: tuple[float, float]) -> list[np.ndarray]:
    """k seeds of one method: each flips its own share of items (drawn from ``spread``)."""
    out = []
    for _ in range(k):
        flip = rng.random(len(base)) < rng.uniform(*spread)
        out.append(base ^ flip)
    return out


def improved(seeds: list[np.ndarray], delta: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Each seed with wrong items flipped to right until it is ahead by ``delta``."""
    out = []
    for s in seeds:
        wrong = np.flatnonzero(~s)
        fix = rng.choice(wrong, size=min(len(wrong), int(round(delta * len(s)))), replace=False)
        t = s.copy()
        t[fix] = True
        out.append(t)
    return out


def p_today(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    from scipy.stats import ttest_1samp

    deltas = np.array([x.mean() - y.mean() for x, y in zip(a, b)])
    return float(ttest_1samp(deltas, 0.0).pvalue) if deltas.std() > 0 else 1.0


def p_before(a: list[np.ndarray], b: list[np.ndarray], rng: np.random.Generator, draws: int = 1000) -> float:
    """The larger p of a bootstrap over seed pairs and items together and the paired t."""
    k, n = len(a), len(a[0])
    diff = np.stack([x.astype(float) - y.astype(float) for x, y in zip(a, b)])  # (k, n)
    items = rng.integers(0, n, size=(draws, n))
    seeds = rng.integers(0, k, size=(draws, k))
    per_couple = np.stack([diff[c][items].mean(axis=1) for c in range(k)])  # (k, draws)
    statistic = per_couple[seeds, np.arange(draws)[:, None]].mean(axis=1)
    below, above = int((statistic <= 0).sum()), int((statistic >= 0).sum())
    p_boot = min(1.0, 2 * (min(below, above) + 1) / (draws + 1))
    return max(p_boot, p_today(a, b))


def holm_any(pvalues: list[float], alpha: float = 0.05) -> list[bool]:
    order = np.argsort(pvalues)
    m, rejected, out = len(pvalues), True, [False] * len(pvalues)
    for rank, i in enumerate(order):
        rejected = rejected and pvalues[i] * (m - rank) < alpha
        out[i] = rejected
    return out


def chained(pvalues: list[float], structure: list[list[int]]) -> list[bool]:
    """Which hypotheses tunelab's chained correction rejects."""
    from tunelab.analysis.comparisons import Claim, correct
    from tunelab.core.stats import PairedTest

    claims = [Claim(None, None, "test", "accuracy", "floor", PairedTest(0.0, 0.0, 0.0, p, 1, 3, "", []))
              for p in pvalues]
    correct([[claims[i] for i in chain] for chain in structure])
    return [c.result.significant for c in claims]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", help="a run's predictions CSV (label and prediction columns)")
    parser.add_argument("--runs", nargs="+", metavar="DIR", help="real seeds of one method (run directories)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--family", type=int, default=10, help="comparisons corrected together")
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--seed-spread", default="0.02,0.08", help="range of the share of items a seed flips")
    parser.add_argument("--procedures", default="before,today",
                        help="which to simulate (today alone is fast: --procedures today --trials 2000)")
    parser.add_argument("--quick", action="store_true", help="60 trials: a CI-sized run")
    parser.add_argument("--seed", type=int, default=0, help="the simulation's random seed")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    trials = 60 if args.quick else args.trials
    spread = tuple(float(v) for v in args.seed_spread.split(","))
    real = run_correctness(args.runs) if args.runs else None
    if real is not None and len(real) < 2 * args.seeds:
        parser.error(f"--runs: {len(real)} runs cannot pose as two methods of {args.seeds} seeds each")
    base = real[0] if real is not None else correctness_of(args.predictions, rng)
    structure = [[0, 1], [2, 3, 4]] + [[i] for i in range(5, args.family)]
    names = [n for n in ("before", "today") if n in args.procedures.split(",")]
    results = {name: {"fwer": 0, "power": {d: 0 for d in (0.02, 0.05, 0.10)}} for name in names}

    def decide(family) -> dict[str, list[bool]]:
        procedures = {"before": lambda: holm_any([p_before(a, b, rng) for a, b in family]),
                      "today": lambda: chained([p_today(a, b) for a, b in family], structure)}
        return {name: procedures[name]() for name in names}

    def draw():
        if real is not None:  # real seeds of one method posing as two
            chosen = rng.choice(len(real), size=2 * args.seeds, replace=False)
            return [real[i] for i in chosen[:args.seeds]], [real[i] for i in chosen[args.seeds:]]
        return seeds_of(base, args.seeds, rng, spread), seeds_of(base, args.seeds, rng, spread)

    for _ in range(trials):
        for name, rejected in decide([draw() for _ in range(args.family)]).items():
            results[name]["fwer"] += any(rejected)
        for delta in (0.02, 0.05, 0.10):
            a0, b0 = draw()
            family = [(improved(a0, delta, rng), b0)] + [draw() for _ in range(args.family - 1)]
            for name, rejected in decide(family).items():
                results[name]["power"][delta] += rejected[0]
    for r in results.values():
        r["fwer"] /= trials
        r["power"] = {d: hits / trials for d, hits in r["power"].items()}
    mc = 1.96 * np.sqrt(0.05 * 0.95 / trials)
    where = (f"{len(real)} real runs of one method" if real is not None else
             f"seed flip share {spread[0]:g}-{spread[1]:g}")
    print(f"{len(base)} items, {args.seeds} seeds, families of {args.family}, {trials} trials each; {where}; "
          f"Monte-Carlo error of a 0.05 rate: ±{mc:.3f}")
    print("| procedure | family-wise error | power +0.02 | power +0.05 | power +0.10 |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['fwer']:.3f} | {r['power'][0.02]:.2f} | {r['power'][0.05]:.2f} | "
              f"{r['power'][0.10]:.2f} |")
    print(json.dumps({"benchmark": "paired_test", "items": len(base), "seeds": args.seeds, "family": args.family,
                      "trials": trials, **{f"{name}_fwer": r["fwer"] for name, r in results.items()},
                      **{f"{name}_power_{d}": p for name, r in results.items() for d, p in r["power"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
