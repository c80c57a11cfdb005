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

import numpy as np

from tunelab.core.config import ImageDecodingConfig, TaskConfig, config_from_run, setting
from tunelab.core.errors import ConfigError, DataError, ModelError
from tunelab.core.files import PREDICTOR_FILE, predictor_record, read_json_file, read_predictor
from tunelab.core.progress import progress
from tunelab.core.registry import Task, register_task
from tunelab.core.runtime import is_cuda, length_multiple, resolve_device
from tunelab.data.images import files_split, is_image_dataset
from tunelab.data.text import load_text_dataset, resolved_data_config
from tunelab.encoders.text import (
    ensure_padding,
    pad_batch,
    pad_token_id,
    sorted_padded_batches,
    split_inputs,
    tokenize_inputs,
)
from tunelab.models.predictor import as_text_inputs, predictions_from
from tunelab.models.resolve import (
    ModelSource,
    count_parameters,
    hub_kwargs,
    load_config,
    load_pretrained,
    load_tokenizer,
    resolve_model,
)
from tunelab.problems import get_problem
from tunelab.problems.scores import ScoreAccumulator, choose_threshold, split_metrics
from tunelab.tasks.image_finetune import execute_images, image_export_graph, image_logits, prepare_images
from tunelab.tasks.lifecycle import Outcome, Prepared, RunContext, Scored, recorded_model, trained_outcome
from tunelab.training.config import (
    ADAPTER_DIR,
    LoraConfig,
    TrainConfig,
    check_best_metric,
    class_weights,
    fill_learning_rate,
    point_adapter_at_base,
    wrap_lora,
)

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


def check_4bit(config: FinetuneConfig) -> None:
    """--load-in-4bit stops in one line where it cannot work, before anything loads."""
    import importlib.util

    if config.train.method != "lora":
        raise ConfigError("--load-in-4bit freezes the base in 4 bits, which cannot be trained in full: add "
                          "--method lora (QLoRA)")
    device = resolve_device(config.runtime.device)
    if not is_cuda(device):
        raise ConfigError(f"--load-in-4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels); this run is on "
                          f"{device.type}: drop the flag (LoRA on the full-precision base)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("--load-in-4bit needs bitsandbytes: pip install 'tunelab[qlora]'")


def quantization_kwargs(config: FinetuneConfig) -> dict:
    """from_pretrained's arguments for a 4-bit base (QLoRA's recipe: NF4, double
    quantisation, bf16 compute), or none."""
    if not config.load_in_4bit:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True,
                                                      bnb_4bit_compute_dtype=torch.bfloat16)}


# --------------------------------------------------------------------------- model building


