"""Fine-tuning a pretrained encoder for sequence classification: full or LoRA.

The reference lab's exercise 2 done carefully: dynamic padding and
length-grouped batches (no padding to 512), evaluation on validation during
training with the best checkpoint kept, final metrics from the best model on
every evaluation split in the same form as the probe, resumable after any kill.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from tunelab.core.config import ImageDecodingConfig, TaskConfig, setting
from tunelab.core.errors import ConfigError, DataError
from tunelab.core.files import read_predictor
from tunelab.core.progress import progress
from tunelab.core.registry import Task, register_task
from tunelab.core.runtime import resolve_device
from tunelab.data.image_sources import files_split
from tunelab.data.images import is_image_dataset
from tunelab.data.text import load_text_dataset, resolved_data_config
from tunelab.encoders.text import (
    ensure_padding,
    pad_token_id,
    sorted_padded_batches,
    split_inputs,
    tokenize_inputs,
)
from tunelab.models.predictor import as_text_inputs, predictions_from
from tunelab.models.resolve import (
    count_parameters,
    load_tokenizer,
    resolve_model,
)
from tunelab.problems import get_problem
from tunelab.tasks.contract import Outcome, Prepared, RunContext, Scored
from tunelab.tasks.finetune_model import load_finetuned, save_model, saved_class_names
from tunelab.tasks.image_finetune import (
    execute_images,
    image_classifier_predictor,
    image_export_graph,
    prepare_images,
)
from tunelab.tasks.lifecycle import trained_outcome
from tunelab.training.config import (
    LoraConfig,
    TrainConfig,
    check_best_metric,
    fill_learning_rate,
)
from tunelab.training.text import build_model, build_trainer, check_4bit, effective_max_length

logger = logging.getLogger(__name__)

COMMAND = "finetune"
DEFAULT_LR = {"full": 2e-5, "lora": 1e-3}  # adapters need a larger rate


@dataclasses.dataclass
class FinetuneConfig(TaskConfig):
    model: str = setting("distilbert-base-uncased", "hub id, local directory, or the alias minilm (a vision "
                         "backbone for image data)", flag="--model", metavar="M")
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # lr None: 2e-5 full, 1e-3 LoRA
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    images: ImageDecodingConfig = dataclasses.field(default_factory=ImageDecodingConfig)  # image datasets only
    load_in_4bit: bool = setting(False, "QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, CUDA GPUs only), LoRA "
                                 "adapters trained in bf16", flag="--load-in-4bit", const=True)

    def __post_init__(self) -> None:
        self.train = fill_learning_rate(self.train, DEFAULT_LR)


# --------------------------------------------------------------------------- model building


# --------------------------------------------------------------------------- data


# --------------------------------------------------------------------------- inference


def scores_from_outputs(outputs, problem: str | None, threshold: float = 0.5):
    """Model outputs (logits, or label-scale values) as ClassScores, LabelScores or ValueScores."""
    return get_problem(problem).scores_from_outputs(outputs, threshold)


def predict_scores(model, tokenizer, inputs, batch_size: int, max_length: int, device, precision: str = "fp32",
                   problem: str | None = None, threshold: float = 0.5):
    """Predictions in the inputs' order, from length-sorted, dynamically padded batches:
    class probabilities kept in O(n) memory (every class for few classes, the top-5 for
    many), label-set probabilities, or values. Bi-encoded pairs embed each side once."""
    import torch

    from tunelab.encoders.biencoder import BiEncoder  # here, not at the top: loads torch

    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    texts, pairs = split_inputs(inputs)
    pad = pad_token_id(tokenizer)

    def run(batches_of, total, step):
        outputs = None
        with torch.inference_mode(), autocast, progress(total, "evaluate", "text") as bar:
            for batch, tensors in batches_of:
                values = step(tensors).float().cpu()
                if outputs is None:
                    outputs = torch.empty((total, *values.shape[1:]))
                outputs[torch.as_tensor(batch)] = values
                bar.update(len(batch))
        return outputs

    if isinstance(model, BiEncoder):
        sides = []
        for side in (texts, pairs):
            ids, _ = tokenize_inputs(tokenizer, side, max_length)
            sides.append(run(sorted_padded_batches(ids, batch_size, pad, device), len(ids),
                             lambda t: model.embed(t["input_ids"], t["attention_mask"])))
        with torch.inference_mode():
            outputs = model.score(sides[0].to(device), sides[1].to(device)).float().cpu()
        model.train(was_training)
        return scores_from_outputs(outputs, problem, threshold)
    # The problem collects the outputs (class probabilities: O(n) memory for many classes).
    ids, types = tokenize_inputs(tokenizer, inputs, max_length)
    collector = get_problem(problem).collector(len(ids), model.config.num_labels, threshold)
    with torch.inference_mode(), autocast, progress(len(ids), "evaluate", "text") as bar:
        for batch, tensors in sorted_padded_batches(ids, batch_size, pad, device, types):
            collector.add(batch, model(**tensors).logits)
            bar.update(len(batch))
    model.train(was_training)
    return collector.result()


# --------------------------------------------------------------------------- the task


def describe(metrics: dict) -> str:
    training = metrics.get("task", {}).get("training", {})
    return f"{metrics.get('task', {}).get('method', '?')}, {training.get('steps', '?')} steps, " \
           f"lr {training.get('learning_rate', '?')}"


def prepare(config: FinetuneConfig) -> Prepared:
    """Read and check the data, then load the tokenizer and the model to train."""
    source = resolve_model(config.model)
    if config.load_in_4bit:
        check_4bit(config)
    if is_image_dataset(config.data.dataset):
        if config.load_in_4bit:
            raise ConfigError("--load-in-4bit applies to text models (decoders, encoders); fine-tune image "
                              "backbones in bf16")
        return prepare_images(config, source)
    dataset = load_text_dataset(config.data, seed=config.seed)  # before any model loads
    eval_splits = dataset.eval_split_names(config.data.splits)
    if "validation" not in dataset.splits:
        raise DataError("fine-tuning picks its best checkpoint on a validation split, and there is none")
    config = dataclasses.replace(config, data=resolved_data_config(config.data, dataset, pair_default="bi"),
                                 train=dataclasses.replace(config.train, best_metric=config.train.best_metric
                                                           or get_problem(dataset.problem).checkpoint_metric))
    check_best_metric(config.train.best_metric, dataset.problem)

    tokenizer = ensure_padding(load_tokenizer(source), source.name)  # decoders: pad with end-of-sequence
    model = build_model(source, dataset, config)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # a decoder's classifier reads the last real token
    return Prepared(config, source, dataset, eval_splits, {"tokenizer": tokenizer, "model": model})


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Train with evaluation on validation, then score every split with the best model."""
    if prepared.parts.get("images"):
        return execute_images(prepared, context)
    from tunelab.training.trainer import train_resumable  # here, not at the top: loads transformers

    config, dataset, run = prepared.config, prepared.dataset, context.run
    tokenizer, model = prepared.parts["tokenizer"], prepared.parts["model"]
    params = count_parameters(model)
    logger.info("parameters: %s trainable of %s", f"{params['trainable']:,}", f"{params['total']:,}")
    trainer, interrupt = build_trainer(config, dataset, tokenizer, model, run.path / "checkpoints", context.tracker,
                                       context.world)
    train_stats = train_resumable(trainer, interrupt, run.path, context.resume, COMMAND)
    model = trainer.model
    if context.rank != 0:
        return None
    max_length = effective_max_length(tokenizer, model, config.train.max_length)
    start = time.perf_counter()
    predictions = {}  # each split through the model once, also one that only picks the threshold
    for split in prepared.score_splits:
        data = dataset.splits[split]
        scores = predict_scores(model, tokenizer, data.inputs, config.train.eval_batch_size, max_length,
                                context.device, config.runtime.precision, dataset.problem)
        predictions[split] = Scored(scores, data.labels, data.ids, data.inputs.columns())
    eval_seconds = time.perf_counter() - start
    save_model(model, tokenizer, run.path / "model", config.train, dataset, source=prepared.source)
    task = {"method": config.train.method, "pair_encoding": config.data.pair_encoding}
    return trained_outcome(trainer, train_stats, context, config.train, predictions, params, eval_seconds, task)


