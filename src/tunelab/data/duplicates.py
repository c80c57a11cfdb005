"""Copies in a data set: exact duplicates after normalising case, whitespace and
punctuation, and near duplicates by MinHash over character 4-grams (candidates from
locality-sensitive hashing, each confirmed by its exact Jaccard similarity). Within a
split and across splits; what an audit reports and what ``--dedup`` drops.

MinHash is written here (numpy over scikit-learn's hashed n-grams) rather than taken from
datasketch: the whole collection is hashed in one vectorised pass, deterministic across
processes (murmurhash, not Python's salted hash), and every candidate pair is confirmed
exactly, so the threshold stated is the threshold applied."""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

NEAR_THRESHOLD = 0.7  # Jaccard similarity of character 4-gram sets
SHINGLE = 4
PERMUTATIONS, BANDS = 100, 20  # 20 bands of 5 rows: a pair at Jaccard 0.7 is a candidate with probability 0.975
_PRIME = (1 << 61) - 1
_PUNCTUATION = re.compile(r"[^\w\s]+", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Lower case, accents kept, punctuation removed, whitespace collapsed: the form in
    which two texts that differ only in a comma or a capital are equal."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCTUATION.sub(" ", text)).strip()


def exact_groups(keys: Sequence[str]) -> list[list[int]]:
    """Positions sharing a key (a normalised text, or a normalised pair), two or more each."""
    where: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        where[key].append(i)
    return [group for group in where.values() if len(group) > 1]


def shingle_matrix(texts: Sequence[str]):
    """A sparse 0/1 matrix of each text's hashed character 4-grams (2^22 buckets)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(analyzer="char", ngram_range=(SHINGLE, SHINGLE), n_features=1 << 22,
                                   alternate_sign=False, norm=None, binary=True, lowercase=False)
    padded = [f" {t} " if len(t) + 2 >= SHINGLE else t.ljust(SHINGLE) for t in texts]
    matrix = vectorizer.transform(padded).tocsr()
    matrix.sort_indices()
    return matrix


def minhash_signatures(matrix, seed: int = 0) -> np.ndarray:
    """(n, PERMUTATIONS) MinHash signatures of the rows of a sparse 0/1 matrix."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, PERMUTATIONS, dtype=np.uint64)
    b = rng.integers(0, _PRIME, PERMUTATIONS, dtype=np.uint64)
    indices = matrix.indices.astype(np.uint64)
    starts = matrix.indptr[:-1]
    empty = np.diff(matrix.indptr) == 0
    signatures = np.full((matrix.shape[0], PERMUTATIONS), np.iinfo(np.uint64).max, dtype=np.uint64)
    if len(indices) == 0:
        return signatures
    safe_starts = np.minimum(starts, len(indices) - 1)
    for k in range(PERMUTATIONS):
        values = (a[k] * indices + b[k]) % np.uint64(_PRIME)  # wraps modulo 2^64 first: still a fine hash
        reduced = np.minimum.reduceat(values, safe_starts)
        signatures[:, k] = np.where(empty, signatures[:, k], reduced)
    return signatures


def jaccard(matrix, i: int, j: int) -> float:
    a = matrix.indices[matrix.indptr[i]:matrix.indptr[i + 1]]
    b = matrix.indices[matrix.indptr[j]:matrix.indptr[j + 1]]
    if not len(a) and not len(b):
        return 1.0
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)


