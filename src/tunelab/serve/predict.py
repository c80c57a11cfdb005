"""The predict command: predictions from a finished run directory, for new inputs. Each
task says how its runs predict (``Task.load_predictor``); this module finds the run's
task through the registry and calls it. What predictors are made of is in
tunelab.models.predictor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tunelab.core.config import config_from_run
from tunelab.core.errors import TunelabError
from tunelab.core.files import read_yaml_file
from tunelab.core.registry import get_task
from tunelab.data.tables import TEXT_ALTERNATIVES, pick_column, read_frame
from tunelab.data.text import TextInputs
from tunelab.models.predictor import Prediction, Predictor, run_command
from tunelab.serve.export import onnx_predictor

PRECISIONS = ("fp32", "bf16", "fp16", "run")
BACKENDS = ("torch", "onnx", "onnx-int8")


def load_predictor(run_dir: str | Path, backend: str = "torch", precision: str | None = None) -> Predictor:
    """A Predictor that predicts for a list of inputs with the model of ``run_dir``;
    ``backend`` onnx / onnx-int8 serves the run's ONNX export instead of PyTorch.
    ``precision``: fp32 computes with the saved weights exactly as plain transformers
    and pipeline() do; bf16/fp16 trade that for speed; ``run`` uses the run's own (its
    predictions files again); None, the task's default (fine-tuning: fp32, whose model/
    pipeline() loads; probes and zero-shot: the run's, whose classifier or scale was fitted
    on features of that precision)."""
    if precision is not None and precision not in PRECISIONS:
        raise TunelabError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")

    run_dir = Path(run_dir)
    command = run_command(run_dir)
    if backend not in BACKENDS:
        raise TunelabError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend != "torch":
        return Predictor(run_dir, onnx_predictor(run_dir, int8=backend == "onnx-int8"), backend)
    task = get_task(command)
    if task.load_predictor is None:
        raise TunelabError(f"predict does not support '{task.name}' runs")
    config = config_from_run(task.config_class, run_dir)
    precision = precision or task.serve_precision
    if precision != "run":
        config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, precision=precision))
    return Predictor(run_dir, task.load_predictor(run_dir, config), backend)


def predict(run_dir: str | Path, inputs, backend: str = "torch", precision: str | None = None) -> list[Prediction]:
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


def read_inputs(path: str | Path, column: str | None = None, pair_column: str | None = None):
    """Texts from a CSV/TSV/JSONL/Parquet file (column ``text`` or ``column``; with
    ``pair_column`` sentence pairs) or a .txt, one per line."""
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

    columns = [str(c) for c in read_frame(Path(input_file)).columns]
    if text_column is None and data.get("text_column") in columns:
        text_column = data["text_column"]
    if pair_column is None and data.get("text_pair_column"):
        pair_column = data["text_pair_column"]
    return text_column, pair_column
