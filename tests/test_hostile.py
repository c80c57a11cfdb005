"""What a hostile folder, a changed search and a torn file could still do: each test
reproduces one way a report, a search, a study or predict could write outside its
folder, reuse stale work, or report a wrong number as right, and checks that it now
stops in one line or leaves the run out and says why."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import metrics_of, rows_of, topic_rows, write_csv, write_topic_splits
from tests.test_trust import expect_error, write_study
from tunelab.cli import main
from tunelab.core.errors import ConfigError, TunelabError


@pytest.fixture
def topics(tmp_path):
    return write_topic_splits(tmp_path / "topics", 20, 6, 10)


@pytest.fixture
def study_dir(tmp_path, topics):
    out = tmp_path / "study"
    assert main(["run", str(write_study(tmp_path / "s.yaml", topics)), "--out", str(out)]) == 0
    return out


# --------------------------------------------------------------------------- names from files become no paths


def test_a_search_record_cannot_make_report_write_outside_its_folder(study_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.png").write_bytes(b"mine")
    record = {"step": "x/../../../victim/keep", "spec": {"metric": "validation.accuracy", "space": {"c": {}}},
              "trials": [{"number": 0, "run": "x", "state": "complete", "value": 0.5, "params": {}}], "counts": {}}
    (study_dir / "x.search.json").write_text(json.dumps(record))
    out = study_dir / "out" / "report.md"
    assert main(["report", str(study_dir), "--out", str(out)]) == 0
    assert (victim / "keep.png").read_bytes() == b"mine"
    text = out.read_text()
    assert "x.search.json: left out" in text and "not the plain name" in text
    assert all(p.resolve().is_relative_to(out.parent.resolve()) for p in (out.parent / "report_files").iterdir())


def test_report_images_get_plain_names_whatever_they_are_built_from():
    from tunelab.report.render import Document

    doc = Document()
    doc.image("../../../etc/x.png", b"1", "a")
    doc.image("run-scatter-../../y.png", b"2", "b")
    doc.image("../../../etc/x.png", b"3", "c")
    names = [block[1] for block in doc.blocks]
    assert all("/" not in n and not n.startswith(".") for n in names) and len(set(names)) == 3


# --------------------------------------------------------------------------- torn predictions files


def test_a_torn_or_short_predictions_file_is_left_out_of_pairing_and_said(study_dir, capsys):
    from tunelab.analysis.comparisons import Group, compare
    from tunelab.analysis.runs import find_runs

    records = {r.name: r for r in find_runs([study_dir])}
    floor, tfidf = Group("majority", "majority", [records["majority"]]), Group("tfidf", "tfidf", [records["tfidf"]])
    path = study_dir / "tfidf" / "predictions" / "test.csv"
    whole = path.read_bytes()
    assert not isinstance(compare(tfidf, floor, "test", "accuracy"), str)
    lines = whole.decode().splitlines(keepends=True)
    path.write_bytes("".join(lines[:10]).encode())  # cut between rows: 9 rows of 30
    result = compare(tfidf, floor, "test", "accuracy")
    assert isinstance(result, str) and "holds 9 rows where its metrics.json records n 30" in result
    path.write_bytes(whole[: len(whole) // 2 - 3])  # cut mid-row
    result = compare(tfidf, floor, "test", "accuracy")
    assert isinstance(result, str) and "tfidf left out of pairing" in result
    assert main(["report", str(study_dir), "--out", str(study_dir.parent / "r.md")]) == 0
    assert "tfidf left out of pairing" in (study_dir.parent / "r.md").read_text()


# --------------------------------------------------------------------------- models changed in place


def test_a_model_changed_in_place_with_its_time_restored_is_noticed(tmp_path, tiny_bert_dir, topics, capsys):
    from tests.conftest import save_tiny_distilbert
    from tunelab.models.resolve import resolve_model

    model = shutil.copytree(tiny_bert_dir, tmp_path / "model")
    run = tmp_path / "probe"
    assert main(["probe", "--model", str(model), "--dataset", str(topics), "--out", str(run)]) == 0
    before = resolve_model(str(model)).fingerprint()
    weights = model / "model.safetensors"
    stat = weights.stat()
    other = save_tiny_distilbert(tmp_path / "other", seed=7)
    shutil.copyfile(other / "model.safetensors", weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert resolve_model(str(model)).fingerprint() != before  # the feature cache keys on it too
    capsys.readouterr()
    expect_error(capsys, ["predict", run, "sport music"], "changed since")


def test_runs_recorded_with_the_old_fingerprint_still_load(tmp_path, tiny_bert_dir, topics, capsys):
    from tunelab.core.provenance import files_fingerprint

    run = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--out", str(run)]) == 0
    inputs = json.loads((run / "inputs.json").read_text())
    inputs["model"]["fingerprint"] = files_fingerprint(Path(inputs["model"]["location"]))
    (run / "inputs.json").write_text(json.dumps(inputs))
    assert main(["predict", str(run), "sport music"]) == 0


def test_a_recorded_model_location_is_checked_before_it_is_read(tmp_path, tiny_bert_dir, topics, capsys):
    run = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--out", str(run)]) == 0
    inputs = json.loads((run / "inputs.json").read_text())
    for location in ("/", str(tmp_path)):
        inputs["model"]["location"] = location
        (run / "inputs.json").write_text(json.dumps(inputs))
        capsys.readouterr()
        expect_error(capsys, ["predict", run, "sport music"], "is not a model folder")


# --------------------------------------------------------------------------- studies and searches


def test_step_names_that_collide_with_a_search_are_refused():
    from tunelab.study.spec import load_study

    search = {"space": {"c": [0.1, 1.0]}, "trials": 2}
    for other in ("tf-best", "tf-trial3", "TF", "tf.search.json"):
        study = {"name": "s", "steps": [{"name": "tf", "command": "baseline", "search": search},
                                        {"name": other, "command": "baseline"}]}
        with pytest.raises(ConfigError, match="search of step|share one folder|not a plain name"):
            load_study(study)
    load_study({"name": "s", "steps": [{"name": "tf", "command": "baseline", "search": search},
                                       {"name": "tf-bestish", "command": "baseline"}]})


def test_a_search_space_refuses_split_settings():
    from tunelab.study.spec import load_study

    for key in ("data.validation_split", "data.splits", "data.dataset"):
        study = {"name": "s", "steps": [{"name": "tf", "command": "baseline",
                                         "search": {"space": {key: ["test", "validation"]}, "trials": 2}}]}
        with pytest.raises(ConfigError, match="decides which examples are scored"):
            load_study(study)


def searched_study(path: Path, data: Path, trials: int = 3) -> Path:
    study = {"name": "s", "steps": [{"name": "tf", "command": "baseline", "kind": "tfidf", "tune": False,
                                     "data": {"dataset": str(data)},
                                     "search": {"space": {"c": {"loguniform": [1.0e-2, 100]}}, "trials": trials,
                                                "sampler": "random", "pruner": "none"}}]}
    path.write_text(yaml.safe_dump(study))
    return path


def test_a_rerun_on_changed_data_starts_a_new_search(tmp_path, topics):
    out = tmp_path / "study"
    assert main(["run", str(searched_study(tmp_path / "s.yaml", topics)), "--out", str(out)]) == 0
    first = json.loads((out / "tf.search.json").read_text())
    assert len(first["trials"]) == 3
    trial = metrics_of(out / "tf-trial0")
    assert set(trial["splits"]) == {"validation"}
    assert "test" not in trial["data"].get("majority_accuracy", {}) and "test" not in trial["data"]["class_counts"]
    other = write_topic_splits(tmp_path / "other", 12, 6, 10)
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(out), "--set", f"data.dataset={other}"]) == 0
    second = json.loads((out / "tf.search.json").read_text())
    assert len(second["trials"]) == 3 and all(t["state"] == "complete" for t in second["trials"])
    assert metrics_of(out / "tf-trial0")["dataset"] == str(other)
    assert metrics_of(out / "tf-best")["dataset"] == str(other)
    assert not (out / "tf-trial3").exists()
    # More trials continue the same search: the first three are kept.
    kept = (out / "tf-trial0" / "metrics.json").read_bytes()
    assert main(["run", str(searched_study(tmp_path / "s4.yaml", topics, trials=4)), "--out", str(out),
                 "--set", f"data.dataset={other}"]) == 0
    assert len(json.loads((out / "tf.search.json").read_text())["trials"]) == 4
    assert (out / "tf-trial0" / "metrics.json").read_bytes() == kept


class _Interrupted(Exception):
    pass


def _fake_search(root: Path, sampler: str, trials: int, kill_at: int | None = None) -> list[dict]:
    """run_search over a fake runner (a value from the settings, no tunelab run): the
    settings each trial was given, in order."""
    from tunelab.study.search import Dimension, SearchSpec, TrialRun, run_search

    spec = SearchSpec((Dimension("train.lr", "loguniform", 1e-4, 1e-1), Dimension("lora.r", "choice",
                                                                                   values=(4, 8, 16))),
                      trials, "accuracy", sampler, "none", seed=3)
    given = []

    def run(config, out: Path):
        if kill_at is not None and len(given) == kill_at:
            raise _Interrupted()
        given.append(dict(config))
        out.mkdir(parents=True, exist_ok=True)
        value = 1 - abs(np.log10(config["train.lr"]) + 2.5) / 3 + config["lora.r"] / 100
        (out / "metrics.json").write_text(json.dumps({"splits": {"validation": {"accuracy": value}}}))
        return "completed", "", 0.0

    runner = TrialRun(lambda params, splits: dict(params), run, lambda config, out: False)
    try:
        run_search("s", spec, root, runner, identity={"x": 1})
    except _Interrupted:
        pass
    return given


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_killed_search_continues_the_uninterrupted_sequence(tmp_path, sampler):
    pytest.importorskip("optuna")
    whole = _fake_search(tmp_path / "whole", sampler, 8)
    killed = tmp_path / "killed"
    first = _fake_search(killed, sampler, 8, kill_at=3)
    assert first == whole[:3]
    resumed = _fake_search(killed, sampler, 8)
    assert resumed == whole[3:]  # the interrupted trial once, then what an uninterrupted search tries next


def test_a_damaged_journal_keeps_its_complete_records(tmp_path, caplog):
    pytest.importorskip("optuna")
    root = tmp_path / "s"
    _fake_search(root, "random", 3)
    journal = root / "s.search.journal"
    data = journal.read_bytes()
    journal.write_bytes(data + b'{"op_code": 5, "worker_id": "x", "trial_i')  # a kill mid-line
    with caplog.at_level(logging.WARNING, logger="tunelab"):
        more = _fake_search(root, "random", 4)
    assert len(more) == 2 and "s.search.journal" in caplog.text and "dropped" in caplog.text  # a trial, the best
    journal.write_bytes(b"garbage\n" + journal.read_bytes())
    with pytest.raises(TunelabError, match="s.search.journal is damaged"):
        _fake_search(root, "random", 5)


def test_a_study_refuses_a_run_folder_and_a_planted_marker(tmp_path, topics, capsys):
    run = tmp_path / "run"
    assert main(["baseline", "--kind", "majority", "--dataset", str(topics), "--out", str(run)]) == 0
    study = write_study(tmp_path / "s.yaml", topics)
    capsys.readouterr()
    expect_error(capsys, ["run", study, "--out", run], "is a single run's directory")
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / ".tunelab-run").write_text("")
    (planted / "study.json").write_text('{"mine": true}')
    expect_error(capsys, ["run", study, "--out", planted], "holds no run id")
    assert (planted / "study.json").read_text() == '{"mine": true}'


def test_a_planted_staging_folder_is_never_removed(tmp_path, topics):
    out = tmp_path / "X"
    planted = tmp_path / ".X.tunelab-new-999999"
    planted.mkdir()
    (planted / ".tunelab-run").write_text("")
    (planted / "thesis.txt").write_text("three years of work")
    assert main(["baseline", "--kind", "majority", "--dataset", str(topics), "--out", str(out)]) == 0
    assert (planted / "thesis.txt").read_text() == "three years of work"
    (planted / ".tunelab-run").write_text(json.dumps({"run_id": "a" * 32}))
    assert main(["baseline", "--kind", "majority", "--dataset", str(topics), "--out", str(out),
                 "--overwrite"]) == 0
    assert (planted / "thesis.txt").is_file()
    (planted / "thesis.txt").unlink()  # now only a killed run's own files: removed
    assert main(["baseline", "--kind", "majority", "--dataset", str(topics), "--out", str(out),
                 "--overwrite"]) == 0
    assert not planted.exists()


# --------------------------------------------------------------------------- plugins


def _install(tmp_path, monkeypatch, name: str, source: str):
    from tunelab.core import registry

    site = tmp_path / f"site-{name}"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[tunelab.tasks]\n{name} = {name}\n")
    monkeypatch.syspath_prepend(str(site))
    registry._PLUGINS_LOADED.clear()


TASK_SOURCE = '''
import dataclasses
from tunelab.core.config import setting
from tunelab.core.registry import Task, register_task
from tunelab.tasks import baseline

@dataclasses.dataclass
class Config(baseline.BaselineConfig):
    extra: str = setting("a", "x", flag={flag!r})

register_task(Task({name!r}, Config, baseline.prepare, baseline.execute, summary="plugin"))
'''


@pytest.mark.parametrize("source", [
    "raise SystemExit(3)",
    TASK_SOURCE.format(name="run", flag="--extra"),
    TASK_SOURCE.format(name="probe", flag="--extra"),
    TASK_SOURCE.format(name="dup", flag="--kind"),
    TASK_SOURCE.format(name="dup2", flag="--out"),
])
def test_a_broken_plugin_is_skipped_and_named(tmp_path, monkeypatch, caplog, capsys, topics, source):
    from tunelab.core import registry

    name = "bad_plugin_" + str(abs(hash(source)) % 10**6)
    _install(tmp_path, monkeypatch, name, source)
    try:
        with caplog.at_level(logging.WARNING):
            tasks = registry.all_tasks()
        assert f"plugin {name}" in caplog.text and "is skipped" in caplog.text
        assert tasks["probe"].execute.__module__ == "tunelab.tasks.probe"
        assert "run" not in tasks and "dup" not in tasks and "dup2" not in tasks
        with pytest.raises(SystemExit) as exit_info:
            main(["probe", "--help"])
        assert exit_info.value.code == 0
        assert main(["baseline", "--kind", "majority", "--dataset", str(topics), "--out", str(tmp_path / "r")]) == 0
    finally:
        for task in ("run", "dup", "dup2"):
            registry.unregister_task(task)
        registry._PLUGINS_LOADED.clear()


def test_register_task_refuses_built_in_and_command_names():
    from tunelab.core.registry import Task, register_task
    from tunelab.tasks import baseline

    for name in ("probe", "predict", "serve", "image-text-finetune"):
        with pytest.raises(ConfigError, match="cannot be|is a tunelab command"):
            register_task(Task(name, baseline.BaselineConfig, baseline.prepare, baseline.execute))


# --------------------------------------------------------------------------- data


def test_strict_holds_when_features_come_from_the_cache(tmp_path, tiny_clip_dir, colour_folder, capsys):
    data = shutil.copytree(colour_folder, tmp_path / "colours")
    (data / "test" / "red" / "broken.png").write_bytes(b"not an image")
    args = ["probe", "--model", tiny_clip_dir, "--dataset", data, "--classifier", "logreg"]
    assert main([str(a) for a in [*args, "--out", tmp_path / "first"]]) == 0
    assert metrics_of(tmp_path / "first")["skipped"]["count"] == 1
    capsys.readouterr()
    expect_error(capsys, [*args, "--out", tmp_path / "strict", "--strict"], "--strict")
    assert not (tmp_path / "strict").exists()


def test_in_context_examples_are_fitted_to_the_context_and_recorded(tmp_path, caplog):
    from tests.test_backbones import save_tiny_decoder

    model = save_tiny_decoder(tmp_path / "qwen")
    data = write_topic_splits(tmp_path / "topics", 10, 4, 4)
    out = tmp_path / "zs"
    with caplog.at_level(logging.WARNING, logger="tunelab"):
        assert main(["zeroshot", "--model", str(model), "--dataset", str(data), "--zeroshot-method", "likelihood",
                     "--in-context", "100000", "--out", str(out), "--precision", "fp32"]) == 0
    text = metrics_of(out)["task"]["text"]
    used = text["in_context"]
    assert text["in_context_requested"] == 100000 and 0 <= used < 10
    assert len(text["examples"]) == 3 * used and metrics_of(out)["data"]["labels_seen"] == 3 * used
    assert "--in-context 100000" in caplog.text
    from transformers import AutoTokenizer

    from tunelab.tasks.likelihood import likelihood_prompts

    tokenizer = AutoTokenizer.from_pretrained(model)
    longest = max((r["text"] for r in rows_of(data / "test.csv")), key=len)
    prompt, _, _ = likelihood_prompts(tokenizer, longest, None, "Label: {}", text["examples"],
                                      ["music", "science", "sport"])
    assert len(tokenizer(prompt)["input_ids"]) + 2 <= text["context_tokens"] == 128


def test_many_classes_get_a_sparse_confusion_and_a_clear_memory_line(tmp_path, capsys, monkeypatch):
    rows = lambda k: [(f"item {i} word{i}", f"class{i:04d}") for i in range(600) for _ in range(k)]  # noqa: E731
    folder = tmp_path / "many"
    write_csv(folder / "train.csv", rows(2))
    write_csv(folder / "validation.csv", rows(1))
    write_csv(folder / "test.csv", rows(1))
    out = tmp_path / "majority"
    assert main(["baseline", "--kind", "majority", "--dataset", str(folder), "--out", str(out)]) == 0
    confusion = json.loads((out / "confusion_test.json").read_text())
    assert confusion["format"] == "cells" and sum(c[2] for c in confusion["cells"]) == 600
    assert (out / "confusion_test.json").stat().st_size < 200_000
    from tunelab.models import classifiers

    monkeypatch.setattr(classifiers, "machine_memory_bytes", lambda: 64 * 2**20)
    capsys.readouterr()
    expect_error(capsys, ["baseline", "--kind", "tfidf", "--dataset", folder, "--out", tmp_path / "tfidf"],
                 "a linear model over 600 classes")


@pytest.mark.parametrize("labels, message", [([1, "1", 2], "mix types"), ([1, 2, "two", True], "mix types")])
def test_mixed_label_types_are_refused(tmp_path, capsys, labels, message):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i} word{i % 7}", "label": labels[i % len(labels)]}) + "\n"
                            for i in range(60)))
    expect_error(capsys, ["baseline", "--kind", "majority", "--dataset", path, "--out", tmp_path / "r"], message)


def test_a_non_finite_target_and_repeated_label_names_get_one_line(tmp_path, capsys, tiny_bert_dir, topics):
    path = write_csv(tmp_path / "inf.csv", [(f"text {i}", "inf" if i == 5 else f"{i / 7:.2f}") for i in range(60)])
    expect_error(capsys, ["baseline", "--kind", "majority", "--dataset", path, "--out", tmp_path / "r"],
                 "not finite ('inf')")
    expect_error(capsys, ["zeroshot", "--model", tiny_bert_dir, "--dataset", topics, "--label-names",
                          "good,good,bad", "--out", tmp_path / "z"], "names two classes 'good'")


def test_sixteen_bit_and_oversized_images(tmp_path):
    import warnings

    from PIL import Image

    from tunelab.data.image_sources import MAX_PIXELS, open_rgb

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    pixels = np.asarray(open_rgb(tmp_path / "g16.png"))
    assert pixels.shape == (64, 64, 3) and (pixels == 255).mean() < 0.01 and abs(pixels.mean() - 127.5) < 1
    Image.new("L", (8000, MAX_PIXELS // 8000 + 10)).save(tmp_path / "huge.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(OSError, match="megapixels"):
            open_rgb(tmp_path / "huge.png")


# --------------------------------------------------------------------------- serving and messages


def test_a_swapped_onnx_file_is_refused(tmp_path, tiny_bert_dir, topics, capsys):
    pytest.importorskip("onnxruntime")
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--out", str(run),
                     "--pooling", "mean" if name == "a" else "cls"]) == 0
        assert main(["export", str(run), "--format", "onnx"]) == 0
        runs.append(run)
    record = json.loads((runs[0] / "onnx" / "export.json").read_text())
    assert len(record["files"]["model.onnx"]) == 64
    shutil.copyfile(runs[1] / "onnx" / "model.onnx", runs[0] / "onnx" / "model.onnx")
    capsys.readouterr()
    expect_error(capsys, ["predict", runs[0], "sport", "--backend", "onnx"], "is not the file tunelab exported")
    record.pop("files")
    (runs[0] / "onnx" / "export.json").write_text(json.dumps(record))
    (runs[0] / "onnx" / "model.onnx").write_bytes(b"garbage")
    expect_error(capsys, ["predict", runs[0], "sport", "--backend", "onnx"], "ONNX Runtime cannot load")


def test_counts_agree_with_their_nouns(tmp_path, topics, capsys):
    from tunelab.core.errors import counted

    assert counted(1, "example") == "1 example" and counted(2, "class", "classes") == "2 classes"
    run = tmp_path / "r"
    assert main(["baseline", "--kind", "majority", "--dataset", str(topics), "--out", str(run)]) == 0
    capsys.readouterr()
    expect_error(capsys, ["predict", run, " "], "1 input is empty (position 1)")
    assert main(["predict", str(run), "sport", "--output", str(tmp_path / "o.csv")]) == 0
    assert "wrote 1 prediction to" in capsys.readouterr().out
    study = write_study(tmp_path / "one.yaml", topics)
    values = yaml.safe_load(study.read_text())
    values["steps"] = values["steps"][:1]
    study.write_text(yaml.safe_dump(values))
    assert main(["run", str(study), "--dry-run"]) == 0
    assert "1 run in 1 step" in capsys.readouterr().out


def test_library_warnings_do_not_reach_the_console(tmp_path, capsys):
    import warnings

    from tunelab.cli import _setup_logging

    with warnings.catch_warnings():  # pytest's own capture would hide the warning either way
        warnings.simplefilter("always")
        logging.captureWarnings(False)  # as a fresh process starts (earlier commands in this one set it)
        _setup_logging(quiet=False)
        try:
            assert warnings.showwarning.__module__ == "logging"  # routed through logging, not printed
            warnings.warn("a library's note", UserWarning, stacklevel=1)
        finally:
            logging.captureWarnings(False)
    assert "a library's note" not in capsys.readouterr().err


def test_topic_rows_stay_learnable():  # the fixtures above rely on it
    assert len({label for _, label in topic_rows(2)}) == 3
