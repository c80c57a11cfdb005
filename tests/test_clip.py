"""CLIP: parameter counts, zero-shot, fine-tuning (LoRA and full, both losses),
the image probe, save/load round trips. Tiny random CLIP on synthetic colours."""

import csv
import json

import numpy as np
import pytest

from tests.conftest import data_dir, write_colour_images
from tunelab.cli import main

# Chance is 1/3: the colour task is easy for a model that learns at all.
LEARNED = 0.8


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def metrics_of(run):
    return json.loads((run / "metrics.json").read_text())


def clip_ft(model, data, out, *extra):
    return main(["clip-finetune", "--model", str(model), "--dataset", str(data), "--out", str(out),
                 "--batch-size", "16", "--num-workers", "0", "--seed", "1", "--precision", "fp32", *map(str, extra)])


def test_reference_lora_counts_on_vit_b16(capsys):
    from tunelab.training.info import model_info

    info = model_info("openai/clip-vit-base-patch16", random_init=True, lora_r=8, lora_targets=["q_proj", "v_proj"])
    assert (info.trainable, info.total) == (491_520, 150_112_257)
    assert model_info("openai/clip-vit-base-patch16", random_init=True).total == 149_620_737
    assert main(["info", "--model", "openai/clip-vit-base-patch16", "--random-init", "--lora-r", "8",
                 "--lora-targets", "q_proj,v_proj"]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 150,112,257" in out and "trainable parameters: 491,520" in out


def test_distilbert_architecture_count():
    from tunelab.training.info import model_info

    assert model_info("distilbert-base-uncased", random_init=True).total == 66_362_880


def test_templates():
    from tunelab.core.errors import ConfigError
    from tunelab.encoders.clip import load_templates

    assert load_templates("simple") == ["a photo of a {}"]
    ensemble = load_templates("ensemble")
    assert len(ensemble) == 80 and len(set(ensemble)) == 80 and all("{}" in t for t in ensemble)
    with pytest.raises(ConfigError, match="every template needs a"):
        load_templates(__file__)


def test_zeroshot_writes_the_contract(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "zs"
    assert main(["zeroshot", "--model", str(tiny_clip_dir), "--dataset", str(colour_folder), "--out", str(out),
                 "--templates", "ensemble", "--num-workers", "0"]) == 0
    metrics = metrics_of(out)
    assert set(metrics["splits"]) == {"validation", "test"}
    assert metrics["task"]["templates"]["count"] == 80 and metrics["skipped"] == {"count": 0, "files": []}
    assert metrics["params"]["trainable"] == 0
    for name in ("config.yaml", "report.md", "confusion_test.png", "model/class_embeddings.safetensors"):
        assert (out / name).is_file(), name
    rows = read_rows(out / "predictions" / "test.csv")
    assert len(rows) == 24 and {"file", "label", "prediction", "similarity_red"} <= set(rows[0])


def test_zeroshot_on_tiny_imagenet_many_classes(tiny_clip_dir, tmp_path):
    if not (data_dir() / "tiny-imagenet-200").is_dir():
        pytest.skip("tiny-imagenet-200 not present")
    out = tmp_path / "ti"
    assert main(["zeroshot", "--model", str(tiny_clip_dir), "--dataset", "tiny_imagenet", "--out", str(out),
                 "--max-eval-samples", "200", "--num-workers", "0"]) == 0
    metrics = metrics_of(out)["splits"]["validation"]
    assert metrics["n"] == 200 and 0 <= metrics["accuracy"] <= metrics["top5_accuracy"] <= 1
    rows = read_rows(out / "predictions" / "validation.csv")
    assert len(rows[0]["top5"].split(" | ")) == 5 and rows[0]["prediction"] == rows[0]["top5"].split(" | ")[0]
    # 200 classes: the most confused pairs instead of an unreadable picture
    assert not (out / "confusion_validation.png").exists()
    assert "top_confused_pairs" in json.loads((out / "confusion_validation.json").read_text())
    assert (json.loads((out / "confusion_validation.json").read_text())["labels"][0]) == "goldfish"


def test_zeroshot_records_unreadable_images(tiny_clip_dir, tmp_path, capsys):
    folder = write_colour_images(tmp_path / "d", 2)
    (folder / "red" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "zs"
    assert main(["zeroshot", "--model", str(tiny_clip_dir), "--dataset", str(folder), "--out", str(out),
                 "--num-workers", "0"]) == 0
    metrics = metrics_of(out)
    assert metrics["skipped"] == {"count": 1, "files": ["red/broken.png"]}
    assert metrics["splits"]["test"]["n"] == 6
    assert main(["zeroshot", "--model", str(tiny_clip_dir), "--dataset", str(folder), "--out", str(tmp_path / "s"),
                 "--num-workers", "0", "--strict"]) == 2
    assert "cannot read image red/broken.png" in capsys.readouterr().err


def test_zeroshot_needs_clip(tiny_bert_dir, colour_folder, tmp_path, capsys):
    assert main(["zeroshot", "--model", str(tiny_bert_dir), "--dataset", str(colour_folder),
                 "--out", str(tmp_path / "x")]) == 2
    assert "is a distilbert model; this command needs a CLIP or SigLIP model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lora_run(tiny_clip_dir, colour_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "lora"
    assert clip_ft(tiny_clip_dir, colour_folder, out, "--max-steps", 60, "--eval-every", 20, "--lr", "5e-3") == 0
    return out


@pytest.mark.parametrize("loss", ["contrastive", "ce"])
def test_lora_learns_with_both_losses(tiny_clip_dir, colour_folder, tmp_path, loss, lora_run):
    out = lora_run if loss == "contrastive" else tmp_path / loss
    if loss != "contrastive":
        assert clip_ft(tiny_clip_dir, colour_folder, out, "--max-steps", 60, "--eval-every", 20, "--lr", "5e-3",
                       "--loss", loss) == 0
    metrics = metrics_of(out)
    assert metrics["task"]["loss"] == loss and metrics["task"]["method"] == "lora"
    assert metrics["splits"]["validation"]["accuracy"] >= LEARNED
    assert metrics["splits"]["test"]["accuracy"] >= LEARNED
    history = json.loads((out / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
    evals = [h["eval_accuracy"] for h in history if "eval_accuracy" in h]
    assert len(evals) == 3


def test_lora_trains_only_adapters(lora_run, tiny_clip_dir):
    params = metrics_of(lora_run)["params"]
    # q_proj and v_proj in 2 layers of each tower, hidden 32, r 8: 8 modules x (32*8 + 8*32)
    assert params["trainable"] == 8 * (32 * 8 + 8 * 32)
    from tunelab.training.info import model_info

    assert params["total"] == model_info(str(tiny_clip_dir)).total + params["trainable"]
    assert (lora_run / "model" / "adapter" / "adapter_model.safetensors").is_file()  # the adapter alone
    assert (lora_run / "model" / "model.safetensors").is_file()  # merged: loads anywhere
    assert not list((lora_run / "model").rglob("*.bin"))
    assert not [p for p in (lora_run / "model").rglob("*") if p.is_symlink()]


def test_full_finetuning_learns(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "full"
    assert clip_ft(tiny_clip_dir, colour_folder, out, "--method", "full", "--loss", "ce", "--max-steps", 40,
                   "--eval-every", 20, "--lr", "1e-3") == 0
    metrics = metrics_of(out)
    assert metrics["params"]["trainable"] == metrics["params"]["total"]
    assert metrics["splits"]["validation"]["accuracy"] >= LEARNED
    assert (out / "model" / "model.safetensors").is_file()


def test_adapter_round_trip_gives_identical_logits(lora_run, colour_folder):
    """Reload the saved adapter onto the base model: the same scores as the run's own."""
    import torch
    from PIL import Image

    from tunelab.encoders.clip import class_embeddings, image_embeddings, load_templates, logit_scale
    from tunelab.tasks.clip_finetune import clip_config_from_run, load_clip_run

    config = clip_config_from_run(lora_run)
    model, tokenizer, processor = load_clip_run(lora_run, config)
    rows = read_rows(lora_run / "predictions" / "test.csv")[:6]
    names = metrics_of(lora_run)["data"]["class_names"]
    with torch.inference_mode():
        classes = class_embeddings(model, tokenizer, names, load_templates(config.templates), torch.device("cpu"))
        # the processor's own path, not tunelab's deferred normalisation
        pixels = processor(images=[Image.open(colour_folder / r["file"]) for r in rows],
                           return_tensors="pt")["pixel_values"]
        logits = logit_scale(model) * image_embeddings(model, pixels) @ classes.T
    expected = np.array([[float(r[f"similarity_{n}"]) for n in names] for r in rows])
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_predict_images_matches_the_run(lora_run, colour_folder, capsys):
    rows = read_rows(lora_run / "predictions" / "test.csv")[:4]
    capsys.readouterr()
    assert main(["predict", str(lora_run), *[str(colour_folder / r["file"]) for r in rows]]) == 0
    printed = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [p[0] for p in printed] == [r["prediction"] for r in rows]
    np.testing.assert_allclose([float(p[1]) for p in printed], [float(r["similarity"]) for r in rows], atol=1e-3)


def test_linear_probe_on_clip_image_features(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_clip_dir), "--dataset", str(colour_folder), "--out", str(out),
                 "--classifier", "logreg", "--set", "images.num_workers=0"]) == 0
    metrics = metrics_of(out)
    assert metrics["splits"]["test"]["accuracy"] >= LEARNED
    assert metrics["skipped"]["count"] == 0
    assert read_rows(out / "predictions" / "test.csv")[0]["file"].startswith("test/")


def test_fp16_on_cpu_is_refused(tiny_clip_dir, colour_folder, tmp_path, capsys):
    assert clip_ft(tiny_clip_dir, colour_folder, tmp_path / "x", "--max-steps", 2, "--precision", "fp16",
                   "--device", "cpu") == 2
    assert "fp16 needs a GPU" in capsys.readouterr().err


def test_clip_resume_after_sigkill_gives_the_same_metrics(tiny_clip_dir, colour_folder, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--max-steps", 300, "--eval-every", 50, "--lr", "5e-3"]
    reference = tmp_path / "reference"
    assert clip_ft(tiny_clip_dir, colour_folder, reference, *args) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tunelab", "clip-finetune", "--model", str(tiny_clip_dir), "--dataset",
           str(colour_folder), "--out", str(killed), "--batch-size", "16", "--num-workers", "0", "--seed", "1",
           *map(str, args)]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoints" / "checkpoint-50" / "trainer_state.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = max(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("checkpoint-*"))
    assert last < 300 and not (killed / "metrics.json").exists()
    assert main(["clip-finetune", "--out", str(killed), "--resume"]) == 0
    resumed, uninterrupted = metrics_of(killed), metrics_of(reference)
    assert resumed["task"]["training"]["resumed"] is True
    assert resumed["splits"] == uninterrupted["splits"]
