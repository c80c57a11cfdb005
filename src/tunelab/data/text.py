"""Text data of any shape: one loader per format, one validated result type.

Every format is read into raw columns per split (texts, an optional second text of
a sentence pair, labels, row ids), then goes through the same checks (columns,
empty texts, labels), the same reading of the labels (classes, label sets or
numbers: single-label, multi-label or regression), the same seeded stratified
completion of missing splits, the same shots and caps.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunelab.core.config import DataConfig
from tunelab.core.errors import DataError
from tunelab.data.labels import LabelledData, finish_splits
from tunelab.data.sources import TEXT_FILE_SUFFIXES, DatasetSource, load_hf_dataset, resolve_dataset, split_name_of
from tunelab.problems import detect_problem
from tunelab.problems.labels import describe_rows, label_text, rows_have

logger = logging.getLogger(__name__)

TEXT_ALTERNATIVES = ("sentence", "review", "question")
LABEL_ALTERNATIVES = ("labels", "category", "class", "rating", "score", "target")
# Sentence-pair columns used when no text column is named and "text" is absent.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
                ("question", "sentence"))
SPLITS = ("train", "validation", "test")


@dataclass
class TextInputs:
    """The inputs of examples: one text each, or a pair of texts."""

    texts: list[str]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> TextInputs:
        return TextInputs([self.texts[i] for i in indices],
                          [self.pairs[i] for i in indices] if self.pairs is not None else None)

    def columns(self) -> dict[str, list[str]]:
        """Columns of a predictions table."""
        return {"text": self.texts, "text_pair": self.pairs} if self.pairs is not None else {"text": self.texts}


@dataclass
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # single-label: class indices (int64); multi-label: (n, classes) 0/1; regression: floats
    ids: list[str]  # where each example came from (row number, file:line, ...)
    pairs: list[str] | None = None  # the second text of each pair

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> TextInputs:
        return TextInputs(self.texts, self.pairs)

    def subset(self, indices: np.ndarray) -> TextSplit:
        return TextSplit([self.texts[i] for i in indices], self.labels[indices], [self.ids[i] for i in indices],
                         [self.pairs[i] for i in indices] if self.pairs is not None else None)


@dataclass
class TextDataset(LabelledData):
    """Validated, encoded splits of a text task."""

    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = None


def resolved_data_config(cfg: DataConfig, dataset: TextDataset, pair_default: str = "bi") -> DataConfig:
    """The data settings with what the data showed filled in (columns, problem, pair
    encoding), so that config.yaml records what the run did."""
    import dataclasses

    pair = dataset.text_pair_column
    return dataclasses.replace(
        cfg, text_column=dataset.text_column, label_column=dataset.label_column, text_pair_column=pair,
        problem=dataset.problem, pair_encoding=(cfg.pair_encoding or pair_default) if pair else None)


@dataclass
class _RawSplit:
    texts: list[object]
    labels: list[object]
    ids: list[str]
    source: str  # file name for messages
    pairs: list[object] | None = None


@dataclass
class _RawTable:
    splits: dict[str, _RawSplit]
    columns: dict[str, str | None]  # text, pair, label
    label_names: dict[str, str] | None = None  # raw value -> display name (HF ClassLabel)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- columns


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


# --------------------------------------------------------------------------- readers, one per format


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


def _frame_split(frame, cfg: DataConfig, source: str, table_columns: dict) -> _RawSplit:
    columns, notes = pick_columns([str(c) for c in frame.columns], cfg, source)
    for key, column in columns.items():
        previous = table_columns.setdefault(key, column)
        if previous != column:
            raise DataError(f"{source}: {key} column '{column}' differs from '{previous}' in other splits")
    table_columns.setdefault("notes", notes)
    texts = frame[columns["text"]].tolist()
    pairs = frame[columns["pair"]].tolist() if columns["pair"] else None
    labels = [None if is_missing_label(v) else v for v in frame[columns["label"]].tolist()]
    return _RawSplit(texts, labels, [str(i + 1) for i in range(len(frame))], source, pairs)


# Label cells that spreadsheets and pandas write for "no value": never a class.
MISSING_LABEL_TEXTS = frozenset({"", "nan", "null", "n/a", "#n/a", "<na>"})


def is_missing_label(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_LABEL_TEXTS


def _finish_table(splits: dict[str, _RawSplit], columns: dict, notes: list[str]) -> _RawTable:
    return _RawTable(splits, {k: columns.get(k) for k in ("text", "pair", "label")},
                     notes=list(columns.get("notes", [])) + notes)


def read_text_file(path: Path, cfg: DataConfig) -> _RawTable:
    columns: dict = {}
    split = _frame_split(read_frame(path), cfg, path.name, columns)
    return _finish_table({"all": split}, columns, [])


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


def read_text_folder(path: Path, cfg: DataConfig) -> _RawTable:
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
            splits[split] = _RawSplit(
                [t for r in raws for t in r.texts],
                [lab for r in raws for lab in r.labels],
                [f"{r.source}:{i}" for r in raws for i in r.ids],
                ", ".join(r.source for r in raws),
                [t for r in raws for t in r.pairs] if raws[0].pairs is not None else None,
            )
    return _finish_table(splits, columns, notes)


def _data_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES]


def read_rt_polarity(path: Path) -> _RawTable:
    """The sentence polarity files, split exactly as the Hugging Face ``rotten_tomatoes``.

    Per class, lines [0, 80%) train, [80%, 90%) validation, the rest test (4265 /
    533 / 533 of 5331), positives first within each split, lines stripped.
    """
    if (path / "rt-polaritydata").is_dir():
        path = path / "rt-polaritydata"
    lines = {}
    for polarity in ("pos", "neg"):
        file = path / f"rt-polarity.{polarity}"
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # the original 2005 release is latin-1
            text = file.read_bytes().decode("latin-1")
        lines[polarity] = [line.strip() for line in text.splitlines()]
    splits: dict[str, _RawSplit] = {}
    for polarity in ("pos", "neg"):
        n = len(lines[polarity])
        i1, i2 = int(n * 0.8 + 0.5), int(n * 0.9 + 0.5)
        bounds = {"train": (0, i1), "validation": (i1, i2), "test": (i2, n)}
        for split, (start, stop) in bounds.items():
            raw = splits.setdefault(split, _RawSplit([], [], [], f"rt-polarity ({split})"))
            raw.texts.extend(lines[polarity][start:stop])
            raw.labels.extend([polarity] * (stop - start))
            raw.ids.extend(f"rt-polarity.{polarity}:{i + 1}" for i in range(start, stop))
    return _RawTable(splits, {"text": "text", "pair": None, "label": "label"})


def read_hf_dataset(dataset_dict, cfg: DataConfig, source: str) -> _RawTable:
    """A ``datasets.DatasetDict`` (from the hub, a local dataset repository, or
    ``load_from_disk``)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Sequence

    if isinstance(dataset_dict, Dataset):
        dataset_dict = DatasetDict({"all": dataset_dict})
    assigned = {"all": ["all"]} if list(dataset_dict) == ["all"] else \
        assign_splits(list(dataset_dict), cfg, source)
    columns: dict = {}
    splits = {}
    label_names = None
    for split, names in assigned.items():
        name = names[0]
        ds = dataset_dict[name]
        picked, notes = pick_columns(list(ds.column_names), cfg, f"{source} [{name}]")
        columns.update({k: v for k, v in picked.items()})
        columns.setdefault("notes", notes)
        feature = ds.features.get(picked["label"])
        inner = feature.feature if isinstance(feature, Sequence) else feature
        if isinstance(inner, ClassLabel):
            label_names = {str(i): n for i, n in enumerate(inner.names)}
        labels = [None if is_missing_label(v) else v for v in ds[picked["label"]]]
        # ClassLabel marks a missing label (e.g. GLUE test splits) with -1.
        if isinstance(feature, ClassLabel):
            labels = [None if v == -1 else v for v in labels]
        pairs = list(ds[picked["pair"]]) if picked["pair"] else None
        splits[split] = _RawSplit(list(ds[picked["text"]]), labels, [str(i) for i in range(len(ds))],
                                  f"{source} [{name}]", pairs)
    table = _finish_table(splits, columns, [])
    table.label_names = label_names
    return table


