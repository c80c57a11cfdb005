"""Active learning, played on labelled data: the probe starts from K labelled examples
per class, and round by round the rest of train is a pool whose labels stay hidden
until a strategy selects them (``tunelab.models.acquisition``, the ranking ``tunelab
select`` uses); the head is refitted after every round. The run then trains and scores
as usual on the examples selected, so a study over ``active.labels`` and strategies is
a learning curve per strategy, paired with random selection at equal label counts."""

from __future__ import annotations

import dataclasses

import numpy as np

from tunelab.core.config import ConfigError, setting
from tunelab.core.errors import counted
from tunelab.data.labels import per_class_rows
from tunelab.encoders.text import normalize_rows
from tunelab.models.acquisition import STRATEGIES, choose
from tunelab.models.classifiers import fit_classifier, predict_scores
from tunelab.problems import get_problem


@dataclasses.dataclass
class ActiveConfig:
    """Active learning on train (labels hidden until selected). Counts are per class, as
    --shots counts, so one study fits data with any number of classes."""

    strategy: str | None = setting(None, "play active learning on the train split: start from --active-start "
                                   "labelled examples per class, then select --active-batch per class at a time by "
                                   "this strategy (labels hidden until selected) up to --active-labels per class",
                                   flag="--active", choices=STRATEGIES)
    start: int = setting(8, "labelled examples per class to start from (seeded)", flag="--active-start",
                         metavar="K")
    labels: int | None = setting(None, "labelled training examples per class at the end, on average (default: "
                                 "the start alone)", flag="--active-labels", metavar="N")
    batch: int = setting(8, "examples selected per round, per class (the selection itself ignores classes)",
                         flag="--active-batch", metavar="N")


def check_active(active: ActiveConfig, shots: int | None) -> None:
    if active.strategy is None:
        return
    if shots is not None:
        raise ConfigError("--active draws its own start (--active-start per class) from the whole train split; "
                          "drop --shots")
    for name, value in (("--active-start", active.start), ("--active-batch", active.batch)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, not {value}")
    if active.labels is not None and active.labels < active.start:
        raise ConfigError(f"--active-labels {active.labels} per class is fewer than the start (--active-start "
                          f"{active.start} per class)")


def active_rows(active: ActiveConfig, classifier, dataset, features: np.ndarray, seed: int,
                class_weight=None) -> tuple[np.ndarray, dict]:
    """The train rows labelled when the loop ends, and its record (every round's size
    and the ids it selected)."""
    train = dataset.splits["train"]
    problem = get_problem(dataset.problem)
    problem.check_shots()  # a start of K per class needs classes
    classes = len(dataset.class_names)
    labelled = list(per_class_rows(problem.strata(train.labels), active.start, seed))
    target = max(len(labelled), (active.labels or active.start) * classes)
    if target > len(train):
        raise ConfigError(f"--active-labels {active.labels} per class ({counted(target, 'example')} for "
                          f"{classes} classes) is more than the train split's {len(train)} examples")
    per_round = active.batch * classes
    texts = _texts(train)
    # The round's model is refitted on the labelled rows alone: no validation split chooses its C.
    classifier = dataclasses.replace(classifier, tune=False)
    rng = np.random.default_rng(seed)
    rounds = [{"round": 0, "labels": len(labelled), "selected": [str(train.ids[i]) for i in labelled]}]
    while len(labelled) < target:
        pool = np.setdiff1d(np.arange(len(train)), labelled)
        k = min(per_round, target - len(labelled))
        uncertainty = None
        if active.strategy != "random":
            estimator, _ = fit_classifier(classifier, features[labelled], train.labels[labelled], None, None,
                                          seed=seed, problem=dataset.problem, class_weight=class_weight)
            uncertainty = predict_scores(estimator, features[pool], dataset.problem,
                                         len(dataset.class_names)).uncertainty()
        picked = pool[choose(active.strategy, k, rng, uncertainty, len(pool),
                             embed=lambda rows, pool=pool: normalize_rows(features[pool[rows]]),
                             texts=(lambda rows, pool=pool: [texts[i] for i in pool[rows]]) if texts else None)]
        labelled += [int(i) for i in picked]
        rounds.append({"round": len(rounds), "labels": len(labelled), "selected": [str(train.ids[i]) for i in picked]})
    record = {"strategy": active.strategy, "start": active.start, "batch": active.batch,
              "labels_per_class": active.labels or active.start, "labels": len(labelled), "pool": len(train),
              "rounds": rounds}
    return np.array(sorted(labelled)), record


def _texts(train) -> list[str] | None:
    """What near-copies are judged on: the texts (a pair joined); None for images."""
    texts = getattr(train, "texts", None)
    if texts is None:
        return None  # images: near copies are judged in embedding space alone
    pairs = train.pairs or [None] * len(texts)
    return [t if p is None else f"{t} || {p}" for t, p in zip(texts, pairs)]
