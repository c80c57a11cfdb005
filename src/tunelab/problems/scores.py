"""What a predictor gives for a batch, in the form evaluation takes: one class per
example (ClassScores, O(n) memory for many classes), a label set (LabelScores, with its
threshold), or a number (ValueScores); the threshold chosen on validation; the metrics
of a split; the validation loss of streamed evaluations."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tunelab.problems.metrics import (
    DENSE_CONFUSION_LIMIT,
    classification_metrics,
    confusion,
    confusion_cells,
    expected_calibration_error,
    multilabel_metrics,
    regression_metrics,
    text_report,
    top_confused_pairs,
)

# Per-class score columns in predictions CSVs up to this many classes; beyond, top-5.
MAX_SCORE_COLUMNS = 10


TOP_K = 5


@dataclasses.dataclass
class Prediction:
    """One input's prediction, as predict and serve give it."""

    input: str  # the text, image file, or first text of a pair
    label: str  # the predicted class; for multi-label the predicted labels joined by "; "; for regression the value
    score: float  # probability of that class (or decision value, similarity); for regression the value
    score_kind: str  # probability | decision | similarity | value
    pair: str | None = None  # the second text of a sentence pair
    labels: list[str] | None = None  # multi-label: the predicted labels
    # How unsure the model is, for choosing what to label next: margin (1 - the gap between
    # the two best classes; label sets: 1 - 2 x the distance of the least sure label from
    # 0.5) and entropy (of the class distribution; label sets: mean binary entropy). None
    # for values, which carry no uncertainty of their own.
    uncertainty: dict[str, float] | None = None


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def class_uncertainty(scores: ClassScores) -> tuple[np.ndarray, np.ndarray]:
    """(margin, entropy) uncertainty of each row of class scores: probabilities as they
    are (with only the top-k kept, the rest of the mass as one more outcome), decision
    values and similarities through a softmax first."""
    values = scores.full if scores.full is not None else scores.top_scores
    values = np.asarray(values, dtype=np.float64)
    if scores.kind == "probability":
        rest = np.clip(1.0 - values.sum(axis=1, keepdims=True), 0.0, 1.0) if scores.full is None else None
        probabilities = np.concatenate([values, rest], axis=1) if rest is not None else values
    else:
        probabilities = _softmax(values)
    ordered = -np.sort(-probabilities, axis=1)
    second = ordered[:, 1] if ordered.shape[1] > 1 else np.zeros(len(ordered))
    margin = 1.0 - (ordered[:, 0] - second)
    p = np.clip(probabilities, 1e-12, 1.0)
    entropy = -(probabilities * np.log(p)).sum(axis=1)
    return margin, entropy


def label_set_uncertainty(scores: LabelScores) -> tuple[np.ndarray, np.ndarray]:
    """(margin, entropy) of label sets: the least sure label's closeness to the threshold,
    and the mean binary entropy over labels (probabilities; others through a sigmoid)."""
    values = np.asarray(scores.scores, dtype=np.float64)
    p = values if scores.kind == "probability" else 1.0 / (1.0 + np.exp(-(values - scores.threshold)))
    margin = 1.0 - 2.0 * np.abs(p - 0.5).min(axis=1)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    entropy = -(q * np.log(q) + (1 - q) * np.log(1 - q)).mean(axis=1)
    return margin, entropy


def take_rows(scores, rows: np.ndarray):
    """The same kind of scores for ``rows`` only (every per-example array indexed)."""
    arrays = {f.name: getattr(scores, f.name) for f in dataclasses.fields(scores)
              if isinstance(getattr(scores, f.name), np.ndarray)}
    n = len(next(iter(arrays.values())))
    return dataclasses.replace(scores, **{name: value[rows] for name, value in arrays.items()
                                          if value.ndim >= 1 and len(value) == n})


def _input_columns(ids: Sequence[str], inputs: dict[str, Sequence]) -> dict[str, list]:
    return {"id": list(ids), **{k: list(v) for k, v in inputs.items()}}


