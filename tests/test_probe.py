"""The probe end to end through the CLI, on a tiny random model."""

import csv
import json

import numpy as np
import pytest
import yaml

from tests.conftest import write_csv
from tunelab.cli import main
from tunelab.problems.metrics import classification_metrics

CONTRACT_FILES = ["config.yaml", "command.txt", "metrics.json", "report.md", "model/classifier.skops",
                  "predictions/validation.csv", "predictions/test.csv",
                  "confusion_validation.json", "confusion_validation.png", "confusion_test.png"]


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.fixture
def probe_run(tiny_bert_dir, topic_folder, tmp_path):
    out = tmp_path / "run"
    assert run_cli("probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--out", out,
                   "--classifier", "logreg", "--pooling", "mean") == 0
    return out


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_probe_writes_the_contract(probe_run):
    for name in CONTRACT_FILES:
        assert (probe_run / name).is_file(), name
    assert list(probe_run.glob("events.out.tfevents.*"))
    metrics = json.loads((probe_run / "metrics.json").read_text())
    assert metrics["command"] == "probe" and set(metrics["splits"]) == {"validation", "test"}
    for values in metrics["splits"].values():
        assert {"accuracy", "precision", "recall", "f1", "precision_macro", "recall_macro", "f1_macro"} <= set(values)
        assert values["n"] == 24
    assert metrics["params"]["trainable"] == 0 and metrics["params"]["total"] > 10_000
    assert set(metrics["timing"]["seconds"]) == {"features", "train", "eval", "total"}
    assert metrics["environment"]["device"] == "cpu"
    assert "| validation | 24 |" in (probe_run / "report.md").read_text()