def load_predictor(run_dir: Path, config: FinetuneConfig):
    """Predict for new texts (or pairs), or image files, with a finished fine-tuning run's model."""
    device = resolve_device(config.runtime.device)
    if read_predictor(run_dir).get("inputs") == "images":  # the loop evaluation scored the splits with
        return image_classifier_predictor(run_dir, config, device)
    model, tokenizer = load_finetuned(run_dir, config)
    model.to(device)
    info = read_predictor(run_dir)
    names = saved_class_names(run_dir)
    problem = config.data.problem  # None in runs made before it was recorded: single-label
    max_length = effective_max_length(tokenizer, model, config.train.max_length)

    def predict(inputs) -> list:
        inputs = as_text_inputs(inputs)
        scores = predict_scores(model, tokenizer, inputs, config.train.eval_batch_size, max_length, device,
                                config.runtime.precision, problem, info.get("threshold", 0.5))
        return predictions_from(inputs, scores, names)

    return predict


def export_graph(run_dir: Path, config: FinetuneConfig):
    """The model as one graph: a classifier's logits, or a bi-encoder's mean-pooled
    embedding (its head and cosine scale follow in ``predictor_from_graph``)."""
    from tunelab.encoders.biencoder import BiEncoder  # here, not at the top: loads torch
    from tunelab.encoders.graphs import (  # here, not at the top: loads torch
        ClassifierLogits,
        ExportGraph,
        PooledEncoder,
    )

    if read_predictor(run_dir).get("inputs") == "images":
        return image_export_graph(run_dir)
    model, tokenizer = load_finetuned(run_dir, config)
    max_length = effective_max_length(tokenizer, model, config.train.max_length)
    if isinstance(model, BiEncoder):
        encoder = model.encoder
        if hasattr(encoder, "merge_and_unload"):  # a run saved before model/ held merged weights
            encoder = encoder.merge_and_unload()
        return ExportGraph(PooledEncoder(encoder.float(), "mean", token_types=False).eval(), tokenizer, max_length,
                           "embedding")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return ExportGraph(ClassifierLogits(model.float()).eval(), tokenizer, max_length, "logits")


