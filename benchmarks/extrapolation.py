"""How well do learning-curve forecasts hold? Runs (or reads) a long probe and TF-IDF
curve, then replays what a user with fewer sizes would have been told: for every run of
3 or 4 consecutive sizes starting at the smallest, the forecast at 2x and 4x the largest
size is checked against the mean measured there (over the same seeds). Prints, per
method and horizon, how often the measured mean fell inside the stated interval
(coverage), the mean and largest |point - measured|, and how often the forecast was
refused as too uncertain.

    python benchmarks/extrapolation.py [--out DIR] [--dataset rotten_tomatoes] [--seeds 5]
        [--sizes 8 16 32 64 128 256 512] [--model minilm]

The study runs once into --out (finished runs are kept on a rerun); the figures are
computed from its run directories. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tunelab.analysis.extrapolation import forecast
from tunelab.analysis.runs import find_runs
from tunelab.study.run import run_study
from tunelab.study.spec import load_study


def curve_study(dataset: str, model: str, sizes: list[int], seeds: int) -> dict:
    return {"command": "study", "name": "extrapolation-backtest", "baseline": "majority",
            "matrix": {"data.shots": sizes, "seed": list(range(seeds))},
            "settings": {"data": {"dataset": dataset}},
            "steps": [{"name": "majority", "command": "baseline", "kind": "majority"},
                      {"name": "tfidf", "command": "baseline", "kind": "tfidf"},
                      {"name": "probe", "command": "probe", "model": model, "features": {"pooling": "mean"},
                       "classifier": {"kind": "logreg"}}]}


def measured(root: Path) -> dict[str, dict[float, list[float]]]:
    """method -> size -> test accuracies over seeds, from the study's run directories."""
    curves: dict[str, dict[float, list[float]]] = {}
    for record in find_runs([root]):
        params = record.config.get("data", {})
        method = record.name.split("-shots")[0]
        if method == "majority" or params.get("shots") is None:
            continue
        value = record.metrics["splits"]["test"]["accuracy"]
        curves.setdefault(method, {}).setdefault(float(params["shots"]), []).append(value)
    return curves


def replay(curves: dict[str, dict[float, list[float]]]) -> list[dict]:
    rows = []
    for method, by_size in curves.items():
        sizes = sorted(by_size)
        for count in (3, 4):
            for end in range(count, len(sizes) + 1):
                seen = sizes[end - count:end]
                made = forecast(method, "accuracy", [(s, by_size[s]) for s in seen])
                for point in made.points if made else []:
                    truth = by_size.get(point["size"])
                    if not truth:
                        continue
                    row = {"method": method, "sizes": seen, "factor": point["factor"], "form": made.form,
                           "measured": float(np.mean(truth))}
                    if "value" in point:
                        row.update(value=point["value"], low=point["low"], high=point["high"],
                                   inside=point["low"] <= row["measured"] <= point["high"],
                                   error=point["value"] - row["measured"])
                    rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/extrapolation-backtest")
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    args = parser.parse_args(argv)
    root = Path(args.out)
    run_study(load_study(curve_study(args.dataset, args.model, args.sizes, args.seeds)), root)
    rows = replay(measured(root))
    print(f"{'method':8} {'sizes':22} {'x':>3} {'form':22} {'forecast':>26} {'measured':>8}  in?")
    for row in rows:
        shown = (f"{row['value']:.4f} [{row['low']:.4f}, {row['high']:.4f}]" if "value" in row else "refused")
        print(f"{row['method']:8} {str([int(s) for s in row['sizes']]):22} {row['factor']:>3g} {row['form']:22} "
              f"{shown:>26} {row['measured']:8.4f}  {row.get('inside', '-')}")
    summary = {}
    for method in sorted({r["method"] for r in rows}):
        for factor in (2.0, 4.0):
            chosen = [r for r in rows if r["method"] == method and r["factor"] == factor]
            made = [r for r in chosen if "value" in r]
            if not chosen:
                continue
            summary[f"{method}@{factor:g}x"] = {
                "forecasts": len(chosen), "refused": len(chosen) - len(made),
                "coverage": float(np.mean([r["inside"] for r in made])) if made else None,
                "mean_abs_error": float(np.mean([abs(r["error"]) for r in made])) if made else None,
                "max_abs_error": float(np.max([abs(r["error"]) for r in made])) if made else None}
    for key, value in summary.items():
        print(key, value)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
