"""The audit against planted problems and against cleanlab: take a labelled data set,
flip a seeded 5% of the training labels (each to another class, uniformly), plant 50
exact and 50 lightly edited copies of test texts into train, then run ``tunelab audit``
and cleanlab's Datalab on the same features and the same out-of-fold probabilities.

    python benchmarks/audit.py [--dataset rotten_tomatoes] [--model minilm] [--seed 0] [--quick]

Prints precision, recall and F1 of the flagged label errors among training rows (each
method at the number it flags), the share of planted copies found, the share of clean
rows flagged as copies, and the time each took; ends with one JSON line. cleanlab is
AGPL-3.0: install it yourself to compare (pip install cleanlab); the audit never uses it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path


def edit(text: str, rng: random.Random) -> str:
    """A light edit: one word dropped, two neighbours swapped, or one word added."""
    words = text.split()
    if len(words) < 4:
        return text + " indeed"
    kind, i = rng.randrange(3), rng.randrange(1, len(words) - 1)
    if kind == 0:
        del words[i]
    elif kind == 1:
        words[i], words[i + 1] = words[i + 1], words[i]
    else:
        words.insert(i, rng.choice(["really", "quite", "very", "just", "so"]))
    return " ".join(words)


def plant(dataset, folder: Path, copies: int, flip_share: float, seed: int) -> dict:
    """Write train/validation/test CSVs with planted flips and copies; return what was planted."""
    rng = random.Random(seed)
    names = dataset.class_names
    rows = {name: [[t, names[int(y)]] for t, y in zip(split.texts, split.labels)]
            for name, split in dataset.splits.items()}
    flipped = set(rng.sample(range(len(rows["train"])), round(flip_share * len(rows["train"]))))
    for i in flipped:
        rows["train"][i][1] = rng.choice([n for n in names if n != rows["train"][i][1]])
    chosen = rng.sample(range(len(rows["test"])), 2 * copies)
    pairs = []  # (test id, train id, kind)
    for k, t in enumerate(chosen):
        text, label = rows["test"][t]
        rows["train"].append([text if k < copies else edit(text, rng), label])
        pairs.append((str(t + 1), str(len(rows["train"])), "exact" if k < copies else "edited"))
    folder.mkdir(parents=True, exist_ok=True)
    for name, split_rows in rows.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(split_rows)
    return {"flipped": {str(i + 1) for i in flipped}, "pairs": pairs, "train_rows": len(rows["train"])}


def scores(flagged: set, planted: set) -> dict:
    hits = len(flagged & planted)
    precision = hits / len(flagged) if flagged else 0.0
    recall = hits / len(planted) if planted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"flagged": len(flagged), "precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1,500 training rows and 20 + 20 copies: CI-sized")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from tunelab.audit.run import AuditConfig, audit
    from tunelab.core.config import DataConfig
    from tunelab.data.text import load_text_dataset

    work = Path(tempfile.mkdtemp(prefix="tunelab-audit-bench-"))
    source = load_text_dataset(DataConfig(dataset=args.dataset, max_train_samples=1500 if args.quick else None))
    planted = plant(source, work / "data", 20 if args.quick else 50, 0.05, args.seed)

    start = time.perf_counter()
    result = audit(AuditConfig(model=args.model, data=DataConfig(dataset=str(work / "data")), seed=args.seed),
                   out=work / "audit")
    audit_seconds = time.perf_counter() - start
    with open(work / "audit" / "audit.csv", newline="", encoding="utf-8") as handle:
        found = list(csv.DictReader(handle))
    ours = {r["id"] for r in found if r["issue"] == "label error" and r["split"] == "train"}
    copy_issues = {"exact duplicate", "near duplicate", "near duplicate (embedding)"}
    links = {frozenset({(r["split"], r["id"]), (r["copy_split"], r["copy_id"])}) for r in found
             if r["issue"] in copy_issues}
    wanted = {kind: [frozenset({("test", t), ("train", tr)}) for t, tr, k in planted["pairs"] if k == kind]
              for kind in ("exact", "edited")}
    copies_found = {kind: sum(p in links for p in pairs) / len(pairs) for kind, pairs in wanted.items()}
    planted_rows = {row for pairs in wanted.values() for pair in pairs for row in pair}
    flagged_as_copies = {(r["split"], r["id"]) for r in found if r["issue"] in copy_issues}
    clean_flagged = len(flagged_as_copies - planted_rows) / result.summary["rows"]
    table = {"audit": {**scores(ours, planted["flipped"]), "seconds": round(audit_seconds, 1)}}

    try:
        from cleanlab import Datalab
    except ImportError:
        print("cleanlab is not installed here: only the audit is measured")
    else:
        import numpy as np

        from tunelab.audit.run import pool_splits
        from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor
        from tunelab.models.resolve import resolve_model
        from tunelab.problems import get_problem
        from tunelab.problems.label_quality import out_of_fold_probabilities

        dataset = load_text_dataset(DataConfig(dataset=str(work / "data")))
        extractor = TextFeatureExtractor(resolve_model(args.model), FeatureConfig(pooling=result.summary["pooling"]),
                                         AuditConfig().runtime)
        pooled, vectors, targets = pool_splits(dataset, get_problem(dataset.problem), extractor, None)  # cached
        probabilities, _ = out_of_fold_probabilities(vectors, targets, 5, args.seed)
        start = time.perf_counter()
        lab = Datalab(data={"label": targets}, label_name="label", verbosity=0)
        lab.find_issues(features=vectors, pred_probs=probabilities, issue_types={"label": {}, "near_duplicate": {}})
        issues = lab.get_issues()
        train = np.array([s == "train" for s in pooled.splits])
        theirs = {pooled.ids[i] for i in np.flatnonzero(issues["is_label_issue"].to_numpy() & train)}
        near = lab.get_issues("near_duplicate")
        cl_links = {frozenset({(pooled.splits[i], pooled.ids[i]), (pooled.splits[j], pooled.ids[j])})
                    for i in np.flatnonzero(near["is_near_duplicate_issue"].to_numpy())
                    for j in near["near_duplicate_sets"].iloc[i]}
        table["cleanlab"] = {**scores(theirs, planted["flipped"]), "seconds": round(time.perf_counter() - start, 1),
                             "copies_found": {k: sum(p in cl_links for p in v) / len(v) for k, v in wanted.items()}}

    print(f"{args.dataset}: {planted['train_rows']:,} training rows, {len(planted['flipped'])} labels flipped, "
          f"{len(wanted['exact'])} exact and {len(wanted['edited'])} edited copies of test texts planted")
    print("| method | flagged | precision | recall | F1 | seconds |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['flagged']} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
              f"{row['seconds']} |")
    print(f"planted copies found by the audit: exact {copies_found['exact']:.0%}, edited {copies_found['edited']:.0%};"
          f" clean rows flagged as copies: {clean_flagged:.2%}")
    summary = {"benchmark": "audit", "dataset": args.dataset, "model": args.model,
               "audit_f1": table["audit"]["f1"], "cleanlab_f1": table.get("cleanlab", {}).get("f1"),
               "exact_copies_found": copies_found["exact"], "edited_copies_found": copies_found["edited"],
               "clean_rows_flagged_as_copies": round(clean_flagged, 4), "audit_seconds": table["audit"]["seconds"],
               "cleanlab_seconds": table.get("cleanlab", {}).get("seconds"),
               "cleanlab_copies_found": table.get("cleanlab", {}).get("copies_found")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
