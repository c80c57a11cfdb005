"""A bi-encoder for sentence pairs: one shared encoder embeds each text on its own
(mean pooling), then

- ``cosine``: the cosine similarity of the two embeddings fits a regression target
  scaled to [0, 1] (sentence-transformers' CosineSimilarityLoss), and predictions
  map back to the label scale;
- ``classify``: a linear head on (u, v, |u - v|) predicts classes (cross-entropy) or
  label sets (binary cross-entropy), as sentence-transformers' SoftmaxLoss does.

It trains with the Hugging Face Trainer like any model: ``forward`` takes both
texts' token ids and returns the loss and the scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tunelab.core.files import read_json_file, read_safetensors
from tunelab.encoders.text import pool
from tunelab.problems import get_problem

CONFIG_FILE = "bi_encoder.json"
HEAD_FILE = "bi_encoder_head.safetensors"


class BiEncoder(nn.Module):
    def __init__(self, encoder, objective: str, num_labels: int, label_range: tuple[float, float] = (0.0, 1.0),
                 problem: str | None = None, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.encoder = encoder
        self.objective = objective  # cosine | classify
        self.problem = get_problem(problem).name
        self.num_labels = num_labels
        self.label_range = (float(label_range[0]), float(label_range[1]))
        hidden = encoder.config.hidden_size
        self.head = nn.Linear(3 * hidden, num_labels) if objective == "classify" else None
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(0),
                             persistent=False)

    @property
    def config(self):
        return self.encoder.config

    def gradient_checkpointing_enable(self, **kwargs):
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def embed(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, "mean")

    def score(self, u, v):
        """Predictions from two batches of embeddings: label-scale values for ``cosine``,
        logits for ``classify``."""
        if self.objective == "cosine":
            low, high = self.label_range
            return low + torch.cosine_similarity(u.float(), v.float(), dim=-1) * (high - low)
        return self.head(torch.cat([u, v, (u - v).abs()], dim=-1))

    def forward(self, input_ids, attention_mask, pair_input_ids, pair_attention_mask, labels=None, **_):
        u, v = self.embed(input_ids, attention_mask), self.embed(pair_input_ids, pair_attention_mask)
        scores = self.score(u, v)
        loss = None
        if labels is not None:
            loss = self.loss(u, v, scores, labels)
        return {"loss": loss, "logits": scores} if loss is not None else {"logits": scores}

    def loss(self, u, v, scores, labels):
        import torch.nn.functional as F

        if self.objective == "cosine":
            low, high = self.label_range
            target = (labels.float() - low) / max(high - low, 1e-12)
            return F.mse_loss(torch.cosine_similarity(u.float(), v.float(), dim=-1), target)
        weights = self.class_weights if self.class_weights.numel() else None
        return get_problem(self.problem).loss(scores.float(), labels, weights)

    def save(self, folder: Path, tokenizer) -> None:
        """The encoder (or its LoRA adapter) as a standard folder, the head as safetensors,
        and what the head needs in bi_encoder.json."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        if self.head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      str(folder / HEAD_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps({
            "objective": self.objective, "problem": self.problem, "num_labels": self.num_labels,
            "label_range": list(self.label_range), "pooling": "mean"}, indent=1))


def load_bi_encoder(folder: Path, encoder) -> BiEncoder:
    """A saved bi-encoder's head and settings around an already loaded ``encoder``."""
    settings = read_json_file(folder / CONFIG_FILE)
    model = BiEncoder(encoder, settings["objective"], settings["num_labels"], tuple(settings["label_range"]),
                      settings["problem"])
    if model.head is not None:
        model.head.load_state_dict(read_safetensors(folder / HEAD_FILE, framework="pt"))
    return model.eval()


def score_embeddings(folder: Path, u, v):
    """``BiEncoder.score`` in NumPy from the saved head and settings: the onnx backend
    scores embeddings without loading a PyTorch model."""
    import numpy as np

    settings = read_json_file(folder / CONFIG_FILE)
    u, v = np.asarray(u, dtype=np.float32), np.asarray(v, dtype=np.float32)
    if settings["objective"] == "cosine":
        low, high = settings["label_range"]
        norms = np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-8)
        return low + (u * v).sum(1) / norms * (high - low)
    head = read_safetensors(folder / HEAD_FILE)
    return np.concatenate([u, v, np.abs(u - v)], axis=1) @ head["weight"].T + head["bias"]


def is_bi_encoder(folder: Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()
