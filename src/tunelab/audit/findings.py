"""What an audit finds in a pooled data set (every split's rows, one position each):
copies within and across splits and the copies whose labels disagree, likely label
errors, outliers, short and truncated texts, class balance. Each finding is a row of
audit.csv; the counts go to audit.json."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import numpy as np

from tunelab.data.duplicates import exact_groups, near_duplicate_pairs

SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}
EMBEDDING_THRESHOLD = 0.97  # cosine of two normalised embeddings: a paraphrase-level copy
OUTLIER_Z = 4.0  # robust z of the mean distance to the nearest neighbours
NEIGHBOURS = 5


@dataclasses.dataclass
class Pooled:
    """Every split's rows in one list: split and id of each, the text (or a description
    of the image), a key for exact copies, and the label as written."""

    splits: list[str]
    ids: list[str]
    texts: list[str]
    keys: list[str]
    given: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class Finding:
    row: int
    issue: str
    score: float
    suggested: str = ""
    copy_of: int | None = None


def original_first(members: list[int], pooled: Pooled) -> list[int]:
    """Train first, then validation, then test; within a split, file order: the copy is
    the later one, so a test row copying a train row is the one flagged."""
    return sorted(members, key=lambda i: (SPLIT_ORDER.get(pooled.splits[i], 3), i))


def duplicate_findings(pooled: Pooled, near_threshold: float,
                       neighbours: tuple[np.ndarray, np.ndarray] | None) -> tuple[list[Finding], dict]:
    """Exact copies (equal keys), near copies (MinHash over character 4-grams, confirmed
    at ``near_threshold`` Jaccard; and embeddings at EMBEDDING_THRESHOLD cosine), and
    copies whose labels disagree."""
    findings: list[Finding] = []
    flagged: set[int] = set()
    partner: dict[int, int] = {}
    conflicts = 0
    for group in exact_groups(pooled.keys):
        group = original_first(group, pooled)
        original = group[0]
        if len({pooled.given[i] for i in group}) > 1:
            conflicts += 1
            for i in group[1:]:
                if pooled.given[i] != pooled.given[original]:
                    findings.append(Finding(i, "conflicting duplicate", 1.0, pooled.given[original], original))
        for i in group[1:]:
            findings.append(Finding(i, "exact duplicate", 1.0, "", original))
            flagged.add(i)
            partner[i] = original
    near = 0
    for i, j, similarity in near_duplicate_pairs(pooled.texts, near_threshold):
        if pooled.keys[i] == pooled.keys[j]:
            continue
        original, copy = original_first([i, j], pooled)
        if copy in flagged:
            continue
        findings.append(Finding(copy, "near duplicate", float(similarity), "", original))
        if pooled.given[copy] != pooled.given[original]:
            findings.append(Finding(copy, "conflicting duplicate", float(similarity), pooled.given[original],
                                    original))
        flagged.add(copy)
        partner[copy] = original
        near += 1
    semantic = 0
    if neighbours is not None:
        nearest, similarity = neighbours
        for i in range(len(pooled)):
            j, cosine = int(nearest[i, 0]), float(similarity[i, 0])
            if cosine < EMBEDDING_THRESHOLD or pooled.keys[i] == pooled.keys[j]:
                continue
            original, copy = original_first([i, j], pooled)
            if copy in flagged or copy != i:
                continue
            findings.append(Finding(copy, "near duplicate (embedding)", cosine, "", original))
            flagged.add(copy)
            partner[copy] = original
            semantic += 1
    across = Counter(f"{pooled.splits[c]}-{pooled.splits[o]}" for c, o in partner.items()
                     if pooled.splits[c] != pooled.splits[o])
    summary = {"exact_copies": sum(f.issue == "exact duplicate" for f in findings), "near_copies": near,
               "embedding_copies": semantic, "conflicting_groups": conflicts,
               "across_splits": dict(sorted(across.items())),
               "rows_with_a_copy_in_an_earlier_split": {s: sum(1 for c, o in partner.items() if pooled.splits[c] == s
                                                              and pooled.splits[o] != s)
                                                        for s in dict.fromkeys(pooled.splits)},
               "near_threshold_jaccard": near_threshold, "embedding_threshold_cosine": EMBEDDING_THRESHOLD}
    return findings, summary


def nearest_neighbours(embeddings: np.ndarray, k: int = NEIGHBOURS, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most similar other rows by cosine, and their similarities (blocked, so
    memory stays at block x n)."""
    vectors = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    vectors = vectors.astype(np.float32)
    n = len(vectors)
    k = max(1, min(k, n - 1))
    indices = np.zeros((n, k), dtype=np.int64)
    values = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, block):
        similarity = vectors[start:start + block] @ vectors.T
        similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = -np.inf
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        top_values = np.take_along_axis(similarity, top, axis=1)
        order = np.argsort(-top_values, axis=1)
        indices[start:start + block] = np.take_along_axis(top, order, axis=1)
        values[start:start + block] = np.take_along_axis(top_values, order, axis=1)
    return indices, values


def outlier_findings(similarity: np.ndarray) -> tuple[list[Finding], dict]:
    """Rows far from every neighbour: mean cosine distance to the nearest neighbours,
    flagged above OUTLIER_Z robust standard deviations from the median."""
    distance = 1.0 - similarity.mean(axis=1)
    median = float(np.median(distance))
    spread = 1.4826 * float(np.median(np.abs(distance - median))) or 1e-9
    z = (distance - median) / spread
    rows = np.flatnonzero(z > OUTLIER_Z)
    rows = rows[np.argsort(-z[rows])]
    return [Finding(int(i), "outlier", float(z[i])) for i in rows], {
        "outliers": len(rows), "rule": f"mean cosine distance to {similarity.shape[1]} nearest neighbours more "
                                       f"than {OUTLIER_Z:g} robust SDs above the median"}


def text_findings(pooled: Pooled, token_counts: list[int] | None, max_length: int | None) -> tuple[list, dict]:
    """One-word texts and texts longer than the model reads (truncated)."""
    findings = [Finding(i, "one word", float(len(t.split()))) for i, t in enumerate(pooled.texts)
                if len(t.split()) <= 1]
    words = np.array([len(t.split()) for t in pooled.texts])
    summary = {"one_word": len(findings), "words_median": float(np.median(words)) if len(words) else 0.0,
               "words_max": int(words.max(initial=0))}
    if token_counts is not None and max_length:
        counts = np.asarray(token_counts)
        long = np.flatnonzero(counts > max_length)
        findings += [Finding(int(i), "truncated", float(counts[i])) for i in long]
        summary.update({"max_length_tokens": int(max_length), "truncated": len(long),
                        "truncated_share": float(len(long) / max(1, len(counts)))})
    return findings, summary


def class_balance(pooled: Pooled) -> dict:
    """Rows per class, overall and per split; the smallest classes and the imbalance."""
    overall = Counter(label for label in pooled.given)
    per_split: dict[str, Counter] = defaultdict(Counter)
    for split, label in zip(pooled.splits, pooled.given):
        per_split[split][label] += 1
    ordered = sorted(overall.items(), key=lambda item: (item[1], item[0]))
    return {"classes": len(overall), "counts": dict(sorted(overall.items())),
            "per_split": {s: dict(sorted(c.items())) for s, c in per_split.items()},
            "smallest": [{"class": c, "n": n} for c, n in ordered[:3]],
            "imbalance_ratio": (ordered[-1][1] / ordered[0][1]) if ordered else 1.0}
