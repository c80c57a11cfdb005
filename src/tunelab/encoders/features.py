"""Features computed once and kept: the on-disk cache (keyed by the model's files, the
inputs' content, pooling, length and precision; entries flushed before they are renamed
into place), sharded over torchrun processes, pairs combined, and image features from
CLIP or any vision backbone."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tunelab.core.config import RuntimeConfig
from tunelab.core.distributed import broadcast_object, gather_to_zero, shard
from tunelab.core.progress import progress
from tunelab.core.provenance import cache_dir
from tunelab.core.runtime import resolve_device, resolve_dtype
from tunelab.core.safety import atomic_write_bytes
from tunelab.data.image_pipeline import ClipPreprocess, image_loader
from tunelab.encoders.clip import embed_loader, load_clip
from tunelab.encoders.text import FEATURE_VERSION, combine_pair, split_inputs
from tunelab.encoders.vision import load_vision_backbone, pool_image
from tunelab.models.resolve import ModelSource, is_dual_encoder, load_config

logger = logging.getLogger(__name__)


class FeatureCache:
    """Arrays on disk under a content key; writes are atomic so a crash leaves no torn file."""

    def __init__(self, root: Path | None = None):
        self.root = (root or cache_dir()) / "features"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached array, or None; an unreadable entry (empty, torn, foreign) is removed
        so that it is recomputed."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
            meta = json.loads((self.root / f"{key}.json").read_text(encoding="utf-8"))
            if list(array.shape) != list(meta.get("shape", [])):
                raise ValueError(f"shape {list(array.shape)} where {meta.get('shape')} was written")
            return array
        except Exception as exc:  # EOFError for an empty file, ValueError for a torn one, ...
            logger.warning("recomputing an unusable cache entry %s (%s: %s)", path, type(exc).__name__, exc)
            path.unlink(missing_ok=True)
            return None

    def seconds(self, key: str) -> float:
        """How long the entry took to compute (0 for entries made before it was recorded)."""
        try:
            value = json.loads((self.root / f"{key}.json").read_text(encoding="utf-8")).get("seconds", 0.0)
        except (OSError, ValueError, AttributeError):
            return 0.0
        return float(value) if isinstance(value, (int, float)) else 0.0

    def put(self, key: str, array: np.ndarray, meta: dict) -> None:
        """Write to a temporary file, flush it to disk, then rename: a crash leaves the old
        entry or the whole new one, never a torn one."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.root, suffix=".npy.tmp", delete=False) as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        meta_bytes = json.dumps({**meta, "shape": list(array.shape)}, indent=1).encode("utf-8")
        atomic_write_bytes(self.root / f"{key}.json", meta_bytes, own_folder=False)  # a cache may be a link
        os.replace(handle.name, self.path(key))


def _take(inputs, rows: np.ndarray):
    return inputs.subset(rows) if hasattr(inputs, "subset") else [inputs[i] for i in rows]


def cached_features(extractor, inputs, desc: str, cache: FeatureCache | None, rank: int = 0,
                    world: int = 1) -> tuple[np.ndarray | None, bool]:
    """Features for ``inputs`` (texts, sentence pairs, or an image split), from the cache
    when an identical extraction ran before. Returns (features, came_from_cache).

    Under torchrun each process encodes every world-th input and rank 0 gathers
    them; other ranks get None."""
    key = extractor.cache_key(inputs) if cache is not None and rank == 0 else None
    hit = cache.get(key) if key is not None else None
    if hit is not None and hit.shape[0] != len(inputs):
        hit = None
    if broadcast_object(hit is not None, rank, world):
        if rank == 0:
            logger.info("%s: %d feature vectors loaded from cache (%s)", desc, len(inputs), cache.path(key))
            # The pass this run needed, though another run made it: a method's cost counts it.
            extractor.reused_seconds = getattr(extractor, "reused_seconds", 0.0) + cache.seconds(key)
        return (extractor.select(hit) if hit is not None else None), True
    start = time.perf_counter()
    if world > 1:
        rows = shard(len(inputs), rank, world)
        parts = gather_to_zero((rows, extractor.encode_all(_take(inputs, rows), desc=desc)), rank, world)
        if rank != 0:
            return None, False
        features = np.empty((len(inputs), *parts[0][1].shape[1:]), dtype=np.float32)
        for part_rows, part in parts:
            features[part_rows] = part
    else:
        features = extractor.encode_all(inputs, desc=desc)
    if key is not None:
        cache.put(key, features, {**extractor.cache_meta(inputs), "seconds": time.perf_counter() - start})
    return extractor.select(features), False


