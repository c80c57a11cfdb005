"""Text data files read as their formats define them (CSV, TSV without quoting, JSONL,
Parquet; byte-order marks, CR LF, shards), split files recognised by name, and the
text, pair and label columns picked (the defaults, or the one common alternative)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunelab.core.config import DataConfig
from tunelab.core.errors import DataError
from tunelab.data.sources import TEXT_FILE_SUFFIXES, split_name_of


@dataclass
class RawSplit:
    texts: list[object]
    labels: list[object]
    ids: list[str]
    source: str  # file name for messages
    pairs: list[object] | None = None


@dataclass
class RawTable:
    splits: dict[str, RawSplit]
    columns: dict[str, str | None]  # text, pair, label
    label_names: dict[str, str] | None = None  # raw value -> display name (HF ClassLabel)
    notes: list[str] = field(default_factory=list)


def read_frame(path: Path):
    """A data file as a table, read the way its format defines it: CSV with quotes, TSV
    without quote characters (a field may begin with a quote mark), a byte-order mark
    and CR LF line ends allowed, and a row with the wrong number of fields an error
    naming the file and the row, never a silent skip."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return _read_delimited(path, "\t" if suffix == ".tsv" else ",")
        if suffix == ".jsonl" or (suffix == ".json" and _looks_like_jsonl(path)):
            return pd.DataFrame(_read_json_lines(path))
        if suffix == ".json":
            return pd.DataFrame(json.loads(path.read_text(encoding="utf-8-sig")))
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
            for column in frame.columns:  # list columns arrive as numpy arrays
                if frame[column].dtype == object and len(frame) and isinstance(frame[column].iloc[0], np.ndarray):
                    frame[column] = [list(v) if isinstance(v, np.ndarray) else v for v in frame[column]]
            return frame
    except DataError:
        raise
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # pandas/pyarrow parser errors have many types
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    raise DataError(f"cannot read {path}: unknown file type '{suffix}'")


def _read_delimited(path: Path, delimiter: str):
    """Python's csv module rather than pandas: pandas fills a short row with empty values
    silently (changing n) and needs guesswork to turn quoting off; here every cell stays
    text (numeric-looking sentences stay sentences) and every row is checked."""
    import pandas as pd

    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path.name}: the file is empty (no header row)")
        if len(set(header)) != len(header):
            repeated = sorted({c for c in header if header.count(c) > 1})
            raise DataError(f"{path.name}: the header repeats the column names {', '.join(map(repr, repeated))}")
        rows = []
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise DataError(f"{path.name}: row {reader.line_num} has {len(row)} fields where the header has "
                                f"{len(header)}; fix the row"
                                + (" (a quote mark inside a field?)" if delimiter == "," else ""))
            rows.append(row)
    return pd.DataFrame(rows, columns=header, dtype=object)


def _read_json_lines(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name}: line {number} is not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path.name}: line {number} is not a JSON object")
            records.append(record)
    return records


def _looks_like_jsonl(path: Path) -> bool:
    with path.open(encoding="utf-8-sig") as handle:
        first = handle.readline().strip()
        second = handle.readline().strip()
    return first.startswith("{") and (second.startswith("{") or not second)


def _frame_split(frame, cfg: DataConfig, source: str, table_columns: dict) -> RawSplit:
    columns, notes = pick_columns([str(c) for c in frame.columns], cfg, source)
    for key, column in columns.items():
        previous = table_columns.setdefault(key, column)
        if previous != column:
            raise DataError(f"{source}: {key} column '{column}' differs from '{previous}' in other splits")
    table_columns.setdefault("notes", notes)
    texts = frame[columns["text"]].tolist()
    pairs = frame[columns["pair"]].tolist() if columns["pair"] else None
    labels = [None if is_missing_label(v) else v for v in frame[columns["label"]].tolist()]
    return RawSplit(texts, labels, [str(i + 1) for i in range(len(frame))], source, pairs)


# Label cells that spreadsheets and pandas write for "no value": never a class.
MISSING_LABEL_TEXTS = frozenset({"", "nan", "null", "n/a", "#n/a", "<na>"})


