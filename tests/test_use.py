"""From result to use: run directories the ecosystem loads on its own (plain
transformers/peft, no tunelab code), model cards, ONNX export and serving, lean runs."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import load_adapter, metrics_of, rows_of, write_csv, write_topic_splits
from tunelab.cli import main


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    return write_topic_splits(tmp_path_factory.mktemp("topics"), 40, 8, 8)


def finetune(model, data, out, *extra):
    assert main(["finetune", "--model", str(model), "--dataset", str(data), "--out", str(out), "--max-steps", "30",
                 "--eval-every", "15", "--batch-size", "8", "--lr", "2e-3", "--precision", "fp32",
                 *map(str, extra)]) == 0
    return out


@pytest.fixture(scope="module")
def full_run(tiny_bert_dir, topics, tmp_path_factory):
    return finetune(tiny_bert_dir, topics, tmp_path_factory.mktemp("use") / "full")


@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, topics, tmp_path_factory):
    return finetune(tiny_bert_dir, topics, tmp_path_factory.mktemp("use") / "lora", "--method", "lora",
                    "--lora-r", "4")


def probabilities_of(rows, names):
    return np.array([[float(r[f"probability_{n}"]) for n in names] for r in rows])


def test_plain_transformers_and_pipeline_load_a_full_run(full_run):
    from transformers import AutoModelForSequenceClassification, pipeline

    rows = rows_of(full_run / "predictions" / "test.csv")
    names = metrics_of(full_run)["data"]["class_names"]
    model = AutoModelForSequenceClassification.from_pretrained(full_run / "model")
    assert [model.config.id2label[i] for i in range(3)] == names
    classify = pipeline("text-classification", model=str(full_run / "model"), top_k=None)
    outputs = classify([r["text"] for r in rows])
    for row, scores in zip(rows, outputs):
        best = max(scores, key=lambda s: s["score"])
        assert best["label"] == row["prediction"] and best["score"] == pytest.approx(float(row["probability"]),
                                                                                     abs=1e-4)


def test_plain_peft_loads_a_lora_run_and_merged_is_plain(lora_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = rows_of(lora_run / "predictions" / "test.csv")
    names = metrics_of(lora_run)["data"]["class_names"]
    tokenizer = AutoTokenizer.from_pretrained(lora_run / "model")
    batch = tokenizer([r["text"] for r in rows], return_tensors="pt", padding=True)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    expected = probabilities_of(rows, names)
    for model in (load_adapter(lora_run / "model" / "adapter"),
                  AutoModelForSequenceClassification.from_pretrained(lora_run / "model")):
        model.eval()
        assert [model.config.id2label[i] for i in range(3)] == names
        with torch.no_grad():
            probabilities = torch.softmax(model(**inputs).logits, -1).numpy()
        np.testing.assert_allclose(probabilities, expected, atol=1e-4)


@pytest.mark.parametrize("which", ["full_run", "lora_run"])
def test_a_model_folder_moved_elsewhere_agrees_with_tunelab_predict(which, request, tmp_path, monkeypatch, capsys):
    """model/ copied to another place and loaded from another working directory with plain
    pipeline() (and peft, for the adapter) gives tunelab predict's answer on every input."""
    import shutil

    from transformers import AutoTokenizer, pipeline

    run = request.getfixturevalue(which)
    assert not [p for p in (run / "model").rglob("*") if p.is_symlink()]
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(run / "model", moved)
    monkeypatch.chdir(tmp_path)
    texts = [r["text"] for r in rows_of(run / "predictions" / "test.csv")] + ["sport music film", "red", "zzz"]
    assert main(["predict", str(run), *texts]) == 0
    ours = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()[1:]]
    classify = pipeline("text-classification", model=str(moved))
    assert [out["label"] for out in classify(texts)] == ours
    if which == "lora_run":
        peft_model = load_adapter(moved / "adapter")
        batch = AutoTokenizer.from_pretrained(moved)(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            best = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
        assert [peft_model.config.id2label[int(i)] for i in best] == ours


def test_plain_clip_loads_a_clip_run(tiny_clip_dir, colour_folder, tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    run = tmp_path / "clip"
    assert main(["clip-finetune", "--model", str(tiny_clip_dir), "--dataset", str(colour_folder), "--out", str(run),
                 "--max-steps", "10", "--eval-every", "10", "--batch-size", "16", "--num-workers", "0",
                 "--lr", "5e-3", "--precision", "fp32"]) == 0
    model = CLIPModel.from_pretrained(run / "model").eval()  # the adapter, onto the recorded base
    processor = AutoImageProcessor.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    saved = json.loads((run / "model" / "predictor.json").read_text())
    rows = rows_of(run / "predictions" / "test.csv")[:4]
    prompts = [saved["templates"][0].format(n) for n in saved["class_names"]]
    with torch.no_grad():
        text = model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt"))
        pixels = processor(images=[Image.open(colour_folder / r["file"]).convert("RGB") for r in rows],
                           return_tensors="pt")["pixel_values"]
        image = model.get_image_features(pixel_values=pixels)
        text = text.pooler_output if hasattr(text, "pooler_output") else text
        image = image.pooler_output if hasattr(image, "pooler_output") else image
        logits = model.logit_scale.exp() * torch.nn.functional.normalize(image, dim=-1) @ \
            torch.nn.functional.normalize(text, dim=-1).T
    expected = np.array([[float(r[f"similarity_{n}"]) for n in saved["class_names"]] for r in rows])
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-3)


def test_model_card_front_matter(full_run, lora_run):
    from huggingface_hub import ModelCard

    for run, library in ((full_run, "transformers"), (lora_run, "transformers")):  # LoRA: merged in model/
        card = ModelCard.load(run / "model" / "README.md")
        metrics = metrics_of(run)
        assert card.data.library_name == library and card.data.pipeline_tag == "text-classification"
        assert card.data.base_model and card.data.datasets == [metrics["dataset"]]
        results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
        assert results[("test", "accuracy")] == pytest.approx(metrics["splits"]["test"]["accuracy"], abs=1e-6)
        assert "## Training configuration" in card.text and "## How to load it" in card.text
    assert "AutoPeftModelForSequenceClassification" in ModelCard.load(lora_run / "model" / "README.md").text


def test_a_completed_run_is_lean_unless_asked(full_run, tiny_bert_dir, topics, tmp_path):
    assert not (full_run / "checkpoints").exists()
    assert metrics_of(full_run)["task"]["training"]["checkpoints"].startswith("removed")
    kept = finetune(tiny_bert_dir, topics, tmp_path / "kept", "--keep-checkpoints")
    assert len(list((kept / "checkpoints").glob("checkpoint-*"))) >= 1


@pytest.mark.parametrize("run_name", ["full_run", "lora_run"])
def test_onnx_export_and_serving(run_name, request, tmp_path, capsys):
    run = request.getfixturevalue(run_name)
    assert main(["export", str(run), "--format", "onnx", "--quantize", "int8"]) == 0
    record = json.loads((run / "onnx" / "export.json").read_text())
    assert record["max_abs_logit_difference"] <= 1e-4
    assert "accuracy_change" in record["int8"] and (run / "onnx" / "model.int8.onnx").is_file()
    rows = rows_of(run / "predictions" / "test.csv")
    write_csv(tmp_path / "in.csv", [(r["text"], "") for r in rows])
    assert main(["predict", str(run), "--input", str(tmp_path / "in.csv"), "--backend", "onnx",
                 "--output", str(tmp_path / "o.csv")]) == 0
    served = rows_of(tmp_path / "o.csv")
    assert [s["prediction"] for s in served] == [r["prediction"] for r in rows]
    np.testing.assert_allclose([float(s["probability"]) for s in served], [float(r["probability"]) for r in rows],
                               atol=1e-4)
    assert main(["predict", str(run), rows[0]["text"], "--backend", "onnx-int8"]) == 0


def served_like_the_run(run, tmp_path, backend="onnx"):
    """predict through the ONNX export on the run's own test inputs gives the predictions
    file's labels and scores."""
    rows = rows_of(run / "predictions" / "test.csv")
    pairs = "text_pair" in rows[0]
    header = ("text", "text_pair") if pairs else ("text", "label")
    write_csv(tmp_path / "in.csv", [(r["text"], r["text_pair"] if pairs else "") for r in rows], header=header)
    out = tmp_path / f"{run.name}-{backend}.csv"
    columns = ["--text-column", "text", "--text-pair-column", "text_pair"] if pairs else []
    assert main(["predict", str(run), "--input", str(tmp_path / "in.csv"), "--backend", backend, *columns,
                 "--output", str(out)]) == 0
    served = rows_of(out)
    return rows, served


def test_onnx_export_of_a_text_probe(tiny_bert_dir, topics, tmp_path, capsys):
    run = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--out", str(run),
                 "--classifier", "logreg", "--pooling", "mean", "--precision", "fp32"]) == 0
    assert main(["export", str(run), "--quantize", "int8"]) == 0
    record = json.loads((run / "onnx" / "export.json").read_text())
    assert record["task"] == "probe" and record["output"] == "features"
    assert record["max_abs_output_difference"] <= record["tolerance"] and record["prediction_agreement"] == 1.0
    assert record["agreement_with_run_predictions"] == 1.0 and record["run_precision"] == "fp32"
    assert 0.0 <= record["int8"]["agreement_with_fp32"] <= 1.0 and "accuracy_change" in record["int8"]
    rows, served = served_like_the_run(run, tmp_path)
    assert [s["prediction"] for s in served] == [r["prediction"] for r in rows]
    np.testing.assert_allclose([float(s["probability"]) for s in served], [float(r["probability"]) for r in rows],
                               atol=1e-4)
    names = metrics_of(run)["data"]["class_names"]
    import tunelab

    predictor = tunelab.load_predictor(run, backend="onnx")
    assert isinstance(predictor, tunelab.Predictor) and predictor.task == "probe" and predictor.class_names == names
    assert predictor([rows[0]["text"]])[0].label == rows[0]["prediction"]


def test_export_of_a_floor_is_refused(topics, tmp_path, capsys):
    run = tmp_path / "floor"
    assert main(["baseline", "--dataset", str(topics), "--out", str(run)]) == 0
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a baseline run" in err and "finetune" in err and "probe" in err
    assert main(["predict", str(run), "a text", "--backend", "onnx"]) == 2