def near_duplicate_pairs(texts: Sequence[str], threshold: float = NEAR_THRESHOLD,
                         seed: int = 0) -> list[tuple[int, int, float]]:
    """Pairs (i, j, Jaccard) with i < j whose character 4-gram sets overlap at least
    ``threshold`` (normalised texts); exact copies included."""
    matrix = shingle_matrix([normalise_text(t) for t in texts])
    signatures = minhash_signatures(matrix, seed)
    rows = PERMUTATIONS // BANDS
    candidates: set[tuple[int, int]] = set()
    for band in range(BANDS):
        block = np.ascontiguousarray(signatures[:, band * rows:(band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        boundaries = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        for bucket in np.split(order, boundaries):
            if 1 < len(bucket) <= 200:  # a bucket of hundreds is boilerplate; its pairs come from other bands
                members = sorted(bucket.tolist())
                candidates.update((x, y) for k, x in enumerate(members) for y in members[k + 1:])
    found = []
    for i, j in sorted(candidates):
        similarity = jaccard(matrix, i, j)
        if similarity >= threshold:
            found.append((i, j, similarity))
    return found


def difference_hash(image, size: int = 8) -> int:
    """A 64-bit perceptual hash (dHash): the sign of horizontal gradients of the image
    shrunk to 9x8 grey pixels; near-identical pictures differ in a few bits."""
    from PIL import Image

    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int(sum(1 << k for k, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count() if hasattr(int, "bit_count") else bin(a ^ b).count("1")


# --------------------------------------------------------------------------- copies of training rows

_COPIES_CACHE: dict[tuple[str, str, float], np.ndarray] = {}


def split_keys(split) -> tuple[list[str], list[str]]:
    """(exact-copy keys, texts for near copies) of a text split: a pair's two texts together."""
    if split.pairs is None:
        return [normalise_text(t) for t in split.texts], list(split.texts)
    keys = [f"{normalise_text(a)}\t{normalise_text(b)}" for a, b in zip(split.texts, split.pairs)]
    return keys, [f"{a} || {b}" for a, b in zip(split.texts, split.pairs)]


def copies_of(reference: tuple[list[str], list[str]], rows: tuple[list[str], list[str]],
              threshold: float = NEAR_THRESHOLD) -> np.ndarray:
    """Which of ``rows`` (keys, texts) copy a row of ``reference``: equal keys, or
    character 4-gram Jaccard at least ``threshold``. Kept per process: the runs of a study
    share their splits, and each asks once."""
    import hashlib

    digest = lambda values: hashlib.sha256("\x00".join(values).encode("utf-8", "surrogatepass")).hexdigest()  # noqa: E731
    cache_key = (digest(reference[0]), digest(rows[0]), threshold)
    if cache_key in _COPIES_CACHE:
        return _COPIES_CACHE[cache_key].copy()
    known = set(reference[0])
    copied = np.array([key in known for key in rows[0]], dtype=bool)
    size = len(reference[1])
    for i, j, _ in near_duplicate_pairs(reference[1] + rows[1], threshold):
        if i < size <= j:
            copied[j - size] = True
    _COPIES_CACHE[cache_key] = copied
    return copied.copy()


def _same_label(labels: np.ndarray, i: int, j: int) -> bool:
    return bool(np.array_equal(labels[i], labels[j]))


def drop_copies(splits: dict, notes: list[str], threshold: float = NEAR_THRESHOLD) -> dict:
    """--dedup: training rows without copies. Dropped from train: every copy of a
    validation or test row (exact or near), later copies of another training row, and
    every copy in a group whose labels disagree (which one is right is unknown). Said in
    a note with the counts."""
    train = splits["train"]
    keys, texts = split_keys(train)
    drop = np.zeros(len(train), dtype=bool)
    held_out = [split_keys(s) for name, s in splits.items() if name != "train" and len(s)]
    leaked = np.zeros(len(train), dtype=bool)
    for reference in held_out:
        leaked |= copies_of(reference, (keys, texts), threshold)
    groups: dict[int, list[int]] = {}
    for group in exact_groups(keys):
        groups[group[0]] = group
    for i, j, _ in near_duplicate_pairs(texts, threshold):
        groups.setdefault(i, [i]).append(j)
    repeated = conflicting = 0
    for members in groups.values():
        members = sorted(set(members))
        if any(not _same_label(train.labels, members[0], m) for m in members[1:]):
            drop[members] = True
            conflicting += len(members)
        else:
            drop[members[1:]] = True
            repeated += len(members) - 1
    drop |= leaked
    if drop.any():
        splits = dict(splits)
        splits["train"] = train.subset(np.flatnonzero(~drop))
    notes.append(f"--dedup dropped {int(drop.sum())} of {len(train)} training rows: {int(leaked.sum())} copies of "
                 f"validation or test rows, {repeated} repeated training rows, {conflicting} rows in groups of "
                 f"copies whose labels disagree (exact after normalising, or character 4-gram Jaccard >= "
                 f"{threshold:g})")
    return splits