def build_model(source: ModelSource, dataset, config: FinetuneConfig):
    """The model to train: a sequence classifier with a fresh head (classes, label sets, or
    one output for regression) over single texts or jointly encoded pairs; or, for
    bi-encoded pairs, a BiEncoder around the bare encoder. LoRA-wrapped when asked."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    model_config = load_config(source)
    model_type = getattr(model_config, "model_type", "")
    if model_type in ("clip", "siglip") or getattr(model_config, "is_encoder_decoder", False):
        raise ModelError(f"'{source.name}' is a {model_type} model; text fine-tuning needs a text encoder")
    problem, names = get_problem(dataset.problem), dataset.class_names
    if config.data.pair_encoding == "bi":
        from tunelab.encoders.biencoder import BiEncoder  # here, not at the top: loads torch

        if config.load_in_4bit:
            raise ConfigError("--load-in-4bit applies to classifiers; for sentence pairs add --pair-encoding cross")

        encoder = load_pretrained(AutoModel, source.location, f"model '{source.name}'", **hub_kwargs(source))
        if config.train.method == "lora":
            encoder = wrap_lora(encoder, model_type, config.lora, sequence_classification=False)
        train_labels = dataset.splits["train"].labels
        if not problem.has_classes:  # numbers: the cosine of the two embeddings, scaled to the targets
            return BiEncoder(encoder, "cosine", 1, (float(train_labels.min()), float(train_labels.max())),
                             problem.name)
        return BiEncoder(encoder, "classify", len(names), problem=problem.name,
                         class_weights=class_weights(train_labels, problem.name, config.data.class_weight))
    id2label = problem.head_labels(names)
    model = load_pretrained(
        AutoModelForSequenceClassification, source.location, f"'{source.name}' for sequence classification",
        num_labels=len(id2label), id2label=id2label, label2id={n: i for i, n in id2label.items()},
        problem_type=problem.hf_problem_type, ignore_mismatched_sizes=True, **hub_kwargs(source),
        **quantization_kwargs(config),
    )
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.train.gradient_checkpointing)
    if config.train.method == "lora":
        model = wrap_lora(model, model_type, config.lora)
    return model


# --------------------------------------------------------------------------- data


class TokenizedTexts:
    """Unpadded token ids (and token type ids of joint pairs, or the second texts' ids of
    bi-encoded pairs) with targets, one dict per example, for the Trainer; padding
    happens per batch in the collator."""

    def __init__(self, ids: list[list[int]], labels: np.ndarray, types: list[list[int]] | None = None,
                 pair_ids: list[list[int]] | None = None):
        self.ids, self.labels, self.types, self.pair_ids = ids, labels, types, pair_ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        label = self.labels[index]
        item = {"input_ids": self.ids[index],
                "labels": label.tolist() if np.ndim(label) else (float(label) if label.dtype.kind == "f"
                                                                 else int(label))}
        if self.types is not None:
            item["token_type_ids"] = self.types[index]
        if self.pair_ids is not None:
            item["pair_input_ids"] = self.pair_ids[index]
        return item

    @property
    def lengths(self) -> list[int]:
        if self.pair_ids is not None:
            return [max(len(a), len(b)) for a, b in zip(self.ids, self.pair_ids)]
        return [len(s) for s in self.ids]

    def reorder(self, order: np.ndarray) -> TokenizedTexts:
        take = lambda values: [values[i] for i in order] if values is not None else None  # noqa: E731
        return TokenizedTexts(take(self.ids), self.labels[order], take(self.types), take(self.pair_ids))


def tokenized_dataset(tokenizer, inputs, labels: np.ndarray, max_length: int, bi: bool = False) -> TokenizedTexts:
    """One fast-tokenizer call over all texts (no ``.map``, no padding): single texts, pairs
    encoded jointly, or (``bi``) each text of a pair on its own."""
    texts, pairs = split_inputs(inputs)
    if bi and pairs is not None:
        first, _ = tokenize_inputs(tokenizer, texts, max_length)
        second, _ = tokenize_inputs(tokenizer, pairs, max_length)
        return TokenizedTexts(first, np.asarray(labels), pair_ids=second)
    ids, types = tokenize_inputs(tokenizer, inputs, max_length)
    return TokenizedTexts(ids, np.asarray(labels), types)


class PairCollator:
    """Pads both texts of bi-encoded pairs, each to its own longest in the batch."""

    def __init__(self, pad_id: int, multiple: int = 1):
        self.pad_id, self.multiple = pad_id, multiple

    def __call__(self, items: list[dict]) -> dict:
        import torch

        first_ids, first_mask = pad_batch([i["input_ids"] for i in items], self.pad_id, multiple=self.multiple)
        second_ids, second_mask = pad_batch([i["pair_input_ids"] for i in items], self.pad_id,
                                            multiple=self.multiple)
        labels = torch.tensor([i["labels"] for i in items])
        return {"input_ids": first_ids, "attention_mask": first_mask, "pair_input_ids": second_ids,
                "pair_attention_mask": second_mask, "labels": labels}


def effective_max_length(tokenizer, model, requested: int) -> int:
    limits = [requested]
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        limits.append(positions)
    return int(min(limits))


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
    elif get_problem(problem).exclusive_classes:
        # Class probabilities go straight into an accumulator: O(n) memory for many classes.
        ids, types = tokenize_inputs(tokenizer, inputs, max_length)
        accumulator = ScoreAccumulator(len(ids), model.config.num_labels, "probability")
        with torch.inference_mode(), autocast, progress(len(ids), "evaluate", "text") as bar:
            for batch, tensors in sorted_padded_batches(ids, batch_size, pad, device, types):
                accumulator.add(batch, torch.softmax(model(**tensors).logits.float(), dim=-1))
                bar.update(len(batch))
        model.train(was_training)
        return accumulator.result()
    else:
        ids, types = tokenize_inputs(tokenizer, inputs, max_length)
        outputs = run(sorted_padded_batches(ids, batch_size, pad, device, types), len(ids),
                      lambda t: model(**t).logits)
    model.train(was_training)
    return scores_from_outputs(outputs, problem, threshold)


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
    problem = dataset.problem
    tunes_threshold = get_problem(problem).tunes_threshold
    max_length = effective_max_length(tokenizer, model, config.train.max_length)

    start = time.perf_counter()
    scored = {}  # each split is run through the model once, also when it picks the threshold
    for split in dict.fromkeys(["validation", *prepared.eval_splits] if tunes_threshold
                               else prepared.eval_splits):
        data = dataset.splits[split]
        scored[split] = predict_scores(model, tokenizer, data.inputs, config.train.eval_batch_size, max_length,
                                       context.device, config.runtime.precision, problem)
    threshold, threshold_record = 0.5, None
    if tunes_threshold:
        threshold, threshold_record = choose_threshold(scored["validation"], dataset.splits["validation"].labels,
                                                       config.data.threshold)
        scored = {split: dataclasses.replace(s, threshold=threshold) for split, s in scored.items()}
    predictions = {split: Scored(scored[split], dataset.splits[split].labels, dataset.splits[split].ids,
                                 dataset.splits[split].inputs.columns()) for split in prepared.eval_splits}
    eval_seconds = time.perf_counter() - start
    save_model(model, tokenizer, run.path / "model", config.train, dataset, threshold, prepared.source)
    task = {"method": config.train.method, "pair_encoding": config.data.pair_encoding}
    if threshold_record is not None:
        task["threshold"] = threshold_record
    return trained_outcome(trainer, train_stats, context, config.train, predictions, params, eval_seconds, task)


def load_predictor(run_dir: Path, config: FinetuneConfig):
    """Predict for new texts (or pairs), or image files, with a finished fine-tuning run's model."""
    device = resolve_device(config.runtime.device)
    if read_predictor(run_dir).get("inputs") == "images":  # the ONNX graph's predictor, on PyTorch logits
        return predictor_from_graph(run_dir, config, image_logits(run_dir, device, config.train.eval_batch_size))
    model, tokenizer = load_finetuned(run_dir, config)
    model.to(device)
    info = read_predictor(run_dir)
    names = _class_names(run_dir)
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
    info, names, bi = read_predictor(run_dir), _class_names(run_dir), is_bi_encoder(model_dir)
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


