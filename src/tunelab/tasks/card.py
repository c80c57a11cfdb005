"""The model card of a run's ``model/`` folder (``model/README.md``) in the hub's format,
so that uploading the folder with the hub's own tools publishes a complete model page:
YAML front matter (library, pipeline tag, base model, datasets, ``model-index``
results from metrics.json), then the training configuration, the data, the results
with their intervals, the parameter counts, and how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.core.stats import correlation_interval, wilson_interval
from tunelab.problems import get_problem
from tunelab.tasks.run_report import metrics_table


def write_model_card(model_dir: Path, metrics: dict[str, Any], config_yaml: str, base_model: dict | None) -> Path:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    command, kind = metrics["command"], get_problem(metrics.get("data", {}).get("problem"))
    problem = kind.name
    adapter = (model_dir / "adapter_config.json").is_file()  # runs saved before model/ held merged weights
    bi_encoder = (model_dir / "bi_encoder.json").is_file()
    library = "peft" if adapter else "sklearn" if (model_dir / "classifier.skops").is_file() else "transformers"
    if bi_encoder:
        pipeline = "sentence-similarity"
    elif (model_dir / "class_embeddings.safetensors").is_file():  # CLIP: class prompts against images
        pipeline = "zero-shot-image-classification"
    elif (model_dir / "config.json").is_file() and library == "transformers":  # a sequence classifier
        pipeline = kind.card_pipeline
    else:
        pipeline = None
    base = (base_model or {}).get("location") if (base_model or {}).get("is_local") is False else \
        (base_model or {}).get("name")
    results = [
        EvalResult(task_type=pipeline or "text-classification", dataset_type=metrics["dataset"],
                   dataset_name=metrics["dataset"], dataset_split=split, metric_type=name,
                   metric_value=round(float(values[name]), 6))
        for split, values in metrics["splits"].items() for name in kind.card_metrics if name in values
    ]
    data = ModelCardData(library_name=library, pipeline_tag=pipeline, base_model=base,
                         datasets=[metrics["dataset"]], tags=["tunelab", command],
                         model_name=f"{command} of {metrics['model']} on {metrics['dataset']}", eval_results=results)
    params = metrics.get("params", {})
    names = metrics.get("data", {}).get("class_names", [])
    body = "\n".join([
        f"# {metrics['model']} on {metrics['dataset']} ({command})",
        "",
        f"Made with tunelab {metrics.get('environment', {}).get('tunelab', '')}: "
        f"{problem} {('over ' + str(len(names)) + ' classes') if names else ''}.",
        "",
        "## Results",
        "",
        metrics_table(metrics["splits"]),
        "",
        _intervals(metrics),
        "",
        "## Data",
        "",
        *[f"- {split}: {size} examples" for split, size in metrics.get("data", {}).get("sizes", {}).items()],
        *[f"- {note}" for note in metrics.get("data", {}).get("notes", [])],
        *([f"- classes: {', '.join(names[:50])}"] if names else []),
        "",
        "## Parameters",
        "",
        f"{params.get('trainable', 0):,} trained of {params.get('total', 0):,}.",
        "",
        "## How to load it",
        "",
        "```python",
        *_loading(command, library, bi_encoder, model_dir),
        "```",
        "",
        "## Training configuration",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
    ])
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + body)
    path = model_dir / "README.md"
    card.save(str(path))
    return path


def _intervals(metrics: dict) -> str:
    lines = []
    for split, values in metrics["splits"].items():
        if "accuracy" in values:
            low, high = wilson_interval(values["accuracy"], values["n"])
            lines.append(f"- {split}: accuracy {values['accuracy']:.4f}, 95% interval [{low:.4f}, {high:.4f}] "
                         f"(Wilson, n = {values['n']})")
        elif "spearman" in values:
            low, high = correlation_interval(values["spearman"], values["n"])
            lines.append(f"- {split}: Spearman {values['spearman']:.4f}, 95% interval [{low:.4f}, {high:.4f}] "
                         f"(Fisher z, n = {values['n']})")
    return "\n".join(lines)


def _loading(command: str, library: str, bi_encoder: bool, model_dir: Path) -> list[str]:
    if library == "sklearn":
        return ["import skops.io as sio", "classifier = sio.load('classifier.skops')  # on the encoder's features"]
    if command in ("zeroshot", "clip-finetune"):
        return ["from transformers import CLIPModel", "model = CLIPModel.from_pretrained('.')",
                "# class names and prompts: predictor.json; class embeddings: class_embeddings.safetensors"]
    if bi_encoder:
        return ["from transformers import AutoModel", "encoder = AutoModel.from_pretrained('.')  # mean-pool, then "
                "compare or classify with bi_encoder_head.safetensors"]
    if library == "peft":
        return ["from peft import AutoPeftModelForSequenceClassification",
                "model = AutoPeftModelForSequenceClassification.from_pretrained('.')"]
    lines = ["from transformers import pipeline", "classify = pipeline('text-classification', model='.')"]
    if (model_dir / "adapter" / "adapter_config.json").is_file():
        lines += ["# The LoRA adapter alone (merged into the weights above) is in adapter/:",
                  "# from peft import AutoPeftModelForSequenceClassification",
                  "# model = AutoPeftModelForSequenceClassification.from_pretrained(",
                  "#     'adapter', num_labels=len(config.id2label), id2label=config.id2label,",
                  "#     label2id=config.label2id, ignore_mismatched_sizes=True)  # config: this folder's config.json"]
    return lines
