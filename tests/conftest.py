"""Shared fixtures: tiny random models built on the fly, small datasets, offline hubs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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


def write_topic_splits(folder: Path, train: int, validation: int, test: int) -> Path:
    """train.csv, validation.csv and test.csv of the three-topic task, n rows per class each."""
    for name, n, seed in (("train", train, 1), ("validation", validation, 2), ("test", test, 3)):
        write_csv(folder / f"{name}.csv", topic_rows(n, seed=seed))
    return folder


def load_adapter(adapter_dir: Path):
    """A run's LoRA adapter (model/adapter) with plain peft: the head size and label names
    come from the merged model's config beside it, as the model card says."""
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(Path(adapter_dir).parent)
    return AutoPeftModelForSequenceClassification.from_pretrained(
        adapter_dir, num_labels=len(config.id2label), id2label=config.id2label, label2id=config.label2id,
        ignore_mismatched_sizes=True).eval()  # a base that is itself a classifier has a head of another size


def rows_of(path) -> list[dict]:
    """The rows of a CSV file (a predictions file, a predict --output), as dicts."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def metrics_of(run) -> dict:
    import json

    return json.loads((Path(run) / "metrics.json").read_text())


@pytest.fixture
def topic_folder(tmp_path) -> Path:
    """A folder of CSV split files: a 3-class task with string labels."""
    folder = tmp_path / "topics"
    write_csv(folder / "train.csv", topic_rows(30, seed=1))
    write_csv(folder / "dev.csv", topic_rows(8, seed=2))
    write_csv(folder / "test.csv", topic_rows(8, seed=3))
    return folder


# --------------------------------------------------------------------------- images and CLIP

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A 2-layer-per-tower CLIP on 32x32 images with a character-level tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from tunelab.models.architectures import char_clip_tokenizer, clip_image_processor

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = char_clip_tokenizer(model_max_length=32)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=len(tokenizer) - 2,
                         eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    clip_image_processor(32).save_pretrained(folder)
    return folder


def save_tiny_siglip(folder: Path, seed: int = 0) -> Path:
    """A 2-layer-per-tower SigLIP on 32x32 images with a character-level tokenizer
    (SigLIP's own needs sentencepiece and the hub) and SigLIP's plain resize."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    from tunelab.models.architectures import char_clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = char_clip_tokenizer(model_max_length=24)
    tokenizer.pad_token = "<|endoftext|>"
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=24, projection_size=32,
                         bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
                         pad_token_id=len(tokenizer) - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(seed)
    SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def write_colour_images(root: Path, per_class: int, seed: int = 0, size: int = 40) -> Path:
    """class_name/*.png: noisy squares of one colour per class, each with a random shape."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3))
            x, y = rng.integers(0, size // 2, 2)
            pixels[y:y + size // 2, x:x + size // 2] = rgb
            Image.fromarray(pixels.astype("uint8")).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory) -> Path:
    """An image folder with train/validation/test splits of three colour classes."""
    root = tmp_path_factory.mktemp("colours")
    write_colour_images(root / "train", 24, seed=1)
    write_colour_images(root / "validation", 8, seed=2)
    write_colour_images(root / "test", 8, seed=3)
    return root


def assert_predictor_reproduces(run, data_dir=None, atol: float = 1e-4) -> int:
    """The run's loaded Predictor, at the run's own precision, gives every evaluation
    split's predictions file again on the same inputs (texts, pairs or image files):
    evaluation and serving are one predictor. Returns the rows compared."""
    import json

    import numpy as np

    from tunelab.serve.predict import load_predictor

    run = Path(run)
    predictor = load_predictor(run, precision="run")
    compared = 0
    for split in json.loads((run / "metrics.json").read_text())["splits"]:
        rows = rows_of(run / "predictions" / f"{split}.csv")
        if "file" in rows[0]:
            root = Path(data_dir)
            inputs = [str(next(p for p in (root / r["file"], root / split / r["file"]) if p.is_file())) for r in rows]
        elif "text_pair" in rows[0] or "pair" in rows[0]:
            key = "text_pair" if "text_pair" in rows[0] else "pair"
            inputs = [(r["text"], r[key]) for r in rows]
        else:
            inputs = [r["text"] for r in rows]
        served = predictor(inputs)
        assert [p.label for p in served] == [r["prediction"] for r in rows], (run.name, split)
        kind = served[0].score_kind
        if kind in rows[0]:  # the predicted class's score (label sets and numbers: the label says it all)
            np.testing.assert_allclose([p.score for p in served], [float(r[kind]) for r in rows], atol=atol,
                                       err_msg=f"{run.name} {split}")
        compared += len(rows)
    return compared


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tunelab serve`` as a child process; stopped with SIGTERM."""

    def __init__(self, log_dir, *args, ready_within: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"serve-{self.port}.log", "w+")
        env = {**os.environ, "TUNELAB_API_KEY": ""}
        self.process = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", *map(str, args), "--port",
                                         str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        import httpx

        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server did not become ready: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)
