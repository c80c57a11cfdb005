"""SetFit (Tunstall et al., 2022): few-shot classification with a sentence encoder.

Stage 1 fine-tunes the encoder contrastively on pairs of training texts (1.0 when the
two share a class, 0.0 otherwise; the cosine of their mean-pooled embeddings fitted to
it, sentence-transformers' CosineSimilarityLoss); stage 2 fits a classical head (the
probe's classifiers, logistic regression by default) on the tuned, normalised
embeddings.

Built on tunelab's own bi-encoder and Trainer rather than the ``setfit`` package: the
run then has what every tunelab training run has (bf16, LoRA, tracking, torchrun,
seeded length-grouped batches with dynamic padding, one run directory), and the pairs
are drawn as SetFit 1.x draws them (every unordered pair of training examples,
shuffled, positives and negatives each cycled to ``num_iterations`` per example and
interleaved). ``benchmarks/setfit_vs_package.py`` runs the package's own trainer beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from tunelab.core.config import TaskConfig, check_positive, setting
from tunelab.core.errors import ConfigError, DataError, ModelError
from tunelab.core.files import PREDICTOR_FILE, predictor_record, read_predictor
from tunelab.core.registry import Task, register_task
from tunelab.core.runtime import resolve_device
from tunelab.core.safety import atomic_write_bytes
from tunelab.data.text import TextSplit, load_text_dataset, resolved_data_config
from tunelab.encoders.text import graph_outputs, normalize_rows
from tunelab.models.classifiers import ClassifierConfig, load_classifier, predict_scores, save_classifier
from tunelab.models.predictor import as_text_inputs, predictions_from
from tunelab.models.resolve import (
    count_parameters,
    hub_kwargs,
    load_config,
    load_pretrained,
    load_tokenizer,
    resolve_model,
)
from tunelab.problems import get_problem
from tunelab.tasks.contract import Outcome, Prepared, RunContext
from tunelab.tasks.lifecycle import check_problem
from tunelab.tasks.metrics_file import throughput
from tunelab.tasks.probe import fit_head
from tunelab.training.config import LoraConfig, TrainConfig, fill_learning_rate, wrap_lora
from tunelab.training.text import build_trainer, effective_max_length

logger = logging.getLogger(__name__)

COMMAND = "setfit"
DEFAULT_LR = {"full": 2e-5, "lora": 1e-4}  # SetFit's body rate; adapters need a larger one


@dataclasses.dataclass
class PairSamplingConfig:
    """How stage 1's contrastive pairs are drawn from the training examples."""

    num_iterations: int = setting(20, "positive and negative pairs per training example (SetFit's "
                                  "num_iterations)", flag="--num-iterations", metavar="N")
    num_pairs: int | None = setting(None, "draw this many pairs in all instead (half positive, half negative)",
                                    flag="--num-pairs", metavar="N")
    max_pairs: int | None = setting(None, "at most this many pairs (caps num_iterations on larger data: a fixed "
                                    "training budget across a learning curve)", flag="--max-pairs", metavar="N")

    def __post_init__(self) -> None:
        check_positive("pairs.num_iterations", self.num_iterations)
        for key in ("num_pairs", "max_pairs"):
            if getattr(self, key) is not None:
                check_positive(f"pairs.{key}", getattr(self, key))


def _setfit_train() -> TrainConfig:
    # SetFit's defaults: batch 16, one epoch over the pairs, 10% warm-up, no weight decay.
    return TrainConfig(epochs=1, batch_size=16, warmup=0.1, weight_decay=0.0, max_length=256)


def _setfit_head() -> ClassifierConfig:
    return ClassifierConfig(kind="logreg")  # SetFit's default head


@dataclasses.dataclass
class SetfitConfig(TaskConfig):
    model: str = setting("minilm", "a sentence encoder: hub id, local directory, or the alias minilm",
                         flag="--model", metavar="M")
    train: TrainConfig = dataclasses.field(default_factory=_setfit_train)  # stage 1: the body
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    pairs: PairSamplingConfig = dataclasses.field(default_factory=PairSamplingConfig)
    classifier: ClassifierConfig = dataclasses.field(default_factory=_setfit_head)  # stage 2: the head

    def __post_init__(self) -> None:
        self.train = fill_learning_rate(self.train, DEFAULT_LR)


