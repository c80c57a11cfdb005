"""Shared fixtures: tiny random models built on the fly, small datasets, offline hubs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

# No test may reach a hub; every model and dataset is local.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TUNELAB_DATA_DIR", str(SHARED_DATA))

WORDS = (
    "the a an and or but of to in on with for is was are be it this that film movie story "
    "good great fine best love loved fun funny moving wonderful brilliant charming "
    "bad worst boring dull awful terrible mess weak flat tedious poor "
    "red green blue cat dog bird apple pear plum sport music science news"
).split()


def data_dir() -> Path:
    return Path(os.environ["TUNELAB_DATA_DIR"])


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Feature caches of the tests never mix with the user's."""
    os.environ["TUNELAB_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "cache")


@pytest.fixture(scope="session")
def rt_available() -> bool:
    return (data_dir() / "rotten_tomatoes" / "rt-polaritydata" / "rt-polarity.pos").is_file()


@pytest.fixture
def need_rt(rt_available):
    if not rt_available:
        pytest.skip("../shared/data/rotten_tomatoes is not present")


def tiny_vocab() -> dict[str, int]:
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,!?'\"-"]
    tokens += list(letters) + [f"##{c}" for c in letters] + WORDS
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def save_tiny_distilbert(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = DistilBertTokenizerFast(vocab=tiny_vocab(), do_lower_case=True, model_max_length=128)
    assert tokenizer("sport music")["input_ids"][1:3] != [tokenizer.unk_token_id] * 2
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
        max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
    )
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer DistilBERT with a ~130-token vocabulary, saved like a hub model."""
    return save_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))


def write_csv(path: Path, rows: list[tuple[str, object]], header=("text", "label")) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def topic_rows(n_per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """Three topics whose texts share a keyword per class: learnable, string labels."""
    import random

    rng = random.Random(seed)
    topics = {"sport": ["sport", "red"], "music": ["music", "blue"], "science": ["science", "green"]}
    filler = ["the", "a", "film", "story", "with", "and", "of", "good", "dog", "cat"]
    rows = []
    for label, keys in topics.items():
        for _ in range(n_per_class):
            words = rng.sample(filler, 4) + [rng.choice(keys)] * 2
            rng.shuffle(words)
            rows.append((" ".join(words), label))
    rng.shuffle(rows)
    return rows


@pytest.fixture
def topic_folder(tmp_path) -> Path:
    """A folder of CSV split files: a 3-class task with string labels."""
    folder = tmp_path / "topics"
    write_csv(folder / "train.csv", topic_rows(30, seed=1))
    write_csv(folder / "dev.csv", topic_rows(8, seed=2))
    write_csv(folder / "test.csv", topic_rows(8, seed=3))
    return folder
