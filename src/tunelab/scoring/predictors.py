"""What every task's predictor is made of: the Prediction record, text inputs checked,
scores turned into predictions, images scored against saved class embeddings. Tasks
import this module, never the predict command (tunelab.serve.predict), which imports them
through the registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunelab.core.errors import TunelabError, counted
from tunelab.core.files import PREDICTOR_FILE, read_json_file, read_predictor, read_yaml_file


@dataclasses.dataclass
class Prediction:
    input: str  # the text, image file, or first text of a pair
    label: str  # the predicted class; for multi-label the predicted labels joined by "; "; for regression the value
    score: float  # probability of that class (or decision value, similarity); for regression the value
    score_kind: str  # probability | decision | similarity | value
    pair: str | None = None  # the second text of a sentence pair
    labels: list[str] | None = None  # multi-label: the predicted labels


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
    from tunelab.scoring.evaluation import LabelScores, ValueScores, label_set_text

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


def dual_encoder_export(run_dir: Path, model, processor):
    """A CLIP or SigLIP run's image tower (the normalised embedding) as one graph; the
    saved class embeddings and the recorded scale and bias follow in NumPy."""
    from tunelab.models.graphs import ExportGraph, ImageVectors

    if "logit_scale" not in read_predictor(run_dir):
        raise TunelabError(f"{run_dir} was made before runs recorded their logit scale; rerun it to export it")
    return ExportGraph(ImageVectors(model.float().eval(), None).eval(), None, 0, "embedding", processor=processor)


def dual_encoder_predictor(run_dir: Path, encode, scoring: dict | None = None):
    """Image files scored from their embeddings (``encode``: PyTorch or ONNX Runtime)
    against the class embeddings the run saved (no prompt re-encoded): one class each, or
    SigLIP's label sets. ``scoring``: the logit scale and bias, where the run did not
    record them (runs before they were recorded, served by the model itself)."""
    from tunelab.encoders.clip import load_class_embeddings
    from tunelab.problems import get_problem
    from tunelab.scoring.evaluation import ClassScores, LabelScores

    record = {**(scoring or {}), **read_predictor(run_dir)}
    class_emb = load_class_embeddings(run_dir / "model" / "class_embeddings.safetensors").numpy()
    names = record["class_names"]
    label_sets = not get_problem(record.get("problem")).exclusive_classes

    def predict(paths) -> list:
        from tunelab.data.images import files_split

        split = files_split(list(getattr(paths, "texts", paths)))
        logits = record["logit_scale"] * encode(split.ids) @ class_emb.T + record.get("logit_bias", 0.0)
        scores = LabelScores(1 / (1 + np.exp(-logits)), record.get("threshold", 0.5), "probability") if label_sets \
            else ClassScores.from_full(logits, "similarity")
        return predictions_from(split.ids, scores, names)

    return predict


def check_texts(inputs: Sequence[str]) -> list[str]:
    bad = [i + 1 for i, t in enumerate(inputs) if not isinstance(t, str) or not t.strip()]
    if bad:
        where = ", ".join(map(str, bad[:8]))
        positions = "positions" if len(bad) > 1 else "position"
        raise TunelabError(f"{counted(len(bad), 'input is', 'inputs are')} empty ({positions} {where})")
    return list(inputs)
