"""CLIP's image tower for inference on CPUs, rearranged for speed.

Why not the model's own forward (measured on a 2-core AMD EPYC with AVX-512, ViT-B/16,
`benchmarks/clip_zeroshot.py`):

- Batching alone cannot beat the one-image loop in fp32: linear layers are ~90% of the
  time and PyTorch sends fp32 linears to MKL, which already runs at its ceiling with one
  image (197 tokens) and, on this AMD CPU, takes an AVX2 path (~190 GFLOP/s). oneDNN,
  also inside PyTorch, runs the same GEMMs at 350-470 GFLOP/s. Weights are packed once
  for it here.
- In bf16, PyTorch's CPU flash-attention kernel spends ~11 ms per image on 197 tokens;
  two batched matmuls around a softmax take ~5 ms. (In fp32 the kernel is the faster one.)
- Only the CLS token of the last layer reaches the image embedding, so that layer runs
  its queries, output projection and MLP for the CLS token alone (keys and values still
  see every token). Exact, and 1/12 less work.
- The attention scale is folded into the query weights and QuickGELU into oneDNN's fused
  silu (x * sigmoid(1.702 x) = silu(1.702 x) / 1.702).

The model itself is not touched (it can still be counted, saved or trained); the tower
holds its own packed copies of the linear weights. Where oneDNN's linear op is missing,
the device is not a CPU, or the vision tower is not shaped like CLIP's,
:func:`image_features` falls back to ``model.get_image_features``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache


@lru_cache(maxsize=None)
def onednn_linear_available(dtype_name: str = "float32") -> bool:
    """oneDNN's packed linear runs here, in this dtype, and agrees with ``F.linear`` (a
    CPU without bf16 support raises in bf16: the model's own forward is used then)."""
    import torch

    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
                and hasattr(ops, "_reorder_linear_weight")):
            return False
        dtype = getattr(torch, dtype_name)
        generator = torch.Generator().manual_seed(0)
        x, weight, bias = (torch.randn(*shape, generator=generator).to(dtype) for shape in ((3, 8), (5, 8), (5,)))
        packed = ops._linear_pointwise(x, ops._reorder_linear_weight(weight, 3), bias, "none", [], "")
        return bool(torch.allclose(packed.float(), torch.nn.functional.linear(x, weight, bias).float(),
                                   rtol=2e-2, atol=2e-2))
    except (AttributeError, RuntimeError):
        return False


def image_features(model, device, rows_hint: int = 16) -> Callable:
    """A function from pixel batches to (unnormalised) projected image features:
    the rearranged tower on CPUs, the model's own forward elsewhere."""
    if device.type == "cpu" and _clip_shaped(model) and \
            onednn_linear_available(str(model.visual_projection.weight.dtype).removeprefix("torch.")):
        return CpuImageTower(model, rows_hint)
    return lambda pixels: pooled_output(model.get_image_features(pixel_values=pixels))


def pooled_output(output):
    """get_image_features returns a tensor in some transformers versions, a model output in others."""
    if hasattr(output, "pooler_output") and not hasattr(output, "shape"):
        return output.pooler_output
    return output


def _clip_shaped(model) -> bool:
    """CLIP's layout, in eval mode, every projection a plain Linear (a LoRA-wrapped or
    quantised layer would lose its extra terms if packed from ``.weight``)."""
    import torch

    def has(obj, *names) -> bool:
        return all(hasattr(obj, name) for name in names)

    vision = getattr(model, "vision_model", None)
    layers = list(getattr(getattr(vision, "encoder", None), "layers", None) or [])
    if not (layers and has(vision, "embeddings", "pre_layrnorm", "post_layernorm") and has(model, "visual_projection")
            and all(has(layer, "layer_norm1", "layer_norm2", "self_attn", "mlp") and has(layer.mlp, "fc1", "fc2")
                    and has(layer.self_attn, "q_proj", "k_proj", "v_proj", "out_proj", "scale", "num_heads", "head_dim")
                    for layer in layers)):
        return False
    linears = [model.visual_projection] + [module for layer in layers for module in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
        layer.mlp.fc1, layer.mlp.fc2)]
    return not model.training and all(type(module) is torch.nn.Linear for module in linears)


