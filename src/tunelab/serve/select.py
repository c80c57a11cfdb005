"""The select command: which unlabelled examples to label next, ranked with a finished
run's Predictor (the one evaluation scored with), by the strategies of
``tunelab.models.acquisition`` (entropy, margin, diverse, random); the same seed gives
the same rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tunelab.core.config import RuntimeConfig
from tunelab.core.errors import TunelabError, counted
from tunelab.core.runs import csv_text
from tunelab.core.safety import atomic_write_bytes
from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor, normalize_rows
from tunelab.models.acquisition import STRATEGIES, diverse_candidates, diverse_picks, uncertainty_order
from tunelab.models.predictor import run_inputs
from tunelab.models.resolve import resolve_model
from tunelab.serve.predict import check_input_shape, load_predictor, read_inputs

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclasses.dataclass
class Selected:
    rank: int
    row: int  # 1-based row of the pool (its line in a .txt)
    text: str
    pair: str | None
    score: float  # the strategy's uncertainty (random: 0)
    predicted: str
    predicted_score: float


def read_pool(path: str | Path, text_column: str | None, pair_column: str | None) -> list:
    """The pool's inputs: texts or pairs from any file predict reads; images from a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise TunelabError(f"--pool {path} holds no image files")
        return files
    inputs = read_inputs(path, text_column, pair_column)
    if hasattr(inputs, "pairs"):
        return list(zip(inputs.texts, inputs.pairs))
    return list(inputs)


def select(run_dir: str | Path, pool: str | Path, k: int, strategy: str = "entropy", seed: int = 0,
           text_column: str | None = None, pair_column: str | None = None, embedder: str = "minilm",
           backend: str = "torch") -> list[Selected]:
    """The ``k`` examples of ``pool`` to label next, best first."""
    if strategy not in STRATEGIES:
        raise TunelabError(f"--strategy {strategy}: choose one of {', '.join(STRATEGIES)}")
    run_dir = Path(run_dir)
    inputs = read_pool(pool, text_column, pair_column)
    if not inputs:
        raise TunelabError(f"--pool {pool} is empty: nothing to choose from")
    if k < 1 or k > len(inputs):
        raise TunelabError(f"--k {k}: choose between 1 and the pool's {counted(len(inputs), 'example')}")
    check_input_shape(run_dir, inputs)
    kind = run_inputs(run_dir)
    predictor = load_predictor(run_dir, backend)
    rng = np.random.default_rng(seed)
    shuffle = rng.permutation(len(inputs))  # breaks ties, and is the random strategy's order
    if strategy == "random":
        picked = shuffle[:k]
        predictions = predictor([inputs[i] for i in picked])
        return [_selected(r, int(i), inputs[i], 0.0, p) for r, (i, p) in enumerate(zip(picked, predictions), 1)]
    predictions = predictor(inputs)
    if predictions[0].uncertainty is None:
        raise TunelabError(f"{run_dir} predicts numbers, which carry no uncertainty of their own: use --strategy "
                           "random, or a run that predicts classes")
    uncertainty = np.array([p.uncertainty["margin" if strategy == "margin" else "entropy"] for p in predictions])
    if np.ptp(uncertainty) <= 1e-12:
        raise TunelabError(f"{run_dir} is equally sure of every example of the pool (a majority-class floor gives "
                           "one answer to all): nothing to rank; use --strategy random, or a trained run")
    order = uncertainty_order(uncertainty, shuffle)
    if strategy == "diverse":
        if kind == "images":
            raise TunelabError("--strategy diverse spreads texts over a text encoder's space; for images use "
                               "entropy, margin or random")
        order = diverse_order(inputs, order, uncertainty, k, embedder)
    return [_selected(r, int(i), inputs[i], float(uncertainty[i]), predictions[i])
            for r, i in enumerate(order[:k], 1)]


def diverse_order(inputs: list, order: np.ndarray, uncertainty: np.ndarray, k: int, embedder: str) -> np.ndarray:
    """k picks among the most uncertain, spread over ``embedder``'s space with no near copies."""
    candidates = diverse_candidates(order, k)
    texts = [_text_of(inputs[i]) for i in candidates]
    extractor = TextFeatureExtractor(resolve_model(embedder), FeatureConfig(pooling="mean"),
                                     RuntimeConfig(precision="fp32"))
    vectors = normalize_rows(extractor.select(extractor.encode_all(texts, desc="pool embeddings")))
    picks = diverse_picks(vectors, uncertainty[candidates], texts, k)
    if len(picks) < k:
        raise TunelabError(f"only {len(picks)} of the {len(candidates)} most uncertain examples are not near copies "
                           f"of each other; ask for fewer (--k {len(picks)}) or use --strategy entropy")
    return candidates[picks]


def _text_of(item) -> str:
    return f"{item[0]} || {item[1]}" if isinstance(item, tuple) else str(item)


def _selected(rank: int, index: int, item, score: float, prediction) -> Selected:
    text, pair = (item[0], item[1]) if isinstance(item, tuple) else (str(item), None)
    return Selected(rank, index + 1, text, pair, score, prediction.label, float(prediction.score))


def write_selection(selected: list[Selected], out: str | Path, strategy: str, overwrite: bool = False) -> Path:
    """The rows to label as CSV (rank, row, text[, pair], the strategy's score, the run's
    predicted label and score); an existing file is kept unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise TunelabError(f"--out {out} exists; choose another file or pass --overwrite")
    if out.is_dir():
        raise TunelabError(f"--out {out} is a folder; give a .csv file")
    columns = {"rank": [s.rank for s in selected], "row": [s.row for s in selected],
               "text": [s.text for s in selected]}
    if any(s.pair is not None for s in selected):
        columns["pair"] = [s.pair for s in selected]
    columns.update({strategy: [s.score for s in selected], "predicted": [s.predicted for s in selected],
                    "predicted_score": [s.predicted_score for s in selected]})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, csv_text(columns).encode("utf-8"))
    return out
