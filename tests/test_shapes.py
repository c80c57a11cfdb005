"""Data of every shape, end to end on real text with the tiny model: sentence pairs
(cross and bi), multi-label, regression, imbalance with class weights, k-shot, hub-style
datasets with configurations and split names, messy files, and the bad inputs."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import rows_of, write_csv
from tunelab.cli import main

TOPICS = {"sport": ["sport", "red"], "music": ["music", "blue"], "science": ["science", "green"]}
FILLER = ["the", "a", "film", "story", "with", "and", "of", "good", "dog", "cat"]


def sentence(rng, topic):
    words = rng.sample(FILLER, 3) + [rng.choice(TOPICS[topic])] * 2
    rng.shuffle(words)
    return " ".join(words)


def pair_rows(n, seed):
    """(sentence1, sentence2, same-topic label, similarity score 0-5)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(list(TOPICS)), rng.choice(list(TOPICS))
        same = a == b
        score = round(4 + rng.random() if same else rng.random(), 3)
        rows.append((sentence(rng, a), sentence(rng, b), int(same), score))
    return rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    for split, n, seed in (("train", 90, 1), ("validation", 24, 2), ("test", 24, 3)):
        write_csv(folder / f"{split}.csv", pair_rows(n, seed), header=("sentence1", "sentence2", "label", "score"))
    return folder


def tag_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags = sorted(rng.sample(list(TOPICS), rng.choice([1, 1, 2])))
        words = rng.sample(FILLER, 3) + [TOPICS[t][0] for t in tags] * 2
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "tags": tags})
    return rows


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tags")
    for split, n, seed in (("train", 90, 1), ("validation", 30, 2), ("test", 30, 3)):
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in tag_rows(n, seed)))
    return folder


def metrics_of(run):
    return json.loads((Path(run) / "metrics.json").read_text())


def run(*args):
    return main([str(a) for a in args])


def expect_error(capsys, args, message):
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


# --------------------------------------------------------------------------- sentence pairs