# --------------------------------------------------------------------------- stage 1 data


def contrastive_pairs(labels: np.ndarray, problem, iterations: int, num_pairs: int | None,
                      rng: np.random.Generator, max_pairs: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first rows, second rows, targets): every unordered pair of examples (an example
    with itself included), shuffled; positives (sharing a class) and negatives each
    cycled to ``iterations`` per example (or half of ``num_pairs``; at most half of
    ``max_pairs``), interleaved."""
    n = len(labels)
    first, second = np.triu_indices(n, 0)
    order = rng.permutation(len(first))
    first, second = first[order], second[order]
    positive = problem.shares_class(labels[first], labels[second])
    if positive.all() or not positive.any():
        kind = "different" if positive.all() else "shared"
        raise DataError(f"SetFit draws pairs of examples with shared and with different classes; the training "
                        f"examples have no {kind} classes")
    per_side = num_pairs // 2 if num_pairs is not None else iterations * n
    if max_pairs is not None:
        per_side = min(per_side, max_pairs // 2)
    per_side = max(per_side, 1)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    pos, neg = np.resize(pos, per_side), np.resize(neg, per_side)  # cycled, as SetFit does
    chosen = np.stack([pos, neg], axis=1).reshape(-1)
    return first[chosen], second[chosen], positive[chosen].astype(np.float32)


@dataclasses.dataclass
class PairData:
    """Stage 1's training data in the shape the shared Trainer takes: pairs of texts and a
    similarity target in [0, 1]."""

    splits: dict
    problem: str = "regression"
    class_names: list = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------- task


def describe(metrics: dict) -> str:
    task = metrics.get("task", {})
    pairs = task.get("pairs", {})
    return f"SetFit, {task.get('method', '?')} body, {pairs.get('count', '?')} pairs, " \
           f"{task.get('classifier', {}).get('kind', '?')} head"


def prepare(config: SetfitConfig) -> Prepared:
    """Read and check the data, then load the tokenizer and the encoder to tune."""
    from transformers import AutoModel

    from tunelab.encoders.biencoder import BiEncoder  # here, not at the top: loads torch

    source = resolve_model(config.model)
    dataset = load_text_dataset(config.data, seed=config.seed)  # before any model loads
    if dataset.text_pair_column is not None:
        raise DataError(f"{config.data.dataset} holds sentence pairs; SetFit classifies single texts "
                        "(fine-tune pairs with tunelab finetune)")
    check_problem(TASK, dataset)  # before the head's check, which would name a regression head
    problem = get_problem(dataset.problem)
    # config.yaml records what the data showed (columns, problem), as every task's does:
    # the report pairs runs on the same examples by these.
    config = dataclasses.replace(config, data=resolved_data_config(config.data, dataset))
    if config.classifier.kind is None:
        config = dataclasses.replace(config, classifier=dataclasses.replace(config.classifier, kind="logreg"))
    if config.classifier.kind not in problem.classifiers:
        raise ConfigError(f"--classifier {config.classifier.kind} does not fit {problem.name} data; choose one of "
                          f"{', '.join(problem.classifiers)}")
    model_type = getattr(load_config(source), "model_type", "")
    if model_type in ("clip", "siglip") or getattr(load_config(source), "is_encoder_decoder", False):
        raise ModelError(f"'{source.name}' is a {model_type} model; SetFit needs a text encoder")
    tokenizer = load_tokenizer(source)
    encoder = load_pretrained(AutoModel, source.location, f"model '{source.name}'", **hub_kwargs(source))
    if config.train.method == "lora":
        encoder = wrap_lora(encoder, model_type, config.lora, sequence_classification=False)
    model = BiEncoder(encoder, "cosine", 1, (0.0, 1.0), "regression")
    eval_splits = dataset.eval_split_names(config.data.splits)
    return Prepared(config, source, dataset, eval_splits, {"tokenizer": tokenizer, "model": model})


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Stage 1 on pairs of training texts, then the head on the tuned embeddings of every
    split."""
    from tunelab.encoders.graphs import PooledEncoder  # here, not at the top: loads torch
    from tunelab.training.trainer import train_resumable, training_summary  # here, not at the top: loads transformers

    config, dataset, run = prepared.config, prepared.dataset, context.run
    tokenizer, model = prepared.parts["tokenizer"], prepared.parts["model"]
    train = dataset.splits["train"]
    problem = get_problem(dataset.problem)
    first, second, targets = contrastive_pairs(train.labels, problem, config.pairs.num_iterations,
                                               config.pairs.num_pairs, np.random.default_rng(config.seed),
                                               config.pairs.max_pairs)
    pairs = PairData({"train": TextSplit([train.texts[i] for i in first], targets,
                                         [f"{train.ids[i]}~{train.ids[j]}" for i, j in zip(first, second)],
                                         [train.texts[j] for j in second])})
    params = count_parameters(model)
    logger.info("stage 1: %d pairs (%d positive) of %d examples; %s trainable of %s parameters", len(targets),
                int(targets.sum()), len(train), f"{params['trainable']:,}", f"{params['total']:,}")
    trainer, interrupt = build_trainer(config, pairs, tokenizer, model, run.path / "checkpoints", context.tracker,
                                       context.world, evaluate=False)
    train_stats = train_resumable(trainer, interrupt, run.path, False, COMMAND)
    if context.rank != 0:
        return None
    checkpoints = run.path / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # stage 1 saves no checkpoint: nothing is picked on validation
    encoder = trainer.model.encoder
    if hasattr(encoder, "merge_and_unload"):  # LoRA: the adapters merged, as the saved body holds them
        encoder = encoder.merge_and_unload()
    encoder.eval()
    max_length = effective_max_length(tokenizer, trainer.model, config.train.max_length)
    body = PooledEncoder(encoder, "mean", token_types=False)

    start = time.perf_counter()
    embeddings = {}
    for split in ["train", *[s for s in prepared.score_splits if s != "train"]]:
        vectors = graph_outputs(body, tokenizer, dataset.splits[split].texts, max_length,
                                config.train.eval_batch_size, context.device, config.runtime.precision,
                                f"{split} embeddings")
        embeddings[split] = normalize_rows(vectors)
    embed_seconds = time.perf_counter() - start
    head = fit_head(config.classifier, config.data, dataset, embeddings, prepared.score_splits, config.seed,
                    lambda data: data.inputs.columns())
    save_setfit_model(encoder, tokenizer, run.path / "model", max_length)
    save_classifier(head.estimator, run.path / "model" / "classifier.skops")
    save_for_setfit_package(head.estimator, dataset.class_names, run.path / "model")
    run.write_json(f"model/{PREDICTOR_FILE}", predictor_record(
        COMMAND, dataset.problem, dataset.class_names, threshold=0.5, max_length=max_length,
        pooling="mean", normalize=True))
    training = {key: value for key, value in training_summary(trainer, config.train, run.path, context.world,
                                                               False).items() if not key.startswith("best_")}
    task = {"method": config.train.method, "training": training,
            "pairs": {"count": len(targets), "positive": int(targets.sum()),
                      "num_iterations": None if config.pairs.num_pairs else config.pairs.num_iterations,
                      "max_pairs": config.pairs.max_pairs,
                      "loss": "cosine similarity (MSE)"},
            "classifier": {"kind": config.classifier.kind, "score": head.score_kind,
                           "C": head.tuning["chosen"] if head.tuning else config.classifier.c, "tuning": head.tuning}}
    scored = sum(len(dataset.splits[s]) for s in prepared.eval_splits)
    eval_share = embed_seconds * scored / max(scored + len(train), 1)
    return Outcome(
        scored=head.predictions, params=params,
        seconds={"train": train_stats["train_runtime"] + head.train_seconds, "embed": embed_seconds,
                 "eval": head.eval_seconds + eval_share},
        throughput={"train_samples_per_s": train_stats["train_samples_per_second"],
                    "eval_samples_per_s": throughput(scored, head.eval_seconds + eval_share)},
        task=task,
        # Validation labels count where they chose something (C; a threshold: the lifecycle).
        labels_seen=len(train) + (len(dataset.splits["validation"]) if "validation" in dataset.splits
                                  and head.tuning is not None else 0),
        counts_validation=head.tuning is not None,
    )


