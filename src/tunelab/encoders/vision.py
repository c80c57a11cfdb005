"""Vision backbones beside CLIP (ViT, DINOv2, ConvNeXt, ... through ``AutoModel`` and
``AutoImageProcessor``): frozen image features for the probe, through the same lazy
image pipeline as CLIP (decoded in DataLoader workers, rescaled and normalised where
the model is)."""

from __future__ import annotations

from tunelab.core.errors import ModelError
from tunelab.core.progress import progress
from tunelab.models.resolve import ModelSource, hub_kwargs, is_vision_backbone, load_config, load_pretrained
from tunelab.problems import get_problem

# cls: the class token's last hidden state; mean: the mean of the patch tokens;
# cls+mean: both, concatenated (DINOv2's linear-probe features). A convolutional
# backbone has neither: its pooled output (global average) stands for all three.
IMAGE_POOLINGS = ("cls", "mean", "cls+mean")


def default_pooling(config) -> str:
    return "cls+mean" if getattr(config, "model_type", "") == "dinov2" else "cls"


def load_vision_backbone(source: ModelSource, dtype=None):
    """(model, image processor, config) of a vision backbone; any other model stops in one
    line that says what image data needs."""
    from transformers import AutoImageProcessor, AutoModel

    config = load_config(source)
    if not is_vision_backbone(config):
        raise ModelError(f"'{source.name}' is a {getattr(config, 'model_type', 'unknown')} model; image data needs "
                         "a vision backbone (ViT, DINOv2, ConvNeXt, ...) or a CLIP model")
    what = f"vision model '{source.name}'"
    extra = {"dtype": dtype} if dtype is not None else {}
    model = load_pretrained(AutoModel, source.location, what, **extra, **hub_kwargs(source))
    processor = load_pretrained(AutoImageProcessor, source.location, what, **hub_kwargs(source))
    return model, processor, config


def pool_image(outputs, how: str):
    """One vector per image from a backbone's outputs (see IMAGE_POOLINGS)."""
    import torch

    hidden = outputs.last_hidden_state
    if hidden.dim() != 3:  # (batch, channels, height, width): a convolutional backbone
        pooled = getattr(outputs, "pooler_output", None)
        return (pooled if pooled is not None else hidden.mean((2, 3))).flatten(1)
    cls, patches = hidden[:, 0], hidden[:, 1:].mean(1)
    if how == "cls":
        return cls
    if how == "mean":
        return patches
    return torch.cat([cls, patches], dim=-1)


def image_classifier_types() -> set[str]:
    """Model types transformers can make an image classifier of (ViT, DeiT, BEiT, DINOv2,
    ConvNeXt, Swin, SigLIP's and CLIP's image towers, timm's wrapper, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)


def classify_loader(model, loader, device, problem: str | None, precision: str = "fp32", desc: str = "images"):
    """Stream a DataLoader of images (``image_loader``) through an image classifier:
    (scores of the readable rows, a mask of those rows, the unreadable rows). Class
    probabilities go into an accumulator (O(n) memory for many classes)."""
    import numpy as np
    import torch

    kind, total = get_problem(problem), len(loader.dataset)
    preprocess = loader.dataset.preprocess
    num_labels = model.config.num_labels
    # The problem collects the outputs (class probabilities: top-k only for many classes).
    collector = kind.collector(total, num_labels)
    seen, skipped = np.zeros(total, dtype=bool), []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast, progress(total, desc, "img") as bar:
        for batch in loader:
            skipped += batch["skipped"]
            rows = batch["rows"].numpy()
            if len(rows):
                logits = model(pixel_values=preprocess.model_input(batch["pixel_values"], device)).logits.float()
                collector.add(rows, logits)
                seen[rows] = True
            bar.update(len(rows) + len(batch["skipped"]))
    return collector.result(seen), seen, skipped
