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
from tunelab.audit.images import file_findings, image_duplicate_findings, inspect_all
from tunelab.audit.page import AUDIT_COLUMNS, audit_markdown, print_summary
from tunelab.core.config import ImageDecodingConfig, TaskConfig, check_positive, dump_yaml, setting
from tunelab.core.errors import DataError
from tunelab.core.runs import RunDirectory
from tunelab.data.duplicates import NEAR_THRESHOLD, normalise_text
from tunelab.data.images import is_image_dataset, load_image_dataset
from tunelab.data.text import load_text_dataset, resolved_data_config
from tunelab.encoders.features import FeatureCache, ImageFeatureExtractor, cached_features, pair_features
from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor, default_text_pooling, split_inputs
from tunelab.models.resolve import load_config, resolve_model
from tunelab.problems import get_problem

logger = logging.getLogger("tunelab")
AUDIT_VERSION = 1


@dataclasses.dataclass
class AuditConfig(TaskConfig):
    """What an audit reads and how hard it looks; saved as the audit's config.yaml."""

    model: str | None = setting(None, "the encoder whose embeddings find near copies, outliers and label errors "
                                "(default: minilm for text; images are checked without one unless given)",
                                flag="--model", metavar="M")
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    images: ImageDecodingConfig = dataclasses.field(default_factory=ImageDecodingConfig)  # image data with --model
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
    started = time.perf_counter()
    if is_image_dataset(config.data.dataset):
        config, pooled, findings, summary = audit_images(config)
    else:
        config, pooled, findings, summary = audit_texts(config)
    summary["seconds"] = {k: round(v, 2) for k, v in {**summary.pop("seconds", {}),
                                                       "total": time.perf_counter() - started}.items()}
    record = {"format": "tunelab-audit", "version": AUDIT_VERSION, "dataset": config.data.dataset,
              "rows": len(pooled), "flagged_rows": len({f.row for f in findings}), **summary}
    path = write_audit(config, out, overwrite, argv, record, findings, pooled)
    print_summary(record, path)
    return AuditResult(path, record)


def audit_texts(config: AuditConfig):
    """Texts and pairs: every check, with the encoder's embeddings."""
    started = time.perf_counter()
    dataset = load_text_dataset(config.data, seed=config.seed)
    data = resolved_data_config(config.data, dataset, pair_default="bi")
    config = dataclasses.replace(config, model=config.model or "minilm", data=data)
    source = resolve_model(config.model)
    pooling = config.features.pooling or default_text_pooling(source, load_config(source), data.pair_encoding)[0]
    config = dataclasses.replace(config, features=dataclasses.replace(config.features, pooling=pooling))
    extractor = TextFeatureExtractor(source, config.features, config.runtime)
    extractor.load()
    problem = get_problem(dataset.problem)
    pooled, vectors, targets = pool_splits(dataset, problem, extractor, data.pair_encoding)
    embedded = time.perf_counter()
    neighbours = nearest_neighbours(vectors)
    findings, summary = [], {"problem": problem.name, "model": config.model, "pooling": pooling,
                             "splits": {name: len(split) for name, split in dataset.splits.items()}}
    found, summary["duplicates"] = duplicate_findings(pooled, config.near_threshold, neighbours)
    findings += found
    found, summary["outliers"] = outlier_findings(neighbours[1])
    findings += found
    found, summary["texts"] = text_findings(pooled, token_counts(extractor, dataset), extractor_max_length(extractor))
    findings += found
    found, summary["label_errors"] = label_findings(problem, vectors, targets, dataset.class_names, config)
    findings += found
    summary["balance"] = balance(pooled, problem, dataset)
    summary["seconds"] = {"embedding": embedded - started}
    return config, pooled, findings, summary


def audit_images(config: AuditConfig):
    """Images: every file opened and hashed; label errors and outliers too when --model
    names an image encoder (CLIP, SigLIP or a vision backbone)."""
    dataset = load_image_dataset(config.data, seed=config.seed, flat_split="all")
    problem = get_problem(dataset.problem)
    pooled, infos = inspect_all(dataset, problem)
    findings, files = file_findings(infos)
    copies, duplicates = image_duplicate_findings(pooled, infos)
    findings += copies
    summary = {"problem": problem.name, "model": config.model or "", "pooling": "",
               "splits": {name: len(split) for name, split in dataset.splits.items()},
               "duplicates": duplicates, "images": files, "balance": balance(pooled, problem, dataset)}
    not_run = "not run: give --model (an image encoder) for label errors and outliers"
    summary["outliers"] = {"outliers": 0, "rule": not_run}
    summary["label_errors"] = {"flagged": 0, "share": 0.0, "method": not_run, "per_class": []}
    if config.model:
        source = resolve_model(config.model)
        extractor = ImageFeatureExtractor(source, config.images, config.features.batch_size, config.runtime,
                                          config.features.pooling)
        cache = FeatureCache() if config.features.cache else None
        vectors = np.concatenate([cached_features(extractor, split, f"{name} features", cache)[0]
                                  for name, split in dataset.splits.items()])
        usable = np.isfinite(vectors).all(axis=1)
        vectors = np.where(usable[:, None], vectors, 0.0)
        targets = np.concatenate([split.labels for split in dataset.splits.values()])
        found, summary["outliers"] = outlier_findings(nearest_neighbours(vectors)[1])
        findings += [f for f in found if usable[f.row]]
        found, summary["label_errors"] = label_findings(problem, vectors, targets, dataset.class_names, config)
        findings += found
    return config, pooled, findings, summary


def label_findings(problem, vectors: np.ndarray, targets: np.ndarray, names: list[str], config: AuditConfig):
    """Likely label errors, as the problem finds them, and their summary."""
    issues = problem.label_issues(vectors, targets, names, config.folds, config.seed)
    findings = [Finding(int(row), "label error", float(score), suggestion)
                for row, score, suggestion in zip(issues.rows, issues.scores, issues.suggestions)]
    return findings, {"flagged": len(issues.rows), "share": len(issues.rows) / max(1, len(targets)),
                      **issues.notes, "per_class": issues.per_class}


def balance(pooled: Pooled, problem, dataset) -> dict:
    """Class counts (classes), or the targets' range per split (numbers)."""
    if dataset.class_names:
        return class_balance(pooled)
    return {"per_split": {name: problem.target_counts(split.labels, dataset.class_names)
                          for name, split in dataset.splits.items()}}


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
        run.write_json("inputs.json", {"run_id": run.run_id, "dataset": config.data.dataset,
                                       "model": config.model})
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
