"""Ordered classes: the same encoder and budget on STS-B's similarity scores rounded to
six ordered classes (0 to 5), learnt three ways: as unordered classes (single-label), as
numbers (regression; its predictions rounded to the nearest class to count accuracy),
and as ordered classes (``--problem ordinal``). Every run sees the same examples; the
figures are computed here from each run's predictions file, the same way for all three.

    python benchmarks/ordinal.py [--model minilm] [--data-dir DIR] [--seeds 0 1] [--steps N] [--quick]

Fine-tuning (pairs encoded jointly, lr 1e-4, 200 steps of 16) and the linear probe
(C chosen on validation), each at the same settings for the three problems. Ends with
one JSON line: per method and problem, test MAE (in classes), accuracy and quadratic
weighted kappa, means over seeds.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def rounded_stsb(source: Path, target: Path, limit: int | None) -> Path:
    """STS-B's CSV files with the score rounded to a whole class (0 to 5)."""
    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        with open(source / f"{split}.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        rows = rows[: limit if split == "train" else (limit // 4 if limit else None)] if limit else rows
        with open(target / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence1", "sentence2", "label"])
            for row in rows:
                writer.writerow([row["sentence1"], row["sentence2"], int(round(float(row["score"])))])
    return target


def figures(run: Path) -> dict:
    """MAE, accuracy and QWK of a run's test predictions, a number prediction rounded to
    the nearest class (clipped to 0..5)."""
    from sklearn.metrics import cohen_kappa_score

    with open(run / "predictions" / "test.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    gold = np.array([int(round(float(r["label"]))) for r in rows])
    predicted = np.clip(np.rint([float(r["prediction"]) for r in rows]), 0, 5).astype(int)
    return {"mae": float(np.mean(np.abs(gold - predicted))), "accuracy": float(np.mean(gold == predicted)),
            "qwk": float(cohen_kappa_score(gold, predicted, weights="quadratic", labels=list(range(6))))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="hub id, local directory or alias (default minilm)")
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps of batch 16 (default 200)")
    parser.add_argument("--quick", action="store_true", help="400 training pairs, 20 steps: a CI-sized run")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import tunelab
    from tunelab.core.config import DataConfig
    from tunelab.models.classifiers import ClassifierConfig
    from tunelab.tasks.probe import ProbeConfig

    work = Path(tempfile.mkdtemp(prefix="tunelab-ordinal-bench-"))
    data = rounded_stsb(Path(args.data_dir) / "stsb", work / "data", 400 if args.quick else None)
    steps = 20 if args.quick else args.steps
    results: dict[str, dict[str, list[dict]]] = {}

    def run(method: str, problem: str, seed: int, out: Path) -> None:
        """One run, at the same settings for the three problems."""
        data_config = DataConfig(dataset=str(data), problem=problem)
        if method == "finetune":
            tunelab.finetune(tunelab.FinetuneConfig(
                model=args.model, data=dataclasses.replace(data_config, pair_encoding="cross"), seed=seed,
                train=tunelab.TrainConfig(max_steps=steps, eval_every=max(steps // 2, 1), batch_size=16, lr=1e-4)),
                out=out)
        else:
            tunelab.probe(ProbeConfig(model=args.model, data=data_config, seed=seed, classifier=ClassifierConfig(
                kind="ridge" if problem == "regression" else "logreg", tune=True)), out=out)

    for seed in args.seeds:
        for problem in ("single-label", "regression", "ordinal"):
            for method in ("finetune", "probe"):
                out = work / f"{method}-{problem}-seed{seed}"
                run(method, problem, seed, out)
                results.setdefault(method, {}).setdefault(problem, []).append(figures(out))
    print(f"\nSTS-B scores rounded to 6 ordered classes, {args.model}, seeds {args.seeds}, test:")
    print(f"{'method':<9} {'problem':<13} {'MAE':>7} {'accuracy':>9} {'QWK':>7}")
    summary = {}
    for method, by_problem in results.items():
        for problem, values in by_problem.items():
            mean = {k: float(np.mean([v[k] for v in values])) for k in ("mae", "accuracy", "qwk")}
            summary[f"{method}_{problem}"] = {k: round(v, 4) for k, v in mean.items()}
            print(f"{method:<9} {problem:<13} {mean['mae']:7.4f} {mean['accuracy']:9.4f} {mean['qwk']:7.4f}")
    print(json.dumps({"benchmark": "ordinal", "seeds": args.seeds, "steps": steps, **summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