def _read_source(source: DatasetSource, cfg: DataConfig) -> _RawTable:
    path = Path(source.location)
    if source.format == "rt-polarity":
        return read_rt_polarity(path)
    if source.format == "text-file":
        return read_text_file(path, cfg)
    if source.format == "text-folder":
        return read_text_folder(path, cfg)
    if source.format in ("hf-disk", "hf-repo", "hub"):
        hint = ("set TUNELAB_DATA_DIR to a folder that holds it"
                + (f" (e.g. {source.known.local_names[0]}/)" if source.known else "") + ", or pass a local path")
        name = path.name if source.format != "hub" else source.location
        return read_hf_dataset(load_hf_dataset(source, hint, cfg.dataset_config), cfg, name)
    raise DataError(
        f"{source.spec} is a {source.format} dataset (images); this command needs text"
    )


# --------------------------------------------------------------------------- validation and assembly


def _check_texts(values: list[object], raw: _RawSplit, split: str, what: str) -> None:
    bad = [i for i, t in enumerate(values) if not isinstance(t, str) or not t.strip()]
    if bad:
        kinds = {"empty" if isinstance(values[i], str) or values[i] is None
                 else type(values[i]).__name__ for i in bad}
        raise DataError(
            f"{raw.source}: {rows_have(len(bad), split)} empty or non-text {what} "
            f"({', '.join(sorted(kinds))}; {describe_rows([raw.ids[i] for i in bad])}); "
            "fix or remove them"
        )


