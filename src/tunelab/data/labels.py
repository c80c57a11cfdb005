"""Seeded, stratified splitting shared by text and image data: splits made where the
data lacks them, caps, shots. Label encoding is the problems' (tunelab.problems.labels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.core.errors import DataError, counted
from tunelab.data.duplicates import drop_copies
from tunelab.problems.labels import LabelSpace, count_rows


def stratified_indices(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into parts of the given fractions, per class, seeded.

    Each class is shuffled and cut at the same fractions, so every part keeps the
    class balance. Where rounding per class leaves a later part short of its share of
    the whole (small classes: a class of 6 cut 80/10/10 gives 5/0/1), the part is
    topped up from the largest classes' first part, so every part gets its share and
    none is empty while there are rows for it; every class keeps one example in the
    first part. Indices inside a part are returned sorted (original order).

    Why not scikit-learn's ``StratifiedShuffleSplit`` / ``train_test_split``: they
    split two ways only, allocate each class's share by randomised rounding over the
    whole split (a class of 3 can land wholly in one part), and refuse classes with
    one example; cutting each class at the same fractions keeps every part's class
    balance exact and makes the three-way 80/10/10 split in one pass.
    """
    rng = np.random.default_rng(seed)
    cells: list[list[np.ndarray]] = []  # per class, per part
    bounds = np.cumsum(fractions)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        cuts = np.round(bounds * len(members)).astype(int)
        start, row = 0, []
        for cut in cuts:
            row.append(members[start:cut])
            start = cut
        cells.append(row)
    targets = _part_sizes(len(labels), fractions)
    for part in range(1, len(fractions)):
        while sum(len(row[part]) for row in cells) < targets[part]:
            donor = max(cells, key=lambda row: len(row[0]))
            if len(donor[0]) < 2:
                break
            donor[part] = np.append(donor[part], donor[0][-1])
            donor[0] = donor[0][:-1]
    parts = [[row[p] for row in cells] for p in range(len(fractions))]
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.array([], dtype=np.int64) for p in parts]