@pytest.mark.parametrize("encoding", ["bi", "cross"])
def test_pair_probe_classifies_and_predicts(pairs, tiny_bert_dir, tmp_path, encoding, capsys):
    out = tmp_path / encoding
    args = ["probe", "--model", tiny_bert_dir, "--dataset", pairs, "--out", out, "--classifier", "logreg",
            "--C", "10"]
    assert run(*args, *(["--pair-encoding", encoding] if encoding == "cross" else [])) == 0
    metrics = metrics_of(out)
    assert metrics["data"]["columns"] == {"text": "sentence1", "text_pair": "sentence2", "label": "label"}
    assert any("sentence pair columns 'sentence1' and 'sentence2'" in n for n in metrics["data"]["notes"])
    assert metrics["task"]["features"]["pair_encoding"] == encoding
    assert metrics["task"]["features"]["pooling"] == ("mean" if encoding == "bi" else "cls")
    assert metrics["task"]["features"]["dim"] == (4 * 32 if encoding == "bi" else 32)
    rows = rows_of(out / "predictions" / "test.csv")
    assert list(rows[0])[:5] == ["id", "text", "text_pair", "label", "prediction"]
    capsys.readouterr()
    assert run("predict", out, "--pair", rows[0]["text"], rows[0]["text_pair"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[0] == rows[0]["prediction"]


def test_pair_regression_probe_finetune_and_predict(pairs, tiny_bert_dir, tmp_path, capsys):
    base = ["--model", tiny_bert_dir, "--dataset", pairs, "--label-column", "score"]
    assert run("probe", *base, "--out", tmp_path / "probe") == 0
    probe = metrics_of(tmp_path / "probe")
    assert probe["data"]["problem"] == "regression"  # detected: non-integer numbers
    assert set(probe["splits"]["test"]) == {"pearson", "spearman", "mse", "mae", "r2", "n"}
    assert probe["task"]["classifier"]["kind"] == "ridge" and probe["task"]["classifier"]["tuning"]["parameter"] == \
        "alpha"
    assert probe["splits"]["test"]["spearman"] > 0.5  # same-topic pairs score high
    assert (tmp_path / "probe" / "scatter_test.png").is_file()
    for encoding in ("bi", "cross"):
        out = tmp_path / f"ft-{encoding}"
        assert run("finetune", *base, "--out", out, "--pair-encoding", encoding, "--max-steps", 30, "--eval-every", 15,
                   "--batch-size", 8, "--lr", "1e-3") == 0
        metrics = metrics_of(out)
        assert metrics["task"]["training"]["best_validation_spearman"] is not None
        assert metrics["task"]["pair_encoding"] == encoding
        rows = rows_of(out / "predictions" / "test.csv")
        capsys.readouterr()
        assert run("predict", out, "--pair", rows[0]["text"], rows[0]["text_pair"]) == 0
        printed = float(capsys.readouterr().out.splitlines()[1].split("\t")[0])
        assert printed == pytest.approx(float(rows[0]["prediction"]), rel=1e-3, abs=1e-3)
    assert (tmp_path / "ft-bi" / "model" / "bi_encoder.json").is_file()


def test_onnx_export_of_pair_runs(pairs, tiny_bert_dir, tmp_path):
    """Every pair run whose predictor is a transformer exports: a bi-encoder (its head in
    NumPy after the ONNX embedding) and a probe on separately encoded pairs."""
    from tests.test_use import served_like_the_run

    base = ["--model", tiny_bert_dir, "--dataset", pairs, "--label-column", "score", "--precision", "fp32"]
    assert run("finetune", *base, "--out", tmp_path / "bi", "--pair-encoding", "bi", "--max-steps", 20,
               "--eval-every", 10, "--batch-size", 8, "--lr", "1e-3") == 0
    assert run("probe", "--model", tiny_bert_dir, "--dataset", pairs, "--out", tmp_path / "probe",
               "--classifier", "logreg", "--precision", "fp32") == 0
    for name, output in (("bi", "embedding"), ("probe", "features")):
        assert run("export", tmp_path / name) == 0
        record = json.loads((tmp_path / name / "onnx" / "export.json").read_text())
        assert record["output"] == output and record["prediction_agreement"] == 1.0
        assert record["agreement_with_run_predictions"] == 1.0
        rows, served = served_like_the_run(tmp_path / name, tmp_path)
        if name == "bi":  # regression on the label scale
            np.testing.assert_allclose([float(s["prediction"]) for s in served],
                                       [float(r["prediction"]) for r in rows], atol=1e-4)
        else:
            assert [s["prediction"] for s in served] == [r["prediction"] for r in rows]


def test_bi_encoder_classifies_pairs(pairs, tiny_bert_dir, tmp_path):
    out = tmp_path / "bi"
    assert run("finetune", "--model", tiny_bert_dir, "--dataset", pairs, "--out", out, "--max-steps", 40,
               "--eval-every", 20, "--batch-size", 8, "--lr", "2e-3", "--method", "lora", "--lora-r", 4,
               "--lora-targets", "q_lin,v_lin") == 0
    metrics = metrics_of(out)
    assert metrics["data"]["problem"] == "single-label" and metrics["task"]["pair_encoding"] == "bi"
    assert metrics["params"]["trainable"] < metrics["params"]["total"] / 2
    assert (out / "model" / "bi_encoder_head.safetensors").is_file()


def test_pair_zeroshot_regression_and_binary(pairs, tiny_bert_dir, tmp_path):
    base = ["zeroshot", "--model", tiny_bert_dir, "--dataset", pairs]
    assert run(*base, "--label-column", "score", "--problem", "regression", "--out", tmp_path / "r") == 0
    regression = metrics_of(tmp_path / "r")
    assert regression["task"]["pairs"]["slope"] != 0 and "spearman" in regression["splits"]["test"]
    assert run(*base, "--out", tmp_path / "b") == 0
    binary = metrics_of(tmp_path / "b")
    assert "threshold" in binary["task"]["pairs"] and "accuracy" in binary["splits"]["test"]


# --------------------------------------------------------------------------- multi-label


def test_multilabel_probe_tunes_its_threshold(tags, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "ml"
    assert run("probe", "--model", tiny_bert_dir, "--dataset", tags, "--label-column", "tags", "--out", out,
               "--threshold", "tune", "--pooling", "mean", "--C", "10") == 0
    metrics = metrics_of(out)
    assert metrics["data"]["problem"] == "multi-label" and metrics["data"]["class_names"] == ["music", "science",
                                                                                                "sport"]
    assert metrics["task"]["classifier"]["kind"] == "logreg"
    assert metrics["task"]["threshold"]["tuned"] is True and 0 < metrics["task"]["threshold"]["value"] < 1
    test = metrics["splits"]["test"]
    assert {"f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss", "mean_average_precision"} <= \
        set(test)
    assert test["f1_micro"] > 0.7
    rows = rows_of(out / "predictions" / "test.csv")
    assert {"probability_music", "probability_sport"} <= set(rows[0])
    capsys.readouterr()
    assert run("predict", out, rows[0]["text"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[0] == rows[0]["prediction"]


def test_multilabel_finetune_and_separator(tags, tiny_bert_dir, tmp_path):
    folder = tmp_path / "csv"
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (tags / f"{split}.jsonl").read_text().splitlines()]
        write_csv(folder / f"{split}.csv", [(r["text"], ";".join(r["tags"])) for r in rows])
    out = tmp_path / "ft"
    assert run("finetune", "--model", tiny_bert_dir, "--dataset", folder, "--label-separator", ";", "--out", out,
               "--max-steps", 30, "--eval-every", 15, "--batch-size", 8, "--lr", "2e-3") == 0
    metrics = metrics_of(out)
    assert metrics["data"]["problem"] == "multi-label"
    assert "best_validation_mean_average_precision" in metrics["task"]["training"]  # threshold-free choice
    assert 0 <= metrics["splits"]["test"]["hamming_loss"] <= 1


# --------------------------------------------------------------------------- imbalance and shots


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    rng = random.Random(0)
    rows = [(sentence(rng, "sport"), "common") for _ in range(90)]
    rows += [(sentence(rng, "music"), "rare") for _ in range(10)]
    rng.shuffle(rows)
    return write_csv(tmp_path_factory.mktemp("imb") / "data.csv", rows)


def test_class_weights_and_balanced_accuracy(imbalanced, tiny_bert_dir, tmp_path):
    for command, extra in (("probe", ["--classifier", "logreg"]),
                           ("finetune", ["--max-steps", 10, "--eval-every", 5, "--batch-size", 8])):
        out = tmp_path / command
        assert run(command, "--model", tiny_bert_dir, "--dataset", imbalanced, "--class-weight", "balanced",
                   "--out", out, *extra) == 0
        metrics = metrics_of(out)
        assert "balanced_accuracy" in metrics["splits"]["test"]
        assert metrics["data"]["class_counts"]["train"] == {"common": 72, "rare": 8}
    report = tmp_path / "r.md"
    assert run("report", tmp_path / "probe", "--out", report) == 0
    assert "Data: " in report.read_text() and "| rare | 8 |" in report.read_text()


def test_shots_sample_k_per_class_without_leakage(tmp_path):
    from tunelab.core.config import DataConfig
    from tunelab.data.text import load_text_dataset

    rng = random.Random(0)
    rows = [(sentence(rng, t), t) for t in TOPICS for _ in range(20)] + [(sentence(rng, "sport"), "rare")] * 2
    path = write_csv(tmp_path / "d.csv", rows)
    dataset = load_text_dataset(DataConfig(dataset=str(path), shots=4), seed=1)
    train = dataset.splits["train"]
    assert np.bincount(train.labels).tolist() == [4, 2, 4, 4]  # "rare" keeps the two it has in train
    assert any("fewer than 4 training examples" in n and "rare" in n for n in dataset.notes)
    assert not set(train.ids) & set(dataset.splits["validation"].ids)
    again = load_text_dataset(DataConfig(dataset=str(path), shots=4), seed=1)
    assert again.splits["train"].ids == train.ids
    assert len(load_text_dataset(DataConfig(dataset=str(path), shots=8), seed=1).splits["train"]) == 8 * 3 + 2


# --------------------------------------------------------------------------- hub-style datasets


def write_repo(folder: Path) -> Path:
    """A dataset repository as the hub lays one out: its card declares two configurations."""
    for config, split_names in (("easy", ("train", "validation")), ("hard", ("train", "dev_matched"))):
        for split in split_names:
            rng = random.Random(hash((config, split)) % 1000)
            write_csv(folder / config / f"{split}.csv", [(sentence(rng, t), t) for t in TOPICS for _ in range(6)])
    (folder / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: easy\n  data_files:\n  - split: train\n    path: easy/train.csv\n"
        "  - split: validation\n    path: easy/validation.csv\n"
        "- config_name: hard\n  data_files:\n  - split: train\n    path: hard/train.csv\n"
        "  - split: dev_matched\n    path: hard/dev_matched.csv\n---\n# topics\n")
    return folder


def test_dataset_configs_and_split_names_through_load_dataset(tmp_path, capsys):
    from tunelab.core.config import DataConfig
    from tunelab.data.text import load_text_dataset

    repo = write_repo(tmp_path / "repo")
    easy = load_text_dataset(DataConfig(dataset=str(repo), dataset_config="easy"))
    assert len(easy.splits["validation"]) == 18 and easy.class_names == ["music", "science", "sport"]
    hard = load_text_dataset(DataConfig(dataset=str(repo), dataset_config="hard", validation_split="dev_matched"))
    assert len(hard.splits["validation"]) == 18
    with pytest.raises(Exception, match="has no split 'dev_mismatched'.*splits here: dev_matched, train"):
        load_text_dataset(DataConfig(dataset=str(repo), dataset_config="hard", validation_split="dev_mismatched"))
    with pytest.raises(Exception, match="configuration 'nope'"):
        load_text_dataset(DataConfig(dataset=str(repo), dataset_config="nope"))


def test_split_flags_on_saved_datasets_and_folders(tmp_path):
    from datasets import Dataset, DatasetDict

    from tunelab.core.config import DataConfig
    from tunelab.data.text import load_text_dataset

    rng = random.Random(0)
    make = lambda n: Dataset.from_dict({"text": [sentence(rng, t) for t in TOPICS for _ in range(n)],  # noqa: E731
                                        "label": [t for t in TOPICS for _ in range(n)]})
    DatasetDict({"train": make(8), "dev_matched": make(3), "test_matched": make(2)}).save_to_disk(str(tmp_path / "s"))
    dataset = load_text_dataset(DataConfig(dataset=str(tmp_path / "s"), validation_split="dev_matched",
                                           test_split="test_matched"))
    assert [len(dataset.splits[s]) for s in ("train", "validation", "test")] == [24, 9, 6]
    folder = tmp_path / "f"
    write_csv(folder / "training_set.csv", [(sentence(rng, t), t) for t in TOPICS for _ in range(8)])
    write_csv(folder / "heldout.csv", [(sentence(rng, t), t) for t in TOPICS for _ in range(2)])
    dataset = load_text_dataset(DataConfig(dataset=str(folder), train_split="training_set", test_split="heldout"))
    assert len(dataset.splits["test"]) == 6 and len(dataset.splits["train"]) + len(dataset.splits["validation"]) == 24


def test_hub_id_offline_is_one_line(capsys, tiny_bert_dir):
    expect_error(capsys, ["probe", "--model", tiny_bert_dir, "--dataset", "glue", "--dataset-config", "mrpc"],
                 "cannot fetch dataset 'glue' (glue) from the Hugging Face hub (offline mode is set)")


def test_hub_path_is_the_load_dataset_call(tmp_path, monkeypatch):
    """A hub id goes through the same datasets.load_dataset call a repository folder does."""
    import datasets

    import tunelab.core.hub
    from tunelab.core.config import DataConfig
    from tunelab.data.text import load_text_dataset

    repo = write_repo(tmp_path / "repo")
    calls = []
    real = datasets.load_dataset

    def recording(path, name=None, **kwargs):
        calls.append((path, name))
        return real(str(repo), name=name, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording)
    monkeypatch.setattr(tunelab.core.hub, "hub_reachable", lambda: True)
    dataset = load_text_dataset(DataConfig(dataset="someone/topics", dataset_config="easy"))
    assert calls == [("someone/topics", "easy")] and len(dataset.splits["validation"]) == 18


# --------------------------------------------------------------------------- messy files


def test_tsv_without_quotes_bom_crlf_and_odd_column_names(tmp_path):
    from tunelab.core.config import DataConfig
    from tunelab.data.text import load_text_dataset

    lines = ["\ufeffthe text\t#label"]
    for i in range(30):
        lines.append(f'"quoted start {i} sport red\tsport' if i % 2 else f"plain {i} music blue\tmusic")
    path = tmp_path / "data.tsv"
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    dataset = load_text_dataset(DataConfig(dataset=str(path), text_column="the text", label_column="#label"))
    texts = [t for s in dataset.splits.values() for t in s.texts]
    assert len(texts) == 30 and any(t.startswith('"quoted start') for t in texts)
    assert not any(t.endswith("\r") for t in texts)


@pytest.mark.parametrize("suffix, bad_line", [(".tsv", "only one field"), (".csv", "a,b,c")])
def test_a_row_with_the_wrong_number_of_fields_stops_the_run(tmp_path, suffix, bad_line):
    from tunelab.core.config import DataConfig
    from tunelab.core.errors import DataError
    from tunelab.data.text import load_text_dataset

    sep = "\t" if suffix == ".tsv" else ","
    lines = [f"text{sep}label"] + [f"row {i}{sep}{'ab'[i % 2]}" for i in range(10)]
    lines.insert(6, bad_line)
    path = tmp_path / f"d{suffix}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"d\{suffix}: row 7 has (1|3) fields where the header has 2"):
        load_text_dataset(DataConfig(dataset=str(path)))


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_one_line(tmp_path, capsys, pairs, tiny_bert_dir):
    base = ["probe", "--model", tiny_bert_dir]
    expect_error(capsys, [*base, "--dataset", pairs, "--text-pair-column", "nope"],
                 "no column 'nope' (--text-pair-column)")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps({"text": f"t {i}", "label": ["a"] if i % 2 else "b"}) for i in range(10)))
    expect_error(capsys, [*base, "--dataset", mixed], "mixes lists and single values")
    numbers = write_csv(tmp_path / "n.csv", [(f"t {i}", str(i + 0.5) if i != 3 else "high") for i in range(12)])
    expect_error(capsys, [*base, "--dataset", numbers, "--problem", "regression"],
                 "1 row has a target that is not a finite number ('high'; row 4)")
    nan = write_csv(tmp_path / "nan.csv", [(f"t {i}", "nan" if i == 2 else str(i + 0.5)) for i in range(12)])
    expect_error(capsys, [*base, "--dataset", nan, "--problem", "regression"], "1 row has no label (row 3)")
    expect_error(capsys, [*base, "--dataset", pairs, "--shots", "0"], "data.shots=0 must be a positive number")
    expect_error(capsys, [*base, "--dataset", pairs, "--label-column", "score", "--class-weight", "balanced"],
                 "--class-weight balances classes, and a regression task has none")
    expect_error(capsys, [*base, "--dataset", pairs, "--test-split", "holdout"],
                 "has no split 'holdout' (--test-split); splits here: test, train, validation")


# --------------------------------------------------------------------------- every shape in a study and its report


def test_study_and_report_of_every_shape(pairs, tags, tiny_bert_dir, tmp_path):
    import yaml

    study = {"name": "shapes", "steps": [
        {"name": "pairs", "command": "probe", "model": str(tiny_bert_dir), "data": {"dataset": str(pairs)},
         "classifier": {"kind": "logreg"}},
        {"name": "scores", "command": "probe", "model": str(tiny_bert_dir),
         "data": {"dataset": str(pairs), "label_column": "score"}},
        {"name": "tags", "command": "probe", "model": str(tiny_bert_dir),
         "data": {"dataset": str(tags), "label_column": "tags"}},
    ]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    assert run("run", tmp_path / "s.yaml", "--out", tmp_path / "out") == 0
    text = (tmp_path / "out" / "report.md").read_text()
    for metric in ("| accuracy |", "| spearman |", "| f1_micro |"):
        assert metric in text, metric
    assert "scores-scatter-test.png" in text
