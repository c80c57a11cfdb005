"""Label encoding and seeded, stratified splitting shared by text and image data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.errors import DataError


@dataclass(frozen=True)
class LabelSpace:
    """The classes of a task. Index order follows sorted label values; the positive
    class of a binary task is index 1."""

    names: tuple[str, ...]  # human-readable class names, by index
    values: tuple[str, ...]  # the raw label values as text, by index

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def is_binary(self) -> bool:
        return len(self.names) == 2

    def index_of(self) -> dict[str, int]:
        return {value: i for i, value in enumerate(self.values)}


def _sort_key(value: object) -> tuple[int, object]:
    # Integers sort numerically and before strings; everything else by its text.
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (0, int(value))
    return (1, str(value))


def label_text(value: object) -> str:
    if isinstance(value, (np.integer,)):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build_label_space(
    train_labels: Sequence[object],
    positive_label: str | None = None,
    names: dict[str, str] | None = None,
) -> LabelSpace:
    """Classes come from the training labels; ``names`` maps raw values to display names."""
    distinct = sorted(set(train_labels), key=_sort_key)
    values = [label_text(v) for v in distinct]
    if len(set(values)) != len(values):
        raise DataError("labels mix types that read the same (e.g. 1 and '1'); use one type")
    if len(values) < 2:
        only = values[0] if values else "nothing"
        raise DataError(
            f"the training data has a single class ({only}); a classifier needs at least two"
        )
    if positive_label is not None:
        if len(values) != 2:
            raise DataError(
                f"--positive-label applies to two-class tasks; this one has {len(values)} classes"
            )
        display = [(names or {}).get(v, v) for v in values]
        if positive_label in values:
            pos = values.index(positive_label)
        elif positive_label in display:
            pos = display.index(positive_label)
        else:
            raise DataError(
                f"--positive-label {positive_label!r} is not a class; classes: {', '.join(values)}"
            )
        if pos == 0:
            values.reverse()
    display_names = tuple((names or {}).get(v, v) for v in values)
    return LabelSpace(names=display_names, values=tuple(values))


def encode_labels(labels: Sequence[object], space: LabelSpace, split: str, source: str,
                  ids: Sequence[str] | None = None) -> np.ndarray:
    """Map raw labels to class indices; unknown labels fail with the rows that hold them."""
    index = space.index_of()
    encoded = np.empty(len(labels), dtype=np.int64)
    unknown: list[int] = []
    for row, value in enumerate(labels):
        i = index.get(label_text(value))
        if i is None:
            unknown.append(row)
            encoded[row] = -1
        else:
            encoded[row] = i
    if unknown:
        shown = sorted({label_text(labels[r]) for r in unknown})[:5]
        raise DataError(
            f"{source}: {len(unknown)} {split} rows have labels that the training data lacks "
            f"({', '.join(map(repr, shown))}; rows {_rows([ids[r] for r in unknown] if ids else unknown)}); "
            f"known labels: {', '.join(space.values[:20])}"
        )
    return encoded


def _rows(rows: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (", ..." if len(rows) > limit else "")


def describe_rows(rows: Sequence[int]) -> str:
    return _rows(rows)


def stratified_indices(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into parts of the given fractions, per class, seeded.

    Each class is shuffled and cut at the same fractions, so every part keeps the
    class balance. Indices inside a part are returned sorted (original order).

    Why not scikit-learn's ``StratifiedShuffleSplit`` / ``train_test_split``: they
    split two ways only, allocate each class's share by randomised rounding over the
    whole split (a class of 3 can land wholly in one part), and refuse classes with
    one example; cutting each class at the same fractions keeps every part's class
    balance exact and makes the three-way 80/10/10 split in one pass.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        cuts = np.round(bounds * len(members)).astype(int)
        start = 0
        for p, cut in enumerate(cuts):
            parts[p].append(members[start:cut])
            start = cut
    return [np.sort(np.concatenate(p)) if p else np.array([], dtype=np.int64) for p in parts]


def stratified_subsample(labels: np.ndarray, n: int, seed: int, keep_every_class: bool = False) -> np.ndarray:
    """At most ``n`` indices, class proportions kept (largest remainders), seeded.
    (scikit-learn's splitters cannot promise one example per class; see above.)

    With ``keep_every_class`` each class present keeps at least one example (taken from
    the classes with the most places), so a capped training split never loses a class
    that the class list still has."""
    total = len(labels)
    if n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if keep_every_class and n < len(classes):
        raise DataError(f"a cap of {n} examples cannot keep one example of each of the {len(classes)} classes; "
                        f"raise --max-train-samples to at least {len(classes)}")
    exact = counts * n / total
    take = np.floor(exact).astype(int)
    # Hand out the remaining places by largest remainder, ties broken by seed.
    remainder = exact - take
    order = np.lexsort((rng.random(len(classes)), -remainder))
    for i in order[: n - take.sum()]:
        take[i] += 1
    if keep_every_class:
        for i in np.flatnonzero(take == 0):
            take[i] = 1
            take[np.argmax(take)] -= 1  # the largest share gives up a place
    chosen = []
    for cls, k in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


# A missing validation or test split is carved out of train with these fractions.
SPLIT_FRACTION = 0.1
SINGLE_FILE_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class LabelledData:
    """Validated splits of a classification task, whatever the inputs are."""

    name: str
    label_space: LabelSpace
    splits: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what was inferred or made, for the report

    @property
    def class_names(self) -> list[str]:
        return list(self.label_space.names)

    def eval_split_names(self, requested: Sequence[str] | None = None) -> list[str]:
        if requested:
            missing = [s for s in requested if s not in self.splits]
            if missing:
                raise DataError(f"split '{missing[0]}' does not exist; splits here: {', '.join(self.splits)}")
            return list(requested)
        return [s for s in self.splits if s != "train"]


def complete_splits(splits: dict[str, Any], seed: int) -> tuple[dict[str, Any], list[str]]:
    """Make missing validation/test splits from train, stratified and seeded; a lone
    split named "all" is cut 80/10/10. Splits need ``.labels`` and ``.subset()``."""
    notes = []
    if "all" in splits:
        whole = splits.pop("all")
        parts = stratified_indices(whole.labels, SINGLE_FILE_FRACTIONS, seed)
        splits.update({name: whole.subset(idx) for name, idx in zip(("train", "validation", "test"), parts)})
        notes.append(f"split the single file 80/10/10 into train/validation/test (stratified, seed {seed})")
        return splits, notes
    missing = [s for s in ("validation", "test") if s not in splits]
    if missing:
        train = splits["train"]
        fractions = [1.0 - SPLIT_FRACTION * len(missing)] + [SPLIT_FRACTION] * len(missing)
        parts = stratified_indices(train.labels, fractions, seed)
        splits["train"] = train.subset(parts[0])
        for name, idx in zip(missing, parts[1:]):
            splits[name] = train.subset(idx)
            notes.append(f"made the {name} split from {SPLIT_FRACTION:.0%} of train (stratified, seed {seed})")
    return splits, notes


def apply_caps(splits: dict[str, Any], max_train: int | None, max_eval: int | None, seed: int,
               notes: list[str]) -> dict[str, Any]:
    """Stratified, seeded caps: ``max_train`` on train, ``max_eval`` on every other split."""
    capped = {}
    for name, split in splits.items():
        cap = max_train if name == "train" else max_eval
        if cap is not None and cap < len(split):
            capped[name] = split.subset(stratified_subsample(split.labels, cap, seed,
                                                             keep_every_class=name == "train"))
            notes.append(f"capped {name} at {cap} of {len(split)} examples (stratified, seed {seed})")
        else:
            capped[name] = split
    return capped


