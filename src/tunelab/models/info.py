"""Parameter counts of a model, with or without LoRA, without loading any weights."""

from __future__ import annotations

import dataclasses

from tunelab.core.errors import ModelError


@dataclasses.dataclass
class ModelInfo:
    model: str
    model_type: str
    total: int
    trainable: int
    lora_targets: list[str] | None = None

    def describe(self) -> str:
        share = 100 * self.trainable / self.total if self.total else 0.0
        lines = [f"model: {self.model} ({self.model_type})",
                 f"total parameters: {self.total:,}",
                 f"trainable parameters: {self.trainable:,} ({share:.3f}%)"]
        if self.lora_targets:
            lines.append(f"LoRA targets: {', '.join(self.lora_targets)}")
        return "\n".join(lines)


def model_info(model: str, random_init: bool = False, lora_r: int | None = None,
               lora_targets: list[str] | None = None, lora_alpha: float = 32.0,
               num_labels: int | None = None) -> ModelInfo:
    """Counts on the meta device: instant, and the same whether weights exist or not.

    CLIP models are counted whole (both towers); text encoders bare, or with a
    classification head of ``num_labels`` classes. With ``lora_r`` the counts are
    those of the LoRA-wrapped model (adapters, and any head, trainable)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, CLIPModel

    from tunelab.models.architectures import arch_config
    from tunelab.models.resolve import load_config, resolve_model

    config = arch_config(model) if random_init else load_config(resolve_model(model))
    model_type = getattr(config, "model_type", "unknown")
    with torch.device("meta"):
        if model_type == "clip":
            network = CLIPModel(config)
        elif num_labels:
            config.num_labels = num_labels
            network = AutoModelForSequenceClassification.from_config(config)
        else:
            network = AutoModel.from_config(config)
        targets = None
        if lora_r:
            from peft import LoraConfig, get_peft_model

            from tunelab.training.config import HEAD_MODULES, default_lora_targets

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
    return ModelInfo(model, model_type, int(total), int(trainable), targets)
