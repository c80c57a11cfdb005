"""CLIP fine-tuning for image classification: LoRA (default) or full.

The reference lab's exercise 3b. Two losses: ``contrastive`` (the reference:
symmetric cross-entropy over the in-batch image/prompt similarity matrix) and
``ce`` (each image against every class prompt, scaled by the model's logit
scale, so same-class images in a batch are not false negatives). Evaluation
scores validation images against class embeddings recomputed at every
evaluation (the text tower changes as it trains), and the best checkpoint wins.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from tunelab.core.config import ImageDecodingConfig, TaskConfig, check_settings, config_from_run, setting
from tunelab.core.errors import DataError
from tunelab.core.files import PREDICTOR_FILE, predictor_record
from tunelab.core.registry import Task, register_task
from tunelab.core.runtime import resolve_device
from tunelab.data.image_pipeline import ClipPreprocess, default_workers, image_loader
from tunelab.data.images import load_image_dataset
from tunelab.encoders.clip import (
    class_embeddings,
    dual_encoder_predictor,
    files_predictor,
    is_sigmoid,
    load_clip,
    load_templates,
    save_class_embeddings,
    score_loader,
    scoring_record,
    tokenize_prompts,
)
from tunelab.models.resolve import count_parameters, load_pretrained, resolve_model
from tunelab.problems import get_problem
from tunelab.problems.scores import split_metrics, validation_loss
from tunelab.tasks.contract import Outcome, Prepared, RunContext, Scored
from tunelab.tasks.lifecycle import recorded_model, trained_outcome
from tunelab.training.config import (
    ADAPTER_DIR,
    LoraConfig,
    TrainConfig,
    check_best_metric,
    fill_learning_rate,
    point_adapter_at_base,
    wrap_lora,
)
from tunelab.training.images import build_image_trainer

logger = logging.getLogger(__name__)

COMMAND = "clip-finetune"
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4}


def _default_train() -> TrainConfig:
    return TrainConfig(method="lora", batch_size=32, eval_every=200)


@dataclasses.dataclass
class ClipFinetuneConfig(TaskConfig):
    model: str = setting("openai/clip-vit-base-patch16", "a CLIP or SigLIP hub id or local directory", flag="--model",
                         metavar="M")
    loss: str = setting("contrastive", "contrastive: the reference's in-batch image/prompt loss; ce: each image "
                        "against every class prompt", flag="--loss", choices=("contrastive", "ce"))
    templates: str = setting("simple", "evaluation prompts: simple, ensemble or a file (training uses the first)",
                             flag="--templates", metavar="simple|ensemble|FILE")
    train: TrainConfig = dataclasses.field(default_factory=_default_train)  # lr None: 1e-4 LoRA, 1e-5 full
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)  # q_proj,v_proj in both towers
    images: ImageDecodingConfig = dataclasses.field(default_factory=ImageDecodingConfig)

    def __post_init__(self) -> None:
        check_settings(self, "")
        self.train = fill_learning_rate(self.train, DEFAULT_LR)


def clip_config_from_run(run_dir: Path) -> ClipFinetuneConfig:
    return config_from_run(ClipFinetuneConfig, run_dir)


def wrap_clip_lora(model, lora: LoraConfig):
    return wrap_lora(model, model.config.model_type, lora, sequence_classification=False)


class ClipLoss:
    """Loss on a batch of images and their class indices, through the model's forward
    (so that data-parallel gradient hooks run). SigLIP's contrastive loss is its own
    sigmoid loss (every image/prompt pair a binary decision), CLIP's the symmetric
    cross-entropy. Label sets (SigLIP): every image against every class prompt, a
    sigmoid per label, whatever ``kind``."""

    def __init__(self, kind: str, prompt_tokens: dict, preprocess, problem, sigmoid: bool = False):
        self.kind = kind
        self.sigmoid = sigmoid
        self.problem = problem  # its loss on every class prompt: cross-entropy, or a sigmoid per label
        self.preprocess = preprocess  # normalises (on GPUs also resizes) the pixels workers hand over
        self.prompt_tokens = prompt_tokens  # (classes, length) tensors: the first template per class
        self._on_device: dict[str, dict] = {}

    def prompts_on(self, device) -> dict:
        """The prompt tensors on ``device``, copied once: a copy per step (or moving the
        labels to the host to index them) would make the host wait for the GPU each step."""
        if str(device) not in self._on_device:
            self._on_device[str(device)] = {k: v.to(device) for k, v in self.prompt_tokens.items()}
        return self._on_device[str(device)]

    def __call__(self, model, pixel_values, labels):
        import torch
        import torch.nn.functional as F

        pixel_values = self.preprocess.model_input(pixel_values, labels.device)
        prompts = self.prompts_on(labels.device)
        if self.kind == "contrastive" and labels.ndim == 1:  # one class per image
            # Each image against the prompts of the batch's own labels: the reference's loss.
            logits = model(**{k: v[labels] for k, v in prompts.items()}, pixel_values=pixel_values).logits_per_image
            if self.sigmoid:  # +1 on the diagonal, -1 elsewhere (Zhai et al. 2023)
                signs = 2 * torch.eye(len(labels), device=labels.device) - 1
                return -F.logsigmoid(signs * logits).sum() / len(labels)
            target = torch.arange(len(labels), device=labels.device)
            return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        logits = model(**prompts, pixel_values=pixel_values).logits_per_image
        return self.problem.loss(logits, labels, None)


def describe(metrics: dict) -> str:
    task = metrics.get("task", {})
    return f"{task.get('method', '?')}, {task.get('loss', '?')} loss, " \
           f"{task.get('training', {}).get('steps', '?')} steps"


def prepare(config: ClipFinetuneConfig) -> Prepared:
    """The images listed and labelled (no pixels read), CLIP loaded (and wrapped in LoRA)."""
    source = resolve_model(config.model)
    templates = load_templates(config.templates)
    dataset = load_image_dataset(config.data, seed=config.seed, flat_split="all")
    eval_splits = dataset.eval_split_names(config.data.splits)
    if "validation" not in dataset.splits:
        raise DataError("fine-tuning picks its best checkpoint on a validation split, and there is none")
    best = config.train.best_metric or get_problem(dataset.problem).checkpoint_metric
    check_best_metric(best, dataset.problem)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, best_metric=best))
    model, tokenizer, processor = load_clip(source)
    if dataset.splits["train"].labels.ndim == 2 and not is_sigmoid(model):  # label sets: a row of labels each
        raise DataError(f"{config.data.dataset} holds label sets; CLIP's softmax picks one class per image: use a "
                        "SigLIP model (a sigmoid per label), or fit a probe on the CLIP features")
    if config.train.method == "lora":
        model = wrap_clip_lora(model, config.lora)
    return Prepared(config, source, dataset, eval_splits,
                    {"templates": templates, "model": model, "tokenizer": tokenizer, "processor": processor})


def execute(prepared: Prepared, context: RunContext) -> Outcome | None:
    """Train with zero-shot evaluation on validation, then score every split with the
    best model against freshly computed class embeddings."""
    from tunelab.training.trainer import train_resumable  # here, not at the top: loads transformers

    config, dataset, run, device = prepared.config, prepared.dataset, context.run, context.device
    parts = prepared.parts
    tokenizer, processor, templates = parts["tokenizer"], parts["processor"], parts["templates"]
    params = count_parameters(parts["model"])
    logger.info("parameters: %s trainable of %s", f"{params['trainable']:,}", f"{params['total']:,}")
    trainer, interrupt = build_clip_trainer(config, dataset, parts["model"], tokenizer, processor, templates,
                                            run.path / "checkpoints", context.tracker, context.world)
    stats = train_resumable(trainer, interrupt, run.path, context.resume, COMMAND)
    if context.rank != 0:
        return None

    model = trainer.model.eval()
    start = time.perf_counter()
    class_emb = class_embeddings(model, tokenizer, dataset.class_names, templates, device)
    problem = get_problem(dataset.problem)
    predictions, skipped = {}, sorted(trainer.skipped_files)
    for split in prepared.score_splits:
        data = dataset.splits[split]
        accumulator = problem.similarity_accumulator(len(data), len(dataset.class_names))
        loader = image_loader(data, ClipPreprocess.for_device(processor, device), config.train.eval_batch_size,
                              config.images.num_workers, config.images.strict)
        bad = score_loader(model, loader, class_emb, device, accumulator, desc=f"{split} images")
        skipped += [data.ids[row] for row in bad]
        kept = data.subset(accumulator.seen.nonzero()[0])
        predictions[split] = Scored(problem.scores_from_similarities(accumulator), kept.labels, kept.ids,
                                    {"file": kept.ids})
    eval_seconds = time.perf_counter() - start
    _save(model, tokenizer, processor, run, config, class_emb, dataset, templates, prepared.source, 0.5)
    label_sets = dataset.splits["train"].labels.ndim == 2
    task = {"method": config.train.method, "loss": "sigmoid per label" if label_sets else config.loss,
            "templates": {"spec": config.templates, "count": len(templates)}}
    return trained_outcome(trainer, stats, context, config.train, predictions, params, eval_seconds, task, skipped)


def load_predictor(run_dir: Path, config: ClipFinetuneConfig):
    """Classify image files with the fine-tuned CLIP and the class embeddings it saved."""
    model, _, processor = load_clip_run(run_dir, config)
    device = resolve_device(config.runtime.device)
    return files_predictor(run_dir, model, processor, device, config.train.eval_batch_size, 0)


def export_graph(run_dir: Path, config: ClipFinetuneConfig):
    """The fine-tuned image tower; the class embeddings it saved follow in NumPy."""
    from tunelab.encoders.graphs import dual_encoder_export  # here, not at the top: loads torch

    model, _, processor = load_clip_run(run_dir, config)
    return dual_encoder_export(run_dir, model, processor)


def predictor_from_graph(run_dir: Path, config: ClipFinetuneConfig, encode):
    return dual_encoder_predictor(run_dir, encode)


TASK = register_task(Task(
    name=COMMAND, config_class=ClipFinetuneConfig, prepare=prepare, execute=execute, resumable=True,
    summary="fine-tune CLIP or SigLIP on class prompts (LoRA or full)",
    description="CLIP or SigLIP fine-tuning with LoRA (default) or in full: contrastive loss (CLIP's symmetric "
                "cross-entropy, SigLIP's sigmoid loss) or ce; evaluated zero-shot against class prompts.",
    aliases=("image-text-finetune",),
    load_predictor=load_predictor, describe=describe, export_graph=export_graph,
    predictor_from_graph=predictor_from_graph,
    problems=("single-label", "multi-label"), inputs=(("images", "clip"),),
    unused_settings=("train.max_length",),  # CLIP's prompts are cut at the text tower's own limit
))


def build_clip_trainer(config: ClipFinetuneConfig, dataset, model, tokenizer, processor, templates,
                       output_dir: Path, tracker=None, world: int = 1, evaluate: bool = True):
    """The image Trainer with a CLIP loss, evaluated zero-shot against class embeddings
    recomputed at every evaluation. Returns (trainer, interrupt callback)."""
    validation = dataset.splits.get("validation")
    workers = default_workers() if config.images.num_workers is None else config.images.num_workers
    first = [templates[0].format(name) for name in dataset.class_names]
    preprocess = ClipPreprocess.for_device(processor, resolve_device(config.runtime.device))
    problem = get_problem(dataset.problem)
    loss_fn = ClipLoss(config.loss, tokenize_prompts(tokenizer, first, model), preprocess, problem, is_sigmoid(model))
    num_classes = len(dataset.class_names)

    def validation_metrics(net, skipped_files: set) -> dict:
        device = next(net.parameters()).device
        class_emb = class_embeddings(net, tokenizer, dataset.class_names, templates, device)
        accumulator = problem.similarity_accumulator(len(validation), num_classes)
        loader = image_loader(validation, preprocess, config.train.eval_batch_size, workers, config.images.strict)
        for row in score_loader(net, loader, class_emb, device, accumulator, desc="validation"):
            skipped_files.add(validation.ids[row])
        kept = validation.labels[accumulator.seen]
        # Many classes keep only the top-k scores: the loss is then the cross-entropy over those.
        scores = problem.scores_from_similarities(accumulator)
        values = {**split_metrics(kept, scores, num_classes), "loss": validation_loss(scores, kept)}
        values.pop("n")
        values.pop("classes_present", None)
        values.pop("classes_predicted", None)
        return values

    return build_image_trainer(config, dataset, model, preprocess, loss_fn, validation_metrics, output_dir,
                               tracker, world, evaluate)


def _save(model, tokenizer, processor, run, config: ClipFinetuneConfig, class_emb, dataset,
          templates, source, threshold: float = 0.5) -> None:
    """model/: a self-contained CLIP folder (CLIPModel.from_pretrained loads it from
    anywhere); a LoRA run's adapters are merged into it and kept in model/adapter/ too,
    pointing at the base by hub id or absolute path."""
    target = run.path / "model"
    if config.train.method == "lora":
        model.save_pretrained(str(target / ADAPTER_DIR), safe_serialization=True)
        point_adapter_at_base(target / ADAPTER_DIR, source)
        model = model.merge_and_unload()
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    processor.save_pretrained(str(target))
    save_class_embeddings(target / "class_embeddings.safetensors", class_emb, dataset.class_names)
    run.write_json(f"model/{PREDICTOR_FILE}", predictor_record(
        COMMAND, dataset.problem, list(dataset.class_names), kind="clip", templates=templates, threshold=threshold,
        **scoring_record(model)))


def load_clip_run(run_dir: Path, config: ClipFinetuneConfig):
    """(model, tokenizer, processor) of a finished clip-finetune run. Nothing in the folder
    is executed; a LoRA adapter goes onto the base model the run recorded."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model_dir = run_dir / "model"
    what = f"the fine-tuned CLIP or SigLIP model in {model_dir}"
    tokenizer = load_pretrained(AutoTokenizer, model_dir, what)
    processor = load_pretrained(AutoImageProcessor, model_dir, what)
    if config.train.method == "lora" and (model_dir / "adapter_config.json").is_file():
        # Runs saved before model/ held merged weights: the adapter onto the recorded base.
        from peft import PeftModel

        base, _, _ = load_clip(recorded_model(run_dir, config.model))
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = load_pretrained(AutoModel, model_dir, what, use_safetensors=True)
    return model.eval(), tokenizer, processor