# --------------------------------------------------------------------------- the saved model


def save_setfit_model(encoder, tokenizer, target: Path, max_length: int) -> None:
    """The tuned body as a sentence-transformers folder (Transformer, mean Pooling,
    Normalize), so that ``SentenceTransformer(target)`` gives the embeddings the head was
    fitted on; classifier.skops beside it holds the head."""
    target.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (target / "modules.json").write_text(json.dumps(modules, indent=2))
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                  "do_lower_case": False}, indent=2))
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": int(encoder.config.hidden_size), "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (target / "2_Normalize").mkdir(exist_ok=True)


def save_for_setfit_package(estimator, class_names: list[str], target: Path) -> None:
    """The head where the setfit package looks for it: ``model_head.pkl`` (joblib, as
    ``SetFitModel.save_pretrained`` writes it) and ``config_setfit.json`` with the label
    names, so ``SetFitModel.from_pretrained(RUN/model).predict(texts)`` gives the classes
    predict gives. tunelab itself never reads the pickle (classifier.skops is its head):
    load it with setfit only from runs you trust, as any pickle."""
    import io

    import joblib

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    atomic_write_bytes(target / "model_head.pkl", buffer.getvalue())
    atomic_write_bytes(target / "config_setfit.json",
                       (json.dumps({"normalize_embeddings": True, "labels": list(class_names)}, indent=2) + "\n")
                       .encode())


