"""Text classification data: one loader per format, one validated result type.

Every format is read into raw columns (texts, labels, ids) per split, then goes
through the same checks (columns, empty texts, labels, classes), the same
seeded stratified completion of missing splits, and the same sample caps.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunelab.config import DataConfig
from tunelab.data.labels import (
    LabelledData,
    apply_caps,
    build_label_space,
    complete_splits,
    describe_rows,
    encode_labels,
    label_text,
)
from tunelab.data.sources import TEXT_FILE_SUFFIXES, DatasetSource, load_hf_dataset, resolve_dataset, split_name_of
from tunelab.errors import DataError

logger = logging.getLogger(__name__)

TEXT_ALTERNATIVES = ("sentence", "review", "question")
LABEL_ALTERNATIVES = ("labels", "category", "class")


@dataclass
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # class indices, int64
    ids: list[str]  # where each example came from (row number, file:line, ...)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> TextSplit:
        return TextSplit(
            [self.texts[i] for i in indices], self.labels[indices], [self.ids[i] for i in indices]
        )


@dataclass
class TextDataset(LabelledData):
    """Validated, encoded splits of a text classification task."""

    text_column: str = "text"
    label_column: str = "label"


@dataclass
class _RawSplit:
    texts: list[object]
    labels: list[object]
    ids: list[str]
    source: str  # file name for messages


@dataclass
class _RawTable:
    splits: dict[str, _RawSplit]
    text_column: str
    label_column: str
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


# --------------------------------------------------------------------------- readers, one per format


def read_frame(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            # Read everything as text so that numeric-looking sentences stay text;
            # integer labels are recognised afterwards.
            sep = "\t" if suffix == ".tsv" else ","
            return pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
        if suffix == ".jsonl" or (suffix == ".json" and _looks_like_jsonl(path)):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".json":
            return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # pandas/pyarrow parser errors have many types
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    raise DataError(f"cannot read {path}: unknown file type '{suffix}'")


def _looks_like_jsonl(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        first = handle.readline().strip()
        second = handle.readline().strip()
    return first.startswith("{") and (second.startswith("{") or not second)


_INT_RE = re.compile(r"^[+-]?\d+$")


def _normalise_labels(values: list[object]) -> list[object]:
    """CSV labels arrive as text: when every one is an integer, treat them as integers."""
    if values and all(isinstance(v, str) and _INT_RE.match(v.strip()) for v in values):
        return [int(v) for v in values]
    return values


def _frame_split(frame, cfg: DataConfig, source: str, table_columns: dict) -> _RawSplit:
    columns = [str(c) for c in frame.columns]
    text_col, text_note = pick_column(
        columns, cfg.text_column, "text", TEXT_ALTERNATIVES, "--text-column", source
    )
    label_col, label_note = pick_column(
        columns, cfg.label_column, "label", LABEL_ALTERNATIVES, "--label-column", source
    )
    for key, col, note in (("text", text_col, text_note), ("label", label_col, label_note)):
        previous = table_columns.setdefault(key, col)
        if previous != col:
            raise DataError(f"{source}: {key} column '{col}' differs from '{previous}' in other splits")
        if note:
            table_columns.setdefault(f"{key}_note", note)
    texts = frame[text_col].tolist()
    labels = [None if _is_missing(v) else v for v in frame[label_col].tolist()]
    ids = [str(i + 1) for i in range(len(frame))]
    return _RawSplit(texts, labels, ids, source)


# Label cells that spreadsheets and pandas write for "no value": never a class.
MISSING_LABEL_TEXTS = frozenset({"", "nan", "null", "n/a", "#n/a", "<na>"})


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_LABEL_TEXTS


def _finish_table(splits: dict[str, _RawSplit], columns: dict) -> _RawTable:
    notes = [columns[k] for k in ("text_note", "label_note", "ignored_note") if k in columns]
    for raw in splits.values():
        raw.labels = _normalise_labels(raw.labels)
    return _RawTable(splits, columns["text"], columns["label"], notes=notes)


def read_text_file(path: Path, cfg: DataConfig) -> _RawTable:
    columns: dict = {}
    split = _frame_split(read_frame(path), cfg, path.name, columns)
    return _finish_table({"all": split}, columns)


def read_text_folder(path: Path, cfg: DataConfig) -> _RawTable:
    folder = path / "data" if not _split_files(path) and (path / "data").is_dir() else path
    files = _split_files(folder)
    by_split: dict[str, list[Path]] = {}
    for file, split in files:
        by_split.setdefault(split, []).append(file)
    columns: dict = {}
    splits = {}
    split_paths = {file for file, _ in files}
    ignored = sorted(p.name for p in folder.iterdir()
                     if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES and p not in split_paths)
    if ignored:
        columns["ignored_note"] = f"ignored {', '.join(ignored)} (not named train, validation/dev/val or test)"
    for split in ("train", "validation", "test"):
        parts = sorted(by_split.get(split, []))
        if not parts:
            continue
        raws = [_frame_split(read_frame(p), cfg, p.name, columns) for p in parts]
        if len(raws) == 1:
            splits[split] = raws[0]
        else:  # sharded split files: ids name the shard and row
            splits[split] = _RawSplit(
                [t for r in raws for t in r.texts],
                [lab for r in raws for lab in r.labels],
                [f"{r.source}:{i}" for r in raws for i in r.ids],
                ", ".join(r.source for r in raws),
            )
    return _finish_table(splits, columns)


def _split_files(folder: Path) -> list[tuple[Path, str]]:
    found = []
    for p in sorted(folder.iterdir()):
        split = split_name_of(p.stem)
        if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES and split:
            found.append((p, split))
    return found


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
    return _RawTable(splits, "text", "label")


def read_hf_dataset(dataset_dict, cfg: DataConfig, source: str) -> _RawTable:
    """A ``datasets.DatasetDict`` (from the hub or ``load_from_disk``)."""
    from datasets import ClassLabel, Dataset, DatasetDict

    if isinstance(dataset_dict, Dataset):
        dataset_dict = DatasetDict({"all": dataset_dict})
    columns: dict = {}
    splits = {}
    label_names = None
    for name, ds in dataset_dict.items():
        split = "all" if name == "all" else split_name_of(name)
        if split is None:
            logger.info("ignoring split '%s' of %s", name, source)
            continue
        cols = list(ds.column_names)
        text_col, text_note = pick_column(
            cols, cfg.text_column, "text", TEXT_ALTERNATIVES, "--text-column", f"{source} [{name}]"
        )
        label_col, label_note = pick_column(
            cols, cfg.label_column, "label", LABEL_ALTERNATIVES, "--label-column", f"{source} [{name}]"
        )
        columns.setdefault("text", text_col)
        columns.setdefault("label", label_col)
        for key, note in (("text_note", text_note), ("label_note", label_note)):
            if note:
                columns.setdefault(key, note)
        feature = ds.features.get(label_col)
        if isinstance(feature, ClassLabel):
            label_names = {str(i): n for i, n in enumerate(feature.names)}
        labels = [None if _is_missing(v) else v for v in ds[label_col]]
        # ClassLabel marks a missing label (e.g. GLUE test splits) with -1.
        if label_names is not None:
            labels = [None if v == -1 else v for v in labels]
        splits[split] = _RawSplit(list(ds[text_col]), labels, [str(i) for i in range(len(ds))], f"{source} [{name}]")
    table = _finish_table(splits, columns)
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
    if source.format in ("hf-disk", "hub"):
        hint = ("set TUNELAB_DATA_DIR to a folder that holds it"
                + (f" (e.g. {source.known.local_names[0]}/)" if source.known else "") + ", or pass a local path")
        name = path.name if source.format == "hf-disk" else source.location
        return read_hf_dataset(load_hf_dataset(source, hint), cfg, name)
    raise DataError(
        f"{source.spec} is a {source.format} dataset (images); this command needs text"
    )


# --------------------------------------------------------------------------- validation and assembly


def _check_texts(raw: _RawSplit, split: str) -> list[str]:
    bad = [i for i, t in enumerate(raw.texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        kinds = {"empty" if isinstance(raw.texts[i], str) or raw.texts[i] is None
                 else type(raw.texts[i]).__name__ for i in bad}
        raise DataError(
            f"{raw.source}: {len(bad)} {split} rows have empty or non-text text "
            f"({', '.join(sorted(kinds))}; rows {describe_rows([raw.ids[i] for i in bad])}); "
            "fix or remove them"
        )
    return raw.texts  # type: ignore[return-value]


def _check_labels(raw: _RawSplit, split: str) -> None:
    missing = [i for i, v in enumerate(raw.labels) if v is None]
    if missing:
        raise DataError(
            f"{raw.source}: {len(missing)} {split} rows have no label "
            f"(rows {describe_rows([raw.ids[i] for i in missing])}); fix or remove them"
        )


def load_text_dataset(cfg: DataConfig, seed: int = 42) -> TextDataset:
    """Read, validate and split a text classification dataset. No model is touched."""
    source = resolve_dataset(cfg.dataset)
    if source.known is not None and source.known.modality != "text":
        raise DataError(f"'{cfg.dataset}' is an image dataset; this command needs text")
    table = _read_source(source, cfg)
    notes = list(table.notes)
    if source.format != "hub" and source.known is not None:
        notes.append(f"read {source.spec} from {source.location}")
    if not table.splits:
        raise DataError(f"{cfg.dataset}: no train/validation/test data found")

    for split, raw in table.splits.items():
        if not raw.texts:
            raise DataError(f"{raw.source}: the {split} split is empty")
        _check_texts(raw, split)
        _check_labels(raw, split)

    train_key = "train" if "train" in table.splits else "all" if "all" in table.splits else None
    if train_key is None:
        raise DataError(
            f"{cfg.dataset}: no training split (a file named train.*); found {', '.join(table.splits)}"
        )
    space = build_label_space(table.splits[train_key].labels, cfg.positive_label, table.label_names)
    splits = {
        name: TextSplit(
            list(raw.texts),  # type: ignore[arg-type]
            encode_labels(raw.labels, space, name, raw.source, raw.ids),
            list(raw.ids),
        )
        for name, raw in table.splits.items()
    }

    splits, made = complete_splits(splits, seed)
    notes.extend(made)
    splits = apply_caps(splits, cfg.max_train_samples, cfg.max_eval_samples, seed, notes)
    for name, split in splits.items():
        present = np.unique(split.labels)
        if name == "train" and len(present) < 2:
            raise DataError(f"{cfg.dataset}: the train split holds a single class after sampling")
    return TextDataset(
        name=cfg.dataset,
        label_space=space,
        splits={k: splits[k] for k in ("train", "validation", "test") if k in splits},
        text_column=table.text_column,
        label_column=table.label_column,
        notes=notes,
    )


__all__ = ["TextDataset", "TextSplit", "load_text_dataset", "label_text"]