def build_trainer(config: FinetuneConfig, dataset, tokenizer, model, output_dir: Path,
                  tracker=None, world: int = 1, evaluate: bool = True):
    """The Trainer tunelab trains with: dynamic padding, seeded length-grouped batches,
    length-sorted evaluation batches, metrics from compact predictions (class ids,
    label probabilities or values), class weights in the loss. Returns (trainer,
    interrupt callback)."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer

    from tunelab.encoders.biencoder import BiEncoder  # here, not at the top: loads torch
    from tunelab.training.trainer import (  # here, not at the top: loads transformers
        InterruptCallback,
        SearchCallback,
        SeededLengthGroupedSampler,
        TrackerCallback,
        quiet_progress,
        training_arguments,
    )

    train_cfg, problem = config.train, dataset.problem
    kind = get_problem(problem)
    bi = isinstance(model, BiEncoder)
    max_length = effective_max_length(tokenizer, model, train_cfg.max_length)
    train = dataset.splits["train"]
    train_ds = tokenized_dataset(tokenizer, train.inputs, train.labels, max_length, bi)
    val_ds = None
    if evaluate:
        # Evaluation batches in length order: little padding; metrics do not depend on order.
        validation = dataset.splits["validation"]
        val_ds = tokenized_dataset(tokenizer, validation.inputs, validation.labels, max_length, bi)
        val_ds = val_ds.reorder(np.argsort(val_ds.lengths, kind="stable"))

    args = training_arguments(config.train, config.runtime, config.seed, output_dir, len(train_ds), world,
                              evaluate, remove_unused_columns=False)
    num_classes = len(dataset.class_names)
    samples_per_step = train_cfg.batch_size * train_cfg.grad_accum * world
    weights = None if bi else class_weights(train.labels, problem, config.data.class_weight)

    def preprocess_logits(logits, labels):
        # Keep what the metrics need, not a (n, classes) block of logits: class ids, label
        # probabilities, or values.
        if isinstance(logits, tuple):
            logits = logits[0]
        return kind.compact_outputs(logits)

    def compute_metrics(prediction):
        labels, outputs = prediction.label_ids, prediction.predictions
        values = split_metrics(labels, kind.scores_from_compact(outputs, num_classes), num_classes)
        values.pop("n")
        values.pop("classes_present", None)
        return values

    train_lengths = train_ds.lengths
    weights_on: dict = {}

    class TunelabTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SeededLengthGroupedSampler(train_lengths, train_cfg.batch_size * train_cfg.grad_accum,
                                              config.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if weights is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.float()
            if str(logits.device) not in weights_on:  # one copy to the GPU, not one (and a wait) per step
                weights_on[str(logits.device)] = weights.to(logits.device)
            w = weights_on[str(logits.device)]
            loss = kind.loss(logits, labels, w)
            return (loss, outputs) if return_outputs else loss

    interrupt = InterruptCallback()
    callbacks = [TrackerCallback(tracker, samples_per_step), interrupt, SearchCallback()]
    if evaluate and train_cfg.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train_cfg.early_stopping))
    multiple = length_multiple(resolve_device(config.runtime.device))
    collator = PairCollator(pad_token_id(tokenizer), multiple) if bi else \
        DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple if multiple > 1 else None)
    trainer = TunelabTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=collator, processing_class=tokenizer,
        compute_metrics=compute_metrics if evaluate else None,
        preprocess_logits_for_metrics=preprocess_logits if evaluate else None,
        callbacks=callbacks,
    )
    quiet_progress(trainer)
    return trainer, interrupt


def save_model(model, tokenizer, target: Path, train: TrainConfig, dataset, threshold: float = 0.5,
               source: ModelSource | None = None) -> None:
    """A self-contained, movable Hugging Face folder (copy it, zip it, upload it): full
    weights and tokenizer as safetensors, label names in config.json, so that
    AutoModelForSequenceClassification and pipeline() load it from anywhere; a
    bi-encoder's head beside its encoder; predictor.json with what predict needs. A LoRA
    run saves its adapters merged into those weights, and the adapter itself in
    ``adapter/``, whose base_model_name_or_path names the base as a hub id (with its
    revision) or the base folder's absolute path."""
    import json

    from tunelab.encoders.biencoder import BiEncoder  # here, not at the top: loads torch

    lora = train.method == "lora"
    if isinstance(model, BiEncoder):
        if lora:
            model.encoder.save_pretrained(str(target / ADAPTER_DIR), safe_serialization=True)
            model.encoder = model.encoder.merge_and_unload()
        model.save(target, tokenizer)
    else:
        if lora:
            model.save_pretrained(str(target / ADAPTER_DIR), safe_serialization=True)
            model = merged_in_full_precision(model, target / ADAPTER_DIR, source) \
                if getattr(model, "is_loaded_in_4bit", False) else model.merge_and_unload()
        model.save_pretrained(str(target), safe_serialization=True)
        tokenizer.save_pretrained(str(target))
    if lora:
        tokenizer.save_pretrained(str(target / ADAPTER_DIR))
        if source is not None:
            point_adapter_at_base(target / ADAPTER_DIR, source)
    (target / PREDICTOR_FILE).write_text(json.dumps(predictor_record(
        COMMAND, dataset.problem, dataset.class_names, threshold=threshold, layout=2), indent=1))