@dataclasses.dataclass
class ClassScores:
    """Predictions with their scores, kept in O(n) memory for many classes: the full
    (n, classes) matrix only up to MAX_SCORE_COLUMNS classes, else the top-k."""

    predicted: np.ndarray  # (n,) class index
    score: np.ndarray  # (n,) score of the predicted class
    top_indices: np.ndarray  # (n, k) best classes first
    top_scores: np.ndarray  # (n, k)
    full: np.ndarray | None = None  # (n, classes) when kept
    kind: str = "score"  # probability | decision | similarity

    @classmethod
    def from_full(cls, scores: np.ndarray, kind: str, predicted: np.ndarray | None = None) -> ClassScores:
        """``predicted``, when a model's own prediction can differ from the best score
        (an SVC votes one-vs-one but scores one-vs-rest), leads each top-k list, so the
        top-5 always contains the prediction and top-5 accuracy is never below accuracy."""
        k = min(TOP_K, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")
        if predicted is None:
            top = order[:, :k]
            predicted = top[:, 0]
        else:
            predicted = np.asarray(predicted, dtype=np.int64)
            rest = order[order != predicted[:, None]].reshape(len(order), -1)
            top = np.concatenate([predicted[:, None], rest[:, : k - 1]], axis=1)
        keep = scores if scores.shape[1] <= MAX_SCORE_COLUMNS else None
        return cls(predicted, scores[np.arange(len(scores)), predicted], top,
                   np.take_along_axis(scores, top, axis=1), keep, kind)

    # What evaluation and serving do with them: each kind of scores owns its metrics,
    # predictions-file columns, picture, served predictions and loss.

    def with_threshold(self, threshold: float) -> ClassScores:
        return self  # one class per example: no threshold

    def metrics(self, y_true: np.ndarray, num_classes: int) -> dict:
        metrics = classification_metrics(y_true, self.predicted, num_classes, top_indices=self.top_indices)
        if self.kind == "probability":  # calibration needs probabilities (an SVC's decision values have none)
            metrics["ece"] = expected_calibration_error(self.score, self.predicted == np.asarray(y_true))
        return metrics

    def columns(self, ids: Sequence[str], inputs: dict[str, Sequence], class_names: Sequence[str],
                y_true: np.ndarray | None = None) -> dict[str, list]:
        """Rows of a predictions table: id, the input, label and prediction as class names, scores."""
        names = np.asarray(class_names, dtype=object)
        columns = _input_columns(ids, inputs)
        if y_true is not None:
            columns["label"] = names[y_true].tolist()
        columns["prediction"] = names[self.predicted].tolist()
        columns[self.kind] = self.score.tolist()
        if self.full is not None:
            for index, name in enumerate(class_names):
                columns[f"{self.kind}_{name}"] = self.full[:, index].tolist()
        else:
            columns["top5"] = [" | ".join(names[row]) for row in self.top_indices]
        return columns

    def draw(self, run, split: str, y_true: np.ndarray, class_names: Sequence[str]) -> None:
        """The confusion matrix (its non-zero cells above DENSE_CONFUSION_LIMIT classes)."""
        cells, counts = confusion_cells(y_true, self.predicted)
        top = top_confused_pairs(cells, counts, class_names)
        if len(class_names) <= DENSE_CONFUSION_LIMIT:
            run.write_confusion(split, confusion(y_true, self.predicted, len(class_names)), class_names, top)
        else:
            run.write_sparse_confusion(split, cells, counts, class_names, top)

    def describe(self, y_true: np.ndarray, class_names: Sequence[str], metrics: dict) -> str:
        return text_report(y_true, self.predicted, class_names)

    def uncertainty(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(margin, entropy) per example, for choosing what to label next."""
        return class_uncertainty(self)

    def predictions(self, texts: Sequence[str], pairs: Sequence, names: Sequence[str]) -> list[Prediction]:
        margin, entropy = self.uncertainty()
        return [Prediction(t, names[c], float(v), self.kind, p, uncertainty={"margin": float(m), "entropy": float(e)})
                for t, p, c, v, m, e in zip(texts, pairs, self.predicted, self.score, margin, entropy)]

    def loss(self, labels: np.ndarray) -> float:
        """Cross-entropy of the true class: of probabilities (top-k kept: a class outside
        them counts with the lowest kept probability), or of the softmax of logits and
        similarities over the kept classes."""
        if self.kind not in ("probability", "indicator"):
            return top_k_nll(self, labels)
        if self.full is not None:
            true = self.full[np.arange(len(labels)), labels]
        else:
            hit = self.top_indices == labels[:, None]
            true = np.where(hit.any(1), (self.top_scores * hit).sum(1), self.top_scores.min(1))
        return float(-np.mean(np.log(np.clip(true, 1e-7, 1.0))))


class ScoreAccumulator:
    """Collects batches of per-class scores into a ClassScores without ever holding
    a (n, classes) block for many classes (the reference ran out of memory there)."""

    def __init__(self, n: int, num_classes: int, kind: str, keep_full: bool = False):
        self.k = min(TOP_K, num_classes)
        self.top_indices = np.zeros((n, self.k), dtype=np.int64)
        self.top_scores = np.zeros((n, self.k), dtype=np.float32)
        # Label sets need every label's score (keep_full), whatever their number.
        self.full = np.zeros((n, num_classes), dtype=np.float32) \
            if keep_full or num_classes <= MAX_SCORE_COLUMNS else None
        self.seen = np.zeros(n, dtype=bool)
        self.kind = kind

    def add(self, rows: np.ndarray, scores) -> None:
        """``scores``: a (batch, classes) torch tensor or array for dataset ``rows``."""
        self.commit(self.stage(rows, scores))

    def stage(self, rows: np.ndarray, scores):
        """Start moving a batch's top-k (and full scores) off the device without waiting
        for it: a GPU keeps computing the next batch meanwhile. :meth:`commit` it later."""
        import torch

        scores = torch.as_tensor(scores).float()
        values, indices = scores.topk(self.k, dim=1)
        parts = [indices, values] + ([scores] if self.full is not None else [])
        if scores.device.type != "cuda":
            return rows, parts, None
        host = [torch.empty(p.shape, dtype=p.dtype, pin_memory=True).copy_(p, non_blocking=True) for p in parts]
        done = torch.cuda.Event()
        done.record()
        return rows, host, done

    def commit(self, staged) -> None:
        rows, parts, done = staged
        if done is not None:
            done.synchronize()
        self.top_indices[rows] = parts[0].cpu().numpy()
        self.top_scores[rows] = parts[1].cpu().numpy()
        if self.full is not None:
            self.full[rows] = parts[2].cpu().numpy()
        self.seen[rows] = True

    def absorb(self, part: ScoreAccumulator, rows: np.ndarray) -> None:
        """Take in a shard's scores; ``rows`` maps the shard's positions to this one's."""
        kept = part.seen
        target = np.asarray(rows)[kept]
        self.top_indices[target] = part.top_indices[kept]
        self.top_scores[target] = part.top_scores[kept]
        if self.full is not None:
            self.full[target] = part.full[kept]
        self.seen[target] = True

    def label_scores(self, threshold: float) -> LabelScores:
        """The seen rows' scores as independent label probabilities (a sigmoid of each)."""
        return LabelScores(1 / (1 + np.exp(-self.full[self.seen].astype(np.float64))), threshold, "probability")

    def result(self, keep: np.ndarray | None = None) -> ClassScores:
        keep = self.seen if keep is None else keep
        full = self.full[keep] if self.full is not None else None
        return ClassScores(self.top_indices[keep, 0], self.top_scores[keep, 0], self.top_indices[keep],
                           self.top_scores[keep], full, self.kind)


@dataclasses.dataclass
class LabelScores:
    """Multi-label predictions: a score per label (probabilities, or decision values whose
    threshold is 0), and the labels at or above the threshold."""

    scores: np.ndarray  # (n, classes)
    threshold: float = 0.5
    kind: str = "probability"  # probability | decision | similarity
    # Whether 0.5 (probabilities) or 0 (decision values) is a meaningful threshold; a
    # zero-shot similarity's is not, so it is chosen on validation unless one is given.
    natural_threshold: bool = True

    @property
    def predicted(self) -> np.ndarray:
        return self.scores >= self.threshold

    def with_threshold(self, threshold: float) -> LabelScores:
        return dataclasses.replace(self, threshold=threshold)

    def metrics(self, y_true: np.ndarray, num_classes: int) -> dict:
        return multilabel_metrics(y_true, self.predicted, self.scores)

    def columns(self, ids: Sequence[str], inputs: dict[str, Sequence], class_names: Sequence[str],
                y_true: np.ndarray | None = None) -> dict[str, list]:
        columns = _input_columns(ids, inputs)
        if y_true is not None:
            columns["label"] = [label_set_text(r, class_names) for r in y_true]
        columns["prediction"] = [label_set_text(r, class_names) for r in self.predicted]
        if len(class_names) <= MAX_SCORE_COLUMNS:
            for index, name in enumerate(class_names):
                columns[f"{self.kind}_{name}"] = self.scores[:, index].tolist()
        else:
            top = np.argsort(-self.scores, axis=1)[:, :TOP_K]
            columns["top5"] = [" | ".join(class_names[i] for i in row) for row in top]
        return columns

    def draw(self, run, split: str, y_true: np.ndarray, class_names: Sequence[str]) -> None:
        return None  # label sets have no one confusion matrix

    def describe(self, y_true: np.ndarray, class_names: Sequence[str], metrics: dict) -> str:
        return text_report(y_true.astype(int), self.predicted.astype(int), class_names)

    def uncertainty(self) -> tuple[np.ndarray, np.ndarray] | None:
        return label_set_uncertainty(self)

    def predictions(self, texts: Sequence[str], pairs: Sequence, names: Sequence[str]) -> list[Prediction]:
        out = []
        margin, entropy = self.uncertainty()
        for t, p, row, chosen, m, e in zip(texts, pairs, self.scores, self.predicted, margin, entropy):
            labels = [names[i] for i in np.flatnonzero(chosen)]
            out.append(Prediction(t, label_set_text(chosen, names), float(row.max()), self.kind, p, labels,
                                  {"margin": float(m), "entropy": float(e)}))
        return out

    def loss(self, labels: np.ndarray) -> float:
        """Binary cross-entropy per label."""
        p = np.clip(self.scores, 1e-7, 1 - 1e-7)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


@dataclasses.dataclass
class ValueScores:
    """Regression predictions: one number per example."""

    values: np.ndarray  # (n,)
    kind: str = "value"

    def with_threshold(self, threshold: float) -> ValueScores:
        return self

    def metrics(self, y_true: np.ndarray, num_classes: int) -> dict:
        return regression_metrics(y_true, self.values)

    def columns(self, ids: Sequence[str], inputs: dict[str, Sequence], class_names: Sequence[str],
                y_true: np.ndarray | None = None) -> dict[str, list]:
        columns = _input_columns(ids, inputs)
        if y_true is not None:
            columns["label"] = np.asarray(y_true).tolist()
        columns["prediction"] = self.values.tolist()
        return columns

    def draw(self, run, split: str, y_true: np.ndarray, class_names: Sequence[str]) -> None:
        run.write_scatter(split, y_true, self.values)  # predicted against gold

    def describe(self, y_true: np.ndarray, class_names: Sequence[str], metrics: dict) -> str:
        return "\n".join(f"{k}: {v:.4f}" for k, v in metrics.items() if k != "n")

    def uncertainty(self) -> None:
        return None  # a value carries no uncertainty of its own

    def predictions(self, texts: Sequence[str], pairs: Sequence, names: Sequence[str]) -> list[Prediction]:
        return [Prediction(t, f"{v:.6g}", float(v), "value", p) for t, p, v in zip(texts, pairs, self.values)]

    def loss(self, labels: np.ndarray) -> float:
        """The squared error."""
        return float(np.mean((self.values - labels) ** 2))


THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def choose_threshold(scores: LabelScores, y_true: np.ndarray, setting: str) -> tuple[float, dict]:
    """The multi-label decision threshold: the configured probability, or with ``tune``
    the one of THRESHOLD_GRID that maximises micro F1 on these (validation) scores.
    Decision values (a linear SVC's) keep their natural threshold 0 unless tuned."""
    if setting != "tune":
        value = float(setting) if scores.kind == "probability" else 0.0
        return value, {"value": value, "tuned": False}
    grid = THRESHOLD_GRID if scores.kind == "probability" else \
        tuple(float(q) for q in np.quantile(scores.scores, np.linspace(0.05, 0.95, 19)))
    results = {str(t): multilabel_metrics(y_true, scores.scores >= t)["f1_micro"] for t in grid}
    best = max(grid, key=lambda t: (results[str(t)], -abs(t - 0.5)))
    return float(best), {"value": float(best), "tuned": True, "metric": "f1_micro", "split": "validation",
                         "scores": results}


def label_set_text(row: np.ndarray, names: Sequence[str]) -> str:
    return "; ".join(names[i] for i in np.flatnonzero(row))


def split_metrics(y_true: np.ndarray, scores, num_classes: int) -> dict:
    """The one metrics function of every task and problem: the scores' own."""
    return scores.metrics(y_true, num_classes)


def top_k_nll(result, labels: np.ndarray) -> float:
    """Softmax cross-entropy over the kept scores (exact when they cover every class); an
    example whose true class fell outside the top-k counts with the lowest kept log-probability."""
    scores = result.full if result.full is not None else result.top_scores
    indices = np.arange(scores.shape[1])[None, :].repeat(len(scores), 0) if result.full is not None \
        else result.top_indices
    shifted = scores - scores.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    hit = indices == labels[:, None]
    true_log_prob = np.where(hit.any(1), (log_probs * hit).sum(1), log_probs.min(1))
    return float(-true_log_prob.mean()) if len(labels) else 0.0


def validation_loss(scores, labels: np.ndarray) -> float:
    """The training loss of probability-like predictions, for evaluations that stream
    their own batches (the scores' own: cross-entropy, binary cross-entropy per label, or
    the squared error)."""
    labels = np.asarray(labels)
    return scores.loss(labels) if len(labels) else 0.0
