"""The rearranged CPU image tower computes what CLIP's own forward computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tunelab.encoders import cpu_tower as cpu_inference  # noqa: E402
from tunelab.encoders.cpu_tower import CpuImageTower, image_features, pooled_output  # noqa: E402

pytestmark = pytest.mark.skipif(not cpu_inference.onednn_linear_available(), reason="no oneDNN linear op")


def small_clip(hidden_act: str = "quick_gelu", layers: int = 3, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act=hidden_act),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def reference(model, pixels):
    with torch.inference_mode():
        return pooled_output(model.get_image_features(pixel_values=pixels)).float()


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu", "gelu_new", "relu"])
@pytest.mark.parametrize("batch", [1, 5])
def test_tower_matches_the_model_in_fp32(hidden_act, batch):
    model = small_clip(hidden_act)
    pixels = torch.randn(batch, 3, 32, 32)
    with torch.inference_mode():
        fast = CpuImageTower(model, rows_hint=2)(pixels)
    expected = reference(model, pixels)
    assert fast.shape == expected.shape == (batch, 16)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not cpu_inference.onednn_linear_available("bfloat16"),
                    reason="this CPU has no oneDNN bf16 linear (image_features falls back to the model's forward)")
def test_tower_matches_the_model_in_bf16():
    model = small_clip().to(torch.bfloat16)
    pixels = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        fast = CpuImageTower(model)(pixels.to(torch.bfloat16)).float()
    expected = reference(model.float(), pixels)
    cosine = torch.nn.functional.cosine_similarity(fast, expected)
    assert cosine.min() > 0.99


def test_tower_leaves_the_model_alone():
    model = small_clip()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    CpuImageTower(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(type(m) is not cpu_inference._PackedLinear for m in model.modules())


def test_falls_back_where_the_tower_would_be_wrong():
    cpu = torch.device("cpu")
    model = small_clip()
    assert isinstance(image_features(model, cpu), CpuImageTower)
    model.train()
    assert not isinstance(image_features(model, cpu), CpuImageTower)  # dropout, gradients
    model.eval()

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(small_clip(), lora)
    wrapped.eval()
    encode = image_features(wrapped, cpu)
    assert not isinstance(encode, CpuImageTower)  # packing .weight would drop the adapters
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(encode(pixels).float(), reference(wrapped, pixels))
        # the adapters change the features (same seed, same base weights), so a packed copy would be wrong
        assert not torch.allclose(reference(wrapped, pixels), reference(small_clip(), pixels), atol=1e-3)


def test_falls_back_without_onednn(monkeypatch):
    model = small_clip()
    monkeypatch.setattr(cpu_inference, "onednn_linear_available", lambda dtype_name="float32": False)
    encode = image_features(model, torch.device("cpu"))
    assert not isinstance(encode, CpuImageTower)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(encode(pixels).float(), reference(model, pixels))


def test_real_size_vit_b16_matches():
    from transformers import CLIPModel

    from tunelab.models.architectures import arch_config

    torch.manual_seed(0)
    model = CLIPModel(arch_config("openai/clip-vit-base-patch16")).eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        fast = CpuImageTower(model)(pixels)
    torch.testing.assert_close(fast, reference(model, pixels), rtol=1e-4, atol=1e-4)
