"""A fine-tuned run's model/ folder: written so plain transformers and peft load it
(LoRA merged into full-precision weights, the adapter beside it, label names in the
config, the bi-encoder's head), and read back for predict."""

from __future__ import annotations

from pathlib import Path

from tunelab.core.files import PREDICTOR_FILE, predictor_record, read_json_file
from tunelab.models.resolve import ModelSource, hub_kwargs, load_pretrained, quiet_transformers
from tunelab.tasks.lifecycle import recorded_model
from tunelab.training.config import ADAPTER_DIR, TrainConfig, point_adapter_at_base


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
        with quiet_transformers():
            model.save_pretrained(str(target), safe_serialization=True)
        tokenizer.save_pretrained(str(target))
    if lora:
        tokenizer.save_pretrained(str(target / ADAPTER_DIR))
        if source is not None:
            point_adapter_at_base(target / ADAPTER_DIR, source)
    (target / PREDICTOR_FILE).write_text(json.dumps(predictor_record(
        "finetune", dataset.problem, dataset.class_names, threshold=threshold, layout=2), indent=1))


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


def load_finetuned(run_dir: Path, config):
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
        extra = {} if bi else {"num_labels": max(len(saved_class_names(run_dir)), 1), "ignore_mismatched_sizes": True}
        base = load_pretrained(loader, source.location, f"base model '{source.name}'", **extra, **hub_kwargs(source))
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = load_pretrained(loader, model_dir, what, use_safetensors=True)
    if bi:
        model = load_bi_encoder(model_dir, model)
    return model.eval(), tokenizer


def saved_class_names(run_dir: Path) -> list[str]:

    return read_json_file(run_dir / "metrics.json")["data"]["class_names"]

