"""The transformer part of a run's predictor as one graph (token ids or pixels in, one
array out), so that ONNX export and the onnx backend treat every task alike: a
fine-tuned classifier gives logits (of texts or images), a bi-encoder and a probe's
encoder give pooled vectors. What follows the graph (a classifier, a bi-encoder's head,
thresholds) stays with the task."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from tunelab.core.errors import TunelabError
from tunelab.core.files import read_predictor
from tunelab.encoders.clip import image_embeddings
from tunelab.encoders.text import pool
from tunelab.encoders.vision import pool_image


class ClassifierLogits(nn.Module):
    """A sequence classifier's logits, without the output record around them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits.float()


class ImageClassifierLogits(nn.Module):
    """An image classifier's logits from normalised pixels."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits.float()


class ImageVectors(nn.Module):
    """One vector per image: a CLIP or SigLIP model's normalised image embedding, or a
    vision backbone's pooled hidden states (the probe's image features)."""

    def __init__(self, model, pooling: str | None):
        super().__init__()
        self.model = model
        self.pooling = pooling  # None: a dual encoder's embedding

    def forward(self, pixel_values):
        if self.pooling is None:
            return image_embeddings(self.model, pixel_values)
        return pool_image(self.model(pixel_values=pixel_values), self.pooling).float()


class PooledEncoder(nn.Module):
    """An encoder's last hidden states pooled to one vector per input, as the probe's
    feature extractor and the bi-encoder compute them."""

    def __init__(self, encoder, pooling: str, token_types: bool = True):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.token_types = token_types  # the bi-encoder embeds without them

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.token_types and token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return pool(hidden.float(), attention_mask, self.pooling)


@dataclasses.dataclass
class ExportGraph:
    """What a task hands to ONNX export: the graph, the tokenizer its inputs come from and
    the length they are cut to (or, for images, the image processor), and the name of the
    graph's output."""

    module: Any  # torch.nn.Module: (input_ids, attention_mask[, token_type_ids]) or (pixel_values) -> (batch, width)
    tokenizer: Any
    max_length: int
    output: str  # logits | embedding | features
    processor: Any = None  # images: the image processor; the graph takes pixel_values

    @property
    def inputs(self) -> str:
        return "images" if self.processor is not None else "text"


def dual_encoder_export(run_dir: Path, model, processor):
    """A CLIP or SigLIP run's image tower (the normalised embedding) as one graph; the
    saved class embeddings and the recorded scale and bias follow in NumPy."""

    if "logit_scale" not in read_predictor(run_dir):
        raise TunelabError(f"{run_dir} was made before runs recorded their logit scale; rerun it to export it")
    return ExportGraph(ImageVectors(model.float().eval(), None).eval(), None, 0, "embedding", processor=processor)
