"""CLIP as a classifier: prompt templates, class embeddings, batched image scoring."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from tunelab.core.errors import ConfigError, ModelError
from tunelab.core.files import RunFileError, read_predictor, read_safetensors
from tunelab.core.progress import progress
from tunelab.data.image_pipeline import ClipPreprocess, image_loader
from tunelab.data.image_sources import files_split
from tunelab.encoders.cpu_tower import image_features, pooled_output
from tunelab.models.predictor import predictions_from
from tunelab.models.resolve import ModelSource, hub_kwargs, load_config, load_pretrained
from tunelab.problems import get_problem

logger = logging.getLogger(__name__)

# The reference lab's single prompt.
SIMPLE_TEMPLATES = ["a photo of a {}"]


def load_templates(spec: str, simple: Sequence[str] = SIMPLE_TEMPLATES) -> list[str]:
    """``simple`` (the reference's prompt, or the caller's own), ``ensemble`` (CLIP's 80
    ImageNet prompts, Radford et al. 2021), a text file with one template per line, or
    templates given inline, separated by ``|``; each holds ``{}``."""
    if spec == "simple":
        return list(simple)
    if spec == "ensemble":
        text = (resources.files("tunelab.templates") / "imagenet-80.txt").read_text(encoding="utf-8")
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            text = path.read_text(encoding="utf-8")
        elif "{" not in spec and ("/" in spec or path.suffix):
            raise ConfigError(f"--templates {spec!r}: no such file; use simple, ensemble, a file of templates, or "
                              "templates holding {} (several separated by |)")
        else:
            text = "\n".join(part.strip() for part in spec.split("|"))
    templates = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ConfigError(f"--templates {spec}: every template needs a {{}} for the class name"
                          + (f" (not: {bad[0]!r})" if bad else " (the file is empty)"))
    return templates


# Dual encoders scored against class prompts: CLIP (softmax over classes) and SigLIP
# (a sigmoid per class: independent scores, natural for label sets).
DUAL_ENCODERS = ("clip", "siglip")


def require_clip(source: ModelSource):
    config = load_config(source)
    if getattr(config, "model_type", "") not in DUAL_ENCODERS:
        raise ModelError(f"'{source.name}' is a {getattr(config, 'model_type', 'unknown')} model; "
                         "this command needs a CLIP or SigLIP model (e.g. openai/clip-vit-base-patch16, "
                         "google/siglip-base-patch16-224)")
    return config


def is_sigmoid(model) -> bool:
    """SigLIP: each class prompt scored on its own (a sigmoid), not against the others."""
    return getattr(model.config, "model_type", "") == "siglip"


def load_clip(source: ModelSource, dtype=None):
    """(model, tokenizer, image processor) of a CLIP or SigLIP checkpoint."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    config = require_clip(source)
    kwargs = hub_kwargs(source)
    what = f"{'SigLIP' if config.model_type == 'siglip' else 'CLIP'} model '{source.name}'"
    model = load_pretrained(AutoModel, source.location, what, dtype=dtype, **kwargs)
    tokenizer = load_pretrained(AutoTokenizer, source.location, what, **kwargs)
    processor = load_pretrained(AutoImageProcessor, source.location, what, **kwargs)
    return model, tokenizer, processor


def tokenize_prompts(tokenizer, prompts: Sequence[str], model) -> dict:
    """Prompt tokens as the model was trained on them: CLIP padded to the longest with a
    mask; SigLIP padded to its full length without one (its text embedding is the last
    position's, so the padding must be the length it learnt)."""
    if is_sigmoid(model):
        length = model.config.text_config.max_position_embeddings
        tokens = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                           return_tensors="pt")
        return {"input_ids": tokens["input_ids"]}
    tokens = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def prompts_for(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    return [template.format(name) for name in class_names for template in templates]


def encode_prompts(model, tokenizer, prompts: Sequence[str], device, batch_size: int = 256):
    """Normalised text embeddings of ``prompts``; gradients flow if enabled by the caller."""
    import torch

    outputs = []
    for start in range(0, len(prompts), batch_size):
        tokens = {k: v.to(device) for k, v in tokenize_prompts(tokenizer, prompts[start:start + batch_size],
                                                                model).items()}
        features = _features(model.get_text_features(**tokens))
        outputs.append(torch.nn.functional.normalize(features.float(), dim=-1))
    return torch.cat(outputs)


def class_embeddings(model, tokenizer, class_names: Sequence[str], templates: Sequence[str], device):
    """One normalised embedding per class: its templates' normalised embeddings, averaged."""
    import torch

    with torch.inference_mode():
        embeddings = encode_prompts(model, tokenizer, prompts_for(class_names, templates), device)
        embeddings = embeddings.view(len(class_names), len(templates), -1).mean(1)
        return torch.nn.functional.normalize(embeddings, dim=-1)


def image_embeddings(model, pixel_values):
    """Normalised image embeddings of one batch, through the model's own forward."""
    import torch

    return torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=pixel_values)).float(),
                                         dim=-1)


def _features(output):
    """get_*_features returns a tensor in most versions and a model output in some."""
    return pooled_output(output)


