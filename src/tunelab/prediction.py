"""Predictions from a finished run directory, for new inputs. Each task says how its
runs predict (``Task.load_predictor``); this module finds the run's task and calls it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunelab.config import config_from_run
from tunelab.errors import TunelabError
from tunelab.files import read_json_file, read_yaml_file


@dataclasses.dataclass
class Prediction:
    input: str  # the text, image file, or first text of a pair
    label: str  # the predicted class; for multi-label the predicted labels joined by "; "; for regression the value
    score: float  # probability of that class (or decision value, similarity); for regression the value
    score_kind: str  # probability | decision | similarity | value
    pair: str | None = None  # the second text of a sentence pair
    labels: list[str] | None = None  # multi-label: the predicted labels


def as_text_inputs(inputs):
    """Texts, or sentence pairs given as (first, second) tuples or a TextInputs, checked
    for empty texts."""
    from tunelab.data.text import TextInputs

    if not isinstance(inputs, TextInputs):
        items = list(inputs)
        if items and all(isinstance(i, (tuple, list)) and len(i) == 2 for i in items):
            inputs = TextInputs([a for a, _ in items], [b for _, b in items])
        else:
            inputs = TextInputs(items)
    check_texts(inputs.texts)
    if inputs.pairs is not None:
        check_texts(inputs.pairs)
    return inputs


def predictions_from(inputs, scores, names) -> list[Prediction]:
    """Predictions for ``inputs`` from ClassScores, LabelScores or ValueScores."""
    from tunelab.evaluation import LabelScores, ValueScores, label_set_text

    inputs = as_text_inputs(inputs)
    pairs = inputs.pairs or [None] * len(inputs)
    if isinstance(scores, ValueScores):
        return [Prediction(t, f"{v:.6g}", float(v), "value", p) for t, p, v in zip(inputs.texts, pairs, scores.values)]
    if isinstance(scores, LabelScores):
        out = []
        for t, p, row, chosen in zip(inputs.texts, pairs, scores.scores, scores.predicted):
            labels = [names[i] for i in np.flatnonzero(chosen)]
            out.append(Prediction(t, label_set_text(chosen, names), float(row.max()), scores.kind, p, labels))
        return out
    return [Prediction(t, names[c], float(v), scores.kind, p)
            for t, p, c, v in zip(inputs.texts, pairs, scores.predicted, scores.score)]


def run_command(run_dir: Path) -> str:
    """The command a finished run directory was made by."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise TunelabError(f"{run_dir} is not a tunelab run directory (no config.yaml)")
    if not (run_dir / "metrics.json").is_file():
        raise TunelabError(f"{run_dir} holds no finished run (no metrics.json); rerun or resume it first")
    read_json_file(run_dir / "metrics.json")  # a damaged run says so here, naming the file
    command = read_yaml_file(config_file).get("command")
    if not command:
        raise TunelabError(f"{run_dir}/config.yaml names no command")
    return command


PRECISIONS = ("fp32", "bf16", "fp16", "run")


def load_predictor(run_dir: str | Path, backend: str = "torch", precision: str = "fp32"):
    """A function that predicts for a list of inputs with the model of ``run_dir``;
    ``backend`` onnx / onnx-int8 serves the run's ONNX export instead of PyTorch.
    ``precision`` fp32 (default) computes with the saved weights exactly as plain
    transformers and pipeline() do; bf16/fp16 trade that for speed; ``run`` uses the
    precision the run trained with."""
    if precision not in PRECISIONS:
        raise TunelabError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    from tunelab.registry import get_task

    run_dir = Path(run_dir)
    command = run_command(run_dir)
    if backend != "torch":
        if command != "finetune":
            raise TunelabError(f"--backend {backend} serves exported fine-tuning runs; {run_dir} is a {command} run")
        from tunelab.export import onnx_predictor

        return onnx_predictor(run_dir, int8=backend == "onnx-int8")
    task = get_task(command)
    if task.load_predictor is None:
        raise TunelabError(f"predict does not support '{task.name}' runs")
    config = config_from_run(task.config_class, run_dir)
    if precision != "run":
        config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, precision=precision))
    return task.load_predictor(run_dir, config)


def predict(run_dir: str | Path, inputs, backend: str = "torch", precision: str = "fp32") -> list[Prediction]:
    """Predict for ``inputs`` with the model a run directory holds: texts, sentence pairs
    ((first, second) tuples), or image files, as the run was trained on."""
    if not len(inputs):
        raise TunelabError("nothing to predict: give texts as arguments, --pair A B, or --input FILE")
    check_input_shape(Path(run_dir), inputs)
    predictor = load_predictor(run_dir, backend, precision)
    return predictor(inputs)


