"""SetFit: contrastive pairs drawn as SetFit draws them, the two stages end to end on the
tiny model, a body sentence-transformers loads, predict and ONNX export."""

import json

import numpy as np
import pytest

from tests.conftest import metrics_of, rows_of, write_topic_splits
from tunelab.cli import main
from tunelab.problems import get_problem
from tunelab.tasks.setfit import contrastive_pairs


def test_pairs_are_balanced_cycled_and_labelled_by_shared_class():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    first, second, targets = contrastive_pairs(labels, get_problem("single-label"), 20, None,
                                               np.random.default_rng(0))
    assert len(targets) == 2 * 20 * len(labels) and targets.sum() == 20 * len(labels)
    assert np.array_equal(targets[0::2], np.ones(160)) and np.array_equal(targets[1::2], np.zeros(160))
    np.testing.assert_array_equal(targets, (labels[first] == labels[second]).astype(np.float32))
    # every distinct positive pair (self-pairs included) is used before any repeats
    positives = {(a, b) for a, b in zip(first[0::2], second[0::2])}
    assert len(positives) == sum(c * (c + 1) // 2 for c in np.bincount(labels))
    again = contrastive_pairs(labels, get_problem("single-label"), 20, None, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip((first, second, targets), again))
    _, _, fixed = contrastive_pairs(labels, get_problem("single-label"), 20, 50, np.random.default_rng(0))
    assert len(fixed) == 50 and fixed.sum() == 25
    _, _, capped = contrastive_pairs(labels, get_problem("single-label"), 20, None, np.random.default_rng(0), 100)
    assert len(capped) == 100 and capped.sum() == 50


def test_multi_label_pairs_share_any_label():
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]])
    first, second, targets = contrastive_pairs(sets, get_problem("multi-label"), 3, None, np.random.default_rng(1))
    shared = (sets[first] & sets[second]).any(1)
    np.testing.assert_array_equal(targets, shared.astype(np.float32))
    with pytest.raises(Exception, match="no classes to pair"):
        contrastive_pairs(np.array([0.1, 0.5]), get_problem("regression"), 2, None, np.random.default_rng(0))


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    return write_topic_splits(tmp_path_factory.mktemp("few"), 8, 8, 8)


@pytest.fixture(scope="module")
def setfit_run(tiny_bert_dir, few, tmp_path_factory):
    out = tmp_path_factory.mktemp("setfit") / "run"
    assert main(["setfit", "--model", str(tiny_bert_dir), "--dataset", str(few), "--out", str(out),
                 "--num-iterations", "5", "--lr", "1e-3", "--precision", "fp32"]) == 0
    return out


def test_setfit_run_records_both_stages(setfit_run):
    metrics = metrics_of(setfit_run)
    task = metrics["task"]
    assert task["pairs"]["count"] == 2 * 5 * 24 and task["pairs"]["positive"] == 5 * 24
    assert task["classifier"]["kind"] == "logreg" and task["training"]["steps"] == 240 // 16
    assert metrics["splits"]["test"]["accuracy"] > 0.6  # topic words separate the classes
    assert not (setfit_run / "checkpoints").exists()
    assert metrics["params"]["trainable"] == metrics["params"]["total"]


def test_the_setfit_package_loads_the_run_and_predicts_its_classes(setfit_run):
    setfit = pytest.importorskip("setfit")

    rows = rows_of(setfit_run / "predictions" / "test.csv")
    model = setfit.SetFitModel.from_pretrained(str(setfit_run / "model"))
    assert model.labels == ["music", "science", "sport"]
    assert list(model.predict([r["text"] for r in rows])) == [r["prediction"] for r in rows]


def test_setfit_body_loads_in_sentence_transformers_and_predict_agrees(setfit_run):
    from sentence_transformers import SentenceTransformer

    import tunelab
    from tunelab.encoders.text import graph_outputs, normalize_rows
    from tunelab.tasks.setfit import _body

    rows = rows_of(setfit_run / "predictions" / "test.csv")
    texts = [r["text"] for r in rows]
    theirs = SentenceTransformer(str(setfit_run / "model"), device="cpu").encode(texts)
    body, tokenizer = _body(setfit_run)
    ours = normalize_rows(graph_outputs(body, tokenizer, texts, 256))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    predictor = tunelab.load_predictor(setfit_run)
    assert [p.label for p in predictor(texts)] == [r["prediction"] for r in rows]
    served = predictor(texts)
    np.testing.assert_allclose([p.score for p in served], [float(r["probability"]) for r in rows], atol=1e-4)


def test_setfit_exports_body_and_serves_head(setfit_run, tmp_path):
    from tests.test_use import served_like_the_run

    assert main(["export", str(setfit_run)]) == 0
    record = json.loads((setfit_run / "onnx" / "export.json").read_text())
    assert record["task"] == "setfit" and record["output"] == "embedding"
    assert record["agreement_with_run_predictions"] == 1.0
    rows, served = served_like_the_run(setfit_run, tmp_path)
    assert [s["prediction"] for s in served] == [r["prediction"] for r in rows]


def test_setfit_multi_label_and_lora(tiny_bert_dir, tmp_path):
    rows = []
    rng = np.random.default_rng(3)
    words = {"music": ["song", "guitar", "band"], "sport": ["goal", "match", "team"], "food": ["bread", "soup"]}
    for _ in range(36):
        chosen = sorted(rng.choice(list(words), size=rng.integers(1, 3), replace=False))
        text = " ".join(w for c in chosen for w in rng.choice(words[c], 2))
        rows.append({"text": text, "labels": list(chosen)})
    folder = tmp_path / "tags"
    folder.mkdir()
    for split, part in (("train", rows[:24]), ("validation", rows[24:30]), ("test", rows[30:])):
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in part))
    out = tmp_path / "ml"
    assert main(["setfit", "--model", str(tiny_bert_dir), "--dataset", str(folder), "--out", str(out),
                 "--num-pairs", "64", "--method", "lora", "--lora-r", "4", "--lora-targets", "q_lin,v_lin",
                 "--lr", "1e-3", "--threshold", "tune"]) == 0
    metrics = metrics_of(out)
    assert metrics["data"]["problem"] == "multi-label" and "f1_micro" in metrics["splits"]["test"]
    assert metrics["task"]["pairs"]["count"] == 64 and metrics["task"]["threshold"]["tuned"]
    assert metrics["params"]["trainable"] < metrics["params"]["total"]
    assert (out / "model" / "model.safetensors").is_file() and not (out / "model" / "adapter_config.json").exists()


def test_setfit_refuses_what_it_cannot_do(tiny_bert_dir, tmp_path, capsys):
    from tests.conftest import write_csv

    numbers = write_csv(tmp_path / "scores.csv", [(f"text {i} here", str(i / 7)) for i in range(40)])
    for args, message in (([str(numbers)], "setfit takes single-label or multi-label data"),
                          ([str(write_topic_splits(tmp_path / "t", 8, 8, 8)), "--classifier", "ridge"],
                           "--classifier ridge does not fit single-label data")):
        assert main(["setfit", "--model", str(tiny_bert_dir), "--dataset", *args, "--out",
                     str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "x").exists()
