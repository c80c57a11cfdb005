"""Labels as a problem reads them: the class list (LabelSpace) built from the training
labels, encoding every split against it, the shapes labels come in (classes, label sets,
numbers), and one type per split. The data readers hand raw labels over; the problem
kinds (single_label, multi_label, regression) call these to encode them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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


def count_rows(n: int, what: str = "row") -> str:
    """``1 row``, ``3 rows``: counts in messages read right."""
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def rows_have(n: int, split: str, what: str = "row") -> str:
    """``1 train row has``, ``3 rows have`` (a lone file's rows are just rows)."""
    noun = what if split in ("all", "") else f"{split} {what}"
    return f"{count_rows(n, noun)} {'has' if n == 1 else 'have'}"
