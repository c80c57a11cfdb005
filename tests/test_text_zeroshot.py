"""Text zero-shot: texts against class descriptions by cosine (a sentence encoder) or by
entailment (an NLI cross-encoder), calibration, label sets, and the one-line errors."""

import json

import numpy as np
import pytest

from tests.conftest import metrics_of, rows_of, write_topic_splits
from tunelab.cli import main


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    return write_topic_splits(tmp_path_factory.mktemp("zs-topics"), 8, 8, 8)


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-nli")
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3, id2label=labels,
                                                               label2id={v: k for k, v in labels.items()},
                                                               ignore_mismatched_sizes=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return folder


def zeroshot(model, data, out, *extra):
    assert main(["zeroshot", "--model", str(model), "--dataset", str(data), "--out", str(out), "--precision",
                 "fp32", *map(str, extra)]) == 0
    return out


def test_similarity_is_the_cosine_to_each_description(tiny_bert_dir, topics, tmp_path):
    from tunelab.core.config import RuntimeConfig
    from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor, normalize_rows
    from tunelab.models.resolve import resolve_model

    out = zeroshot(tiny_bert_dir, topics, tmp_path / "zs", "--templates", "about {}|{} things")
    metrics = metrics_of(out)
    assert metrics["task"]["text"]["method"] == "similarity" and metrics["params"]["trainable"] == 0
    assert metrics["data"]["labels_seen"] == 0
    rows = rows_of(out / "predictions" / "test.csv")
    names = metrics["data"]["class_names"]
    extractor = TextFeatureExtractor(resolve_model(str(tiny_bert_dir)), FeatureConfig(pooling="mean"),
                                     RuntimeConfig(precision="fp32"))
    texts = extractor.encode([r["text"] for r in rows])
    prompts = normalize_rows(extractor.encode([t.format(n) for n in names for t in ("about {}", "{} things")]))
    classes = normalize_rows(prompts.reshape(len(names), 2, -1).mean(1))
    expected = normalize_rows(texts) @ classes.T
    got = np.array([[float(r[f"similarity_{n}"]) for n in names] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r["prediction"] for r in rows] == [names[i] for i in expected.argmax(1)]
    import tunelab

    served = tunelab.load_predictor(out)([r["text"] for r in rows])
    assert [p.label for p in served] == [r["prediction"] for r in rows]


def test_calibration_subtracts_the_training_mean(tiny_bert_dir, topics, tmp_path):
    plain = metrics_of(zeroshot(tiny_bert_dir, topics, tmp_path / "plain"))
    out = zeroshot(tiny_bert_dir, topics, tmp_path / "cal", "--calibrate")
    calibration = metrics_of(out)["task"]["text"]["calibration"]
    assert calibration["texts"] == 24 and calibration["labels_used"] is False
    names = plain["data"]["class_names"]
    before = rows_of(tmp_path / "plain" / "predictions" / "test.csv")
    after = rows_of(out / "predictions" / "test.csv")
    for b, a in zip(before, after):
        for n in names:
            assert float(a[f"similarity_{n}"]) == pytest.approx(float(b[f"similarity_{n}"]) - calibration["offsets"][n],
                                                                abs=1e-5)
    import tunelab

    served = tunelab.load_predictor(out)([r["text"] for r in after])
    assert [p.label for p in served] == [r["prediction"] for r in after]


def test_descriptions_file_and_label_names(tiny_bert_dir, topics, tmp_path):
    file = tmp_path / "describe.yaml"
    file.write_text("music: [songs and bands, a concert]\nscience: experiments\nsport: a match\n")
    metrics = metrics_of(zeroshot(tiny_bert_dir, topics, tmp_path / "d", "--label-descriptions", file))
    assert metrics["task"]["text"]["descriptions"]["music"] == ["songs and bands", "a concert"]
    named = metrics_of(zeroshot(tiny_bert_dir, topics, tmp_path / "n", "--label-names", "tunes,lab,games"))
    assert named["task"]["text"]["descriptions"] == {"music": ["tunes"], "science": ["lab"], "sport": ["games"]}


def test_nli_entailment_single_and_multi_label(tiny_nli, topics, tmp_path, tiny_bert_dir):
    out = zeroshot(tiny_nli, topics, tmp_path / "nli", "--zeroshot-method", "nli")
    metrics = metrics_of(out)
    assert metrics["task"]["text"]["hypotheses"]["music"] == ["This example is music."]
    rows = rows_of(out / "predictions" / "test.csv")
    names = metrics["data"]["class_names"]
    probabilities = np.array([[float(r[f"probability_{n}"]) for n in names] for r in rows])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)  # entailment competes across classes
    # by hand: the model's entailment logit of each (text, hypothesis) pair, softmaxed over classes
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_nli).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_nli)
    with torch.no_grad():
        batch = tokenizer([rows[0]["text"]] * 3, [f"This example is {n}." for n in names], return_tensors="pt",
                          padding=True)
        entail = model(**batch).logits[:, 2]
    np.testing.assert_allclose(probabilities[0], torch.softmax(entail, 0).numpy(), atol=1e-5)
    import tunelab

    assert tunelab.load_predictor(out)([rows[0]["text"]])[0].label == rows[0]["prediction"]

    tags = tmp_path / "tags"
    tags.mkdir()
    rng = np.random.default_rng(0)
    words = {"music": "song", "sport": "goal", "food": "bread"}
    for split, n in (("train", 20), ("validation", 12), ("test", 12)):
        lines = []
        for _ in range(n):
            chosen = sorted(rng.choice(list(words), size=rng.integers(1, 3), replace=False))
            lines.append(json.dumps({"text": " ".join(words[c] for c in chosen), "labels": list(chosen)}))
        (tags / f"{split}.jsonl").write_text("\n".join(lines))
    for model, method in ((tiny_nli, "nli"), (tiny_bert_dir, "similarity")):
        out = zeroshot(model, tags, tmp_path / f"ml-{method}", "--zeroshot-method", method)
        metrics = metrics_of(out)
        assert metrics["data"]["problem"] == "multi-label" and "f1_micro" in metrics["splits"]["test"]
        assert metrics["task"]["threshold"]["tuned"] and metrics["data"]["labels_seen"] == 12