def is_missing_label(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_LABEL_TEXTS


def finish_table(splits: dict[str, RawSplit], columns: dict, notes: list[str]) -> RawTable:
    return RawTable(splits, {k: columns.get(k) for k in ("text", "pair", "label")},
                     notes=list(columns.get("notes", [])) + notes)


def read_text_file(path: Path, cfg: DataConfig) -> RawTable:
    columns: dict = {}
    split = _frame_split(read_frame(path), cfg, path.name, columns)
    return finish_table({"all": split}, columns, [])


def assign_splits(names: Sequence[str], cfg: DataConfig, where: str) -> dict[str, list[str]]:
    """Which of a dataset's splits (or split files) are tunelab's train, validation and
    test: the names given with --train-split / --validation-split / --test-split, else
    the usual names (dev and val for validation; shards such as train-00000-of-00002)."""
    assigned: dict[str, list[str]] = {}
    claimed: set[str] = set()
    for split, requested in cfg.split_names.items():
        if requested is None:
            continue
        found = [n for n in names if n == requested or _shard_base(n) == requested]
        if not found:
            raise DataError(f"{where} has no split '{requested}' (--{split}-split); splits here: "
                            f"{', '.join(sorted(set(_shard_base(n) for n in names))) or 'none'}")
        assigned[split] = found
        claimed.update(found)
    for split in SPLITS:
        if split not in assigned:
            found = [n for n in names if n not in claimed and split_name_of(n) == split]
            if found:
                assigned[split] = found
    return assigned


def _shard_base(name: str) -> str:
    """``train-00000-of-00002`` -> ``train``."""
    import re

    return re.sub(r"[-_]\d+(-of-\d+)?$", "", name)


def read_text_folder(path: Path, cfg: DataConfig) -> RawTable:
    folder = path / "data" if not _data_files(path) and (path / "data").is_dir() else path
    files = {p.stem: p for p in _data_files(folder)}
    assigned = assign_splits(sorted(files), cfg, str(path))
    used = {name for names in assigned.values() for name in names}
    ignored = sorted(files[n].name for n in files if n not in used)
    notes = [f"ignored {', '.join(ignored)} (not a train, validation/dev/val or test split file)"] if ignored else []
    columns: dict = {}
    splits = {}
    for split, names in assigned.items():
        parts = [files[n] for n in sorted(names)]
        raws = [_frame_split(read_frame(p), cfg, p.name, columns) for p in parts]
        if len(raws) == 1:
            splits[split] = raws[0]
        else:  # sharded split files: ids name the shard and row
            splits[split] = RawSplit(
                [t for r in raws for t in r.texts],
                [lab for r in raws for lab in r.labels],
                [f"{r.source}:{i}" for r in raws for i in r.ids],
                ", ".join(r.source for r in raws),
                [t for r in raws for t in r.pairs] if raws[0].pairs is not None else None,
            )
    return finish_table(splits, columns, notes)


def _data_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES]


TEXT_ALTERNATIVES = ("sentence", "review", "question")


LABEL_ALTERNATIVES = ("labels", "category", "class", "rating", "score", "target")


# Sentence-pair columns used when no text column is named and "text" is absent.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
                ("question", "sentence"))


SPLITS = ("train", "validation", "test")


def pick_column(
    columns: Sequence[str],
    requested: str | None,
    default: str,
    alternatives: Sequence[str],
    flag: str,
    source: str,
) -> tuple[str, str | None]:
    """Return (column, note). An explicit name must exist; the default may fall back to
    exactly one common alternative."""
    present = ", ".join(map(str, columns))
    if requested is not None:
        if requested not in columns:
            raise DataError(f"{source}: no column '{requested}' ({flag}); columns present: {present}")
        return requested, None
    if default in columns:
        return default, None
    found = [c for c in alternatives if c in columns]
    if len(found) == 1:
        return found[0], f"used column '{found[0]}' for {flag.lstrip('-').replace('-', ' ')}"
    raise DataError(
        f"{source}: no column '{default}'; columns present: {present}; name one with {flag}"
    )


def pick_columns(columns: Sequence[str], cfg: DataConfig, source: str) -> tuple[dict[str, str | None], list[str]]:
    """The text, pair and label columns of a table, and notes on what was inferred."""
    notes = []
    pair = cfg.text_pair_column
    if pair is not None and pair not in columns:
        raise DataError(f"{source}: no column '{pair}' (--text-pair-column); columns present: "
                        f"{', '.join(map(str, columns))}")
    text_requested = cfg.text_column
    if text_requested is None and pair is None and "text" not in columns:
        for first, second in PAIR_COLUMNS:
            if first in columns and second in columns:
                text_requested, pair = first, second
                notes.append(f"used the sentence pair columns '{first}' and '{second}'")
                break
    text, note = pick_column(columns, text_requested, "text", TEXT_ALTERNATIVES, "--text-column", source)
    notes += [note] if note else []
    label, note = pick_column(columns, cfg.label_column, "label", LABEL_ALTERNATIVES, "--label-column", source)
    notes += [note] if note else []
    return {"text": text, "pair": pair, "label": label}, notes
