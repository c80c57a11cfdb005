"""Parameter counts of a model, with or without LoRA, without loading any weights."""

from __future__ import annotations

import dataclasses

from tunelab.core.errors import ModelError
from tunelab.models.architectures import arch_config
from tunelab.models.resolve import is_dual_encoder, is_vision_backbone, load_config, resolve_model
from tunelab.training.config import HEAD_MODULES, default_lora_targets


@dataclasses.dataclass
class MemoryEstimate:
    """Training memory of one device, in bytes: weights, gradients, AdamW's two fp32
    states, and activations (per layer, s*b*h*(34 + 5*a*s/h) bytes in 16 bits:
    Korthikanti et al., 2022, "Reducing Activation Recomputation in Large Transformer
    Models"; twice that in fp32). An estimate to plan with, not a measurement."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    batch_size: int
    sequence: int
    precision: str

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclasses.dataclass
class ModelInfo:
    model: str
    model_type: str
    total: int
    trainable: int
    lora_targets: list[str] | None = None
    memory: MemoryEstimate | None = None

    def describe(self) -> str:
        share = 100 * self.trainable / self.total if self.total else 0.0
        lines = [f"model: {self.model} ({self.model_type})",
                 f"total parameters: {self.total:,}",
                 f"trainable parameters: {self.trainable:,} ({share:.3f}%)"]
        if self.lora_targets:
            lines.append(f"LoRA targets: {', '.join(self.lora_targets)}")
        if self.memory is not None:
            m = self.memory
            gib = 1024 ** 3
            lines.append(f"training memory, estimated (batch {m.batch_size} x {m.sequence} tokens or patches, "
                         f"{m.precision}): {m.total / gib:.2f} GiB = weights {m.weights / gib:.2f} + gradients "
                         f"{m.gradients / gib:.2f} + AdamW states {m.optimizer / gib:.2f} + activations "
                         f"{m.activations / gib:.2f}")
        return "\n".join(lines)


def estimate_memory(config, total: int, trainable: int, batch_size: int, sequence: int,
                    precision: str) -> MemoryEstimate:
    """See MemoryEstimate. Weights in the training precision (bf16/fp16 models keep fp32
    master weights only for what trains: counted with the optimizer); vision models count
    their patches as the sequence."""
    width = 2 if precision in ("bf16", "fp16") else 4
    text = getattr(config, "text_config", None)
    vision = getattr(config, "vision_config", None)
    towers = [c for c in (text, vision) if c is not None] or [config]
    activations, longest = 0, 0
    for tower in towers:
        hidden = getattr(tower, "hidden_size", None) or getattr(tower, "dim", 0)
        layers = getattr(tower, "num_hidden_layers", None) or getattr(tower, "n_layers", 0)
        heads = getattr(tower, "num_attention_heads", None) or getattr(tower, "n_heads", 1)
        length = sequence
        if getattr(tower, "image_size", None) and getattr(tower, "patch_size", None):
            length = (int(tower.image_size) // int(tower.patch_size)) ** 2 + 1
        longest = max(longest, length)
        per_layer = length * batch_size * hidden * (34 + 5 * heads * length / max(hidden, 1))
        activations += int(layers * per_layer * width / 2)
    master = 4 * trainable if width == 2 else 0  # fp32 copies of the trained weights under mixed precision
    return MemoryEstimate(weights=width * total, gradients=width * trainable, optimizer=8 * trainable + master,
                          activations=activations, batch_size=batch_size, sequence=longest, precision=precision)


def model_info(model: str, random_init: bool = False, lora_r: int | None = None,
               lora_targets: list[str] | None = None, lora_alpha: float = 32.0,
               num_labels: int | None = None, batch_size: int | None = None, sequence: int = 128,
               precision: str = "bf16") -> ModelInfo:
    """Counts on the meta device: instant, and the same whether weights exist or not.

    CLIP and SigLIP models are counted whole (both towers); text encoders, decoders and
    vision backbones bare, or with a classification head of ``num_labels`` classes. With
    ``lora_r`` the counts are those of the LoRA-wrapped model (adapters, and any head,
    trainable). With ``batch_size``, training memory is estimated too."""
    import torch
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification

    config = arch_config(model) if random_init else load_config(resolve_model(model))
    model_type = getattr(config, "model_type", "unknown")
    with torch.device("meta"):
        if is_dual_encoder(config):
            network = AutoModel.from_config(config)  # CLIP, SigLIP: both towers
        elif num_labels:
            config.num_labels = num_labels
            if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
                config.pad_token_id = config.eos_token_id  # a decoder classifies its last real token
            head = AutoModelForImageClassification if is_vision_backbone(config) \
                else AutoModelForSequenceClassification
            network = head.from_config(config)
        else:
            network = AutoModel.from_config(config)
        targets = None
        if lora_r:
            from peft import LoraConfig, get_peft_model

            targets = list(lora_targets or default_lora_targets(model_type) or [])
            if not targets:
                raise ModelError(f"no default LoRA targets for '{model_type}'; pass --lora-targets")
            heads = [n for n in HEAD_MODULES if hasattr(network, n)] if num_labels else None
            try:
                network = get_peft_model(network, LoraConfig(r=lora_r, lora_alpha=lora_alpha,
                                                             target_modules=targets, modules_to_save=heads))
            except ValueError as exc:
                raise ModelError(f"LoRA targets {targets} do not fit this model: {str(exc).splitlines()[0]}") from None
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    memory = estimate_memory(config, int(total), int(trainable), batch_size, sequence, precision) \
        if batch_size else None
    return ModelInfo(model, model_type, int(total), int(trainable), targets, memory)
