"""Frozen-encoder features: batched, length-sorted, dynamically padded, cached.

The reference padded every sentence to 512 tokens and pushed texts through a
generic pipeline one by one. Here texts are tokenised once, sorted by length
so each batch pads only to its own longest member, and run under
``torch.inference_mode``; results are cached on disk, keyed by everything that
determines them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunelab.core.config import RuntimeConfig, check_positive, check_settings, setting
from tunelab.core.errors import ModelError
from tunelab.core.progress import progress
from tunelab.core.runtime import length_multiple, resolve_device, resolve_dtype
from tunelab.models.resolve import ModelSource, load_text_encoder, load_tokenizer

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "last")


@dataclasses.dataclass
class FeatureConfig:
    """How frozen text features are computed."""

    pooling: str | None = setting(None, "cls: the first token's last hidden state; mean: the masked mean of every "
                                  "kept token; last: the last kept token (default: the pooling a sentence-transformers "
                                  "model declares, e.g. mean for MiniLM; else cls; mean for bi-encoded sentence "
                                  "pairs; last for decoders); images with a vision backbone: cls, mean of the "
                                  "patches, or cls+mean (default: cls; DINOv2 cls+mean)", flag="--pooling",
                                  choices=("cls", "mean", "last", "cls+mean"))
    max_length: int = setting(512, "tokens per text, capped by the model's own limit", flag="--max-length",
                              metavar="N")
    batch_size: int = setting(64, "texts (or images) per forward pass (sorted batches pad little, so larger is "
                              "faster)", flag="--batch-size", metavar="N")
    cache: bool = setting(True, "reuse features computed before from identical inputs; --no-cache recomputes them",
                          flag="--no-cache",
                          const=False)

    def __post_init__(self) -> None:
        check_settings(self, "features.")
        check_positive("features.max_length", self.max_length)
        check_positive("features.batch_size", self.batch_size)


def split_inputs(inputs) -> tuple[list[str], list[str] | None]:
    """(texts, second texts or None) of a list of texts or a TextInputs."""
    if hasattr(inputs, "pairs"):
        return list(inputs.texts), (list(inputs.pairs) if inputs.pairs is not None else None)
    return list(inputs), None


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, types: Sequence[Sequence[int]] | None = None,
              multiple: int = 1):
    """Right-pad token id lists to the batch's longest (rounded up to ``multiple``);
    returns (ids, mask) tensors, and the padded token type ids too when ``types`` are given."""
    import torch

    width = -(-max(len(s) for s in sequences) // multiple) * multiple
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    if types is None:
        return torch.from_numpy(ids), torch.from_numpy(mask)
    type_ids = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(types):
        type_ids[row, : len(seq)] = seq
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(type_ids)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches, longest first: memory peaks at once and padding stays minimal."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


# sentence-transformers' pooling modes, as tunelab's poolings
SENTENCE_TRANSFORMERS_POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                                  "pooling_mode_lasttoken": "last"}


def declared_pooling(source: ModelSource) -> str | None:
    """The pooling a sentence-transformers model folder declares (modules.json, then its
    Pooling module's config.json), where it is one tunelab computes; None otherwise."""
    if not source.is_local:
        return None
    folder = Path(source.location)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        path = next(m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling"))
        settings = json.loads((folder / path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, TypeError, AttributeError):
        return None
    chosen = [name for key, name in SENTENCE_TRANSFORMERS_POOLINGS.items() if settings.get(key)]
    return chosen[0] if len(chosen) == 1 else None


def default_text_pooling(source: ModelSource, model_config, pair_encoding: str | None) -> tuple[str, str]:
    """(pooling, why) when --pooling is not given: the pooling the model was trained for,
    as far as its folder says."""
    if pair_encoding == "bi":
        return "mean", "bi-encoded sentence pairs are compared by their mean-pooled embeddings"
    declared = declared_pooling(source)
    if declared is not None:
        return declared, "the pooling this sentence-transformers model was trained with (its modules.json)"
    if is_decoder(model_config):  # a decoder's first token has seen nothing else
        return "last", "a decoder's last token is the one that has read the whole text"
    return "cls", "the [CLS] token, which BERT-style classifiers are fine-tuned on"


def is_decoder(config) -> bool:
    """A causal language model (Qwen, Llama, GPT-2, ...): it has a causal-LM head class
    and no masked-LM one, unlike BERT-style encoders, which have both."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def ensure_padding(tokenizer, model_name: str):
    """A decoder's tokenizer often has no pad token: batches pad with its end-of-sequence
    token instead (masked out, and a classifier reads the last real token). One with
    neither stops in one line."""
    if tokenizer.pad_token_id is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ModelError(f"'{model_name}' has no way to pad a batch: its tokenizer has neither a pad nor an "
                         "end-of-sequence token")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def sorted_padded_batches(ids: Sequence[Sequence[int]], batch_size: int, pad_id: int, device,
                          types: Sequence[Sequence[int]] | None = None):
    """Yield (indices, model inputs) over length-sorted batches, on ``device``: input_ids,
    attention_mask, and token_type_ids where ``types`` are given (sentence pairs)."""
    multiple = length_multiple(device)
    for batch in length_sorted_batches([len(s) for s in ids], batch_size):
        tensors = pad_batch([ids[i] for i in batch], pad_id, [types[i] for i in batch] if types else None,
                            multiple)
        names = ("input_ids", "attention_mask", "token_type_ids")
        yield batch, {name: tensor.to(device) for name, tensor in zip(names, tensors)}


# Token ids of recent inputs, so that runs in one process over the same texts (a study's
# probe and fine-tuning steps, an evaluation repeated per checkpoint) tokenise them once.
_TOKENIZED: dict[str, tuple] = {}
_TOKENIZED_ENTRIES = 8


def tokenize_inputs(tokenizer, inputs, max_length: int) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids of texts, or of sentence pairs encoded jointly (the tokenizer's pair input,
    truncated longest first) with their token type ids; no padding. Remembered for the
    last few input lists (keyed by the tokenizer's vocabulary, the length limit and the
    texts' digest)."""
    key = hashlib.sha256(json.dumps([getattr(tokenizer, "name_or_path", ""), len(tokenizer), max_length,
                                     text_digest(inputs)]).encode()).hexdigest()
    if key not in _TOKENIZED:
        if len(_TOKENIZED) >= _TOKENIZED_ENTRIES:
            _TOKENIZED.pop(next(iter(_TOKENIZED)))
        _TOKENIZED[key] = _tokenize(tokenizer, inputs, max_length)
    return _TOKENIZED[key]


def _tokenize(tokenizer, inputs, max_length: int) -> tuple[list[list[int]], list[list[int]] | None]:
    texts, pairs = split_inputs(inputs)
    if pairs is None:
        encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                            return_attention_mask=False, return_token_type_ids=False)
        return encoded["input_ids"], None
    encoded = tokenizer(texts, pairs, truncation="longest_first", max_length=max_length, padding=False,
                        return_attention_mask=False)
    return encoded["input_ids"], encoded.get("token_type_ids")


def pool(hidden, mask, how: str):
    """[CLS]: the first token. Mean: average over every token the mask keeps,
    special tokens included, as sentence-transformers does. Last: the last token the mask
    keeps (right padding): the one state of a decoder that has seen the whole text."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        import torch

        last = (mask.sum(1) - 1).clamp(min=0).long()
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class TextFeatureExtractor:
    """A frozen text encoder that maps texts to fixed-size vectors."""

    def __init__(self, source: ModelSource, features: FeatureConfig, runtime: RuntimeConfig):
        self.source = source
        self.config = features
        self.runtime = runtime
        self.device = resolve_device(runtime.device)
        self.dtype = resolve_dtype(runtime.precision, self.device)
        self._tokenizer = None
        self._model = None
        self.seconds = 0.0  # time spent encoding, for throughput figures
        self.encoded = 0

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.source)
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            model = load_text_encoder(self.source, dtype=self.dtype)
            self._model = model.to(self.device).eval()
        return self._model

    def load(self) -> None:
        """Load tokenizer and weights now, so that a model that cannot load fails first."""
        self.tokenizer  # noqa: B018
        self.model  # noqa: B018

    @property
    def max_length(self) -> int:
        limit = getattr(self.tokenizer, "model_max_length", None) or self.config.max_length
        positions = getattr(self.model.config, "max_position_embeddings", None) or limit
        return int(min(self.config.max_length, limit, positions))

    def cache_key(self, texts) -> str:
        """Every pooling is computed in the one forward pass and cached together, so the
        key leaves the pooling out: probes that differ only in pooling share it."""
        parts = {
            "version": FEATURE_VERSION,
            "model": self.source.fingerprint(),
            "max_length": self.config.max_length,
            "precision": self.runtime.precision,
            "texts": text_digest(texts),
            "n": len(texts),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def cache_meta(self, texts) -> dict:
        return {"model": self.source.name, "poolings": list(POOLINGS), "max_length": self.config.max_length,
                "precision": self.runtime.precision, "n": len(texts)}

    def tokenize(self, texts) -> list[list[int]]:
        return tokenize_inputs(self.tokenizer, texts, self.max_length)[0]

    def select(self, pooled: np.ndarray) -> np.ndarray:
        """The configured pooling's vectors out of an (n, poolings, dim) array (cls+mean:
        both, concatenated)."""
        how = self.config.pooling or "cls"
        if how == "cls+mean":
            return np.concatenate([pooled[:, POOLINGS.index("cls")], pooled[:, POOLINGS.index("mean")]], axis=1)
        return pooled[:, POOLINGS.index(how)]

    def encode(self, texts, desc: str = "features") -> np.ndarray:
        """Vectors for ``texts`` (or sentence pairs, encoded jointly) in their order, float32."""
        return self.select(self.encode_all(texts, desc))

    def encode_all(self, texts, desc: str = "features") -> np.ndarray:
        """(n, poolings, dim): every pooling from one forward pass, in the inputs' order."""
        import torch

        model = self.model
        if not len(texts):
            return np.zeros((0, len(POOLINGS), model.config.hidden_size), dtype=np.float32)
        ids, types = tokenize_inputs(self.tokenizer, texts, self.max_length)
        out: np.ndarray | None = None
        start = time.perf_counter()
        with torch.inference_mode(), progress(len(ids), desc, "text") as bar:
            for batch, inputs in sorted_padded_batches(ids, self.config.batch_size, pad_token_id(self.tokenizer),
                                                       self.device, types):
                hidden = model(**inputs).last_hidden_state.float()
                pooled = torch.stack([pool(hidden, inputs["attention_mask"], how) for how in POOLINGS], dim=1)
                vectors = pooled.cpu().numpy()
                if out is None:
                    out = np.empty((len(ids), *vectors.shape[1:]), dtype=np.float32)
                out[batch] = vectors
                bar.update(len(batch))
        self.seconds += time.perf_counter() - start
        self.encoded += len(ids)
        assert out is not None
        return out


def graph_outputs(module, tokenizer, inputs, max_length: int, batch_size: int = 64, device="cpu",
                  precision: str = "fp32", desc: str | None = None) -> np.ndarray:
    """A module that maps token ids to one array per input (tunelab.encoders.graphs: pooled
    vectors, logits), over length-sorted, dynamically padded batches, in the inputs'
    order, float32; bf16 runs under autocast."""
    import torch

    ids, types = tokenize_inputs(tokenizer, inputs, max_length)
    out: np.ndarray | None = None
    device = torch.device(device) if isinstance(device, str) else device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast, progress(len(ids), desc or "encode", "text") as bar:
        for batch, tensors in sorted_padded_batches(ids, batch_size, pad_token_id(tokenizer), device, types):
            values = module(**tensors).float().cpu().numpy()
            if out is None:
                out = np.empty((len(ids), *values.shape[1:]), dtype=np.float32)
            out[batch] = values
            bar.update(len(batch))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (sentence-transformers' Normalize): cosine becomes a dot product."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def combine_pair(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(u, v, |u - v|, u * v): two texts' vectors as one classifier input."""
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def pair_vectors(encode, inputs, encoding: str) -> np.ndarray:
    """``pair_features`` with any encoder function (PyTorch or ONNX; it takes texts, or
    TextInputs whose pairs it encodes jointly) and no cache."""
    texts, pairs = split_inputs(inputs)
    if pairs is None or encoding == "cross":
        return encode(inputs)
    return combine_pair(encode(texts), encode(pairs))


# Bump when extraction changes in a way that alters the numbers (2: one entry holds every pooling).
FEATURE_VERSION = 3  # 3: the last token's state cached beside cls and mean


def text_digest(texts) -> str:
    """Identifies a list of texts, or the texts and second texts of pairs."""
    digest = hashlib.sha256()
    first, second = split_inputs(texts)
    for text in first:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    if second is not None:
        digest.update(b"\x01pairs\x01")
        for text in second:
            digest.update(text.encode("utf-8"))
            digest.update(b"\x00")
    return digest.hexdigest()
