"""Label encoding and seeded, stratified splitting shared by text and image data."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.core.errors import DataError, counted


@dataclass(frozen=True)
class LabelSpace:
    """The targets of a task. For classes (single- or multi-label) index order follows
    sorted label values, and the positive class of a binary task is index 1; a
    regression task has no classes."""

    names: tuple[str, ...]  # human-readable class names, by index
    values: tuple[str, ...]  # the raw label values as text, by index
    problem: str = "single-label"  # a tunelab.problems name

    @property
    def num_classes(self) -> int:
        return len(self.names)

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


def label_kind(value: object) -> str:
    """A label's type as the data gives it: JSONL and Parquet keep 1, "1" and true apart."""
    if isinstance(value, (bool, np.bool_)):
        return "true/false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    return "text"


def check_one_kind(labels: Sequence[object], where: str) -> str | None:
    """The one type every label of a split has; labels that mix types (1, "1", "two",
    true) stop in one line instead of merging (1 with "1", true with 1). Splits read from
    files of different formats (numbers in Parquet, text in CSV) may differ."""
    kinds: dict[str, object] = {}
    for value in labels:
        if value is not None:
            kinds.setdefault(label_kind(value), value)
    if len(kinds) > 1:
        shown = ", ".join(f"{kind} such as {value!r}" for kind, value in kinds.items())
        raise DataError(f"{where} mix types ({shown}); give every label one type (all text, or all numbers)")
    return next(iter(kinds), None)


def build_label_space(
    train_labels: Sequence[object],
    positive_label: str | None = None,
    names: dict[str, str] | None = None,
) -> LabelSpace:
    """Classes come from the training labels; ``names`` maps raw values to display names."""
    check_one_kind(train_labels, "the training labels")
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
                f"--positive-label applies to two-class tasks; this one has {counted(len(values), 'class', 'classes')}"
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
    check_one_kind(labels, f"{source}: the {split} labels")
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
            f"{source}: {rows_have(len(unknown), split)} labels that the training data lacks "
            f"({', '.join(map(repr, shown))}; {describe_rows([ids[r] for r in unknown] if ids else unknown)}); "
            f"known labels: {', '.join(space.values[:20])}"
        )
    return encoded


def describe_rows(rows: Sequence[int], limit: int = 8) -> str:
    """``row 3`` or ``rows 3, 5, ...``: which rows, as a message names them."""
    shown = ", ".join(str(r) for r in rows[:limit])
    return ("row " if len(rows) == 1 else "rows ") + shown + (", ..." if len(rows) > limit else "")


# --------------------------------------------------------------------------- label shapes

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def is_list(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def is_real_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return bool(np.isfinite(value))
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return bool(np.isfinite(float(value)))  # parsed, then checked: "1e400" overflows to inf
    return False


def is_whole_number(value: object) -> bool:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return True
    if isinstance(value, (float, np.floating)):
        return float(value).is_integer()
    return isinstance(value, str) and bool(_INTEGER.match(value.strip()))


def regression_targets(values: Sequence[object], split: str, source: str, ids: Sequence[str]) -> np.ndarray:
    """Numeric targets, or a one-line error naming the rows that are not numbers."""
    bad = [i for i, v in enumerate(values) if v is None or not is_real_number(v)]
    if bad:
        shown = ", ".join(repr(values[i]) for i in bad[:3])
        raise DataError(f"{source}: {rows_have(len(bad), split)} a target that is not a finite number ({shown}; "
                        f"{describe_rows([ids[i] for i in bad])}); regression needs numbers")
    return np.asarray([float(v) for v in values], dtype=np.float64)


def label_sets(values: Sequence[object], separator: str | None) -> list[list[object]]:
    """Multi-label cells as lists: lists stay lists, strings split at ``separator``."""
    out = []
    for value in values:
        if is_list(value):
            out.append([v for v in value if v is not None and str(v).strip() != ""])
        elif isinstance(value, str) and separator:
            out.append([part.strip() for part in value.split(separator) if part.strip()])
        else:
            out.append([value])
    return out


def build_multilabel_space(train_sets: Sequence[Sequence[object]], names: dict[str, str] | None = None) -> LabelSpace:
    distinct = sorted({v for labels in train_sets for v in labels}, key=_sort_key)
    values = [label_text(v) for v in distinct]
    if len(values) < 2:
        raise DataError(f"the training data has {len(values)} distinct label; multi-label needs at least two")
    return LabelSpace(tuple((names or {}).get(v, v) for v in values), tuple(values), "multi-label")


def encode_label_sets(sets: Sequence[Sequence[object]], space: LabelSpace, split: str, source: str,
                      ids: Sequence[str]) -> np.ndarray:
    """(n, classes) 0/1 indicators; labels the training data lacks fail with their rows."""
    index = space.index_of()
    matrix = np.zeros((len(sets), len(space.values)), dtype=np.float32)
    unknown: list[int] = []
    for row, labels in enumerate(sets):
        for value in labels:
            i = index.get(label_text(value))
            if i is None:
                unknown.append(row)
            else:
                matrix[row, i] = 1.0
    if unknown:
        shown = sorted({label_text(v) for r in unknown for v in sets[r] if label_text(v) not in index})[:5]
        raise DataError(f"{source}: {rows_have(len(set(unknown)), split)} labels that the training data lacks "
                        f"({', '.join(map(repr, shown))}; {describe_rows([ids[r] for r in sorted(set(unknown))])})")
    return matrix


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
        notes.append(f"split the single file 80/10/10 into train/validation/test (stratified, seed {seed})")
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


def count_rows(n: int, what: str = "row") -> str:
    """``1 row``, ``3 rows``: counts in messages read right."""
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def rows_have(n: int, split: str, what: str = "row") -> str:
    """``1 train row has``, ``3 rows have`` (a lone file's rows are just rows)."""
    noun = what if split in ("all", "") else f"{split} {what}"
    return f"{count_rows(n, noun)} {'has' if n == 1 else 'have'}"


def check_splits(splits: dict[str, Any], problem, dataset: str) -> None:
    """Every split holds rows, and the train split more than one class: a one-line error
    naming the split, instead of a failure deep inside a classifier."""
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(f"{dataset}: the {name} split is empty after splitting and sampling; use more data, "
                            "a larger --max-eval-samples/--shots, or name the split files")
    if problem.exclusive_classes:
        present = len(np.unique(np.asarray(splits["train"].labels))) if "train" in splits else 2
        if present < 2:
            raise DataError(f"{dataset}: the train split holds a single class after splitting and sampling "
                            f"({count_rows(len(splits['train']))}); use more data or a larger --shots")


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
            keep = name == "train" and problem.exclusive_classes
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
    if not problem.has_classes:
        raise DataError(f"--shots samples K examples per class, and a {problem.name} task has no classes; "
                        "use --max-train-samples")
    splits = dict(splits)
    splits["train"] = train.subset(_per_class(problem.strata(train.labels), shots, seed, "training", notes,
                                              class_names))
    notes.append(f"sampled {shots} training examples per class (seed {seed}): {len(splits['train'])} in all")
    per_class = shots if validation_shots is None else validation_shots
    if per_class and "validation" in splits:
        validation = splits["validation"]
        splits["validation"] = validation.subset(_per_class(problem.strata(validation.labels), per_class, seed + 1,
                                                            "validation", notes, class_names))
        notes.append(f"kept {per_class} validation examples per class (seed {seed + 1}): "
                     f"{len(splits['validation'])} of {len(validation)}, so settings are chosen on as few labels as "
                     "a few-shot user has (--validation-shots 0 keeps them all)")
    return splits


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