def predictor_from_graph(run_dir: Path, config: FinetuneConfig, encode):
    """Predictions from the graph's outputs (``encode``: PyTorch or ONNX Runtime): logits
    (of texts or image files) to scores, or a bi-encoder's two embeddings through its
    saved head, in NumPy."""
    from tunelab.encoders.biencoder import is_bi_encoder, score_embeddings  # here, not at the top: loads torch

    model_dir = run_dir / "model"
    info, names, bi = read_predictor(run_dir), saved_class_names(run_dir), is_bi_encoder(model_dir)
    images = info.get("inputs") == "images"

    def predict(inputs) -> list:
        inputs = as_text_inputs(inputs)  # image files: their paths
        if images:
            outputs = encode(files_split(inputs.texts).ids)
        elif bi:
            texts, pairs = split_inputs(inputs)
            outputs = score_embeddings(model_dir, encode(texts), encode(pairs))
        else:
            outputs = encode(inputs)
        scores = scores_from_outputs(outputs, info.get("problem") or config.data.problem, info.get("threshold", 0.5))
        return predictions_from(inputs, scores, names)

    return predict


TASK = register_task(Task(
    name=COMMAND, config_class=FinetuneConfig, prepare=prepare, execute=execute, resumable=True,
    summary="fine-tune a text encoder or decoder, or a vision backbone, for classification (full or LoRA)",
    description="Fine-tune for classification: texts and pairs (encoders, decoders; --load-in-4bit QLoRA on CUDA) "
                "or images (any vision backbone); full or LoRA; resumable; data-parallel under torchrun.",
    load_predictor=load_predictor, describe=describe, export_graph=export_graph,
    predictor_from_graph=predictor_from_graph,
    # model/ is a plain transformers folder: predict computes as pipeline() does with it.
    serve_precision="fp32",
    inputs=(("text", "text-encoder"), ("pairs", "text-encoder"), ("images", "vision")),
))


