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