def _part_sizes(total: int, fractions: Sequence[float]) -> list[int]:
    """Each part's share of ``total`` rows (rounded), at least one row per part when
    there are enough rows."""
    sizes = [int(round(f * total)) for f in fractions]
    if total >= len(fractions):
        sizes = [max(1, size) for size in sizes]
    return sizes


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
        raise DataError(f"a cap of {counted(n, 'example')} cannot keep one example of each of the "
                        f"{counted(len(classes), 'class', 'classes')}; "
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

    @property
    def problem(self) -> str:
        return self.label_space.problem

    def eval_split_names(self, requested: Sequence[str] | None = None) -> list[str]:
        if requested:
            missing = [s for s in requested if s not in self.splits]
            if missing:
                raise DataError(f"split '{missing[0]}' does not exist; splits here: {', '.join(self.splits)}")
            return list(requested)
        return [s for s in self.splits if s != "train"]


def complete_splits(splits: dict[str, Any], seed: int, problem) -> tuple[dict[str, Any], list[str]]:
    """Make missing validation/test splits from train, stratified and seeded; a lone
    split named "all" is cut 80/10/10. Splits need ``.labels`` and ``.subset()``. Too
    few rows for a split fails with one line that says how many are needed."""
    notes = []
    if "all" in splits:
        whole = splits.pop("all")
        if len(whole) < len(SINGLE_FILE_FRACTIONS):
            raise DataError(f"the data has {count_rows(len(whole))}: too few to cut into train, validation and test "
                            "(80/10/10); give at least 3 rows (10 or more per class keep every class in every "
                            "split), or pass validation and test files")
        parts = stratified_indices(problem.strata(whole.labels), SINGLE_FILE_FRACTIONS, seed)
        splits.update({name: whole.subset(idx) for name, idx in zip(("train", "validation", "test"), parts)})
        notes.append(f"split the data (no split files or folders) 80/10/10 into train/validation/test "
                     f"(stratified, seed {seed})")
        return splits, notes
    missing = [s for s in ("validation", "test") if s not in splits]
    if missing:
        train = splits["train"]
        fractions = [1.0 - SPLIT_FRACTION * len(missing)] + [SPLIT_FRACTION] * len(missing)
        if len(train) < len(fractions):
            raise DataError(f"the train split has {count_rows(len(train))}: too few to also make "
                            f"{' and '.join(missing)} from it; give at least {len(fractions)} rows, or pass "
                            f"{' and '.join(missing)} files (--{missing[0]}-split)")
        parts = stratified_indices(problem.strata(train.labels), fractions, seed)
        splits["train"] = train.subset(parts[0])
        for name, idx in zip(missing, parts[1:]):
            splits[name] = train.subset(idx)
            notes.append(f"made the {name} split from {SPLIT_FRACTION:.0%} of train (stratified, seed {seed})")
    return splits, notes


def check_splits(splits: dict[str, Any], problem, dataset: str) -> None:
    """Every split holds rows, and the train split more than one class: a one-line error
    naming the split, instead of a failure deep inside a classifier."""
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(f"{dataset}: the {name} split is empty after splitting and sampling; use more data, "
                            "a larger --max-eval-samples/--shots, or name the split files")
    if "train" in splits:
        problem.check_training_targets(splits["train"].labels, f"{dataset}: the train split "
                                       f"({count_rows(len(splits['train']))}) after splitting and sampling")


def apply_caps(splits: dict[str, Any], max_train: int | None, max_eval: int | None, seed: int,
               notes: list[str], problem, eval_seed: int | None = None) -> dict[str, Any]:
    """Stratified, seeded caps: ``max_train`` on train (drawn with the run's ``seed``),
    ``max_eval`` on every other split (drawn with ``eval_seed``, the data's seed, so that
    every seed of a study scores the same examples and paired tests see them all)."""
    capped = {}
    for name, split in splits.items():
        cap = max_train if name == "train" else max_eval
        draw = seed if name == "train" or eval_seed is None else eval_seed
        if cap is not None and cap < len(split):
            keep = problem.keeps_every_class(name)
            capped[name] = split.subset(stratified_subsample(problem.strata(split.labels), cap, draw,
                                                             keep_every_class=keep))
            notes.append(f"capped {name} at {cap} of {len(split)} examples (stratified, seed {draw})")
        else:
            capped[name] = split
    return capped


def finish_splits(splits: dict[str, Any], cfg, seed: int, notes: list[str], space: LabelSpace, dataset: str,
                  problem, complete: bool = True) -> dict[str, Any]:
    """The one way every loader turns read splits into the splits a run uses: missing
    validation/test made from train (with the data's split seed), K shots per class,
    caps, then every split checked non-empty. ``cfg`` is a DataConfig; ``problem`` the
    tunelab.problems.Problem, which says how to stratify."""
    if complete:
        splits, made = complete_splits(splits, cfg.split_seed, problem)
        notes.extend(made)
    if getattr(cfg, "dedup", False):
        splits = drop_copies(splits, notes)
    splits = apply_shots(splits, cfg.shots, seed, notes, problem, space.names, cfg.validation_shots)
    splits = apply_caps(splits, cfg.max_train_samples, cfg.max_eval_samples, seed, notes, problem,
                        eval_seed=cfg.split_seed)
    check_splits(splits, problem, dataset)
    return splits


def apply_shots(splits: dict[str, Any], shots: int | None, seed: int, notes: list[str], problem,
                class_names: Sequence[str] = (), validation_shots: int | None = None) -> dict[str, Any]:
    """``shots`` training examples per class, seeded (all of a class that has fewer, and a
    note says so). Validation and test were made before, so they never hold a chosen
    example. The validation split, which picks checkpoints, thresholds and settings,
    keeps ``validation_shots`` per class (default: ``shots``; 0 keeps it whole), so a
    few-shot run sees as few labels as a user with K examples per class has."""
    if shots is None:
        return splits
    train = splits["train"]
    problem.check_shots()
    splits = dict(splits)
    splits["train"] = train.subset(_per_class(problem.strata(train.labels), shots, seed, "training", notes,
                                              class_names))
    notes.append(f"sampled {shots} training examples per class (seed {seed}): {len(splits['train'])} in all")
    per_class = shots if validation_shots is None else validation_shots
    if per_class and "validation" in splits:
        validation = splits["validation"]
        splits["validation"] = validation.subset(_per_class(problem.strata(validation.labels), per_class, seed + 1,
                                                            "validation", notes, class_names))
        kept = len(splits["validation"])
        notes.append((f"kept up to {per_class} validation examples per class (seed {seed + 1}): {kept} of "
                      f"{len(validation)}, so settings are chosen on as few labels as a few-shot user has "
                      "(--validation-shots 0 keeps them all)") if kept < len(validation) else
                     f"kept all {len(validation)} validation examples: no class has more than {per_class}")
    return splits


def per_class_rows(groups: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """``shots`` rows of each group (all of a smaller one), seeded, as --shots draws them."""
    return _per_class(groups, shots, seed, "", [], ())


def _per_class(groups: np.ndarray, shots: int, seed: int, what: str, notes: list[str],
               class_names: Sequence[str]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        if len(members) < shots:
            short.append((int(group), len(members)))
        chosen.append(members[rng.permutation(len(members))[:shots]])
    if short:
        notes.append(f"classes with fewer than {shots} {what} examples keep them all: "
                     + ", ".join(f"{class_names[g] if 0 <= g < len(class_names) else g} ({n})"
                                 for g, n in short[:10]))
    return np.sort(np.concatenate(chosen))
