"""Which unlabelled examples to label next, from a model's uncertainty: the one ranking
that ``tunelab select`` (a finished run's Predictor on a pool file) and the active-
learning simulation (a probe retrained round by round) both use. Strategies: ``entropy``
(the class distribution's entropy), ``margin`` (the smallest gap between the two best
classes, a.k.a. breaking ties), ``diverse`` (uncertain examples spread over embedding
space with no near-copies: uncertainty-weighted k-means++ seeding over the most
uncertain candidates) and ``random``. Ties are broken by a seeded shuffle."""

from __future__ import annotations

import numpy as np

from tunelab.core.errors import TunelabError
from tunelab.data.duplicates import near_duplicate_pairs, normalise_text

STRATEGIES = ("entropy", "margin", "diverse", "random")
NEAR_COSINE = 0.9  # two picks closer than this in embedding space are near copies
CANDIDATES_PER_PICK = 10  # diverse: the k x this most uncertain examples are the candidates


def uncertainty_order(uncertainty: np.ndarray, shuffle: np.ndarray) -> np.ndarray:
    """Indices from most to least uncertain; equal uncertainty in ``shuffle``'s order."""
    return shuffle[np.argsort(-uncertainty[shuffle], kind="stable")]


def diverse_candidates(order: np.ndarray, k: int) -> np.ndarray:
    return order[:min(len(order), max(k * CANDIDATES_PER_PICK, 200))]


def diverse_picks(vectors: np.ndarray, uncertainty: np.ndarray, texts: list[str] | None, k: int) -> list[int]:
    """Up to k positions among the candidates (rows of unit ``vectors``, their
    ``uncertainty`` and ``texts``; None for images): each next pick maximises uncertainty x
    (distance to the nearest pick)^2, never a near copy of a pick (the same text once
    normalised, character 4-gram Jaccard >= 0.7, or embedding cosine >= NEAR_COSINE).
    Fewer than k where the rest are all near copies of the picks."""
    near: dict[int, set[int]] = {}
    for a, b, _ in near_duplicate_pairs(texts) if texts is not None else []:
        near.setdefault(a, set()).add(b)
        near.setdefault(b, set()).add(a)
    keys = [normalise_text(t) for t in texts] if texts is not None else [str(i) for i in range(len(vectors))]
    weights = uncertainty - uncertainty.min() + 1e-9
    allowed = np.ones(len(vectors), dtype=bool)
    distance = np.full(len(vectors), 2.0)
    picks: list[int] = []
    while len(picks) < k and allowed.any():
        score = np.where(allowed, weights * distance ** 2, -np.inf)
        pick = int(np.argmax(score))
        picks.append(pick)
        cosine = vectors @ vectors[pick]
        distance = np.minimum(distance, 1.0 - cosine)
        allowed &= cosine < NEAR_COSINE
        allowed[list(near.get(pick, ()))] = False
        allowed &= np.array([key != keys[pick] for key in keys])
    return picks


def choose(strategy: str, k: int, rng: np.random.Generator, uncertainty: tuple[np.ndarray, np.ndarray] | None,
           n: int, embed=None, texts=None) -> np.ndarray:
    """The ``k`` of ``n`` examples to label next, best first. ``uncertainty`` is (margin,
    entropy) per example; for ``diverse``, ``embed(indices)`` gives unit vectors and
    ``texts(indices)`` the texts near copies are judged on (None for images), asked only
    for the candidates. Where ``diverse`` finds fewer than k that are no near copies of
    each other, the most uncertain of the rest fill the batch."""
    shuffle = rng.permutation(n)
    if strategy == "random":
        return shuffle[:k]
    if uncertainty is None:
        raise TunelabError("a model that predicts numbers carries no uncertainty of its own: use the random "
                           "strategy, or a model that predicts classes")
    values = uncertainty[0 if strategy == "margin" else 1]
    order = uncertainty_order(values, shuffle)
    if strategy != "diverse":
        return order[:k]
    candidates = diverse_candidates(order, k)
    picks = diverse_picks(embed(candidates), values[candidates], texts(candidates) if texts else None, k)
    taken = set(picks)
    rest = [i for i in range(len(candidates)) if i not in taken]
    return candidates[picks + rest[:k - len(picks)]]
