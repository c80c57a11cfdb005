"""The Trainer plumbing of text fine-tuning (the text counterpart of training/images.py):
the model built for the problem (a classifier head, a bi-encoder for pairs, LoRA or
QLoRA on top), texts tokenised once and grouped by length, pairs collated, and the
Trainer that trains it. The finetune task (tunelab.tasks.finetune) calls these."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunelab.core.config import ConfigError
from tunelab.core.errors import ModelError
from tunelab.core.runtime import is_cuda, length_multiple, resolve_device
from tunelab.encoders.text import pad_batch, pad_token_id, split_inputs, tokenize_inputs
from tunelab.models.resolve import ModelSource, hub_kwargs, load_config, load_pretrained
from tunelab.problems import get_problem
from tunelab.problems.scores import split_metrics
from tunelab.training.config import class_weights, wrap_lora


def check_4bit(config) -> None:
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


def quantization_kwargs(config) -> dict:
    """from_pretrained's arguments for a 4-bit base (QLoRA's recipe: NF4, double
    quantisation, bf16 compute), or none."""
    if not config.load_in_4bit:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True,
                                                      bnb_4bit_compute_dtype=torch.bfloat16)}


def build_model(source: ModelSource, dataset, config):
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
        if not names:  # numbers: the cosine of the two embeddings, scaled to the targets
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


def build_trainer(config, dataset, tokenizer, model, output_dir: Path,
                  tracker=None, world: int = 1, evaluate: bool = True):
    """The Trainer tunelab trains with: dynamic padding, seeded length-grouped batches,
    length-sorted evaluation batches, metrics from compact predictions (class ids,
    label probabilities or values), class weights in the loss. Returns (trainer,
    interrupt callback). Longer than most: the Trainer subclass closes over the
    sampler's lengths, the class weights and the metrics' compact form, which split
    apart would travel as arguments through the Trainer's own hooks."""
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
        values.pop("classes_predicted", None)
        return values

    train_lengths = train_ds.lengths
    weights_on: dict = {}

    class TunelabTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SeededLengthGroupedSampler(train_lengths, train_cfg.batch_size * train_cfg.grad_accum,
                                              config.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if bi or not kind.needs_own_loss(weights is not None):  # a bi-encoder applies the problem's loss itself
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.float()
            if weights is not None and str(logits.device) not in weights_on:  # one copy to the GPU, not one per step
                weights_on[str(logits.device)] = weights.to(logits.device)
            w = weights_on.get(str(logits.device))
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