@pytest.mark.parametrize("flags, message", [
    (["--templates", "no placeholder"], "every template needs a {}"),
    (["--label-names", "a,b"], "--label-names gives 2 names for 3 classes"),
    (["--zeroshot-method", "nli"], "is not an NLI model"),
    (["--templates", "ensemble"], "--templates ensemble holds CLIP's photo prompts"),
])
def test_bad_zero_shot_input_stops_in_one_line(tiny_bert_dir, topics, tmp_path, capsys, flags, message):
    assert main(["zeroshot", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--out", str(tmp_path / "x"),
                 *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_descriptions_missing_a_label_stop(tiny_bert_dir, topics, tmp_path, capsys):
    file = tmp_path / "describe.json"
    file.write_text(json.dumps({"music": "songs", "sport": "games"}))
    assert main(["zeroshot", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--label-descriptions",
                 str(file)]) == 2
    err = capsys.readouterr().err.strip()
    assert "describes no 'science'" in err and len(err.splitlines()) == 1


def test_zero_shot_is_the_zero_label_point_of_the_learning_curves(tiny_bert_dir, tmp_path):
    import re

    import yaml

    data = write_topic_splits(tmp_path / "topics", 30, 6, 30)
    study = {"name": "low", "baseline": "majority", "matrix": {"seed": [0, 1]},
             "steps": [{"name": "majority", "command": "baseline", "kind": "majority",
                        "data": {"dataset": str(data)}, "matrix": {"seed": [0]}},
                       {"name": "tfidf", "command": "baseline", "kind": "tfidf", "data": {"dataset": str(data)},
                        "matrix": {"data.shots": [1, 8]}},
                       {"name": "probe", "command": "probe", "model": str(tiny_bert_dir),
                        "data": {"dataset": str(data)}, "classifier": {"kind": "logreg", "c": 10.0},
                        "matrix": {"data.shots": [1, 8]}},
                       {"name": "zeroshot", "command": "zeroshot", "model": str(tiny_bert_dir),
                        "data": {"dataset": str(data)}, "matrix": {"seed": [0], "data.shots": [None]}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"zeroshot learns from no label: accuracy \d\.\d{4}, drawn as the dashed line at 0 labels",
                     text)
    lines = re.findall(r".*probe (?:overtakes|does not overtake) zeroshot.*", text)
    assert len(lines) == 1, text
    assert not re.search(r"tfidf (?:overtakes|does not overtake) zeroshot", text)  # a floor, not a method
    if "overtakes" in lines[0]:
        assert re.search(r"at (1|8) \([+-]\d\.\d{4}, significant", lines[0]), lines[0]
    assert not re.search(r"curves of .*zeroshot", text)  # a reference, not a curve
    assert (tmp_path / "out" / "report_files" / "learning-curves.png").is_file()
    zeroshot_runs = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("zeroshot")]
    assert len(zeroshot_runs) == 1 and metrics_of(zeroshot_runs[0])["data"]["labels_seen"] == 0
