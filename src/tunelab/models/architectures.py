"""Architecture configs shipped with tunelab, so that real-size models can be built
with random weights and no network: for parameter counts and speed benchmarks."""

from __future__ import annotations

import json
from importlib import resources

from tunelab.core.errors import ModelError

ARCH_PACKAGE = "tunelab.archs"
# The CLIP preprocessing constants (OpenAI's image mean and std).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _shipped() -> dict[str, dict]:
    """Hub name -> its config values, from the files in tunelab/archs (each names itself)."""
    found = {}
    for path in resources.files(ARCH_PACKAGE).iterdir():
        if path.name.endswith(".json"):
            values = json.loads(path.read_text(encoding="utf-8"))
            found[values.pop("name")] = values
    return found


def arch_config(model: str):
    """The transformers config of a shipped architecture (``distilbert-base-uncased``,
    ``openai/clip-vit-base-patch16``, ``google/vit-base-patch16-224``,
    ``facebook/dinov2-small``, ``google/siglip-base-patch16-224``, ``Qwen/Qwen2.5-0.5B``)."""
    from transformers import AutoConfig

    shipped = _shipped()
    if model not in shipped:
        raise ModelError(
            f"--random-init knows the architectures {', '.join(sorted(shipped))}; "
            f"for '{model}' pass a local directory"
        )
    values = dict(shipped[model])
    model_type = values.pop("model_type")
    values.pop("architectures", None)
    return AutoConfig.for_model(model_type, **values)


def char_clip_tokenizer(model_max_length: int = 77):
    """A byte-level CLIP tokenizer with no merges: each character a token. Stands in
    for the real 49k-entry BPE vocabulary, which needs the hub, in random-init models."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (the GPT-2 mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def clip_image_processor(image_size: int = 224):
    """OpenAI CLIP preprocessing: shortest side to ``image_size`` (bicubic), centre crop, normalise."""
    try:  # the PIL implementation; the default one wants torchvision
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
