"""tunelab audit DATA: read a data set as every command does, embed it once (cached
features, the same encoder a probe uses), and find what would bend the numbers:
copies within and across splits, copies with different labels, likely label errors,
outliers, one-word and truncated texts, class balance. Writes audit.json, audit.csv and
audit.md to a run directory (never clobbered; --overwrite replaces only an audit
tunelab made) and returns the summary."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.audit.findings import (
    Finding,
    Pooled,
    class_balance,
    duplicate_findings,
    nearest_neighbours,
    outlier_findings,
    text_findings,
)
from tunelab.audit.page import AUDIT_COLUMNS, audit_markdown, print_summary
from tunelab.core.config import TaskConfig, check_positive, dump_yaml, setting
from tunelab.core.errors import DataError
from tunelab.core.runs import RunDirectory
from tunelab.data.duplicates import NEAR_THRESHOLD, normalise_text
from tunelab.data.images import is_image_dataset
from tunelab.data.text import load_text_dataset, resolved_data_config
from tunelab.encoders.features import FeatureCache, pair_features
from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor, default_text_pooling, split_inputs
from tunelab.models.resolve import load_config, resolve_model
from tunelab.problems import get_problem

logger = logging.getLogger("tunelab")
AUDIT_VERSION = 1


@dataclasses.dataclass
class AuditConfig(TaskConfig):
    """What an audit reads and how hard it looks; saved as the audit's config.yaml."""

    model: str = setting("minilm", "the encoder whose embeddings find near copies, outliers and label errors",
                         flag="--model", metavar="M")
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    folds: int = setting(5, "cross-validation folds of the probe whose out-of-fold predictions find label errors",
                         flag="--folds", metavar="K")
    near_threshold: float = setting(NEAR_THRESHOLD, "Jaccard similarity of character 4-grams from which two "
                                    "texts are near copies", flag="--near-threshold", metavar="J")

    def __post_init__(self) -> None:
        check_positive("folds", self.folds)
        if not 0 < self.near_threshold <= 1:
            raise DataError(f"--near-threshold {self.near_threshold}: give a Jaccard similarity in (0, 1]")


@dataclasses.dataclass
class AuditResult:
    path: Path
    summary: dict[str, Any]


def audit(config: AuditConfig, out: str | Path | None = None, overwrite: bool = False,
          argv: list[str] | None = None) -> AuditResult:
    """Audit ``config.data.dataset``; see the module docstring."""
    RunDirectory.check_target(out, overwrite)
    if is_image_dataset(config.data.dataset):
        raise DataError(f"{config.data.dataset} holds images; tunelab audit reads text data so far")
    started = time.perf_counter()
    dataset = load_text_dataset(config.data, seed=config.seed)
    data = resolved_data_config(config.data, dataset, pair_default="bi")
    source = resolve_model(config.model)
    pooling = config.features.pooling or default_text_pooling(source, load_config(source), data.pair_encoding)[0]
    config = dataclasses.replace(config, data=data, features=dataclasses.replace(config.features, pooling=pooling))
    extractor = TextFeatureExtractor(source, config.features, config.runtime)
    extractor.load()
    problem = get_problem(dataset.problem)
    names = dataset.class_names

    pooled, vectors, targets = pool_splits(dataset, problem, extractor, data.pair_encoding)
    embedded = time.perf_counter()
    neighbours = nearest_neighbours(vectors)
    findings, summary = [], {}
    found, summary["duplicates"] = duplicate_findings(pooled, config.near_threshold, vectors, neighbours)
    findings += found
    found, summary["outliers"] = outlier_findings(neighbours[1])
    findings += found
    found, summary["texts"] = text_findings(pooled, token_counts(extractor, dataset), extractor_max_length(extractor))
    findings += found
    issues = problem.label_issues(vectors, targets, names, config.folds, config.seed)
    findings += [Finding(int(row), "label error", float(score), suggestion)
                 for row, score, suggestion in zip(issues.rows, issues.scores, issues.suggestions)]
    summary["label_errors"] = {"flagged": len(issues.rows), "share": len(issues.rows) / max(1, len(pooled)),
                               **issues.notes, "per_class": issues.per_class}
    summary["balance"] = class_balance(pooled) if names else {
        "per_split": {name: problem.target_counts(split.labels, names) for name, split in dataset.splits.items()}}
    seconds = {"embedding": embedded - started, "total": time.perf_counter() - started}
    record = {"format": "tunelab-audit", "version": AUDIT_VERSION, "dataset": config.data.dataset,
              "problem": problem.name, "model": config.model, "pooling": pooling, "rows": len(pooled),
              "splits": {name: len(split) for name, split in dataset.splits.items()},
              "flagged_rows": len({f.row for f in findings}), **summary,
              "seconds": {k: round(v, 2) for k, v in seconds.items()}}
    path = write_audit(config, out, overwrite, argv, record, findings, pooled)
    print_summary(record, path)
    return AuditResult(path, record)


