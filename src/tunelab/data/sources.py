"""Where a dataset lives: known names, TUNELAB_DATA_DIR, local paths, format detection."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.core.errors import DataError
from tunelab.core.hub import require_hub
from tunelab.core.provenance import cache_dir, content_fingerprint

TEXT_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Columns of a data table that name image files (a table of file, labels is image data).
IMAGE_FILE_COLUMNS = ("file", "image", "path", "filepath", "file_path", "filename", "file_name", "image_path")
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}


@dataclass(frozen=True)
class KnownDataset:
    name: str
    modality: str  # text | image
    local_names: tuple[str, ...]  # folders tried under TUNELAB_DATA_DIR, in order
    hub_id: str
    # What each label means in words, where the label is a code (zero-shot describes the
    # classes with these unless told otherwise).
    label_text: dict | None = None


KNOWN_DATASETS = {
    "rotten_tomatoes": KnownDataset(
        "rotten_tomatoes",
        "text",
        ("rotten_tomatoes/rt-polaritydata", "rt-polaritydata", "rotten_tomatoes"),
        "cornell-movie-review-data/rotten_tomatoes",
        {"neg": "negative", "pos": "positive", "0": "negative", "1": "positive"},
    ),
    "tiny_imagenet": KnownDataset(
        "tiny_imagenet",
        "image",
        ("tiny-imagenet-200", "tiny_imagenet/tiny-imagenet-200", "tiny_imagenet"),
        "zh-plus/tiny-imagenet",
    ),
}


@dataclass(frozen=True)
class DatasetSource:
    """A resolved dataset: its format and where to read it (a path or a hub id)."""

    spec: str  # as the user gave it
    # rt-polarity | tiny-imagenet | image-folder | image-table | text-file | text-folder | hf-disk | hf-repo | hub
    format: str
    location: str
    known: KnownDataset | None = None
    config: str | None = None  # a hub dataset's configuration (glue: mrpc, ...)

    @property
    def is_local(self) -> bool:
        return self.format != "hub"

    def fingerprint(self) -> str:
        """Changes whenever a data file changes (local data), or names the hub dataset."""
        suffix = f"/{self.config}" if self.config else ""
        return content_fingerprint(Path(self.location)) + suffix if self.is_local else f"hub:{self.location}{suffix}"

    def record(self) -> dict:
        location = str(Path(self.location).resolve()) if self.is_local else self.location
        return {"name": self.spec, "location": location, "format": self.format, "config": self.config,
                "fingerprint": self.fingerprint()}


def data_dir() -> Path | None:
    value = os.environ.get("TUNELAB_DATA_DIR")
    return Path(value).expanduser() if value else None


# A split name, optionally followed by a shard number (``train-00000-of-00003``,
# ``train-2``); anything else (``train_old``, ``train-backup``) is not a split file.
_SHARD_SUFFIX = re.compile(r"(?:[-_]\d+(?:-of-\d+)?)?")


def split_name_of(stem: str) -> str | None:
    """``train``, ``dev``, ``train-00000-of-00001`` -> canonical split name, else None."""
    stem = stem.lower()
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if stem.startswith(alias) and _SHARD_SUFFIX.fullmatch(stem[len(alias):]):
                return split
    return None


def detect_format(path: Path) -> str:
    """Name the layout of a local dataset path, or fail saying what was expected."""
    if path.is_file():
        if path.suffix.lower() in TEXT_FILE_SUFFIXES:
            return "image-table" if names_images(path) else "text-file"
        raise DataError(
            f"cannot read {path}: unknown file type '{path.suffix}'; "
            f"use one of {', '.join(TEXT_FILE_SUFFIXES)}"
        )
    if not path.is_dir():
        raise DataError(f"dataset path not found: {path}")
    if (path / "rt-polarity.pos").is_file() and (path / "rt-polarity.neg").is_file():
        return "rt-polarity"
    if (path / "rt-polaritydata").is_dir():
        return "rt-polarity"
    if (path / "wnids.txt").is_file() or (path / "tiny-imagenet-200" / "wnids.txt").is_file():
        return "tiny-imagenet"
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "hf-disk"
    if _declares_configs(path / "README.md"):
        return "hf-repo"
    files = sorted(p for p in path.iterdir() if p.is_file())
    split_files = [p for p in files if p.suffix.lower() in TEXT_FILE_SUFFIXES and split_name_of(p.stem)]
    if split_files:
        return "image-table" if names_images(split_files[0]) else "text-folder"
    data_sub = path / "data"
    if data_sub.is_dir() and any(
        p.suffix.lower() in TEXT_FILE_SUFFIXES and split_name_of(p.stem) for p in data_sub.iterdir()
    ):
        return "text-folder"
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subdirs and any(_holds_images(d) for d in subdirs):
        return "image-folder"
    if any(p.suffix.lower() in TEXT_FILE_SUFFIXES for p in files):
        return "text-folder"  # data files under other names: --train-split etc. say which is which
    raise DataError(
        f"cannot tell the format of {path}: expected split files (train.csv, test.jsonl, ...), "
        "an rt-polarity or tiny-imagenet-200 folder, class folders of images, "
        "or a dataset saved with save_to_disk"
    )


def _declares_configs(readme: Path) -> bool:
    """A dataset repository's card declares its configurations and data files in YAML."""
    if not readme.is_file():
        return False
    import yaml

    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return False
    try:
        front = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return False
    return isinstance(front, dict) and "configs" in front


