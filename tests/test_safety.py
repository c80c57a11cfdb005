"""Reliability and safety: tunelab never deletes what it did not create, never runs code
from a run directory, never reports a wrong number silently. Each test reproduces a
failure found in review."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import save_tiny_distilbert, topic_rows, write_colour_images, write_csv
from tunelab.cli import main


def metrics_of(run):
    return json.loads((Path(run) / "metrics.json").read_text())


def expect_error(capsys, args, message, code=2):
    assert main([str(a) for a in args]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunelab: error: ") and message in err, err
    assert len(err.splitlines()) == 1


def probe_args(model, data, out, *extra):
    return ["probe", "--model", model, "--dataset", data, "--out", out, "--classifier", "logreg", *extra]


@pytest.fixture
def probe_run(tiny_bert_dir, topic_folder, tmp_path):
    out = tmp_path / "run"
    assert main([str(a) for a in probe_args(tiny_bert_dir, topic_folder, out)]) == 0
    return out


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 1. deleting outside the run


def test_overwrite_refuses_a_folder_tunelab_did_not_create(capsys, tiny_bert_dir, topic_folder, tmp_path):
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "notes.txt").write_text("my notes\n")
    (project / "config.yaml").write_text("mine: true\n")  # looks like a run, is not one
    before = tree(project)
    expect_error(capsys, probe_args(tiny_bert_dir, topic_folder, project, "--overwrite"),
                 "was not created by tunelab")
    assert tree(project) == before


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../victim", "..", "a/b", ""])
def test_step_names_are_plain_names(tmp_path, name, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    study = {"name": "s", "steps": [{"name": name, "command": "probe", "model": "m", "data": {"dataset": "d"}}]}
    (tmp_path / "study" ).mkdir()
    path = tmp_path / "study" / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    expect_error(capsys, ["run", path, "--out", tmp_path / "study" / "out"], "is not a plain name")
    assert (victim / "keep.txt").read_text() == "keep"


def test_study_rerun_never_deletes_a_folder_it_did_not_create(tmp_path, tiny_bert_dir, topic_folder):
    root = tmp_path / "study"
    (root / "probe").mkdir(parents=True)
    (root / "probe" / "precious.txt").write_text("mine")
    study = {"name": "s", "steps": [{"name": "probe", "command": "probe", "model": str(tiny_bert_dir),
                                     "data": {"dataset": str(topic_folder)}, "classifier": {"kind": "logreg"}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--out", str(root)]) == 2  # the folder is the user's: refused whole
    assert not (root / "study.json").exists() and not (root / ".tunelab-run").exists()
    from tunelab.core.safety import lock_run_directory

    (root / "probe" / "precious.txt").rename(tmp_path / "precious.txt")
    (root / "probe").rmdir()
    lock_run_directory(root).close()  # a study directory tunelab made, with a user's folder planted in it
    (root / "probe").mkdir()
    (tmp_path / "precious.txt").rename(root / "probe" / "precious.txt")
    assert main(["run", str(path), "--out", str(root)]) == 1
    status = json.loads((root / "study.json").read_text())["steps"][0]
    assert status["status"] == "failed" and "not created by tunelab" in status["detail"]
    assert (root / "probe" / "precious.txt").read_text() == "mine"


def test_a_failed_overwrite_keeps_the_old_run(capsys, probe_run, tiny_bert_dir, topic_folder, monkeypatch):
    import tunelab.tasks.lifecycle as evaluation  # the lifecycle calls evaluate_split

    before = tree(probe_run)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evaluation, "evaluate_split", boom)  # the one evaluation of every task
    assert main([str(a) for a in probe_args(tiny_bert_dir, topic_folder, probe_run, "--overwrite")]) == 1
    assert tree(probe_run) == before
    assert not list(probe_run.parent.glob(".run.tunelab-*"))  # no staging left behind
    monkeypatch.undo()
    assert main([str(a) for a in probe_args(tiny_bert_dir, topic_folder, probe_run, "--overwrite",
                                            "--seed", "5")]) == 0
    assert yaml.safe_load((probe_run / "config.yaml").read_text())["seed"] == 5
    assert not list(probe_run.parent.glob(".run.tunelab-*"))


def test_a_model_that_fails_to_load_touches_nothing(capsys, probe_run, topic_folder, tmp_path):
    broken = save_tiny_distilbert(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\0" * 16)  # torn weights
    before = tree(probe_run)
    expect_error(capsys, probe_args(broken, topic_folder, probe_run, "--overwrite"), "cannot load")
    assert tree(probe_run) == before
    fresh = tmp_path / "fresh"
    expect_error(capsys, probe_args(broken, topic_folder, fresh), "cannot load")
    assert not fresh.exists()


def test_a_locked_run_directory_is_refused(capsys, probe_run, tiny_bert_dir, topic_folder):
    from tunelab.core.safety import lock_run_directory

    holder = lock_run_directory(probe_run)  # as another process writing there would
    try:
        expect_error(capsys, probe_args(tiny_bert_dir, topic_folder, probe_run, "--overwrite"),
                     "another tunelab process is writing to")
    finally:
        holder.close()
    assert main([str(a) for a in probe_args(tiny_bert_dir, topic_folder, probe_run, "--overwrite")]) == 0


# --------------------------------------------------------------------------- 2. caps that lose a class


def many_classes_file(path: Path) -> Path:
    """12 classes; 'rare' has a single example, so a proportional cap would drop it."""
    rows = [(f"{word} {word} story {i}", word) for word in
            ("red", "green", "blue", "cat", "dog", "bird", "apple", "pear", "plum", "sport", "music")
            for i in range(30)]
    rows.append(("science science story", "rare"))
    return write_csv(path, rows)


def test_a_capped_train_split_keeps_every_class(tiny_bert_dir, tmp_path):
    data = many_classes_file(tmp_path / "d.csv")
    out = tmp_path / "run"
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(data), "--out", str(out),
                 "--max-train-samples", "40", "--classifier", "logreg"]) == 0
    metrics = metrics_of(out)
    assert metrics["data"]["sizes"]["train"] == 40
    for values in metrics["splits"].values():
        assert values["top5_accuracy"] >= values["accuracy"]


def test_a_cap_below_the_number_of_classes_is_refused(tmp_path):
    from tunelab.core.config import DataConfig
    from tunelab.core.errors import DataError
    from tunelab.data.text import load_text_dataset

    with pytest.raises(DataError, match="cannot keep one example of each of the 12 classes"):
        load_text_dataset(DataConfig(dataset=str(many_classes_file(tmp_path / "d.csv")), max_train_samples=5))


def test_scores_map_through_the_estimators_own_classes():
    """An estimator that never saw class 1 of 4: its columns land on classes 0, 2, 3."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    from tunelab.problems.base import class_scores
    from tunelab.problems.scores import ClassScores

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[[0, 2, 3]] * 4, 20, axis=0)
    y = np.repeat([0, 2, 3], 20)
    for estimator in (LogisticRegression(max_iter=500).fit(x, y), SVC().fit(x, y)):
        full, kind = class_scores(estimator, x, 4)
        assert full.shape == (60, 4)
        scores = ClassScores.from_full(full, kind, predicted=estimator.predict(x))
        np.testing.assert_array_equal(scores.predicted, estimator.predict(x))
        assert (scores.predicted != 1).all() and (scores.top_indices[:, 0] == scores.predicted).all()


