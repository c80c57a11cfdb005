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


# --------------------------------------------------------------------------- vision backbones in the probe


def save_tiny_backbone(folder, family: str):
    """A 2-layer random backbone of ``family`` on 32x32 images, with its PIL image processor."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if family == "vit":
        config = tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              image_size=32, patch_size=8)
        processor = tf.ViTImageProcessorPil(size={"height": 32, "width": 32})
    elif family == "dinov2":
        config = tf.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                 image_size=32, patch_size=8)
        processor = tf.BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        config = tf.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                   image_size=32)
        processor = tf.ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=1.0)
    tf.AutoModel.from_config(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family, pooling, width", [("vit", "cls", 32), ("vit", "mean", 32),
                                                    ("dinov2", None, 64), ("convnext", None, 16)])
def test_a_probe_on_any_vision_backbone(tmp_path, colour_folder, family, pooling, width):
    import json

    model = save_tiny_backbone(tmp_path / family, family)
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(model), "--dataset", str(colour_folder), "--out", str(out),
                 "--classifier", "logreg", "--precision", "fp32", "--set", "images.num_workers=0",
                 *(["--pooling", pooling] if pooling else [])]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    features = metrics["task"]["features"]
    assert features["dim"] == width  # DINOv2: class token and patch mean side by side
    assert features["pooling"] == (pooling or ("cls+mean" if family == "dinov2" else "cls"))
    assert metrics["splits"]["test"]["accuracy"] > 1 / 3  # colours are easy even for random features
    assert metrics["params"]["trainable"] == 0


def test_a_text_model_on_images_stops_in_one_line(tmp_path, colour_folder, tiny_bert_dir, capsys):
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(colour_folder), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "image data needs a vision backbone" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- decoders for text


def save_tiny_decoder(folder):
    """A 2-layer random Qwen2 with a word-level tokenizer that has no pad token (as
    decoders' tokenizers often have none)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from tests.conftest import tiny_vocab

    vocab = {**tiny_vocab(), "<|endoftext|>": len(tiny_vocab())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]",
                                        eos_token="<|endoftext|>", model_max_length=128)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         eos_token_id=vocab["<|endoftext|>"], bos_token_id=None, pad_token_id=None,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def test_a_decoder_fine_tunes_with_lora_predicts_and_loads_in_pipeline(tmp_path):
    import csv
    import json

    from transformers import pipeline

    from tests.conftest import write_topic_splits

    model = save_tiny_decoder(tmp_path / "qwen")
    data = write_topic_splits(tmp_path / "topics", 24, 8, 8)
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(model), "--dataset", str(data), "--out", str(out), "--method", "lora",
                 "--max-steps", "20", "--eval-every", "10", "--batch-size", "8", "--lr", "5e-3",
                 "--precision", "fp32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["trainable"] < metrics["params"]["total"] / 4  # adapters on q_proj, v_proj and the head
    rows = list(csv.DictReader(open(out / "predictions" / "test.csv", newline="")))
    classify = pipeline("text-classification", model=str(out / "model"))
    assert {r["label"] for r in classify([r["text"] for r in rows])} <= set(metrics["data"]["class_names"])
    import tunelab

    served = tunelab.load_predictor(out)([r["text"] for r in rows])
    assert [p.label for p in served] == [r["prediction"] for r in rows]


def test_a_decoder_probe_reads_the_last_token(tmp_path):
    import json

    from tests.conftest import write_topic_splits

    model = save_tiny_decoder(tmp_path / "qwen")
    data = write_topic_splits(tmp_path / "topics", 24, 8, 8)
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(model), "--dataset", str(data), "--out", str(out), "--classifier",
                 "logreg", "--precision", "fp32"]) == 0
    assert json.loads((out / "metrics.json").read_text())["task"]["features"]["pooling"] == "last"


def test_a_tokenizer_with_no_way_to_pad_stops_in_one_line():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tunelab.core.errors import ModelError
    from tunelab.encoders.text import ensure_padding

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab={"a": 0, "[UNK]": 1},
                                                                                 unk_token="[UNK]")))
    with pytest.raises(ModelError, match="has no way to pad a batch"):
        ensure_padding(bare, "bare")
    bare.eos_token = "a"
    assert ensure_padding(bare, "bare").pad_token == "a"


def test_pooling_last_takes_the_last_kept_token():
    import torch

    from tunelab.encoders.text import pool

    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