def logit_scale(model) -> float:
    return float(model.logit_scale.detach().exp().float().cpu())


def logit_bias(model) -> float:
    """SigLIP's learnt bias on the scaled cosine (CLIP has none)."""
    bias = getattr(model, "logit_bias", None)
    return float(bias.detach().float().cpu().reshape(-1)[0]) if bias is not None else 0.0


def embed_loader(model, loader, device, dtype=None, desc: str = "images", skipped: list[int] | None = None):
    """Stream a DataLoader of images (``image_loader``) through the image tower: yields
    (dataset rows, normalised embeddings on ``device``) per batch; unreadable rows are
    appended to ``skipped``. The tower is the CPU one where it applies."""
    import torch

    encode = image_features(model, device, loader.batch_size or 16)
    with torch.inference_mode(), progress(len(loader.dataset), desc, "img") as bar:
        for batch in loader:
            if skipped is not None:
                skipped += batch["skipped"]
            if len(batch["rows"]):
                pixels = loader.dataset.preprocess.model_input(batch["pixel_values"], device, dtype)
                yield batch["rows"].numpy(), torch.nn.functional.normalize(encode(pixels).float(), dim=-1)
            bar.update(len(batch["rows"]) + len(batch["skipped"]))


def score_loader(model, loader, class_emb, device, accumulator, dtype=None, desc: str = "images") -> list[int]:
    """Stream a DataLoader of images into ``accumulator`` as scores against the class
    embeddings; returns the rows that could not be read. Each batch's scores travel to
    the host while the next batch is computed."""
    import torch

    skipped: list[int] = []
    scale, bias = logit_scale(model), logit_bias(model)
    pending = None
    with torch.inference_mode():
        for rows, embeddings in embed_loader(model, loader, device, dtype, desc, skipped):
            staged = accumulator.stage(rows, scale * embeddings @ class_emb.T + bias)
            if pending is not None:
                accumulator.commit(pending)
            pending = staged
        if pending is not None:
            accumulator.commit(pending)
    return skipped


def scoring_record(model) -> dict:
    """What scores an image embedding against the saved class embeddings without the
    model: its logit scale and bias (predictor.json keeps them for ONNX serving)."""
    return {"logit_scale": logit_scale(model), "logit_bias": logit_bias(model)}


def save_class_embeddings(path: Path, embeddings, class_names: Sequence[str]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"class_embeddings": np.ascontiguousarray(embeddings.float().cpu().numpy())}, str(path),
              metadata={"classes": str(len(class_names))})


def load_class_embeddings(path: Path):
    import torch

    tensors = read_safetensors(path)
    if "class_embeddings" not in tensors or tensors["class_embeddings"].ndim != 2:
        raise RunFileError(f"{path} holds no class embeddings matrix; rerun the run that made it")
    return torch.from_numpy(tensors["class_embeddings"])


def dual_encoder_predictor(run_dir: Path, encode, scoring: dict | None = None):
    """Image files scored from their embeddings (``encode``: PyTorch or ONNX Runtime)
    against the class embeddings the run saved (no prompt re-encoded): one class each, or
    SigLIP's label sets. ``scoring``: the logit scale and bias, where the run did not
    record them (runs before they were recorded, served by the model itself)."""
    record = {**(scoring or {}), **read_predictor(run_dir)}
    class_emb = load_class_embeddings(run_dir / "model" / "class_embeddings.safetensors").numpy()
    names = record["class_names"]
    problem = get_problem(record.get("problem"))

    def predict(paths) -> list:
        split = files_split(list(getattr(paths, "texts", paths)))
        logits = record["logit_scale"] * encode(split.ids) @ class_emb.T + record.get("logit_bias", 0.0)
        scores = problem.scores_from_similarity_matrix(logits, record.get("threshold", 0.5))
        return predictions_from(split.ids, scores, names)

    return predict


def files_predictor(run_dir: Path, model, processor, device, batch_size: int, num_workers: int | None = 0,
                    dtype=None):
    """New image files scored exactly as the run scored its splits: the same streaming
    loop (score_loader over a DataLoader, the model's own logit scale and bias) against
    the class embeddings the run saved, the problem's scores of the similarities, the
    run's threshold. An unreadable file stops with one line (a prediction is asked for
    every input)."""
    record = read_predictor(run_dir)
    names, problem = record["class_names"], get_problem(record.get("problem"))
    class_emb = load_class_embeddings(run_dir / "model" / "class_embeddings.safetensors").to(device)
    model.to(device).eval()
    preprocess = ClipPreprocess.for_device(processor, device)

    def predict(paths) -> list:
        split = files_split(list(getattr(paths, "texts", paths)))
        accumulator = problem.similarity_accumulator(len(split), len(names))
        loader = image_loader(split, preprocess, batch_size, num_workers, True)
        score_loader(model, loader, class_emb, device, accumulator, dtype, desc="images")
        scores = problem.scores_from_similarities(accumulator, record.get("threshold", 0.5))
        return predictions_from(split.ids, scores, names)

    return predict