class _PackedLinear:
    """A linear layer's weights, packed once into oneDNN's blocked layout, optionally
    scaled (``weight_scale`` / ``bias_scale``) and followed by a fused elementwise op."""

    def __init__(self, linear, rows_hint: int, weight_scale: float = 1.0, bias_scale: float = 1.0,
                 post_op: tuple[str, str] = ("none", "")):
        import torch

        weight, bias = linear.weight.detach(), linear.bias
        if weight_scale != 1.0:
            weight = weight * weight_scale
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows_hint)
        self.bias = None if bias is None else (bias.detach() * bias_scale).contiguous()
        self.post_op, self.algorithm = post_op

    def __call__(self, x):
        import torch

        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.post_op, [], self.algorithm)


class _Layer:
    """One pre-norm encoder layer (CLIPEncoderLayer's arithmetic, inference only)."""

    def __init__(self, layer, rows_hint: int):
        attention = layer.self_attn
        self.heads, self.head_dim = attention.num_heads, attention.head_dim
        self.norm1, self.norm2 = layer.layer_norm1, layer.layer_norm2
        scale = float(attention.scale)
        self.query = _PackedLinear(attention.q_proj, rows_hint, weight_scale=scale, bias_scale=scale)
        self.key = _PackedLinear(attention.k_proj, rows_hint)
        self.value = _PackedLinear(attention.v_proj, rows_hint)
        self.out = _PackedLinear(attention.out_proj, rows_hint)
        activation = type(layer.mlp.activation_fn).__name__
        if activation == "QuickGELUActivation":
            # x * sigmoid(1.702 x) = silu(1.702 x) / 1.702: fc1 scaled by 1.702 with oneDNN's
            # fused silu ("swish"), and the 1 / 1.702 folded into fc2's weights.
            self.fc1 = _PackedLinear(layer.mlp.fc1, rows_hint, 1.702, 1.702, post_op=("swish", ""))
            self.fc2 = _PackedLinear(layer.mlp.fc2, rows_hint, weight_scale=1 / 1.702)
            self.activation = None
        else:
            fused = {"GELUActivation": ("gelu", "none"), "PytorchGELUTanh": ("gelu", "tanh"),
                     "GELUTanh": ("gelu", "tanh"), "NewGELUActivation": ("gelu", "tanh")}.get(activation)
            self.fc1 = _PackedLinear(layer.mlp.fc1, rows_hint, post_op=fused or ("none", ""))
            self.fc2 = _PackedLinear(layer.mlp.fc2, rows_hint)
            self.activation = None if fused else layer.mlp.activation_fn

    def split_heads(self, x):
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def __call__(self, hidden, cls_only: bool = False):
        normed = self.norm1(hidden)
        queries = self.split_heads(self.query(normed[:, :1] if cls_only else normed))
        attended = _attend(queries, self.split_heads(self.key(normed)), self.split_heads(self.value(normed)))
        attended = attended.transpose(1, 2).reshape(hidden.shape[0], queries.shape[2], -1)
        hidden = (hidden[:, :1] if cls_only else hidden) + self.out(attended)
        inner = self.fc1(self.norm2(hidden))
        return hidden.add_(self.fc2(self.activation(inner) if self.activation else inner))


def _attend(queries, keys, values):
    """Softmax attention, queries already scaled."""
    import torch

    if queries.dtype == torch.float32:
        return torch.nn.functional.scaled_dot_product_attention(queries, keys, values, scale=1.0)
    weights = torch.matmul(queries, keys.transpose(-1, -2)).softmax(-1)
    return torch.matmul(weights, values)


class CpuImageTower:
    """The projected CLS feature of CLIP's vision tower, computed as the model would."""

    def __init__(self, model, rows_hint: int = 16):
        vision = model.vision_model
        tokens = getattr(vision.embeddings, "num_positions", 197)
        self.embeddings, self.pre_norm, self.post_norm = vision.embeddings, vision.pre_layrnorm, vision.post_layernorm
        self.layers = [_Layer(layer, rows_hint * tokens) for layer in vision.encoder.layers]
        self.projection = _PackedLinear(model.visual_projection, rows_hint)

    def __call__(self, pixels):
        hidden = self.pre_norm(self.embeddings(pixels))
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cls_only=index == last)
        return self.projection(self.post_norm(hidden[:, 0]))