def merged_in_full_precision(model, adapter_dir: Path, source: ModelSource):
    """A QLoRA run's adapters merged into the base loaded again in bf16, not into the
    4-bit weights (merging there would round the adapters away and leave a folder only
    bitsandbytes on a GPU can load)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    settings = model.config
    base = load_pretrained(AutoModelForSequenceClassification, source.location, f"base model '{source.name}'",
                           num_labels=settings.num_labels, id2label=settings.id2label, label2id=settings.label2id,
                           problem_type=settings.problem_type, pad_token_id=settings.pad_token_id,
                           ignore_mismatched_sizes=True, dtype=torch.bfloat16, **hub_kwargs(source))
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def load_finetuned(run_dir: Path, config: FinetuneConfig):
    """(model, tokenizer) from a finished fine-tuning run directory: model/ as plain
    transformers loads it (a LoRA run's adapters are merged there). Nothing in the folder
    is executed. Runs saved before that layout keep their adapter in model/, which goes
    onto the base model the run recorded (checked by fingerprint)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.encoders.biencoder import is_bi_encoder, load_bi_encoder  # here, not at the top: loads torch

    model_dir = run_dir / "model"
    what = f"the fine-tuned model in {model_dir}"
    tokenizer = load_pretrained(AutoTokenizer, model_dir, what)
    bi = is_bi_encoder(model_dir)
    loader = AutoModel if bi else AutoModelForSequenceClassification
    if config.train.method == "lora" and (model_dir / "adapter_config.json").is_file():
        # Runs saved before model/ held merged weights: the adapter onto the recorded base.
        from peft import PeftModel

        source = recorded_model(run_dir, config.model)
        extra = {} if bi else {"num_labels": max(len(_class_names(run_dir)), 1), "ignore_mismatched_sizes": True}
        base = load_pretrained(loader, source.location, f"base model '{source.name}'", **extra, **hub_kwargs(source))
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = load_pretrained(loader, model_dir, what, use_safetensors=True)
    if bi:
        model = load_bi_encoder(model_dir, model)
    return model.eval(), tokenizer


def _class_names(run_dir: Path) -> list[str]:

    return read_json_file(run_dir / "metrics.json")["data"]["class_names"]


def finetune_config_from_run(run_dir: Path) -> FinetuneConfig:
    return config_from_run(FinetuneConfig, run_dir)
