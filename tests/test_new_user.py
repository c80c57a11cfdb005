"""What a new user hits first: help that names config keys and hides what does not apply,
spellings from habit, checks before slow work, honest console lines and per-run numbers."""

import json
import time

import pytest

from tests.conftest import metrics_of, write_csv, write_topic_splits
from tunelab.cli import main


def help_of(capsys, *command) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


def test_help_names_config_keys_presets_and_hides_what_does_not_apply(capsys):
    probe = help_of(capsys, "probe")
    assert "[classifier.kind]" in probe and "lab03-probe" in probe
    assert "--no-cache recomputes them" in probe
    finetune = help_of(capsys, "finetune")
    assert "lab03-finetune" in finetune and "lab03-probe" not in finetune and "--merge-lora" not in finetune
    baseline = help_of(capsys, "baseline")
    assert "--precision" not in baseline and "--device" not in baseline
    zeroshot = help_of(capsys, "zeroshot")
    assert "--class-weight" not in zeroshot and "--pair-encoding" not in zeroshot
    assert "lab03-offline" in help_of(capsys, "run")
    assert "a finished run directory" in help_of(capsys, "predict") and "-- ends the options" in \
        help_of(capsys, "predict").replace("\n", " ").replace("  ", " ")


def test_hugging_face_spellings_and_did_you_mean(tmp_path, capsys):
    from tunelab.cli import parse_command_line

    args = vars(parse_command_line(["finetune", "--learning_rate", "1e-4", "--num_train_epochs=2", "--bf16",
                                    "--output_dir", "x", "--eval_steps", "5"]))
    assert (args["cfg:train.lr"], args["cfg:train.epochs"], args["cfg:runtime.precision"], args["out"],
            args["cfg:train.eval_every"]) == ("1e-4", "2", "bf16", "x", "5")
    with pytest.raises(SystemExit):
        main(["finetune", "--learnin-rate", "1"])
    err = capsys.readouterr().err
    assert "tunelab finetune: error:" in err and "did you mean --lr?" in err and "usage:" not in err
    assert main(["run", "lab03-offline", "--dry-run", "--set", "train.lrr=1"]) == 2
    assert "did you mean train.lr" in capsys.readouterr().err


