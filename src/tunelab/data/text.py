"""Text data of any shape: one loader per format, one validated result type.

Every format is read into raw columns per split (texts, an optional second text of
a sentence pair, labels, row ids), then goes through the same checks (columns,
empty texts, labels), the same reading of the labels (classes, label sets or
numbers: single-label, multi-label or regression), the same seeded stratified
completion of missing splits, the same shots and caps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.core.config import DataConfig
from tunelab.core.errors import DataError
from tunelab.data.labels import LabelledData, finish_splits
from tunelab.data.sources import DatasetSource, load_hf_dataset, resolve_dataset
from tunelab.data.tables import (
    SPLITS,
    RawSplit,
    RawTable,
    assign_splits,
    finish_table,
    is_missing_label,
    pick_columns,
    read_text_file,
    read_text_folder,
)
from tunelab.problems import detect_problem
from tunelab.problems.labels import describe_rows, rows_have

logger = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- columns


# --------------------------------------------------------------------------- readers, one per format


def read_rt_polarity(path: Path) -> RawTable:
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
    splits: dict[str, RawSplit] = {}
    for polarity in ("pos", "neg"):
        n = len(lines[polarity])
        i1, i2 = int(n * 0.8 + 0.5), int(n * 0.9 + 0.5)
        bounds = {"train": (0, i1), "validation": (i1, i2), "test": (i2, n)}
        for split, (start, stop) in bounds.items():
            raw = splits.setdefault(split, RawSplit([], [], [], f"rt-polarity ({split})"))
            raw.texts.extend(lines[polarity][start:stop])
            raw.labels.extend([polarity] * (stop - start))
            raw.ids.extend(f"rt-polarity.{polarity}:{i + 1}" for i in range(start, stop))
    return RawTable(splits, {"text": "text", "pair": None, "label": "label"})


def read_hf_dataset(dataset_dict, cfg: DataConfig, source: str) -> RawTable:
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
        splits[split] = RawSplit(list(ds[picked["text"]]), labels, [str(i) for i in range(len(ds))],
                                  f"{source} [{name}]", pairs)
    table = finish_table(splits, columns, [])
    table.label_names = label_names
    return table


def _read_source(source: DatasetSource, cfg: DataConfig) -> RawTable:
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


def _check_texts(values: list[object], raw: RawSplit, split: str, what: str) -> None:
    bad = [i for i, t in enumerate(values) if not isinstance(t, str) or not t.strip()]
    if bad:
        kinds = {"empty" if isinstance(values[i], str) or values[i] is None
                 else type(values[i]).__name__ for i in bad}
        raise DataError(
            f"{raw.source}: {rows_have(len(bad), split)} empty or non-text {what} "
            f"({', '.join(sorted(kinds))}; {describe_rows([raw.ids[i] for i in bad])}); "
            "fix or remove them"
        )


def _check_labels(raw: RawSplit, split: str) -> None:
    missing = [i for i, v in enumerate(raw.labels) if v is None]
    if missing:
        raise DataError(
            f"{raw.source}: {rows_have(len(missing), split)} no label "
            f"({describe_rows([raw.ids[i] for i in missing])}); fix or remove them"
        )


def _encode_targets(table: RawTable, cfg: DataConfig, train_key: str):
    """The problem the labels show, its label space and every split's encoded targets."""
    train = table.splits[train_key]
    problem = detect_problem(train.labels, cfg.problem, cfg.label_separator, train.source, table.columns.get("label"))
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


__all__ = ["TextDataset", "TextInputs", "TextSplit", "load_text_dataset"]