def _body(run_dir: Path, dtype=None):
    from transformers import AutoModel, AutoTokenizer

    from tunelab.encoders.graphs import PooledEncoder  # here, not at the top: loads torch

    model_dir = run_dir / "model"
    what = f"the SetFit body in {model_dir}"
    tokenizer = load_pretrained(AutoTokenizer, model_dir, what)
    extra = {"dtype": dtype} if dtype is not None else {}
    encoder = load_pretrained(AutoModel, model_dir, what, use_safetensors=True, **extra)
    return PooledEncoder(encoder.eval(), "mean", token_types=False).eval(), tokenizer


def predictor_from_graph(run_dir: Path, config: SetfitConfig, encode):
    """The saved head on normalised embeddings from ``encode`` (PyTorch or ONNX Runtime)."""
    info = read_predictor(run_dir)
    estimator = load_classifier(run_dir / "model" / "classifier.skops")
    names = info["class_names"]

    def predict(inputs) -> list:
        inputs = as_text_inputs(inputs)
        embeddings = normalize_rows(encode(inputs.texts))
        scores = predict_scores(estimator, embeddings, info.get("problem"), len(names), info.get("threshold", 0.5))
        return predictions_from(inputs, scores, names)

    return predict


def load_predictor(run_dir: Path, config: SetfitConfig):
    device = resolve_device(config.runtime.device)
    body, tokenizer = _body(run_dir)
    body.to(device)
    max_length = read_predictor(run_dir).get("max_length", config.train.max_length)
    return predictor_from_graph(run_dir, config, lambda texts: graph_outputs(
        body, tokenizer, texts, max_length, config.train.eval_batch_size, device, config.runtime.precision))


def export_graph(run_dir: Path, config: SetfitConfig):
    from tunelab.encoders.graphs import ExportGraph  # here, not at the top: loads torch

    body, tokenizer = _body(run_dir)
    return ExportGraph(body.float(), tokenizer, read_predictor(run_dir).get("max_length", config.train.max_length),
                       "embedding")


TASK = register_task(Task(
    name=COMMAND, config_class=SetfitConfig, prepare=prepare, execute=execute,
    summary="few-shot: contrastive tuning of a sentence encoder, then a classifier head (SetFit)",
    description="SetFit: fine-tune a sentence encoder on pairs of training texts (same class or not), then fit a "
                "classifier head on its embeddings. Strong with 8 to 64 labelled examples per class.",
    load_predictor=load_predictor, describe=describe, export_graph=export_graph,
    predictor_from_graph=predictor_from_graph,
    # Stage 1 trains without evaluation: nothing to pick checkpoints or stop early on.
    unused_settings=("train.eval_every", "train.best_metric", "train.early_stopping", "train.save_total_limit",
                     "train.keep_checkpoints", "train.merge_lora", "data.pair_encoding", "data.text_pair_column"),
    problems=("single-label", "multi-label"), inputs=(("text", "text-encoder"),),
))
