"""Datasets: resolution, loading, validation and splitting."""

from tunelab.data.labels import LabelSpace
from tunelab.data.sources import KNOWN_DATASETS, DatasetSource, resolve_dataset
from tunelab.data.text import TextDataset, TextSplit, load_text_dataset

__all__ = [
    "KNOWN_DATASETS",
    "DatasetSource",
    "LabelSpace",
    "TextDataset",
    "TextSplit",
    "load_text_dataset",
    "resolve_dataset",
]
