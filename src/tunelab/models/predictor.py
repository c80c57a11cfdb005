"""What every task's predictor is made of: the Prediction record, text inputs checked,
scores turned into predictions, images scored against saved class embeddings. Tasks
import this module, never the predict command (tunelab.serve.predict), which imports them
through the registry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunelab.core.errors import TunelabError, counted
from tunelab.core.files import PREDICTOR_FILE, read_json_file, read_predictor, read_yaml_file
from tunelab.data.text import TextInputs
from tunelab.problems.scores import Prediction


class Predictor:
    """A finished run's model, ready for new inputs: what ``tunelab.load_predictor``
    returns, whatever the task or backend. Call it (or ``predict``) with texts, sentence
    pairs or image files, as the run was trained on; ``record`` is the run's
    model/predictor.json (task, problem, class names, threshold)."""

    def __init__(self, run_dir: str | Path, predict, backend: str = "torch"):
        self.run_dir = Path(run_dir)
        self.backend = backend
        self._predict = predict
        try:
            self.record = read_predictor(self.run_dir)
        except TunelabError:
            if (self.run_dir / "model" / PREDICTOR_FILE).exists():
                raise  # damaged: say so
            self.record = {}  # a task of a plugin may keep its own files; it predicts all the same

    @property
    def task(self) -> str:
        return self.record.get("task") or run_command(self.run_dir)

    @property
    def class_names(self) -> list[str]:
        return list(self.record.get("class_names") or [])

    def predict(self, inputs) -> list[Prediction]:
        return self._predict(inputs)

    __call__ = predict

    def __repr__(self) -> str:
        return f"Predictor({str(self.run_dir)!r}, task={self.task!r}, backend={self.backend!r})"


def as_text_inputs(inputs):
    """Texts, or sentence pairs given as (first, second) tuples or a TextInputs, checked
    for empty texts."""
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
    """Predictions for ``inputs`` from a problem's scores."""
    inputs = as_text_inputs(inputs)
    return scores.predictions(inputs.texts, inputs.pairs or [None] * len(inputs), names)


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


def run_inputs(run_dir: str | Path) -> str:
    """What a run's predictor takes: ``images``, ``pairs`` or ``text``. From
    model/predictor.json (its ``inputs``, or a CLIP model, which scores images), else the
    run's data settings (a second text column means pairs)."""
    run_dir = Path(run_dir)
    try:
        record = read_predictor(run_dir)
    except TunelabError:
        record = {}
    if record.get("inputs") == "images" or record.get("kind") == "clip":
        return "images"
    data = read_yaml_file(run_dir / "config.yaml").get("data") or {}
    return "pairs" if data.get("text_pair_column") else "text"


def check_texts(inputs: Sequence[str]) -> list[str]:
    bad = [i + 1 for i, t in enumerate(inputs) if not isinstance(t, str) or not t.strip()]
    if bad:
        where = ", ".join(map(str, bad[:8]))
        positions = "positions" if len(bad) > 1 else "position"
        raise TunelabError(f"{counted(len(bad), 'input is', 'inputs are')} empty ({positions} {where})")
    return list(inputs)