def pair_features(extractor, inputs, encoding: str, desc: str, cache: FeatureCache | None, rank: int = 0,
                  world: int = 1) -> tuple[np.ndarray | None, bool]:
    """Features of single texts, or of sentence pairs: ``cross`` encodes each pair jointly;
    ``bi`` encodes each text on its own (cached per text list) and combines the two
    vectors u, v into (u, v, |u - v|, u * v), as sentence-transformers' classifiers do."""
    texts, pairs = split_inputs(inputs)
    if pairs is None:
        return cached_features(extractor, texts, desc, cache, rank, world)
    if encoding == "cross":
        return cached_features(extractor, inputs, desc, cache, rank, world)
    u, hit_u = cached_features(extractor, texts, f"{desc} (first texts)", cache, rank, world)
    v, hit_v = cached_features(extractor, pairs, f"{desc} (second texts)", cache, rank, world)
    if u is None:
        return None, hit_u and hit_v
    return combine_pair(u, v), hit_u and hit_v


class ImageFeatureExtractor:
    """Image features decoded lazily in DataLoader workers: CLIP's normalised image
    embeddings, or a vision backbone's pooled hidden states (tunelab.encoders.vision).
    Unreadable images give rows of NaN, so callers can drop and report them."""

    def __init__(self, source: ModelSource, images, batch_size: int, runtime: RuntimeConfig,
                 pooling: str | None = None):
        self.source = source
        self.images = images  # ImageDecodingConfig: workers, strictness
        self.batch_size = batch_size
        self.runtime = runtime
        self.pooling = pooling  # vision backbones: cls | mean | cls+mean; CLIP: None
        self.device = resolve_device(runtime.device)
        self.dtype = resolve_dtype(runtime.precision, self.device)
        self._loaded = None
        self.seconds = 0.0
        self.encoded = 0

    @property
    def loaded(self):
        """(model, processor, kind): kind clip or vision."""
        if self._loaded is None:
            if is_dual_encoder(load_config(self.source)):
                model, _, processor = load_clip(self.source, dtype=self.dtype)
                kind = "clip"
            else:
                model, processor, _ = load_vision_backbone(self.source, dtype=self.dtype)
                kind = "vision"
            self._loaded = (model.to(self.device).eval(), processor, kind)
        return self._loaded

    def load(self) -> None:
        """Load the model now, so that a model that cannot load fails first."""
        self.loaded  # noqa: B018

    def select(self, features: np.ndarray) -> np.ndarray:
        """One vector per image: the pooling is part of the cache key."""
        return features

    def cache_key(self, split) -> str:
        kind = "clip-image" if self.loaded[2] == "clip" else f"vision-{self.pooling}"
        parts = {"version": FEATURE_VERSION, "kind": kind, "model": self.source.fingerprint(),
                 "precision": self.runtime.precision, "images": split.digest(), "n": len(split)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def cache_meta(self, split) -> dict:
        return {"model": self.source.name, "kind": self.loaded[2], "pooling": self.pooling,
                "precision": self.runtime.precision, "n": len(split)}

    def encode_all(self, split, desc: str = "features") -> np.ndarray:
        model, processor, kind = self.loaded
        preprocess = ClipPreprocess.for_device(processor, self.device)
        loader = image_loader(split, preprocess, self.batch_size, self.images.num_workers, self.images.strict)
        start = time.perf_counter()
        if kind == "clip":
            out = None
            for rows, embeddings in embed_loader(model, loader, self.device, self.dtype, desc):
                if out is None:  # CLIP's projection width, SigLIP's hidden size
                    out = np.full((len(split), embeddings.shape[1]), np.nan, dtype=np.float32)
                out[rows] = embeddings.cpu().numpy()
            if out is None:
                out = np.full((len(split), 1), np.nan, dtype=np.float32)
        else:
            out = self._backbone_features(model, preprocess, loader, len(split), desc)
        self.seconds += time.perf_counter() - start
        self.encoded += len(split)
        return out

    def _backbone_features(self, model, preprocess, loader, total: int, desc: str) -> np.ndarray:
        import torch

        out: np.ndarray | None = None
        with torch.inference_mode(), progress(total, desc, "image") as bar:
            for batch in loader:
                rows = batch["rows"].numpy()
                if len(rows):
                    pixels = preprocess.model_input(batch["pixel_values"], self.device, self.dtype)
                    vectors = pool_image(model(pixel_values=pixels), self.pooling or "cls").float().cpu().numpy()
                    if out is None:
                        out = np.full((total, vectors.shape[1]), np.nan, dtype=np.float32)
                    out[rows] = vectors
                bar.update(len(rows) + len(batch["skipped"]))
        return out if out is not None else np.full((total, 1), np.nan, dtype=np.float32)