def _check_labels(raw: _RawSplit, split: str) -> None:
    missing = [i for i, v in enumerate(raw.labels) if v is None]
    if missing:
        raise DataError(
            f"{raw.source}: {rows_have(len(missing), split)} no label "
            f"({describe_rows([raw.ids[i] for i in missing])}); fix or remove them"
        )


def _encode_targets(table: _RawTable, cfg: DataConfig, train_key: str):
    """The problem the labels show, its label space and every split's encoded targets."""
    train = table.splits[train_key]
    problem = detect_problem(train.labels, cfg.problem, cfg.label_separator, train.source)
    cells = {name: (raw.labels, raw.source, raw.ids) for name, raw in table.splits.items()}
    space, targets = problem.encode_targets(cells, train_key, cfg, table.label_names)
    return problem, space, targets


def load_text_dataset(cfg: DataConfig, seed: int = 42) -> TextDataset:
    """Read, validate and split a text dataset of any shape. No model is touched."""
    source = resolve_dataset(cfg.dataset, cfg.dataset_config)
    if source.known is not None and source.known.modality != "text":
        raise DataError(f"'{cfg.dataset}' is an image dataset; this command needs text")
    table = _read_source(source, cfg)
    notes = list(table.notes)
    if source.format != "hub" and source.known is not None:
        notes.append(f"read {source.spec} from {source.location}")
    if not table.splits:
        raise DataError(f"{cfg.dataset}: no train/validation/test data found; name the files or splits with "
                        "--train-split, --validation-split and --test-split")

    for split, raw in table.splits.items():
        if not raw.texts:
            raise DataError(f"{raw.source}: the {split} split is empty")
        _check_texts(raw.texts, raw, split, "text")
        if raw.pairs is not None:
            _check_texts(raw.pairs, raw, split, f"'{table.columns['pair']}' text")
        _check_labels(raw, split)

    train_key = "train" if "train" in table.splits else "all" if "all" in table.splits else None
    if train_key is None:
        raise DataError(
            f"{cfg.dataset}: no training split (a file named train.*); found {', '.join(table.splits)}"
        )
    problem, space, targets = _encode_targets(table, cfg, train_key)
    splits = {
        name: TextSplit(list(raw.texts), targets[name], list(raw.ids),  # type: ignore[arg-type]
                        list(raw.pairs) if raw.pairs is not None else None)  # type: ignore[arg-type]
        for name, raw in table.splits.items()
    }
    splits = finish_splits(splits, cfg, seed, notes, space, cfg.dataset, problem)
    return TextDataset(
        name=cfg.dataset,
        label_space=space,
        splits={k: splits[k] for k in SPLITS if k in splits},
        text_column=table.columns["text"],
        label_column=table.columns["label"],
        text_pair_column=table.columns["pair"],
        notes=notes,
    )


__all__ = ["TextDataset", "TextInputs", "TextSplit", "load_text_dataset", "label_text", "read_frame"]
