"""What a task takes and gives: Prepared (the checked data and the loaded model, from
``prepare``), RunContext (where ``execute`` writes and how it runs), Scored and Outcome
(what ``execute`` hands the lifecycle), RunResult (what a run returns to its caller)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tunelab.core.runs import RunDirectory
from tunelab.problems import get_problem


@dataclasses.dataclass
class RunResult:
    """What a task returns: where its run directory is and what it measured."""

    run_dir: Path
    metrics: dict[str, Any]

    def split(self, name: str) -> dict[str, float]:
        return self.metrics["splits"][name]


@dataclasses.dataclass
class Prepared:
    """What ``prepare`` hands to ``execute``: the resolved config (columns found in the
    data filled in), the model's files, the checked data, and whatever the task loaded."""

    config: Any
    source: Any  # tunelab.models.resolve.ModelSource, or None for a task that uses no pretrained model
    dataset: Any  # tunelab.data.labels.LabelledData
    eval_splits: list[str]
    parts: dict[str, Any] = dataclasses.field(default_factory=dict)  # model, tokenizer, extractor, ...

    @property
    def score_splits(self) -> list[str]:
        """The splits ``execute`` scores: the evaluation splits, and those the problem
        chooses its decision threshold on (the lifecycle chooses it, once)."""
        return get_problem(self.dataset.problem).splits_to_score(
            self.eval_splits, self.dataset.splits, getattr(self.config.data, "threshold", "0.5"))


@dataclasses.dataclass
class RunContext:
    """Where ``execute`` writes, and how it runs."""

    run: RunDirectory
    tracker: Any  # tunelab.core.runs.Tracker on rank 0, else None
    device: Any  # torch.device
    rank: int
    world: int
    resume: bool


@dataclasses.dataclass
class Scored:
    """One split's predictions, as a task hands them over: the lifecycle evaluates every
    task's splits the same way (metrics, predictions file, confusion matrix or scatter)."""

    scores: Any  # tunelab.tasks.evaluation ClassScores, LabelScores or ValueScores
    labels: Any  # the gold targets, encoded
    ids: list[str]
    inputs: dict[str, Any]  # the input columns of the predictions file (text, pair, file)


@dataclasses.dataclass
class Outcome:
    """What ``execute`` measured; the lifecycle evaluates its predictions and turns it
    into metrics.json."""

    params: dict[str, Any]  # total, trainable (and a note)
    seconds: dict[str, float]  # train, eval, and the task's own phases
    throughput: dict[str, float | None]  # THROUGHPUT_KEYS
    task: dict[str, Any]  # what only this task has (classifier, method, templates, training summary, ...)
    scored: dict[str, Scored] = dataclasses.field(default_factory=dict)  # per split: its predictions
    splits: dict[str, dict] = dataclasses.field(default_factory=dict)  # per split: metrics (filled by evaluate)
    reports: dict[str, str] = dataclasses.field(default_factory=dict)  # per split: the per-class text report
    # per split with copies of training rows: its metrics without them (filled by evaluate)
    deduplicated: dict[str, dict] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)  # inputs that could not be used
    # Labelled examples the method learnt from or chose settings on; None: train and validation.
    # A threshold chosen on validation adds the validation split unless ``counts_validation``
    # says the task's own number already holds it.
    labels_seen: int | None = None
    counts_validation: bool = False
