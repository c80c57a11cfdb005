"""Predictions from a finished run directory, for new inputs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from tunelab.config import config_from_run
from tunelab.errors import TunelabError


@dataclasses.dataclass
class Prediction:
    input: str
    label: str  # predicted class name
    score: float  # probability of that class where the model gives one, else its decision value
    score_kind: str  # probability | decision


def _run_command(run_dir: Path) -> str | None:
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise TunelabError(f"{run_dir} is not a tunelab run directory (no config.yaml)")
    if not (run_dir / "metrics.json").is_file():
        raise TunelabError(f"{run_dir} holds no finished run (no metrics.json); rerun or resume it first")
    return (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}).get("command")


def predict(run_dir: str | Path, inputs: Sequence[str]) -> list[Prediction]:
    """Classify ``inputs`` with the model a run directory holds."""
    run_dir = Path(run_dir)
    command = _run_command(run_dir)
    if not inputs:
        raise TunelabError("nothing to predict: give texts as arguments or --input FILE")
    if command == "probe":
        return _predict_probe(run_dir, inputs)
    if command == "finetune":
        return _predict_finetune(run_dir, inputs)
    if command in ("zeroshot", "clip-finetune"):
        return _predict_images(run_dir, command, inputs)
    raise TunelabError(f"predict does not support '{command}' runs yet")


def _predict_probe(run_dir: Path, inputs: Sequence[str]) -> list[Prediction]:
    from tunelab.classifiers import class_scores, load_classifier
    from tunelab.evaluation import ClassScores
    from tunelab.features import TextFeatureExtractor
    from tunelab.tasks.common import recorded_model
    from tunelab.tasks.probe import ProbeConfig

    config = config_from_run(ProbeConfig, run_dir)
    texts = _check_texts(inputs)
    info = json.loads((run_dir / "model" / "probe.json").read_text(encoding="utf-8"))
    estimator = load_classifier(run_dir / "model" / "classifier.skops")
    extractor = TextFeatureExtractor(recorded_model(run_dir, config.model), config.features, config.runtime)
    features = extractor.encode(texts, desc="features")
    names = info["class_names"]
    full, kind = class_scores(estimator, features, len(names))
    scores = ClassScores.from_full(full, kind, predicted=estimator.predict(features))
    return [Prediction(text, names[p], float(s), kind) for text, p, s in zip(texts, scores.predicted, scores.score)]


def _predict_finetune(run_dir: Path, inputs: Sequence[str]) -> list[Prediction]:
    from tunelab.runtime import resolve_device
    from tunelab.tasks.finetune import (
        FinetuneConfig,
        effective_max_length,
        load_finetuned,
        predict_scores,
    )

    config = config_from_run(FinetuneConfig, run_dir)
    texts = _check_texts(inputs)
    device = resolve_device(config.runtime.device)
    model, tokenizer = load_finetuned(run_dir, config)
    model.to(device)
    scores = predict_scores(
        model, tokenizer, texts, config.train.eval_batch_size,
        effective_max_length(tokenizer, model, config.train.max_length), device, config.runtime.precision)
    names = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["data"]["class_names"]
    return [Prediction(t, names[p], float(s), "probability")
            for t, p, s in zip(texts, scores.predicted, scores.score)]


def _predict_images(run_dir: Path, command: str, inputs: Sequence[str]) -> list[Prediction]:
    """Images scored against the class embeddings the run saved (no prompts re-encoded)."""
    from tunelab.clip import load_class_embeddings, load_clip, score_loader
    from tunelab.data.images import ClipPreprocess, FileImages, ImageSplit, image_loader
    from tunelab.evaluation import ScoreAccumulator
    from tunelab.runtime import resolve_device
    from tunelab.tasks.common import recorded_model

    if command == "zeroshot":
        from tunelab.tasks.zeroshot import ZeroshotConfig

        config = config_from_run(ZeroshotConfig, run_dir)
        model, _, processor = load_clip(recorded_model(run_dir, config.model))
    else:
        from tunelab.tasks.clip_finetune import ClipFinetuneConfig, load_clip_run

        config = config_from_run(ClipFinetuneConfig, run_dir)
        model, _, processor = load_clip_run(run_dir, config)
    missing = [p for p in inputs if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TunelabError(f"image not found: {missing[0]}{more}")
    device = resolve_device(config.runtime.device)
    model.to(device).eval()
    class_emb = load_class_embeddings(run_dir / "model" / "class_embeddings.safetensors").to(device)
    names = json.loads((run_dir / "model" / "zeroshot.json").read_text(encoding="utf-8"))["class_names"]
    paths = [str(Path(p).resolve()) for p in inputs]
    split = ImageSplit(FileImages(Path("/"), paths), np.arange(len(paths)), np.zeros(len(paths), dtype=np.int64),
                       list(inputs))
    accumulator = ScoreAccumulator(len(paths), len(names), "similarity")
    loader = image_loader(split, ClipPreprocess(processor), config.images.batch_size, 0, strict=True)
    score_loader(model, loader, class_emb, device, accumulator)
    result = accumulator.result()
    return [Prediction(text, names[p], float(s), "similarity")
            for text, p, s in zip(inputs, result.predicted, result.score)]


def _check_texts(inputs: Sequence[str]) -> list[str]:
    bad = [i + 1 for i, t in enumerate(inputs) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise TunelabError(f"{len(bad)} inputs are empty (positions {', '.join(map(str, bad[:8]))})")
    return list(inputs)


def read_inputs(path: str | Path, column: str | None = None) -> list[str]:
    """Texts from a CSV/JSONL/Parquet file (column ``text`` or ``column``) or a .txt, one per line."""
    from tunelab.data.text import TEXT_ALTERNATIVES, _read_frame, pick_column

    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"input file not found: {path}")
    if path.suffix.lower() == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = _read_frame(path)
    name, _ = pick_column([str(c) for c in frame.columns], column, "text", TEXT_ALTERNATIVES,
                          "--text-column", path.name)
    return frame[name].tolist()
