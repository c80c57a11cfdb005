"""Shipped architecture configs of other backbone families (ViT, DINOv2, SigLIP, Qwen2.5):
exact parameter counts with and without LoRA on the meta device, and the training
memory estimate."""

import pytest

from tunelab.cli import main
from tunelab.models.info import model_info


def test_qwen25_as_a_two_label_classifier_and_its_lora_counts():
    plain = model_info("Qwen/Qwen2.5-0.5B", random_init=True, num_labels=2)
    assert plain.total == 494_034_560 and plain.trainable == 494_034_560
    lora = model_info("Qwen/Qwen2.5-0.5B", random_init=True, num_labels=2, lora_r=8, lora_targets=["q_proj", "v_proj"])
    assert lora.trainable == 540_672 + 1_792  # adapters on 24 layers' q and v, and the score head
    assert lora.lora_targets == ["q_proj", "v_proj"]


@pytest.mark.parametrize("model, total", [
    ("google/vit-base-patch16-224", 86_389_248),
    ("facebook/dinov2-small", 22_056_576),
    ("google/siglip-base-patch16-224", 203_155_970),
])
def test_vision_backbone_counts(model, total):
    assert model_info(model, random_init=True).total == total


def test_vit_lora_with_a_head_by_default_targets():
    info = model_info("google/vit-base-patch16-224", random_init=True, num_labels=10, lora_r=8)
    assert info.trainable == 12 * 2 * 8 * (768 + 768) + (768 * 10 + 10)


def test_memory_estimate_adds_up_and_grows_with_the_batch(capsys):
    small = model_info("Qwen/Qwen2.5-0.5B", random_init=True, num_labels=2, batch_size=4, sequence=64)
    large = model_info("Qwen/Qwen2.5-0.5B", random_init=True, num_labels=2, batch_size=16, sequence=64)
    m = small.memory
    assert m.weights == 2 * small.total and m.gradients == 2 * small.total  # bf16, full fine-tuning
    assert m.optimizer == 12 * small.total  # AdamW's two fp32 states and the fp32 master weights
    assert m.total == m.weights + m.gradients + m.optimizer + m.activations
    assert large.memory.activations == 4 * m.activations and large.memory.weights == m.weights
    lora = model_info("Qwen/Qwen2.5-0.5B", random_init=True, num_labels=2, lora_r=8, batch_size=4, sequence=64)
    assert lora.memory.total < m.total / 3  # adapters: almost no gradients or optimizer states
    vit = model_info("google/vit-base-patch16-224", random_init=True, batch_size=8)
    assert vit.memory.sequence == 197  # 14 x 14 patches and the class token
    assert main(["info", "--model", "Qwen/Qwen2.5-0.5B", "--random-init", "--num-labels", "2", "--batch-size", "8",
                 "--seq-len", "64"]) == 0
    assert "training memory, estimated (batch 8 x 64 tokens or patches, bf16)" in capsys.readouterr().out