def test_top5_never_below_top1_when_prediction_and_scores_disagree():
    """An SVC votes one-vs-one but scores one-vs-rest: the vote leads the top-k list."""
    from tunelab.problems.metrics import classification_metrics
    from tunelab.problems.scores import ClassScores

    scores = np.tile(np.arange(12, dtype=float), (4, 1))  # class 11 scores best everywhere
    predicted = np.array([0, 1, 2, 3])  # the votes say otherwise
    result = ClassScores.from_full(scores, "decision", predicted=predicted)
    assert (result.top_indices[:, 0] == predicted).all() and result.top_indices.shape == (4, 5)
    metrics = classification_metrics(predicted, result.predicted, 12, top_indices=result.top_indices)
    assert metrics["accuracy"] == metrics["top5_accuracy"] == 1.0


# --------------------------------------------------------------------------- 3. code from a run directory


def test_no_code_from_a_run_directory_runs_even_when_asked(tiny_bert_dir, topic_folder, tmp_path):
    run = tmp_path / "ft"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--dataset", str(topic_folder), "--out", str(run),
                 "--max-steps", "2", "--eval-every", "2", "--batch-size", "8"]) == 0
    model_dir = run / "model"
    ran = tmp_path / "code-ran"
    (model_dir / "evil.py").write_text(f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n"
                                       "from transformers import DistilBertConfig\n"
                                       "class EvilConfig(DistilBertConfig):\n    model_type = 'evil'\n")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                               "AutoModelForSequenceClassification": "evil.EvilConfig"})
    (model_dir / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilConfig", None]}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    done = subprocess.run([sys.executable, "-m", "tunelab", "predict", str(run), "sport red film"],
                          input="y\ny\ny\n", capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert not ran.exists(), "code shipped in the run directory was executed"
    assert done.returncode != 0 and "cannot load" in done.stderr


# --------------------------------------------------------------------------- 4. resume from a torn checkpoint


def write_checkpoint(folder: Path, step: int, torn: str | None = None) -> Path:
    from safetensors.numpy import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": np.ones((64, 64), dtype=np.float32)}, str(path / "model.safetensors"))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if torn == "weights":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif torn == "state":
        (path / "trainer_state.json").write_text('{"global_st')
    elif torn == "missing":
        (path / "model.safetensors").unlink()
    return path


@pytest.mark.parametrize("torn", ["weights", "state", "missing"])
def test_resume_falls_back_past_a_torn_checkpoint(tmp_path, torn):
    from tunelab.training.trainer import last_complete_checkpoint

    good = write_checkpoint(tmp_path, 50)
    write_checkpoint(tmp_path, 100, torn=torn)
    assert last_complete_checkpoint(tmp_path) == good
    assert last_complete_checkpoint(tmp_path / "none") is None


def test_sharded_checkpoint_needs_every_shard(tmp_path):
    from tunelab.training.trainer import checkpoint_problem

    path = write_checkpoint(tmp_path, 10)
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert checkpoint_problem(path) == "model-00002-of-00002.safetensors is missing"


# --------------------------------------------------------------------------- 5. unreadable cache entries


def test_an_empty_cache_file_is_recomputed(tiny_bert_dir, tmp_path):
    from tunelab.core.config import RuntimeConfig
    from tunelab.encoders.features import FeatureCache, cached_features
    from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor
    from tunelab.models.resolve import resolve_model

    extractor = TextFeatureExtractor(resolve_model(str(tiny_bert_dir)), FeatureConfig(), RuntimeConfig())
    cache = FeatureCache(tmp_path)
    texts = ["good film", "bad film", "a dog"]
    first, _ = cached_features(extractor, texts, "x", cache)
    cache.path(extractor.cache_key(texts)).write_bytes(b"")  # a crash left a 0-byte entry
    again, hit = cached_features(extractor, texts, "x", cache)
    assert hit is False
    np.testing.assert_array_equal(again, first)
    assert cached_features(extractor, texts, "x", cache)[1] is True  # rewritten whole


def test_probe_survives_an_empty_cache_file(tiny_bert_dir, topic_folder, tmp_path, probe_run):
    from tunelab.core.provenance import cache_dir

    for entry in (cache_dir() / "features").glob("*.npy"):
        entry.write_bytes(b"")
    out = tmp_path / "again"
    assert main([str(a) for a in probe_args(tiny_bert_dir, topic_folder, out)]) == 0
    assert metrics_of(out)["splits"] == metrics_of(probe_run)["splits"]


# --------------------------------------------------------------------------- 7. predict uses the recorded model


def test_predict_uses_the_model_the_run_recorded(tiny_bert_dir, topic_folder, tmp_path, monkeypatch, capsys):
    import shutil

    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_bert_dir, first / "encoder")
    save_tiny_distilbert(second / "encoder", seed=7)  # another model under the same relative name
    monkeypatch.chdir(first)
    run = tmp_path / "run"
    assert main(["probe", "--model", "encoder", "--dataset", str(topic_folder), "--out", str(run),
                 "--classifier", "logreg", "--splits", "test"]) == 0
    recorded = json.loads((run / "inputs.json").read_text())["model"]
    assert recorded["location"] == str((first / "encoder").resolve()) and recorded["fingerprint"]
    rows = (run / "predictions" / "test.csv").read_text().splitlines()
    text, expected = rows[1].split(",")[1], rows[1].split(",")[3]
    monkeypatch.chdir(second)
    capsys.readouterr()
    assert main(["predict", str(run), text]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[0] == expected
    (first / "encoder" / "tokenizer_config.json").write_text(
        (first / "encoder" / "tokenizer_config.json").read_text() + "\n")
    expect_error(capsys, ["predict", run, text], "changed since")


# --------------------------------------------------------------------------- 8. report stays inside runs


def test_report_never_reads_outside_a_run_directory(probe_run, tmp_path):
    from tunelab.report.document import write_report

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret bytes outside every run")
    (probe_run / "confusion_test.png").unlink()
    (probe_run / "confusion_test.png").symlink_to(secret)
    (probe_run / "config.yaml").rename(probe_run / "config.real")
    (probe_run / "config.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    (tmp_path / "elsewhere.yaml").write_text("secret_setting: outside\n")
    study = tmp_path / "study"
    study.mkdir()
    outside_run = tmp_path / "outside"
    outside_run.mkdir()
    (outside_run / "metrics.json").write_text((probe_run / "metrics.json").read_text())
    (outside_run / "config.yaml").write_text("command: probe\n")
    (study / "linked").symlink_to(outside_run)
    _, html = write_report([probe_run, study], tmp_path / "r.md")
    page = html.read_text()
    import base64

    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert "secret_setting" not in page and "linked" not in page


# --------------------------------------------------------------------------- 9. stale reuse


def test_fingerprints_cover_tokenizer_files_and_every_shard(tiny_bert_dir, tmp_path):
    import shutil

    from tunelab.models.resolve import resolve_model

    model = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, model)
    fingerprints = {resolve_model(str(model)).fingerprint()}
    (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text() + "\n")
    fingerprints.add(resolve_model(str(model)).fingerprint())
    (model / "model-00002-of-00002.safetensors").write_bytes(b"x")
    fingerprints.add(resolve_model(str(model)).fingerprint())
    assert len(fingerprints) == 3


def test_study_redoes_a_step_whose_data_changed(tmp_path, tiny_bert_dir):
    data = tmp_path / "topics"
    write_csv(data / "train.csv", topic_rows(20, seed=1))
    write_csv(data / "test.csv", topic_rows(6, seed=2))
    study = {"name": "s", "steps": [{"name": "probe", "command": "probe", "model": str(tiny_bert_dir),
                                     "data": {"dataset": str(data)}, "classifier": {"kind": "logreg"}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    root = tmp_path / "out"

    def status():
        return json.loads((root / "study.json").read_text())["steps"][0]["status"]

    assert main(["run", str(path), "--out", str(root)]) == 0 and status() == "completed"
    assert main(["run", str(path), "--out", str(root)]) == 0 and status() == "reused"
    write_csv(data / "test.csv", topic_rows(7, seed=2))
    assert main(["run", str(path), "--out", str(root)]) == 0 and status() == "completed"
    assert metrics_of(root / "probe")["splits"]["test"]["n"] == 21


# --------------------------------------------------------------------------- 10. smaller holes


def test_unknown_study_set_keys_are_refused(tmp_path, capsys, tiny_bert_dir, topic_folder):
    study = {"name": "s", "variables": {"encoder": "x"},
             "steps": [{"name": "probe", "command": "probe", "model": "${encoder}", "data": {"dataset": "d"}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    expect_error(capsys, ["run", path, "--set", "encodr=minilm"], "'encodr' is not a variable of this study")
    expect_error(capsys, ["run", path, "--set", "data.datset=x"], "'data.datset' is not a variable")


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--warmup", "nan"), ("--epochs", "inf"),
                                         ("--lr", "-1")])
def test_non_finite_numbers_fail_at_once(capsys, topic_folder, flag, value):
    expect_error(capsys, ["finetune", "--dataset", topic_folder, flag, value], value)


@pytest.mark.parametrize("missing", ["NaN", "null", "N/A", "#N/A"])
def test_missing_label_markers_are_not_classes(tmp_path, missing):
    from tunelab.core.config import DataConfig
    from tunelab.core.errors import DataError
    from tunelab.data.text import load_text_dataset

    rows = topic_rows(10) + [("an unlabelled text", missing)]
    with pytest.raises(DataError, match="1 row has no label"):
        load_text_dataset(DataConfig(dataset=str(write_csv(tmp_path / "d.csv", rows))))


def test_image_folder_mixing_split_and_other_folders_is_refused(tmp_path):
    from tunelab.core.config import DataConfig
    from tunelab.core.errors import DataError
    from tunelab.data.images import load_image_dataset

    for name in ("train", "test", "extra"):
        write_colour_images(tmp_path / "d" / name, 2)
    with pytest.raises(DataError, match=r"mixes split folders \(test, train\) with other folders \(extra\)"):
        load_image_dataset(DataConfig(dataset=str(tmp_path / "d")))


def test_only_split_file_names_are_splits(tmp_path):
    from tunelab.core.config import DataConfig
    from tunelab.data.sources import split_name_of
    from tunelab.data.text import load_text_dataset

    assert [split_name_of(s) for s in ("train", "train-00000-of-00002", "dev", "train_old", "testing_notes")] == \
        ["train", "train", "validation", None, None]
    folder = tmp_path / "d"
    write_csv(folder / "train.csv", topic_rows(10, seed=1))
    write_csv(folder / "train_old.csv", [("stale text", "stale")] * 50)
    write_csv(folder / "test.csv", topic_rows(4, seed=2))
    dataset = load_text_dataset(DataConfig(dataset=str(folder)))
    assert dataset.class_names == ["music", "science", "sport"]
    assert sum(len(s) for s in dataset.splits.values()) == 42
    assert any("ignored train_old.csv" in note for note in dataset.notes)


def test_unusable_feature_rows_are_recorded(tiny_bert_dir, topic_folder, tmp_path, monkeypatch):
    from tunelab.encoders.text import TextFeatureExtractor

    encode = TextFeatureExtractor.encode_all

    def with_a_nan_row(self, texts, desc="features"):
        vectors = encode(self, texts, desc)
        if "test" in desc:
            vectors[0] = np.nan
        return vectors

    monkeypatch.setattr(TextFeatureExtractor, "encode_all", with_a_nan_row)
    out = tmp_path / "nan"
    assert main([str(a) for a in probe_args(tiny_bert_dir, topic_folder, out, "--no-cache")]) == 0
    metrics = metrics_of(out)
    assert metrics["skipped"] == {"count": 1, "files": ["1"]}  # the first data row of test.csv
    assert metrics["splits"]["test"]["n"] == 23 and metrics["splits"]["validation"]["n"] == 24


def test_positive_class_is_recorded(tiny_bert_dir, tmp_path):
    rows = [(text, "yes" if label == "sport" else "no") for text, label in topic_rows(10)]
    out = tmp_path / "bin"
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(write_csv(tmp_path / "b.csv", rows)),
                 "--out", str(out), "--positive-label", "no"]) == 0
    data = metrics_of(out)["data"]
    assert data["class_names"] == ["yes", "no"] and data["positive_class"] == "no"


def test_run_files_are_readable_by_others(probe_run):
    for name in ("metrics.json", "config.yaml", "report.md"):
        assert (probe_run / name).stat().st_mode & 0o777 == 0o644


def test_minimum_versions_exclude_known_unsafe_loaders():
    import re

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floors = dict(re.findall(r'"([a-z-]+)>=([0-9.]+)"', text))
    version = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
    assert version(floors["torch"]) >= (2, 6)
    assert version(floors["skops"]) >= (0, 13)
    assert version(floors["transformers"]) >= (4, 56)


def test_files_fingerprint_is_the_sorted_walk_of_every_file(tmp_path):
    """The fast walk gives the digest of the plain definition (every file under the root,
    links to files followed, links to folders not entered, sorted by path parts), so
    fingerprints recorded by earlier runs still match."""
    import hashlib
    import os

    from tunelab.core.provenance import files_fingerprint

    root = tmp_path / "d"
    (root / "a" / "b").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "a" / "b" / "f").write_text("1")
    (root / "real" / "g").write_text("22")
    (root / "a-c").write_text("333")
    os.symlink("../real", root / "a" / "linkdir")
    os.symlink("real/g", root / "linkfile")
    os.symlink("nowhere", root / "broken")

    def plain(folder):
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:20]

    assert files_fingerprint(root) == plain(root)
    before = files_fingerprint(root)
    (root / "a" / "b" / "f").write_text("changed")
    assert files_fingerprint(root) != before