def pool_splits(dataset, problem, extractor, pair_encoding: str | None):
    """Every split's rows in one list, their features (cached) and their targets."""
    cache = FeatureCache() if extractor.config.cache else None
    splits, ids, texts, keys, given, vectors, targets = [], [], [], [], [], [], []
    for name, split in dataset.splits.items():
        first, second = split_inputs(split.inputs)
        features, _ = pair_features(extractor, split.inputs, pair_encoding or "bi", f"{name} features", cache)
        splits += [name] * len(split)
        ids += [str(i) for i in split.ids]
        if second is None:
            texts += first
            keys += [normalise_text(t) for t in first]
        else:
            texts += [f"{a} || {b}" for a, b in zip(first, second)]
            keys += [f"{normalise_text(a)}\t{normalise_text(b)}" for a, b in zip(first, second)]
        given += problem.label_texts(split.labels, dataset.class_names)
        vectors.append(features)
        targets.append(split.labels)
    if not splits:
        raise DataError(f"{dataset.name} holds no rows to audit")
    return Pooled(splits, ids, texts, keys, given), np.concatenate(vectors), np.concatenate(targets)


def token_counts(extractor, dataset) -> list[int]:
    """Tokens of each text (the longer side of a pair), in pooled order, untruncated."""
    counts = []
    for split in dataset.splits.values():
        first, second = split_inputs(split.inputs)
        lengths = [len(ids) for ids in extractor.tokenizer(first, truncation=False)["input_ids"]]
        if second is not None:
            other = [len(ids) for ids in extractor.tokenizer(second, truncation=False)["input_ids"]]
            lengths = [max(a, b) for a, b in zip(lengths, other)]
        counts += lengths
    return counts


def extractor_max_length(extractor) -> int:
    """The tokens the encoder reads: the setting, capped by the model's own limit."""
    limit = getattr(extractor.tokenizer, "model_max_length", None) or extractor.config.max_length
    if limit > 100_000:  # tokenizers without a declared limit report a huge sentinel
        limit = extractor.config.max_length
    return int(min(extractor.config.max_length, limit))


def write_audit(config: AuditConfig, out, overwrite: bool, argv, record: dict, findings: list[Finding],
                pooled: Pooled) -> Path:
    """The audit's run directory: config.yaml, command.txt, inputs.json, audit.json,
    audit.csv (one row per finding, worst first within each issue) and audit.md."""
    run = RunDirectory.start(out, "audit", dump_yaml(config, "audit"), argv, overwrite=overwrite)
    try:
        run.write_json("inputs.json", {"run_id": run.run_id, "dataset": config.data.dataset, "model": config.model})
        order = sorted(findings, key=lambda f: (f.issue, -f.score, f.row))
        columns: dict[str, list] = {name: [] for name in AUDIT_COLUMNS}
        for f in order:
            copy = f.copy_of
            for name, value in zip(AUDIT_COLUMNS, (
                    pooled.splits[f.row], pooled.ids[f.row], f.issue, round(f.score, 6), pooled.given[f.row],
                    f.suggested, pooled.splits[copy] if copy is not None else "",
                    pooled.ids[copy] if copy is not None else "", pooled.texts[f.row][:300])):
                columns[name].append(value)
        run.write_table("audit.csv", columns)
        run.write_json("audit.json", record)
        run.write_text("audit.md", audit_markdown(record, order, pooled))
        return run.commit()
    except BaseException:
        run.abandon()
        raise