def test_an_existing_out_is_refused_before_any_data_is_read(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.txt").write_text("mine")
    started = time.perf_counter()
    # A dataset that does not exist: the --out check comes first, so that is what is said.
    assert main(["baseline", "--dataset", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert time.perf_counter() - started < 5


def test_rating_score_and_target_columns_are_labels(tmp_path):
    for column in ("rating", "score", "target"):
        data = write_csv(tmp_path / f"{column}.csv", [(f"text {i} {'up' if i % 2 else 'down'}", i % 2)
                                                      for i in range(40)], header=("text", column))
        out = tmp_path / column
        assert main(["baseline", "--dataset", str(data), "--out", str(out)]) == 0
        assert f"used column '{column}' for label column" in metrics_of(out)["data"]["notes"]


def test_a_run_below_the_majority_class_says_so(tmp_path, caplog):
    rows = [(f"word{i % 7} filler", "big" if i % 10 else "small") for i in range(200)]  # 90% one class
    data = write_csv(tmp_path / "skewed.csv", rows)
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="tunelab"):
        assert main(["baseline", "--kind", "tfidf", "--no-tune", "--C", "1e-6", "--class-weight", "balanced",
                     "--dataset", str(data), "--out", str(out)]) == 0
    metrics = metrics_of(out)
    floors = metrics["data"]["majority_accuracy"]
    assert floors["test"] == pytest.approx(0.9, abs=0.02)
    if metrics["splits"]["test"]["accuracy"] <= floors["test"]:
        assert any("is not above the majority class" in r.message for r in caplog.records)
        assert "is not above the majority class" in (out / "report.md").read_text()


def test_pairs_and_single_texts_are_checked_before_predicting(tmp_path, capsys):
    data = write_topic_splits(tmp_path / "d", 10, 4, 4)
    assert main(["baseline", "--dataset", str(data), "--out", str(tmp_path / "single")]) == 0
    assert main(["predict", str(tmp_path / "single"), "--pair", "a", "b"]) == 2
    assert "trained on single inputs, not pairs" in capsys.readouterr().err
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for split, n in (("train", 30), ("validation", 10), ("test", 10)):
        write_csv(pairs / f"{split}.csv", [(f"a{i % 3}", f"b{i % 3}", i % 2) for i in range(n)],
                  header=("sentence1", "sentence2", "label"))
    assert main(["baseline", "--dataset", str(pairs), "--out", str(tmp_path / "pair-run")]) == 0
    assert main(["predict", str(tmp_path / "pair-run"), "just one text"]) == 2
    err = capsys.readouterr().err
    assert "was trained on sentence pairs (columns sentence1 and sentence2)" in err and "--pair" in err


def test_each_run_of_a_study_reports_its_own_peak_memory(tmp_path):
    """Measured in a fresh process: the test process's own allocations (hundreds of
    tests in) would blur what the reset does."""
    import subprocess
    import sys

    script = """
import json
from tunelab.tasks import metrics_file
from tunelab.tasks.metrics_file import peak_memory, reset_peak_memory

reset_peak_memory()
ballast = bytearray(300 * 2**20)  # 300 MB touched
ballast[::4096] = b"x" * len(ballast[::4096])
high = peak_memory()["peak_rss_mb"]
del ballast
reset_peak_memory()
print(json.dumps([high, peak_memory()["peak_rss_mb"], metrics_file._PEAK_RESET["linux"]]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    high, low, reset = json.loads(done.stdout.strip().splitlines()[-1])
    if reset:  # Linux: the high-water mark starts afresh for the next run
        assert low < high - 200, (low, high)
    else:  # elsewhere the process peak stays
        assert low == high


def test_the_console_says_what_was_decided(tmp_path, caplog):
    data = write_csv(tmp_path / "one.csv", [(f"t{i} {'x' if i % 2 else 'y'}", "a" if i % 2 else "b")
                                            for i in range(40)])
    with caplog.at_level("INFO", logger="tunelab"):
        assert main(["baseline", "--dataset", str(data), "--out", str(tmp_path / "r")]) == 0
    said = "\n".join(r.message for r in caplog.records)
    assert "data: split the data (no split files or folders) 80/10/10" in said
    assert "splits: train 32, validation 4, test 4" in said
    assert "report: " in said and json.loads((tmp_path / "r" / "metrics.json").read_text())


def test_the_probe_pools_as_the_model_was_trained_and_says_so(tiny_bert_dir, tmp_path, caplog):
    import logging
    import shutil

    from tunelab.encoders.text import declared_pooling
    from tunelab.models.resolve import resolve_model

    data = write_topic_splits(tmp_path / "topics", 10, 4, 4)
    folder = shutil.copytree(tiny_bert_dir, tmp_path / "st-model")
    assert declared_pooling(resolve_model(str(folder))) is None
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "x.Transformer"},
                                                      {"idx": 1, "path": "1_Pooling", "type": "x.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                                  "pooling_mode_cls_token": False}))
    with caplog.at_level(logging.INFO, logger="tunelab"):
        assert main(["probe", "--model", str(folder), "--dataset", str(data), "--out", str(tmp_path / "p")]) == 0
    assert metrics_of(tmp_path / "p")["task"]["features"]["pooling"] == "mean"
    assert "pooling: mean (the pooling this sentence-transformers model was trained with" in caplog.text
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(data), "--out", str(tmp_path / "c")]) == 0
    assert metrics_of(tmp_path / "c")["task"]["features"]["pooling"] == "cls"


def test_a_dry_run_checks_what_the_real_run_checks_and_counts_trials(tmp_path, capsys, monkeypatch):
    import yaml

    from tunelab.core.errors import TunelabError

    data = write_topic_splits(tmp_path / "topics", 10, 4, 4)
    steps = [{"name": "floor", "command": "baseline", "kind": "majority", "data": {"dataset": str(data)}},
             {"name": "tf", "command": "baseline", "kind": "tfidf", "tune": False, "data": {"dataset": str(data)},
              "search": {"space": {"c": [0.1, 1.0, 10.0]}, "trials": 5, "sampler": "grid"}}]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "steps": steps}))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "search: 3 trials over c, then tf-best" in out and "5 runs in 2 steps" in out
    steps[0]["trian"] = {"max_steps": 3}
    path.write_text(yaml.safe_dump({"name": "s", "steps": steps}))
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "unknown setting 'trian'" in capsys.readouterr().err
    steps[0].pop("trian")
    path.write_text(yaml.safe_dump({"name": "s", "steps": steps}))

    def no_optuna():
        raise TunelabError("a search needs Optuna: pip install optuna")

    monkeypatch.setattr("tunelab.study.spec.load_optuna", no_optuna)
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "a search needs Optuna" in capsys.readouterr().err


def test_a_collapsed_run_is_warned_about():
    from tunelab.problems.metrics import below_majority

    metrics = {"command": "finetune", "data": {"majority_accuracy": {"test": 0.2417}},
               "splits": {"test": {"accuracy": 0.25, "balanced_accuracy": 0.17, "classes_present": 6,
                                   "classes_predicted": 1, "n": 500}}}
    assert any("predicts one class for every example" in w for w in below_majority(metrics))
    metrics["splits"]["test"]["classes_predicted"] = 3
    assert any("at chance" in w for w in below_majority(metrics))
    metrics["splits"]["test"]["balanced_accuracy"] = 0.6
    assert below_majority(metrics) == []


def test_zero_shot_on_images_refuses_shots_and_parser_errors_are_one_line(colour_folder, tiny_clip_dir, capsys):
    assert main(["zeroshot", "--model", str(tiny_clip_dir), "--dataset", str(colour_folder), "--shots", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "image zero-shot learns from none" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["probe", "--lerning-rate", "1"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "usage:" not in err and "unrecognized arguments" in err


def test_a_probe_model_names_its_encoder_and_model_files_are_shareable(tiny_bert_dir, tmp_path):
    data = write_topic_splits(tmp_path / "topics", 10, 4, 4)
    run = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(data), "--out", str(run)]) == 0
    record = json.loads((run / "model" / "predictor.json").read_text())
    assert record["pooling"] == "cls" and record["encoder"]["location"] == str(tiny_bert_dir.resolve())
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in (run / "model").rglob("*") if path.is_file())
