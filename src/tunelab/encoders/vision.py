"""Vision backbones beside CLIP (ViT, DINOv2, ConvNeXt, ... through ``AutoModel`` and
``AutoImageProcessor``): frozen image features for the probe, through the same lazy
image pipeline as CLIP (decoded in DataLoader workers, rescaled and normalised where
the model is)."""

from __future__ import annotations

from tunelab.core.errors import ModelError
from tunelab.models.resolve import ModelSource, hub_kwargs, load_config, load_pretrained

# cls: the class token's last hidden state; mean: the mean of the patch tokens;
# cls+mean: both, concatenated (DINOv2's linear-probe features). A convolutional
# backbone has neither: its pooled output (global average) stands for all three.
IMAGE_POOLINGS = ("cls", "mean", "cls+mean")


def is_dual_encoder(config) -> bool:
    """CLIP-style models: a text and a vision tower."""
    return hasattr(config, "text_config") and hasattr(config, "vision_config")


def is_vision_backbone(config) -> bool:
    return getattr(config, "num_channels", None) is not None and not hasattr(config, "vocab_size") \
        and not is_dual_encoder(config)


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
