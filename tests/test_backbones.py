"""Shipped architecture configs of other backbone families (ViT, DINOv2, SigLIP, Qwen2.5):
exact parameter counts with and without LoRA on the meta device, and the training
memory estimate."""

import pytest

from tunelab.cli import main
from tunelab.training.info import model_info


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


def save_tiny_decoder(folder, context: int = 128):
    """A 2-layer random Qwen2 with a word-level tokenizer that has no pad token (as
    decoders' tokenizers often have none), reading ``context`` tokens."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from tests.conftest import tiny_vocab

    vocab = {**tiny_vocab(), "<|endoftext|>": len(tiny_vocab())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]",
                                        eos_token="<|endoftext|>", model_max_length=context)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
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


# --------------------------------------------------------------------------- fine-tuning on images, SigLIP


def _backbone(tmp_path, family, tiny_siglip_dir):
    return tiny_siglip_dir if family == "siglip" else save_tiny_backbone(tmp_path / family, family)


@pytest.mark.parametrize("family, method", [("vit", "full"), ("dinov2", "lora"), ("convnext", "lora"),
                                            ("siglip", "lora")])
def test_image_fine_tuning_on_any_vision_backbone(tmp_path, colour_folder, tiny_siglip_dir, family, method):
    import json

    from transformers import pipeline

    import tunelab
    from tests.conftest import rows_of

    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(_backbone(tmp_path, family, tiny_siglip_dir)), "--dataset",
                 str(colour_folder), "--out", str(out), "--method", method, "--max-steps", "12", "--eval-every", "6",
                 "--batch-size", "8", "--lr", "1e-3", "--precision", "fp32", "--set", "images.num_workers=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    params = metrics["params"]
    assert (params["trainable"] < params["total"] / 2) if method == "lora" else params["trainable"] == params["total"]
    assert metrics["task"]["inputs"] == "images" and metrics["splits"]["test"]["n"] == 24
    assert (out / "model" / "adapter" / "adapter_config.json").is_file() == (method == "lora")
    rows = rows_of(out / "predictions" / "test.csv")
    files = [str(colour_folder / r["file"]) for r in rows]
    served = tunelab.load_predictor(out)(files)
    assert [p.label for p in served] == [r["prediction"] for r in rows]
    # model/ alone, in plain transformers: the same labels, by name, and the same probabilities
    classify = pipeline("image-classification", model=str(out / "model"))
    best = [result[0] for result in classify(files[:6])]
    assert [b["label"] for b in best] == [p.label for p in served[:6]]
    assert [b["score"] for b in best] == pytest.approx([p.score for p in served[:6]], abs=1e-4)


def test_image_fine_tuning_refuses_a_text_model_in_one_line(tmp_path, colour_folder, tiny_bert_dir, capsys):
    assert main(["finetune", "--model", str(tiny_bert_dir), "--dataset", str(colour_folder), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fine-tuning on images needs a vision backbone" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_an_image_probe_predicts_as_its_predictions_file(tmp_path, colour_folder):
    import tunelab
    from tests.conftest import rows_of

    out = tmp_path / "probe"
    assert main(["probe", "--model", str(save_tiny_backbone(tmp_path / "vit", "vit")), "--dataset",
                 str(colour_folder), "--out", str(out), "--classifier", "logreg", "--precision", "fp32",
                 "--set", "images.num_workers=0"]) == 0
    rows = rows_of(out / "predictions" / "test.csv")
    served = tunelab.load_predictor(out)([str(colour_folder / r["file"]) for r in rows])
    assert [p.label for p in served] == [r["prediction"] for r in rows]
    assert [p.score for p in served] == pytest.approx([float(r["probability"]) for r in rows], abs=1e-5)


def test_siglip_zero_shot_scores_each_class_with_its_own_sigmoid(tmp_path, colour_folder, tiny_siglip_dir):
    import json

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    import tunelab
    from tests.conftest import rows_of

    out = tmp_path / "zs"
    assert main(["zeroshot", "--model", str(tiny_siglip_dir), "--dataset", str(colour_folder), "--out", str(out),
                 "--precision", "fp32", "--set", "images.num_workers=0"]) == 0
    assert json.loads((out / "metrics.json").read_text())["task"]["scores"] == "sigmoid"
    rows = rows_of(out / "predictions" / "test.csv")
    # Recomputed with plain transformers: SigLIP's logits_per_image, prompts padded to full length.
    model = AutoModel.from_pretrained(tiny_siglip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_siglip_dir)
    processor = AutoImageProcessor.from_pretrained(tiny_siglip_dir)
    names = ["blue", "green", "red"]
    prompts = tokenizer([f"a photo of a {n}" for n in names], padding="max_length", max_length=24,
                        return_tensors="pt")
    files = [colour_folder / r["file"] for r in rows[:5]]
    pixels = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        logits = model(input_ids=prompts["input_ids"], pixel_values=pixels).logits_per_image.numpy()
    assert [r["prediction"] for r in rows[:5]] == [names[i] for i in logits.argmax(1)]
    table = [[float(r[f"similarity_{n}"]) for n in names] for r in rows[:5]]
    assert np.asarray(table) == pytest.approx(logits, abs=1e-4)
    served = tunelab.load_predictor(out)([str(f) for f in files])
    assert [p.label for p in served] == [r["prediction"] for r in rows[:5]]
    assert np.isfinite([p.score for p in served]).all()


def test_siglip_zero_shot_on_label_sets_and_clip_refusing_them(tmp_path, tiny_siglip_dir, tiny_clip_dir, capsys):
    import json

    import tunelab
    from tests.conftest import rows_of
    from tests.test_images import write_image_table

    root = write_image_table(tmp_path / "table")
    out = tmp_path / "zs"
    assert main(["zeroshot", "--model", str(tiny_siglip_dir), "--dataset", str(root), "--label-separator", ";",
                 "--threshold", "tune", "--out", str(out), "--precision", "fp32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["problem"] == "multi-label" and metrics["task"]["threshold"]["tuned"] is True
    assert metrics["data"]["labels_seen"] == 3  # the threshold was chosen there
    rows = rows_of(out / "predictions" / "test.csv")
    served = tunelab.load_predictor(out)([str(root / r["file"]) for r in rows])
    assert ["; ".join(p.labels) for p in served] == [r["prediction"] for r in rows]
    capsys.readouterr()
    assert main(["zeroshot", "--model", str(tiny_clip_dir), "--dataset", str(root), "--label-separator", ";",
                 "--out", str(tmp_path / "clip")]) == 2
    err = capsys.readouterr().err.strip()
    assert "use a SigLIP model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "clip").exists()


def test_image_text_finetune_is_clip_finetune_for_siglip_too(tmp_path, colour_folder, tiny_siglip_dir):
    import json

    import torch

    from tunelab.data.image_pipeline import ClipPreprocess
    from tunelab.problems import get_problem
    from tunelab.tasks.clip_finetune import ClipLoss

    out = tmp_path / "itf"
    assert main(["image-text-finetune", "--model", str(tiny_siglip_dir), "--dataset", str(colour_folder), "--out",
                 str(out), "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--precision", "fp32",
                 "--set", "images.num_workers=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["command"] == "clip-finetune" and 0 < metrics["params"]["trainable"] < metrics["params"]["total"]
    # SigLIP's contrastive loss is its sigmoid loss: what SiglipModel computes itself with return_loss.
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(tiny_siglip_dir)
    prompts = {"input_ids": torch.randint(0, 100, (3, 24))}
    pixels = torch.rand(3, 3, 32, 32)
    loss = ClipLoss("contrastive", prompts, ClipPreprocess(AutoImageProcessor.from_pretrained(tiny_siglip_dir)),
                    get_problem("single-label"), sigmoid=True)(model, pixels, torch.arange(3))
    reference = model(input_ids=prompts["input_ids"], pixel_values=pixels, return_loss=True).loss
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)


# --------------------------------------------------------------------------- decoders: likelihood zero-shot, pairs


def write_pair_splits(folder):
    """Pairs of topic texts, labelled same (1) or different (0)."""
    import random

    from tests.conftest import topic_rows, write_csv

    for name, n, seed in (("train", 16, 1), ("validation", 6, 2), ("test", 6, 3)):
        rng = random.Random(seed)
        rows = topic_rows(n, seed)
        pairs = [(a, b, int(la == lb)) for (a, la), (b, lb) in zip(rows, rng.sample(rows, len(rows)))]
        write_csv(folder / f"{name}.csv", pairs, header=("text", "text_pair", "label"))
    return folder


def test_label_scores_are_the_models_own_log_probabilities(tmp_path):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.encoders.decoder import label_scores

    folder = save_tiny_decoder(tmp_path / "qwen")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    contexts = ["the film", "a good story with the dog and", "cat"]
    continuations = ["music", "science sport", "blue"]
    scores = label_scores(model, tokenizer, contexts, continuations, batch_size=2, device=torch.device("cpu"))
    for row, context in enumerate(contexts):
        for column, continuation in enumerate(continuations):
            first = tokenizer(context)["input_ids"]
            second = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                log_probs = torch.log_softmax(model(torch.tensor([first + second])).logits[0], -1)
            expected = np.mean([float(log_probs[len(first) - 1 + i, token]) for i, token in enumerate(second)])
            assert scores[row, column] == pytest.approx(expected, abs=1e-5)  # padding in a batch changes nothing
    # (this tokenizer reads characters: "music" is 5 tokens, so 7 keeps the context's last two, "th")
    cut = label_scores(model, tokenizer, ["the film story with"], ["music"], 1, torch.device("cpu"), max_length=7)
    whole = label_scores(model, tokenizer, ["th"], ["music"], 1, torch.device("cpu"))
    assert cut == pytest.approx(whole, abs=1e-5)  # a long context loses its start


def test_likelihood_zero_shot_with_in_context_examples(tmp_path):
    import json

    import tunelab
    from tests.conftest import rows_of, write_topic_splits

    model = save_tiny_decoder(tmp_path / "qwen", context=1024)  # characters are tokens here: 6 examples, ~250
    data = write_topic_splits(tmp_path / "topics", 24, 8, 8)
    out = tmp_path / "zs"
    assert main(["zeroshot", "--model", str(model), "--dataset", str(data), "--zeroshot-method", "likelihood",
                 "--in-context", "2", "--out", str(out), "--precision", "fp32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    examples = metrics["task"]["text"]["examples"]
    assert len(examples) == 6 and sorted(e["label"] for e in examples) == ["music"] * 2 + ["science"] * 2 + \
        ["sport"] * 2
    train = {r["text"]: r["label"] for r in rows_of(data / "train.csv")}
    assert all(train[e["text"]] == e["label"] for e in examples)  # drawn from train, with their labels
    assert metrics["data"]["labels_seen"] == 6
    rows = rows_of(out / "predictions" / "test.csv")
    served = tunelab.load_predictor(out)([r["text"] for r in rows])
    assert [p.label for p in served] == [r["prediction"] for r in rows]
    assert sum(float(rows[0][f"probability_{n}"]) for n in ("music", "science", "sport")) == pytest.approx(1, abs=1e-5)


def test_likelihood_prompts_hold_the_examples_and_use_a_chat_template():
    from tunelab.tasks.likelihood import likelihood_prompts

    class Plain:
        chat_template = None

    examples = [{"text": "goal goal", "label": "sport", "answer": "sport"}]
    context, suffix, space = likelihood_prompts(Plain(), "song song", "tune", "Label: {}", examples, ["music", "sport"])
    assert context == ("Classify the text. Labels: music, sport.\n\nText: goal goal\nLabel: sport\n\n"
                       "Text: song song\nSecond text: tune\nLabel:") and space == " " and suffix == ""

    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return f"<user>{messages[0]['content']}</user><assistant>"

    context, _, _ = likelihood_prompts(Chat(), "song song", None, "Label: {}", [], ["music", "sport"])
    assert context == "<user>Classify the text. Labels: music, sport.\n\nText: song song</user><assistant>Label:"


def test_a_decoder_on_sentence_pairs(tmp_path):
    import json

    import tunelab

    model = save_tiny_decoder(tmp_path / "qwen")
    data = write_pair_splits(tmp_path / "pairs")
    common = ["--model", str(model), "--dataset", str(data), "--text-pair-column", "text_pair", "--precision", "fp32"]
    runs = {"finetune": ["--method", "lora", "--max-steps", "6", "--eval-every", "3", "--batch-size", "8",
                         "--pair-encoding", "cross"],
            "probe": ["--classifier", "logreg"],
            "zeroshot": ["--zeroshot-method", "likelihood", "--in-context", "1", "--label-names", "different,same"]}
    for command, flags in runs.items():
        out = tmp_path / command
        assert main([command, *common, *flags, "--out", str(out)]) == 0, command
        assert json.loads((out / "metrics.json").read_text())["splits"]["test"]["n"] == 18
        served = tunelab.load_predictor(out)([("ball goal", "goal ball"), ("song tune", "paint brush")])
        assert len(served) == 2 and {p.label for p in served} <= {"0", "1"}, command


def test_likelihood_needs_a_decoder_and_in_context_needs_likelihood(tmp_path, tiny_bert_dir, capsys):
    from tests.conftest import write_topic_splits

    data = write_topic_splits(tmp_path / "topics", 4, 2, 2)
    for flags, message in ((["--model", str(tiny_bert_dir), "--zeroshot-method", "likelihood"],
                            "likelihood needs a decoder language model"),
                           (["--model", str(tiny_bert_dir), "--in-context", "2"], "--in-context puts labelled")):
        capsys.readouterr()
        assert main(["zeroshot", "--dataset", str(data), *flags, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "x").exists()


def test_an_image_classifier_exports_to_onnx_and_serves_the_same_labels(tmp_path, colour_folder):
    import json

    import tunelab
    from tests.conftest import rows_of

    pytest.importorskip("onnxruntime")
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(save_tiny_backbone(tmp_path / "vit", "vit")), "--dataset",
                 str(colour_folder), "--out", str(out), "--method", "lora", "--max-steps", "8", "--eval-every", "4",
                 "--batch-size", "8", "--lr", "1e-3", "--precision", "fp32", "--set", "images.num_workers=0"]) == 0
    assert main(["export", str(out), "--format", "onnx", "--quantize", "int8"]) == 0
    record = json.loads((out / "onnx" / "export.json").read_text())
    assert record["input_kind"] == "images" and record["checked_examples"] == 24
    assert record["max_abs_output_difference"] <= 1e-4 and record["agreement_with_run_predictions"] == 1.0
    rows = rows_of(out / "predictions" / "test.csv")
    files = [str(colour_folder / r["file"]) for r in rows]
    torch_served = tunelab.load_predictor(out)(files)
    onnx_served = tunelab.load_predictor(out, backend="onnx")(files)
    assert [p.label for p in onnx_served] == [p.label for p in torch_served]
    assert [p.score for p in onnx_served] == pytest.approx([p.score for p in torch_served], abs=1e-5)


def test_load_in_4bit_stops_in_one_line_where_it_cannot_work(tmp_path, capsys):
    import dataclasses

    from tests.conftest import write_topic_splits
    from tunelab.tasks.finetune import FinetuneConfig
    from tunelab.training.text import quantization_kwargs

    model = save_tiny_decoder(tmp_path / "qwen")
    data = write_topic_splits(tmp_path / "topics", 4, 2, 2)
    for flags, message in ((["--method", "lora", "--device", "cpu"], "--load-in-4bit needs a CUDA GPU"),
                           (["--method", "full"], "add --method lora (QLoRA)")):
        capsys.readouterr()
        assert main(["finetune", "--model", str(model), "--dataset", str(data), "--load-in-4bit", *flags,
                     "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "x").exists()
    # What a GPU run would load with: QLoRA's NF4 with double quantisation and bf16 compute.
    config = dataclasses.replace(FinetuneConfig(), load_in_4bit=True)
    quantization = quantization_kwargs(config)["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant and str(quantization.bnb_4bit_compute_dtype) == "torch.bfloat16"
    assert quantization_kwargs(FinetuneConfig()) == {}


# --------------------------------------------------------------------------- studies over backbones


def test_a_study_over_backbones_of_every_family_puts_them_on_one_front(tmp_path, colour_folder, tiny_clip_dir,
                                                                       tiny_siglip_dir, tiny_bert_dir):
    import yaml

    from tests.conftest import write_topic_splits

    vit = save_tiny_backbone(tmp_path / "vit", "vit")
    images = {"name": "image-backbones", "settings": {"data.dataset": str(colour_folder), "runtime.precision": "fp32",
                                                       "images.num_workers": 0},
              "steps": [{"name": "probe", "command": "probe", "classifier": {"kind": "logreg"},
                         "matrix": {"model": [str(tiny_clip_dir), str(tiny_siglip_dir), str(vit)]}},
                        {"name": "lora", "command": "finetune", "train": {"method": "lora", "max_steps": 6,
                                                                          "eval_every": 3, "batch_size": 8},
                         "matrix": {"model": [str(tiny_siglip_dir), str(vit)]}}]}
    (tmp_path / "images.yaml").write_text(yaml.safe_dump(images))
    assert main(["run", str(tmp_path / "images.yaml"), "--out", str(tmp_path / "images")]) == 0
    text = (tmp_path / "images" / "report.md").read_text()
    cost = text[text.index("## Cost"):].split("\n## ")[0]
    table = [line for line in cost.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == 5 and all(str(m) in cost for m in (tiny_clip_dir, tiny_siglip_dir, vit))
    assert "| lora-modelvit |" in cost  # groups named as their runs, by the model folder's name
    assert any(line.split(" | ")[1] == "\u2605" for line in table)  # at least one group is on the joint front
    assert (tmp_path / "images" / "report_files" / "cost.png").is_file()
    decoder = save_tiny_decoder(tmp_path / "qwen")
    texts = {"name": "text-backbones", "settings": {"data": {"dataset": str(write_topic_splits(tmp_path / "t", 12, 4,
                                                                                                4))},
                                                     "runtime.precision": "fp32"},
             "steps": [{"name": "lora", "command": "finetune", "train": {"method": "lora", "max_steps": 4,
                                                                         "eval_every": 2, "batch_size": 8},
                        "matrix": {"model": [str(tiny_bert_dir), str(decoder)]}}]}
    (tmp_path / "texts.yaml").write_text(yaml.safe_dump(texts))
    assert main(["run", str(tmp_path / "texts.yaml"), "--out", str(tmp_path / "texts")]) == 0
    assert str(decoder) in (tmp_path / "texts" / "report.md").read_text()


def test_a_shared_setting_no_command_has_is_one_line(tmp_path, capsys):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "settings": {"dataset": "x"},
                                    "steps": [{"name": "p", "command": "probe"}]}))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "settings key 'dataset' is a setting of no command; did you mean data.dataset" in err, err


def test_pareto_optimal_over_several_costs():
    from tunelab.analysis.comparisons import pareto_optimal

    costs = [(1, 10, 5), (2, 10, 5), (1, 10, 5), (3, 1, 1)]
    scores = [0.8, 0.9, 0.7, 0.6]
    # the second costs more time but scores more; the third is beaten by the first at equal cost;
    # the fourth is the cheapest in parameters and memory
    assert pareto_optimal(costs, scores) == [True, True, False, True]


@pytest.mark.parametrize("command, family, flags", [
    ("probe", "vit", ["--classifier", "logreg"]), ("probe", "siglip", ["--classifier", "logreg"]),
    ("probe", "clip", ["--classifier", "logreg"]), ("zeroshot", "siglip", []), ("zeroshot", "clip", []),
    ("clip-finetune", "siglip", ["--max-steps", "4", "--eval-every", "2", "--batch-size", "8"]),
    ("finetune", "dinov2", ["--method", "lora", "--max-steps", "4", "--eval-every", "2", "--batch-size", "8"]),
    ("finetune", "convnext", ["--max-steps", "4", "--eval-every", "2", "--batch-size", "8"]),
    ("finetune", "siglip", ["--method", "lora", "--max-steps", "4", "--eval-every", "2", "--batch-size", "8"]),
])
def test_every_image_run_exports_to_onnx_and_serves_as_pytorch(tmp_path, colour_folder, tiny_clip_dir,
                                                               tiny_siglip_dir, command, family, flags):
    import json

    import tunelab
    from tests.conftest import rows_of

    pytest.importorskip("onnxruntime")
    model = {"clip": tiny_clip_dir, "siglip": tiny_siglip_dir}.get(family) or \
        save_tiny_backbone(tmp_path / family, family)
    out = tmp_path / "run"
    assert main([command, "--model", str(model), "--dataset", str(colour_folder), "--out", str(out), *flags,
                 "--precision", "fp32", "--set", "images.num_workers=0"]) == 0
    assert main(["export", str(out), "--format", "onnx"]) == 0
    record = json.loads((out / "onnx" / "export.json").read_text())
    assert record["input_kind"] == "images" and record["agreement_with_run_predictions"] == 1.0
    files = [str(colour_folder / r["file"]) for r in rows_of(out / "predictions" / "test.csv")[::4]]
    torch_served = tunelab.load_predictor(out)(files)
    onnx_served = tunelab.load_predictor(out, backend="onnx")(files)
    assert [p.label for p in onnx_served] == [p.label for p in torch_served]
    assert [p.score for p in onnx_served] == pytest.approx([p.score for p in torch_served], abs=1e-4)


def test_image_fine_tuning_on_label_sets(tmp_path):
    import json

    import tunelab
    from tests.conftest import rows_of
    from tests.test_images import write_image_table

    root = write_image_table(tmp_path / "table")
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(save_tiny_backbone(tmp_path / "vit", "vit")), "--dataset", str(root),
                 "--label-separator", ";", "--threshold", "tune", "--out", str(out), "--max-steps", "8",
                 "--eval-every", "4", "--batch-size", "4", "--lr", "1e-3", "--precision", "fp32",
                 "--set", "images.num_workers=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["problem"] == "multi-label" and metrics["task"]["threshold"]["tuned"] is True
    assert "f1_micro" in metrics["splits"]["test"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert list(config["id2label"].values()) == ["blue", "green", "red", "warm"]
    rows = rows_of(out / "predictions" / "test.csv")
    served = tunelab.load_predictor(out)([str(root / r["file"]) for r in rows])
    assert ["; ".join(p.labels) for p in served] == [r["prediction"] for r in rows]


def test_siglip_fine_tunes_on_label_sets_with_a_sigmoid_per_label(tmp_path, tiny_siglip_dir):
    import json

    import tunelab
    from tests.conftest import rows_of
    from tests.test_images import write_image_table

    root = write_image_table(tmp_path / "table")
    out = tmp_path / "cf"
    assert main(["image-text-finetune", "--model", str(tiny_siglip_dir), "--dataset", str(root),
                 "--label-separator", ";", "--threshold", "tune", "--out", str(out), "--max-steps", "6",
                 "--eval-every", "3", "--batch-size", "4", "--precision", "fp32",
                 "--set", "images.num_workers=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["problem"] == "multi-label" and metrics["task"]["loss"] == "sigmoid per label"
    assert metrics["task"]["threshold"]["tuned"] is True and "f1_micro" in metrics["splits"]["test"]
    rows = rows_of(out / "predictions" / "test.csv")
    files = [str(root / r["file"]) for r in rows]
    served = tunelab.load_predictor(out)(files)
    assert ["; ".join(p.labels) for p in served] == [r["prediction"] for r in rows]
    assert main(["export", str(out)]) == 0
    onnx = tunelab.load_predictor(out, backend="onnx")(files)
    assert [p.labels for p in onnx] == [p.labels for p in served]


def test_label_scores_run_each_prompt_once_and_agree_with_the_plain_scores(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.encoders.decoder import label_scores

    folder = save_tiny_decoder(tmp_path / "qwen")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    contexts = ["the film", "a good story with the dog and", "cat", "of the science"]
    labels = ["music", "science sport", "a"]
    cpu = torch.device("cpu")
    shared = label_scores(model, tokenizer, contexts, labels, batch_size=3, device=cpu)
    plain = label_scores(model, tokenizer, contexts, labels, batch_size=5, device=cpu, reuse_cache=False)
    assert shared.shape == (4, 3)
    assert shared.ravel() == pytest.approx(plain.ravel(), abs=1e-4)  # left padding and the cache change nothing
    calls = []
    model.register_forward_hook(lambda module, args, kwargs_or_out: calls.append(1))
    label_scores(model, tokenizer, contexts, labels, batch_size=4, device=cpu)
    assert len(calls) == 1 + 2  # the prompts once; the labels of more than one token once each


def test_image_fine_tuning_resumes_after_sigkill_to_the_same_metrics(tmp_path, colour_folder):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import metrics_of

    model = save_tiny_backbone(tmp_path / "vit", "vit")
    args = ["--model", str(model), "--dataset", str(colour_folder), "--method", "lora", "--max-steps", "120",
            "--eval-every", "20", "--batch-size", "8", "--lr", "1e-3", "--precision", "fp32", "--num-workers", "0"]
    reference = tmp_path / "reference"
    assert main(["finetune", *args, "--out", str(reference)]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "finetune", *args, "--out", str(killed)],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoints" / "checkpoint-20" / "trainer_state.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    assert main(["finetune", "--out", str(killed), "--resume"]) == 0
    resumed = metrics_of(killed)
    assert resumed["task"]["training"]["resumed"] is True
    assert resumed["splits"] == metrics_of(reference)["splits"]
