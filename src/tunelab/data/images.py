"""Image classification data, read lazily.

Loading a dataset lists files (or rows) and labels only; pixels are decoded and
preprocessed one image at a time inside DataLoader workers, so memory does not
grow with the dataset (the reference's ``.map`` over images filled the disk).
Unreadable images are skipped and reported, or stop the run with ``strict``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.core.config import DataConfig
from tunelab.core.errors import DataError
from tunelab.data import sources
from tunelab.data.image_sources import FileImages, ImageSplit, RowImages
from tunelab.data.labels import LabelledData, finish_splits
from tunelab.data.sources import (
    IMAGE_FILE_COLUMNS,
    IMAGE_SUFFIXES,
    TEXT_FILE_SUFFIXES,
    data_dir,
    image_file_column,
    load_hf_dataset,
    resolve_dataset,
    split_name_of,
)
from tunelab.data.tables import LABEL_ALTERNATIVES, assign_splits, is_missing_label, pick_column, read_frame
from tunelab.problems import detect_problem, get_problem
from tunelab.problems.labels import rows_have

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "picture")


# --------------------------------------------------------------------------- where pixels come from


@dataclass
class ImageDataset(LabelledData):
    """Validated splits of an image classification task."""


# --------------------------------------------------------------------------- readers, one per layout


@dataclass
class _RawImages:
    splits: dict[str, tuple[FileImages | RowImages, list[object]]]  # split -> (source, raw labels)
    names: dict[str, str] | None = None  # raw label -> class name
    notes: list[str] | None = None


def wordnet_names(words_file: Path, wnids: set[str]) -> dict[str, str]:
    """wnid -> the first of its comma-separated names in ``words.txt`` (82k lines, scanned once)."""
    names = {}
    with words_file.open(encoding="utf-8") as handle:
        for line in handle:
            wnid, _, words = line.rstrip("\n").partition("\t")
            if wnid in wnids:
                names[wnid] = words.split(",")[0].strip()
    return names


def read_tiny_imagenet(path: Path) -> _RawImages:
    """The original tiny-imagenet-200 layout: train/<wnid>/images, val/images with
    val_annotations.txt. Its test images carry no labels and are left out."""
    if not (path / "wnids.txt").is_file():
        path = path / "tiny-imagenet-200"
    wnids = [w.strip() for w in (path / "wnids.txt").read_text(encoding="utf-8").split() if w.strip()]
    names = wordnet_names(path / "words.txt", set(wnids)) if (path / "words.txt").is_file() else {}
    splits = {}
    train_paths, train_labels = [], []
    for wnid in sorted(wnids):
        folder = path / "train" / wnid / "images"
        if folder.is_dir():
            files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            train_paths += [f"train/{wnid}/images/{f}" for f in files]
            train_labels += [wnid] * len(files)
    if train_paths:
        splits["train"] = (FileImages(path, train_paths), train_labels)
    annotations = path / "val" / "val_annotations.txt"
    if annotations.is_file():
        val_paths, val_labels = [], []
        for line in annotations.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                val_paths.append(f"val/images/{parts[0]}")
                val_labels.append(parts[1])
        splits["validation"] = (FileImages(path, val_paths), val_labels)
    if not splits:
        raise DataError(f"{path}: no train/ or val/ images found in the tiny-imagenet-200 layout")
    return _RawImages(splits, {w: names.get(w, w) for w in wnids})


def read_image_folder(path: Path, flat_split: str) -> _RawImages:
    """``split/class/*`` or ``class/*`` (the whole folder is then one split, ``flat_split``).
    Class names are folder names with '_' read as a space."""
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = {split_name_of(p.name): p for p in subdirs if split_name_of(p.name)}
    others = [p.name for p in subdirs if not split_name_of(p.name)]
    if split_dirs and others:
        raise DataError(
            f"{path} mixes split folders ({', '.join(p.name for p in split_dirs.values())}) with other folders "
            f"({', '.join(others[:5])}); use split/class/image folders, or class/image folders only"
        )
    layout = split_dirs if split_dirs else {flat_split: path}
    splits = {}
    classes: set[str] = set()
    for split, folder in layout.items():
        paths, labels = [], []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(f for f in class_dir.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            paths += [str(f.relative_to(path)) for f in files]
            labels += [class_dir.name] * len(files)
            classes.add(class_dir.name)
        if paths:
            splits[split] = (FileImages(path, paths), labels)
    if not splits:
        raise DataError(f"{path}: no images found in class folders ({', '.join(IMAGE_SUFFIXES)})")
    return _RawImages(splits, {c: c.replace("_", " ") for c in classes})


def read_image_table(path: Path, cfg: DataConfig, flat_split: str) -> _RawImages:
    """A table (CSV, TSV, JSONL, Parquet) of image files and their labels: one file (the
    split ``flat_split``) or split files (train.csv, validation.jsonl, ...). File paths
    are relative to the table's folder (or absolute); a label cell is a class, a list of
    classes (JSONL, Parquet) or classes joined by --label-separator: multi-label images
    through the same problem seam as text."""
    if path.is_file():
        files = {flat_split: [path]}
    else:
        tables = {p.stem: p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES}
        files = {split: [tables[n] for n in sorted(names)]
                 for split, names in assign_splits(sorted(tables), cfg, str(path)).items()}
    splits, notes, columns = {}, [], {}
    for split, parts in files.items():
        paths, labels = [], []
        for table in parts:
            frame = read_frame(table)
            names = [str(c) for c in frame.columns]
            first = frame.iloc[0].to_dict() if len(frame) else {}
            file_column = image_file_column(names, first)
            if file_column is None:
                raise DataError(f"{table.name}: no column of image files ({', '.join(IMAGE_FILE_COLUMNS)}) whose "
                                f"first value names an image ({', '.join(IMAGE_SUFFIXES)})")
            label_column, note = pick_column(names, cfg.label_column, "labels" if "labels" in names else "label",
                                             LABEL_ALTERNATIVES, "--label-column", table.name)
            if note and note not in notes:
                notes.append(note)
            columns.setdefault("file", file_column)
            missing = []
            for row, value in enumerate(frame[file_column].tolist(), start=1):
                name = value.strip() if isinstance(value, str) else ""
                if not name or not (table.parent / name).is_file():  # relative to the table, or absolute
                    missing.append(f"row {row}" + (f" ({name})" if name else ""))
                paths.append(name)
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise DataError(f"{table.name}: {rows_have(len(missing), split, 'row')} no image file: "
                                f"{', '.join(missing[:3])}{more}")
            labels += [None if is_missing_label(v) else v for v in frame[label_column].tolist()]
        splits[split] = (FileImages(path if path.is_dir() else path.parent, paths), labels)  # the tables' folder
    notes.append(f"images named by the column '{columns['file']}' of {path.name}")
    return _RawImages(splits, None, notes)


def read_hf_images(dataset_dict, cfg: DataConfig, source: str) -> _RawImages:
    from datasets import ClassLabel, Dataset, DatasetDict

    if isinstance(dataset_dict, Dataset):
        dataset_dict = DatasetDict({"all": dataset_dict})
    splits, names = {}, None
    for name, ds in dataset_dict.items():
        split = "all" if name == "all" else split_name_of(name)
        if split is None:
            continue
        columns = list(ds.column_names)
        image_col, _ = pick_column(columns, cfg.text_column, "image", IMAGE_COLUMNS[1:], "--text-column",
                                   f"{source} [{name}]")
        label_col, _ = pick_column(columns, cfg.label_column, "label", LABEL_ALTERNATIVES, "--label-column",
                                   f"{source} [{name}]")
        feature = ds.features.get(label_col)
        if isinstance(feature, ClassLabel):
            names = {str(i): n for i, n in enumerate(feature.names)}
        splits[split] = (RowImages(ds, image_col, f"{source}/{name}"), list(ds[label_col]))
    if not splits:
        raise DataError(f"{source}: no train/validation/test splits found")
    if names and all(n.startswith("n") and n[1:].isdigit() for n in names.values()):
        names = _wordnet_display_names(names)
    return _RawImages(splits, names)


def _wordnet_display_names(names: dict[str, str]) -> dict[str, str]:
    """ClassLabel names that are WordNet ids read as words, through a words.txt if one is found."""
    root = data_dir()
    for candidate in ([root / "tiny-imagenet-200" / "words.txt", root / "words.txt"] if root else []):
        if candidate.is_file():
            words = wordnet_names(candidate, set(names.values()))
            return {k: words.get(v, v) for k, v in names.items()}
    return names


def _read(source: sources.DatasetSource, cfg: DataConfig, flat_split: str) -> _RawImages:
    """The reader of the source's layout (one per format)."""
    path = Path(source.location)
    readers = {"tiny-imagenet": lambda: read_tiny_imagenet(path),
               "image-folder": lambda: read_image_folder(path, flat_split),
               "image-table": lambda: read_image_table(path, cfg, flat_split)}
    if source.format in readers:
        return readers[source.format]()
    if source.format in ("hf-disk", "hf-repo", "hub"):
        hint = "set TUNELAB_DATA_DIR to a folder that holds tiny-imagenet-200/, or pass a local path"
        name = path.name if source.format != "hub" else source.location
        return read_hf_images(load_hf_dataset(source, hint, cfg.dataset_config), cfg, name)
    raise DataError(f"{source.spec} is a {source.format} dataset; this command needs images")


def is_image_dataset(spec: str) -> bool:
    """Whether ``spec`` names image data (decides between text and image pipelines)."""
    source = resolve_dataset(spec)
    if source.known is not None:
        return source.known.modality == "image"
    if source.format == "hf-disk":
        from datasets import load_from_disk

        loaded = load_from_disk(source.location)
        first = next(iter(loaded.values())) if hasattr(loaded, "values") else loaded
        return any(c in first.column_names for c in IMAGE_COLUMNS)
    return source.format in ("tiny-imagenet", "image-folder", "image-table")


# Data settings that mean something for text only: given with image data they stop the
# run, instead of being silently ignored.
TEXT_ONLY_FLAGS = {"text_column": "--text-column", "text_pair_column": "--text-pair-column",
                   "pair_encoding": "--pair-encoding", "train_split": "--train-split",
                   "validation_split": "--validation-split", "test_split": "--test-split",
                   "dataset_config": "--dataset-config", "dedup": "--dedup"}
# Label settings that a table of image files and labels uses, and class folders cannot.
LABEL_SET_FLAGS = {"label_separator": "--label-separator"}


def check_image_flags(cfg: DataConfig, table: bool = False) -> None:
    for key, flag in TEXT_ONLY_FLAGS.items():
        if getattr(cfg, key) not in (None, False):
            extra = " (image folders name their splits by their train/, val/ and test/ folders)" \
                if key.endswith("_split") else ""
            raise DataError(f"{flag} applies to text data; {cfg.dataset} holds images{extra}: drop {flag}")
    if table:
        return
    hint = "; a table of image files and labels (CSV or JSONL: file,labels) can hold label sets"
    for key, flag in LABEL_SET_FLAGS.items():
        if getattr(cfg, key) is not None:
            raise DataError(f"{flag} applies to label sets; class folders give one class per image: drop {flag}"
                            f"{hint}")
    if cfg.problem is not None and not get_problem(cfg.problem).one_class_per_example:
        raise DataError(f"--problem {cfg.problem}: class folders give one class per image; drop --problem{hint}")
    if cfg.threshold != "0.5":
        raise DataError("--threshold applies to label sets; class folders give one class per image: drop "
                        f"--threshold{hint}")


def load_image_dataset(cfg: DataConfig, seed: int = 42, flat_split: str = "all") -> ImageDataset:
    """List and label the images of a dataset (no pixels are read).

    A single flat folder of class folders becomes the split ``flat_split``:
    "all" (cut 80/10/10 for training) or "test" (scored whole by zero-shot)."""
    source = resolve_dataset(cfg.dataset)
    if source.known is not None and source.known.modality != "image":
        raise DataError(f"'{cfg.dataset}' is a text dataset; this command needs images")
    check_image_flags(cfg, table=source.format == "image-table")
    raw = _read(source, cfg, flat_split)
    notes = list(raw.notes or [])
    if source.is_local and source.known is not None:
        notes.append(f"read {source.spec} from {source.location}")
    for split, (_, labels) in raw.splits.items():
        missing = [i for i, v in enumerate(labels) if v is None]
        if missing:
            raise DataError(f"{cfg.dataset}: {rows_have(len(missing), split, 'image')} no label")
    # Through the problem seam, as text: classes, label sets (a table's lists or joined
    # labels), or values. Classes come from train, else (a test-only folder) every split.
    cells = {name: (labels, f"{cfg.dataset} ({name})", [images.name(i) for i in range(len(labels))])
             for name, (images, labels) in raw.splits.items()}
    basis = "train" if "train" in cells else "all" if "all" in cells else SPACE_KEY
    if basis == SPACE_KEY:
        cells[SPACE_KEY] = (_all_labels(raw), cfg.dataset, [])
    problem = detect_problem(cells[basis][0], cfg.problem, cfg.label_separator, cfg.dataset)
    space, targets = problem.encode_targets(cells, basis, cfg, raw.names)
    splits = {name: ImageSplit(images, np.arange(len(labels)), targets[name], cells[name][2])
              for name, (images, labels) in raw.splits.items()}
    complete = "all" in splits or ("train" in splits and "validation" not in splits)
    splits = finish_splits(splits, cfg, seed, notes, space, cfg.dataset, problem, complete=complete)
    order = [s for s in ("train", "validation", "test") if s in splits]
    return ImageDataset(name=cfg.dataset, label_space=space, splits={k: splits[k] for k in order}, notes=notes)


SPACE_KEY = "(every split)"


def _all_labels(raw: _RawImages) -> list[object]:
    return [label for _, labels in raw.splits.values() for label in labels]


# --------------------------------------------------------------------------- lazy decoding in workers