# A hub dataset id: a name, or an owner and a name.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def image_file_column(columns, first_row: dict) -> str | None:
    """The column of a table that names image files: one of IMAGE_FILE_COLUMNS whose
    first value is a path with an image suffix."""
    for column in IMAGE_FILE_COLUMNS:
        if column in columns:
            value = first_row.get(column)
            if isinstance(value, str) and Path(value.strip()).suffix.lower() in IMAGE_SUFFIXES:
                return column
    return None


def names_images(path: Path) -> bool:
    """Whether a data file is a table of image files and labels (its header and first row
    are enough; an unreadable file is left to the reader, which says why)."""
    import csv
    import json

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
                first = next(reader, None)
                return first is not None and image_file_column(reader.fieldnames or [], first) is not None
        if suffix in (".jsonl", ".json"):
            with path.open(encoding="utf-8-sig") as handle:
                line = handle.readline().strip()
            first = json.loads(line) if line.startswith("{") else None
            return isinstance(first, dict) and image_file_column(list(first), first) is not None
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path).read_row_group(0) if pq.ParquetFile(path).num_row_groups else None
            if table is None or table.num_rows == 0:
                return False
            first = {name: table.column(name)[0].as_py() for name in table.column_names}
            return image_file_column(table.column_names, first) is not None
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return False
    return False


def _holds_images(folder: Path) -> bool:
    for p in folder.rglob("*"):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return True
    return False


def resolve_dataset(spec: str, config: str | None = None) -> DatasetSource:
    """A known name (looked up under TUNELAB_DATA_DIR, else the hub), a local path, or a
    hub dataset id (``imdb``, ``glue`` with ``config`` mrpc, ``user/name``)."""
    if not spec:
        raise DataError("no dataset given; pass --dataset NAME_OR_PATH")
    known = KNOWN_DATASETS.get(spec)
    if known is not None:
        root = data_dir()
        if root is not None:
            for name in known.local_names:
                candidate = root / name
                if candidate.is_dir():
                    try:
                        fmt = detect_format(candidate)
                    except DataError:
                        continue
                    return DatasetSource(spec, fmt, str(candidate), known)
        return DatasetSource(spec, "hub", known.hub_id, known, config)
    path = Path(spec).expanduser()
    if path.exists():
        fmt = detect_format(path)
        if config and path.is_file():
            raise DataError(f"--dataset-config {config}: {spec} is a single file, which has no configurations; "
                            "drop --dataset-config (it names a configuration of a hub dataset or a dataset folder)")
        if config and fmt not in ("hf-repo",):
            if not (path / config).is_dir():
                subfolders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
                raise DataError(f"{spec} has no configuration '{config}' (--dataset-config); "
                                f"subfolders: {', '.join(subfolders) or 'none'}")
            return DatasetSource(spec, detect_format(path / config), str(path / config), None, None)
        return DatasetSource(spec, fmt, str(path), None, config)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep + os.sep in spec \
        or Path(spec).suffix.lower() in TEXT_FILE_SUFFIXES
    if looks_like_path or not HUB_ID.fullmatch(spec):
        known_names = ", ".join(KNOWN_DATASETS)
        raise DataError(
            f"dataset '{spec}' not found: not a local file or folder, a known name ({known_names}), "
            "or a hub dataset id"
        )
    return DatasetSource(spec, "hub", spec, None, config)

def load_hf_dataset(source: DatasetSource, hint: str, config: str | None = None):
    """A dataset saved with ``save_to_disk``, a dataset repository (a local folder whose
    card declares its configurations) or a hub dataset, through the ``datasets``
    library, with one-line errors; ``hint`` says how to do without the hub. Hub and
    repository datasets go through the one ``datasets.load_dataset`` call."""
    config = config or source.config
    if source.format == "hf-disk":
        from datasets import load_from_disk

        if config:
            raise DataError(f"{source.location} is a saved dataset; it has no configurations (--dataset-config)")
        try:
            return load_from_disk(source.location)
        except Exception as exc:  # datasets raises many types for a broken folder
            raise DataError(f"cannot load the saved dataset at {source.location}: "
                            f"{str(exc).splitlines()[0]}") from None
    if source.format == "hub":
        require_hub(f"dataset '{source.spec}' ({source.location})", hint)
    from datasets import load_dataset

    try:
        return load_dataset(source.location, name=config, cache_dir=str(cache_dir() / "datasets"))
    except Exception as exc:  # unknown configuration, missing files, ...: one line
        message = " ".join(str(exc).split())
        raise DataError(f"cannot load dataset '{source.spec}'"
                        + (f" (configuration '{config}')" if config else "") + f": {message[:300]}") from None