def check_input_shape(run_dir: Path, inputs) -> None:
    """Pairs for a run trained on sentence pairs, single inputs otherwise: one line that
    says which, instead of a shape error deep in a model or classifier."""
    run_command(run_dir)
    data = read_yaml_file(run_dir / "config.yaml").get("data") or {}
    if hasattr(inputs, "pairs"):
        given_pairs = inputs.pairs is not None
    else:
        items = list(inputs)
        given_pairs = bool(items) and all(isinstance(i, (tuple, list)) and len(i) == 2 for i in items)
    if data.get("text_pair_column") and not given_pairs:
        raise TunelabError(f"{run_dir} was trained on sentence pairs (columns {data.get('text_column')} and "
                           f"{data.get('text_pair_column')}): give each input as a pair (--pair FIRST SECOND, or "
                           "--input FILE with both columns)")
    if not data.get("text_pair_column") and given_pairs:
        raise TunelabError(f"{run_dir} was trained on single inputs, not pairs: give texts (or images), not --pair")


def image_predictor(run_dir: Path, model, processor, device, batch_size: int):
    """Images scored against the class embeddings a CLIP run saved (no prompt re-encoded)."""

    from tunelab.clip import load_class_embeddings, score_loader
    from tunelab.data.images import ClipPreprocess, FileImages, ImageSplit, image_loader
    from tunelab.evaluation import ScoreAccumulator

    model.to(device).eval()
    class_emb = load_class_embeddings(run_dir / "model" / "class_embeddings.safetensors").to(device)
    names = read_json_file(run_dir / "model" / "zeroshot.json")["class_names"]

    def predict_images(inputs: Sequence[str]) -> list[Prediction]:
        missing = [p for p in inputs if not Path(p).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise TunelabError(f"image not found: {missing[0]}{more}")
        paths = [str(Path(p).resolve()) for p in inputs]
        split = ImageSplit(FileImages(Path("/"), paths), np.arange(len(paths)),
                           np.zeros(len(paths), dtype=np.int64), list(inputs))
        accumulator = ScoreAccumulator(len(paths), len(names), "similarity")
        loader = image_loader(split, ClipPreprocess.for_device(processor, device), batch_size, 0, strict=True)
        score_loader(model, loader, class_emb, device, accumulator)
        result = accumulator.result()
        return [Prediction(text, names[p], float(s), "similarity")
                for text, p, s in zip(inputs, result.predicted, result.score)]

    return predict_images


def check_texts(inputs: Sequence[str]) -> list[str]:
    bad = [i + 1 for i, t in enumerate(inputs) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise TunelabError(f"{len(bad)} inputs are empty (positions {', '.join(map(str, bad[:8]))})")
    return list(inputs)


def read_inputs(path: str | Path, column: str | None = None, pair_column: str | None = None):
    """Texts from a CSV/TSV/JSONL/Parquet file (column ``text`` or ``column``; with
    ``pair_column`` sentence pairs) or a .txt, one per line."""
    from tunelab.data.text import TEXT_ALTERNATIVES, TextInputs, pick_column, read_frame

    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"input file not found: {path}")
    if path.suffix.lower() == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = read_frame(path)
    columns = [str(c) for c in frame.columns]
    name, _ = pick_column(columns, column, "text", TEXT_ALTERNATIVES, "--text-column", path.name)
    if pair_column is None:
        return frame[name].tolist()
    second, _ = pick_column(columns, pair_column, pair_column, (), "--text-pair-column", path.name)
    return TextInputs(frame[name].tolist(), frame[second].tolist())


def run_pair_columns(run_dir: str | Path, input_file: str | Path, text_column: str | None,
                     pair_column: str | None) -> tuple[str | None, str | None]:
    """The columns of an input file to read: as given, else the run's own when the file
    has them (a pair run needs both texts)."""
    config = read_yaml_file(Path(run_dir) / "config.yaml")
    data = config.get("data") or {}
    if str(input_file).lower().endswith(".txt"):
        return text_column, None
    from tunelab.data.text import read_frame

    columns = [str(c) for c in read_frame(Path(input_file)).columns]
    if text_column is None and data.get("text_column") in columns:
        text_column = data["text_column"]
    if pair_column is None and data.get("text_pair_column"):
        pair_column = data["text_pair_column"]
    return text_column, pair_column