def test_predictions_csv_agrees_with_metrics(probe_run):
    metrics = json.loads((probe_run / "metrics.json").read_text())
    rows = read_csv(probe_run / "predictions" / "test.csv")
    assert list(rows[0])[:5] == ["id", "text", "label", "prediction", "probability"]
    names = ["music", "science", "sport"]
    y_true = np.array([names.index(r["label"]) for r in rows])
    y_pred = np.array([names.index(r["prediction"]) for r in rows])
    recomputed = classification_metrics(y_true, y_pred, 3)
    for key in ("accuracy", "f1", "f1_macro", "precision_macro"):
        assert recomputed[key] == pytest.approx(metrics["splits"]["test"][key])
    probs = np.array([[float(r[f"probability_{n}"]) for n in names] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    confusion = json.loads((probe_run / "confusion_test.json").read_text())
    assert np.trace(np.array(confusion["matrix"])) == round(metrics["splits"]["test"]["accuracy"] * 24)


def test_saved_config_reruns_to_the_same_metrics(probe_run, tmp_path):
    config = yaml.safe_load((probe_run / "config.yaml").read_text())
    assert config["command"] == "probe" and config["classifier"]["kind"] == "logreg"
    again = tmp_path / "again"
    assert run_cli("probe", "--config", probe_run / "config.yaml", "--out", again) == 0
    first = json.loads((probe_run / "metrics.json").read_text())["splits"]
    second = json.loads((again / "metrics.json").read_text())
    assert second["splits"] == first
    assert all(second["task"]["features"]["from_cache"].values())  # the identical rerun reused features


def test_no_cache_recomputes(probe_run, tiny_bert_dir, topic_folder, tmp_path):
    out = tmp_path / "fresh"
    assert run_cli("probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--out", out,
                   "--classifier", "logreg", "--pooling", "mean", "--no-cache") == 0
    assert not any(json.loads((out / "metrics.json").read_text())["task"]["features"]["from_cache"].values())


def test_svc_tune_and_multiclass(tiny_bert_dir, topic_folder, tmp_path):
    out = tmp_path / "svc"
    assert run_cli("probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--out", out,
                   "--tune", "--standardize", "--set", "classifier.c_grid=[0.1,10]") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    tuning = metrics["task"]["classifier"]["tuning"]
    assert tuning["chosen"] in (0.1, 10.0) and set(tuning["scores"]) == {"0.1", "10.0"}
    assert metrics["task"]["classifier"]["score"] == "decision"
    assert "Tuned C on validation accuracy" in (out / "report.md").read_text()


def test_predict_round_trip(probe_run, capsys):
    rows = read_csv(probe_run / "predictions" / "validation.csv")
    texts = [r["text"] for r in rows]
    input_file = probe_run.parent / "inputs.csv"
    write_csv(input_file, [(t, "") for t in texts])
    output = probe_run.parent / "out.csv"
    assert run_cli("predict", probe_run, "--input", input_file, "--output", output) == 0
    predicted = read_csv(output)
    assert [p["prediction"] for p in predicted] == [r["prediction"] for r in rows]
    np.testing.assert_allclose([float(p["probability"]) for p in predicted],
                               [float(r["probability"]) for r in rows], atol=1e-4)
    capsys.readouterr()
    assert run_cli("predict", probe_run, texts[0]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[0] == rows[0]["prediction"]


def test_python_api(tiny_bert_dir, topic_folder, tmp_path):
    import tunelab
    from tunelab.core.config import DataConfig

    config = tunelab.ProbeConfig(model=str(tiny_bert_dir), data=DataConfig(dataset=str(topic_folder),
                                 splits=["test"]))
    result = tunelab.probe(config, out=tmp_path / "api")
    assert isinstance(result, tunelab.RunResult)
    assert set(result.metrics["splits"]) == {"test"}
    assert (result.run_dir / "predictions" / "test.csv").is_file()
    assert not (result.run_dir / "predictions" / "validation.csv").exists()


def test_rt_with_tiny_model_and_caps(need_rt, tiny_bert_dir, tmp_path):
    out = tmp_path / "rt"
    assert run_cli("probe", "--model", tiny_bert_dir, "--dataset", "rotten_tomatoes", "--out", out,
                   "--max-train-samples", 200, "--max-eval-samples", 60) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"]["test"]["n"] == 60 and metrics["data"]["sizes"]["train"] == 200
    assert metrics["data"]["class_names"] == ["neg", "pos"]
    rows = read_csv(out / "predictions" / "test.csv")
    assert rows[0]["id"].startswith("rt-polarity.")
    assert {"decision_neg", "decision_pos"} <= set(rows[0])


# --------------------------------------------------------------------------- bad input via the CLI


def expect_error(capsys, args, message, code=2):
    assert run_cli(*args) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunelab: error: "), err
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_dataset(capsys, tiny_bert_dir, tmp_path):
    expect_error(capsys, ["probe", "--model", tiny_bert_dir, "--dataset", tmp_path / "none"],
                 "not found")


def test_data_errors_come_before_the_model_loads(capsys, tmp_path, topic_folder, tiny_bert_dir, monkeypatch):
    import tunelab.encoders.text as features

    calls = []

    def boom(*a, **k):
        calls.append(a)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(features, "load_text_encoder", boom)  # where the extractor looks it up
    # A control: with good data the (patched) loader is reached.
    assert run_cli("probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--out", tmp_path / "c") == 1
    assert calls and "the model was loaded" in capsys.readouterr().err
    calls.clear()
    write_csv(topic_folder / "train.csv", [("ok", "a"), ("", "b")] * 5)
    expect_error(capsys, ["probe", "--model", tiny_bert_dir, "--dataset", topic_folder,
                          "--out", tmp_path / "o"], "5 train rows have empty or non-text text")
    assert not calls and not (tmp_path / "o").exists()


def test_model_dir_without_model(capsys, tmp_path, topic_folder):
    (tmp_path / "empty").mkdir()
    expect_error(capsys, ["probe", "--model", tmp_path / "empty", "--dataset", topic_folder],
                 "holds no usable model (no config.json)")


def test_hub_model_offline(capsys, topic_folder, tmp_path):
    expect_error(capsys, ["probe", "--model", "no-such-org/no-such-model", "--dataset", topic_folder,
                          "--out", tmp_path / "o"],
                 "cannot fetch model 'no-such-org/no-such-model' from the Hugging Face hub (offline mode is set); "
                 "pass a local directory")


def test_wrong_model_type(capsys, tmp_path, topic_folder):
    from transformers import CLIPConfig

    folder = tmp_path / "clip"
    folder.mkdir()
    CLIPConfig().save_pretrained(folder)
    expect_error(capsys, ["probe", "--model", folder, "--dataset", topic_folder, "--out", tmp_path / "o"],
                 "is a clip model; text probes need a text encoder")


def test_existing_run_is_not_overwritten(capsys, probe_run, tiny_bert_dir, topic_folder):
    before = (probe_run / "metrics.json").read_bytes()
    expect_error(capsys, ["probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--out", probe_run],
                 "already holds files; choose a new directory or pass --overwrite")
    assert (probe_run / "metrics.json").read_bytes() == before


def test_failed_run_leaves_no_metrics(capsys, tiny_bert_dir, topic_folder, tmp_path, monkeypatch):
    import tunelab.tasks.lifecycle as lifecycle

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(lifecycle, "evaluate_split", boom)  # the one evaluation of every task
    out = tmp_path / "o"
    assert run_cli("probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--out", out) == 1
    assert "unexpected error: RuntimeError: disk full" in capsys.readouterr().err
    assert not out.exists()  # nothing half-made is left behind
    assert not list(tmp_path.glob(".o.tunelab-*"))


def test_bad_flag_value(capsys, topic_folder):
    expect_error(capsys, ["probe", "--dataset", topic_folder, "--set", "features.pooling=max"],
                 "features.pooling='max' is not valid; choose one of: cls, mean")


def test_tune_with_an_empty_grid(capsys, tiny_bert_dir, topic_folder, tmp_path):
    expect_error(capsys, ["probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--tune",
                          "--out", tmp_path / "o", "--set", "classifier.c_grid=[]"], "c_grid is empty")


def test_tune_without_validation():
    from tunelab.core.errors import TunelabError
    from tunelab.models.classifiers import ClassifierConfig, fit_classifier

    x, y = np.random.default_rng(0).normal(size=(12, 3)), np.array([0, 1] * 6)
    with pytest.raises(TunelabError, match="picks C on the validation split, and this dataset has none"):
        fit_classifier(ClassifierConfig(tune=True), x, y, None, None)
    estimator, tuning = fit_classifier(ClassifierConfig(tune=True, c_grid=[0.5, 2.0]), x, y, x, y)
    assert tuning["chosen"] in (0.5, 2.0) and set(tuning["scores"]) == {"0.5", "2.0"}


def test_wandb_asked_for_but_not_installed_stops_at_once(tiny_bert_dir, topic_folder, tmp_path, monkeypatch,
                                                         capsys):
    import importlib.util

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    if importlib.util.find_spec("wandb") is not None:
        assert run_cli("probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--out", out, "--wandb") == 0
        assert (out / "metrics.json").is_file()
        return
    assert run_cli("probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--out", out, "--wandb") == 2
    err = capsys.readouterr().err.strip()
    assert "--wandb needs the wandb package: pip install wandb" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_predict_reads_a_text_file(probe_run, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("sport red film\n\nmusic blue story\n")
    capsys.readouterr()
    assert run_cli("predict", probe_run, "--input", tmp_path / "in.txt") == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.split("\t") in (["prediction", "probability", "input"], ["prediction", "decision value", "input"])
    assert [line.split("\t")[2] for line in lines] == ["sport red film", "music blue story"]
    assert all(line.split("\t")[0] in ("music", "science", "sport") for line in lines)
