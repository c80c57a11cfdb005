"""Trust: studies and reports never clobber each other or a user's files, damaged run
files give one clear line, and every claim in a report survives a seed-aware test with
Holm's correction. Each test reproduces a failure found in review; most use the
baseline task, which needs no model, so they run in seconds."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import metrics_of, topic_rows, write_csv, write_topic_splits
from tunelab.cli import main
from tunelab.core.errors import TunelabError


def expect_error(capsys, args, message, code=2):
    assert main([str(a) for a in args]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunelab: error: ") and message in err, err
    assert len(err.splitlines()) == 1 and "unexpected error" not in err
    return err


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def baseline_args(data, out, *extra):
    return ["baseline", "--kind", "tfidf", "--dataset", data, "--out", out, *extra]


@pytest.fixture
def topics(tmp_path):
    return write_topic_splits(tmp_path / "topics", 20, 6, 10)


def write_study(path: Path, data: Path, **extra) -> Path:
    study = {"name": "s", "steps": [{"name": "majority", "command": "baseline", "kind": "majority",
                                     "data": {"dataset": str(data)}},
                                    {"name": "tfidf", "command": "baseline", "kind": "tfidf",
                                     "data": {"dataset": str(data)}}], **extra}
    path.write_text(yaml.safe_dump(study))
    return path


# --------------------------------------------------------------------------- files and processes


def test_a_second_study_on_the_same_out_stops_at_once(tmp_path):
    from tunelab.study.run import open_study_directory

    first = open_study_directory(tmp_path / "study")
    try:
        with pytest.raises(TunelabError, match="another tunelab study is running in"):
            open_study_directory(tmp_path / "study")
    finally:
        first.close()
    open_study_directory(tmp_path / "study").close()  # free again once the first ends


def test_a_study_leaves_a_users_folder_and_report_alone(tmp_path, topics, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    (out / "study.json").write_text("{}")
    before = tree(out)
    expect_error(capsys, ["run", write_study(tmp_path / "s.yaml", topics), "--out", out],
                 "holds files that tunelab did not write")
    assert tree(out) == before


def test_report_never_replaces_a_users_file_nor_writes_through_links(tmp_path, topics, capsys):
    run = tmp_path / "run"
    assert main([str(a) for a in baseline_args(topics, run)]) == 0
    mine = tmp_path / "out" / "report.md"
    mine.parent.mkdir()
    mine.write_text("my report")
    expect_error(capsys, ["report", run, "--out", mine], "was not written by tunelab")
    assert mine.read_text() == "my report"
    # A link in report_files is replaced by the image, its target keeps its bytes.
    out = tmp_path / "r" / "report.md"
    assert main(["report", str(run), "--out", str(out)]) == 0
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"precious")
    images = sorted((out.parent / "report_files").glob("*.png"))
    images[0].unlink()
    images[0].symlink_to(outside)
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert outside.read_bytes() == b"precious" and not images[0].is_symlink()
    # A report_files folder that is a link is refused, nothing written into its target.
    victim = tmp_path / "victim"
    victim.mkdir()
    other = tmp_path / "o" / "report.md"
    other.parent.mkdir()
    (other.parent / "report_files").symlink_to(victim)
    expect_error(capsys, ["report", run, "--out", other], "report_files is not a folder tunelab made")
    assert list(victim.iterdir()) == []
    # The folder --out names is the user's: it may be a link (a reports folder on another disk).
    real = tmp_path / "real-reports"
    real.mkdir()
    (tmp_path / "reports").symlink_to(real)
    assert main(["report", str(run), "--out", str(tmp_path / "reports" / "r.md")]) == 0
    assert (real / "r.md").is_file() and (real / "r_files").is_dir()


def test_a_killed_job_is_reported_with_its_signal_and_last_line():
    from tunelab.study.executors import failure_from_process

    stderr = "loading\ntrain features:  40%|####      | 4/10 [00:01<00:02]\r   \x1b[A\n"
    detail = failure_from_process(-9, stderr)
    assert detail.startswith("killed by signal 9 (SIGKILL)")
    assert "\x1b" not in detail and "last log line: loading" in detail
    assert failure_from_process(2, "tunelab: error: bad column\n") == "bad column"


@pytest.mark.parametrize("rows, problem", [(60, "regression"), (14, "two classes"), (3, "two classes")])
def test_small_data_gets_every_split_or_one_line(tmp_path, rows, problem, capsys):
    rng = np.random.default_rng(0)
    if problem == "regression":
        data = write_csv(tmp_path / "d.csv", [(f"text {i} {'a' if i % 2 else 'b'}", f"{rng.normal():.3f}")
                                              for i in range(rows)])
    else:
        data = write_csv(tmp_path / "d.csv", [(f"text {i}", "yes" if i % 2 else "no") for i in range(rows)])
    args = ["baseline", "--kind", "tfidf", "--dataset", data, "--out", tmp_path / "run"]
    if rows >= 14:
        assert main([str(a) for a in args]) == 0
        sizes = metrics_of(tmp_path / "run")["data"]["sizes"]
        assert min(sizes.values()) >= 1 and sum(sizes.values()) == rows
        assert sizes["validation"] == round(rows * 0.1)
    else:
        expect_error(capsys, args, "split is empty after splitting")


def test_too_few_rows_say_how_many_are_needed(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", [("a", "x"), ("b", "y")])
    expect_error(capsys, ["baseline", "--dataset", data, "--out", tmp_path / "r"],
                 "the data has 2 rows: too few to cut into train, validation and test")


def test_a_killed_overwrite_leaves_nothing_behind(tmp_path, topics):
    from tunelab.core.safety import make_marked_directory

    run = tmp_path / "run"
    assert main([str(a) for a in baseline_args(topics, run)]) == 0
    stale = tmp_path / ".run.tunelab-new-999999999"  # a staging run of a process that is gone
    make_marked_directory(stale)
    (stale / "checkpoints").mkdir()
    assert main([str(a) for a in baseline_args(topics, run, "--overwrite")]) == 0
    assert not stale.exists()


def test_overflowing_targets_are_not_finite_numbers(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", [(f"t {i}", f"{i * 0.37:.2f}") for i in range(30)] + [("x", "1e400")])
    expect_error(capsys, ["baseline", "--dataset", data, "--problem", "regression", "--out", tmp_path / "r"],
                 "1 row has a target that is not a finite number ('1e400'; row 31)")


@pytest.mark.parametrize("name", ["report.md", "study.json", "report_files", "x" * 300])
def test_reserved_and_long_step_names_are_refused_up_front(tmp_path, topics, name, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "steps": [{"name": name, "command": "baseline",
                                                            "data": {"dataset": str(topics)}}]}))
    err = expect_error(capsys, ["run", path, "--out", tmp_path / "out"], "step name")
    assert "taken by the study's own files" in err or "characters long" in err
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    from tunelab.core.safety import atomic_write_bytes

    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "x").write_text("a folder is in the way")
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "target", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_a_study_name_is_one_safe_path_component():
    from tunelab.study.spec import default_study_path

    path = default_study_path("../../etc/evil")
    assert path.parent == Path("runs") and ".." not in path.name and "/" not in path.name


def test_a_planted_marker_does_not_let_overwrite_delete(tmp_path, topics, capsys):
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("years of work")
    (thesis / ".tunelab-run").write_text("")
    before = tree(thesis)
    expect_error(capsys, baseline_args(topics, thesis, "--overwrite"), "--overwrite refused")
    assert tree(thesis) == before
    # A marker with an id, but files tunelab did not write beside a real run: refused too.
    run = tmp_path / "run"
    assert main([str(a) for a in baseline_args(topics, run)]) == 0
    (run / "notes.txt").write_text("mine")
    expect_error(capsys, baseline_args(topics, run, "--overwrite"), "holds files tunelab did not write (notes.txt)")
    assert (run / "notes.txt").read_text() == "mine"
    (run / "notes.txt").unlink()
    assert main([str(a) for a in baseline_args(topics, run, "--overwrite")]) == 0


def test_data_fingerprints_follow_content_not_size_and_time(tmp_path):
    from tunelab.data.sources import resolve_dataset

    path = write_csv(tmp_path / "d.csv", [("good film", "pos"), ("bad film", "neg")] * 5)
    before = resolve_dataset(str(path)).fingerprint()
    stat = path.stat()
    path.write_bytes(path.read_bytes().replace(b"pos", b"PPP").replace(b"neg", b"pos").replace(b"PPP", b"neg"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert resolve_dataset(str(path)).fingerprint() != before


def test_the_marker_is_created_once_and_locked_once(tmp_path):
    from tunelab.core.safety import MARKER, lock_run_directory, make_marked_directory, marker_run_id

    make_marked_directory(tmp_path / "r")
    first_id = marker_run_id(tmp_path / "r")
    make_marked_directory(tmp_path / "r")  # a second process making the same folder
    assert marker_run_id(tmp_path / "r") == first_id and len(first_id) == 32
    held = lock_run_directory(tmp_path / "r")
    try:
        with pytest.raises(TunelabError, match="another tunelab process"):
            lock_run_directory(tmp_path / "r")
    finally:
        held.close()
    assert (tmp_path / "r" / MARKER).is_file()


# --------------------------------------------------------------------------- damaged files, one line each


@pytest.fixture
def tfidf_run(tmp_path, topics):
    run = tmp_path / "tfidf"
    assert main([str(a) for a in baseline_args(topics, run)]) == 0
    return run


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "metrics.json").write_text('{"command": "base'), "metrics.json is damaged (not valid JSON"),
    (lambda r: (r / "model" / "predictor.json").write_text("{"), "predictor.json is damaged"),
    (lambda r: (r / "model" / "predictor.json").write_text('{"version": 99}'), "newer than this tunelab reads"),
    (lambda r: (r / "model" / "classifier.skops").write_bytes(
        (r / "model" / "classifier.skops").read_bytes()[:200]), "classifier.skops is damaged"),
    (lambda r: (r / "config.yaml").write_bytes(b"\xff\xfe\x00garbage"), "config.yaml cannot be read"),
    (lambda r: (r / "config.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n"),
     "config.yaml is not valid YAML, or holds tags"),
])
def test_a_damaged_run_file_is_named_in_one_line(tfidf_run, damage, message, capsys):
    damage(tfidf_run)
    expect_error(capsys, ["predict", tfidf_run, "sport film"], message)


def test_a_damaged_run_is_left_out_of_a_report_and_said(tmp_path, topics, capsys):
    good, torn = tmp_path / "good", tmp_path / "torn"
    for run in (good, torn):
        assert main([str(a) for a in baseline_args(topics, run)]) == 0
    (torn / "metrics.json").write_text("{")
    assert main(["report", str(good), str(torn), "--out", str(tmp_path / "rep.md")]) == 0
    text = (tmp_path / "rep.md").read_text()
    assert "torn: left out (metrics.json is not valid JSON)" in text
    # A torn prediction file makes its run unpaired, never a crash.
    predictions = good / "predictions" / "test.csv"
    predictions.write_text(predictions.read_text().splitlines()[0] + "\n1,only\n")
    assert main(["report", str(good), "--out", str(tmp_path / "rep2.md")]) == 0


def test_a_published_value_that_is_no_number_is_refused_before_any_run(tmp_path, topics, capsys):
    path = write_study(tmp_path / "s.yaml", topics, published={"tfidf": {"test": "0.8 (paper)"}})
    expect_error(capsys, ["run", path, "--out", tmp_path / "out"], "published.tfidf.test = '0.8 (paper)' is not a "
                 "number")
    assert not (tmp_path / "out").exists()


def test_dataset_config_on_a_file_is_one_line(tmp_path, topics, capsys):
    expect_error(capsys, ["baseline", "--dataset", topics / "train.csv", "--dataset-config", "x", "--out",
                          tmp_path / "r"], "is a single file, which has no configurations")


def test_a_cache_entry_of_the_wrong_shape_is_recomputed(tmp_path):
    from tunelab.encoders.features import FeatureCache

    cache = FeatureCache(tmp_path)
    cache.put("k", np.ones((4, 8), dtype=np.float32), {"what": "test"})
    assert cache.get("k").shape == (4, 8)
    np.save(cache.path("k"), np.ones((4, 10), dtype=np.float32))
    assert cache.get("k") is None and not cache.path("k").exists()


def test_report_markdown_escapes_names_and_labels(tmp_path, capsys):
    rows = [(f"{w} text", "<img src=x onerror=alert(1)>" if i % 2 else "*bold* [link](javascript:x)")
            for i, w in enumerate(["a", "b"] * 20)]
    data = write_csv(tmp_path / "d.csv", rows)
    run = tmp_path / "run<script>"
    assert main(["baseline", "--kind", "majority", "--dataset", str(data), "--out", str(run)]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "rep.md")]) == 0
    text = (tmp_path / "rep.md").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and r"[link]\(javascript:x)" in text
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt().enable("table").render(text)
    outside_code = re.sub(r"<pre>.*?</pre>", "", rendered, flags=re.DOTALL)
    assert "<img src=x" not in outside_code and "<script>" not in outside_code
    assert 'href="javascript' not in rendered


# --------------------------------------------------------------------------- claims the numbers must back


def multilabel_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(240):
        labels = [name for name, word in (("sport", "ball"), ("music", "song"), ("art", "paint"))
                  if rng.random() < 0.4] or ["art"]
        words = [word for name, word in (("sport", "ball"), ("music", "song"), ("art", "paint")) if name in labels]
        rows.append((" ".join(words + [f"w{rng.integers(50)}" for _ in range(4)]), ";".join(labels)))
    return write_csv(tmp_path / "ml.csv", rows)


def test_the_multilabel_floor_applies_its_threshold(tmp_path):
    data = multilabel_data(tmp_path)
    scores = {}
    for threshold in ("0.2", "0.8"):
        out = tmp_path / f"t{threshold}"
        assert main(["baseline", "--dataset", str(data), "--label-separator", ";", "--threshold", threshold,
                     "--out", str(out)]) == 0
        scores[threshold] = metrics_of(out)["splits"]["test"]["f1_micro"]
        assert json.loads((out / "model" / "predictor.json").read_text())["threshold"] == float(threshold)
    assert scores["0.2"] != scores["0.8"]
    out = tmp_path / "tuned"
    assert main(["baseline", "--dataset", str(data), "--label-separator", ";", "--threshold", "tune",
                 "--out", str(out)]) == 0
    task = metrics_of(out)["task"]
    assert task["threshold"]["tuned"] and task["classifier"]["tuning"]["split"] == "validation"


def test_runs_on_different_data_are_never_paired(tmp_path, capsys):
    one = write_topic_splits(tmp_path / "one", 20, 6, 10)
    two = tmp_path / "two"
    two.mkdir()
    for split, n in (("train", 20), ("validation", 6), ("test", 10)):
        write_csv(two / f"{split}.csv", [(t.replace("sport", "tennis"), lab) for t, lab in topic_rows(n, seed=7)])
    for data, out in ((one, "a"), (two, "b")):
        assert main(["baseline", "--kind", "majority" if out == "a" else "tfidf", "--dataset", str(data),
                     "--out", str(tmp_path / out)]) == 0
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep.md")]) == 0
    text = (tmp_path / "rep.md").read_text()
    assert "McNemar" not in text and "p (adjusted)" not in text and "significant" not in text.replace(
        'Every "significant"', "")
    assert text.count("## At a glance") == 1 and text.count("### ") >= 2  # one section per dataset


def test_eval_caps_score_the_same_items_in_every_seed(tmp_path, topics):
    ids = []
    for seed in (0, 1, 2):
        out = tmp_path / f"s{seed}"
        assert main(["baseline", "--kind", "majority", "--dataset", str(topics), "--max-eval-samples", "12",
                     "--seed", str(seed), "--out", str(out)]) == 0
        ids.append((out / "predictions" / "test.csv").read_text().splitlines()[1:])
        ids[-1] = sorted(line.split(",")[0] for line in ids[-1])
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 12


def test_few_shot_runs_choose_on_k_validation_labels_per_class(tmp_path, topics):
    out = tmp_path / "run"
    assert main(["baseline", "--dataset", str(topics), "--shots", "2", "--out", str(out)]) == 0
    data = metrics_of(out)["data"]
    assert data["sizes"]["train"] == 6 and data["sizes"]["validation"] == 6
    out = tmp_path / "all"
    assert main(["baseline", "--dataset", str(topics), "--shots", "2", "--validation-shots", "0", "--out",
                 str(out)]) == 0
    assert metrics_of(out)["data"]["sizes"]["validation"] == 18


def test_seed_aware_test_does_not_call_noise_significant():
    from tunelab.core.stats import holm, paired_test

    rng = np.random.default_rng(1)
    gold = [str(g) for g in rng.integers(0, 2, 1066)]

    def predictions(accuracy, seed):
        r = np.random.default_rng(seed)
        return [(g, g if r.random() < accuracy else str(1 - int(g))) for g in gold]

    # Three seeds whose differences change sign: pooled McNemar would call it; seeds do not.
    couples = [(predictions(a, s), predictions(b, s + 100)) for s, (a, b) in
               enumerate([(0.60, 0.55), (0.60, 0.61), (0.62, 0.56)])]
    result = paired_test(couples, "accuracy")
    from scipy.stats import ttest_1samp

    deltas = [d for d, _ in result.per_seed]
    assert result.p >= ttest_1samp(deltas, 0).pvalue - 1e-12
    assert len(result.per_seed) == 3 and result.seed_pairs == 3 and result.n == 1066
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # The same deterministic difference in every seed still needs enough items.
    few = [(predictions(0.7, 5)[:20], predictions(0.6, 6)[:20])] * 3
    assert paired_test(few, "accuracy").p > 0.05


def label_rows(run: Path, split: str = "test") -> list[tuple[str, str]]:
    """(label, prediction) of every row of a run's predictions file."""
    import csv

    with open(run / "predictions" / f"{split}.csv", newline="") as handle:
        return [(r["label"], r["prediction"]) for r in csv.DictReader(handle)]


def test_metrics_recomputed_from_predictions_match_metrics_json(tmp_path):
    from tunelab.core.stats import metric_from_predictions

    data = multilabel_data(tmp_path)
    out = tmp_path / "ml"
    assert main(["baseline", "--dataset", str(data), "--label-separator", ";", "--out", str(out)]) == 0
    split = metrics_of(out)["splits"]["test"]
    for metric in ("f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss"):
        assert metric_from_predictions(label_rows(out), metric) == pytest.approx(split[metric], abs=1e-9), metric
    numbers = write_csv(tmp_path / "n.csv", [(f"t {i} {'up' if i % 3 else 'down'}", f"{(i % 7) * 0.5:.1f}")
                                             for i in range(80)])
    out = tmp_path / "reg"
    assert main(["baseline", "--dataset", str(numbers), "--problem", "regression", "--out", str(out)]) == 0
    split = metrics_of(out)["splits"]["test"]
    for metric in ("spearman", "pearson", "mse", "mae", "r2"):
        assert metric_from_predictions(label_rows(out), metric) == pytest.approx(split[metric], rel=1e-4,
                                                                                 abs=1e-4), metric


def test_a_crossover_is_claimed_only_when_its_test_holds(tmp_path):
    """A study where two curves cross within noise: the report says so instead of "overtakes"."""
    data = write_topic_splits(tmp_path / "topics", 30, 6, 12)
    study = {"name": "cross", "baseline": "majority", "matrix": {"seed": [0, 1]},
             "steps": [{"name": "majority", "command": "baseline", "kind": "majority", "data": {"dataset": str(data)},
                        "matrix": {"seed": [0]}},
                       {"name": "tfidf", "command": "baseline", "kind": "tfidf", "data": {"dataset": str(data)},
                        "matrix": {"data.shots": [1, 2, 4]}},
                       {"name": "tfidfc", "command": "baseline", "kind": "tfidf", "c": 0.5, "tune": False,
                        "data": {"dataset": str(data)}, "matrix": {"data.shots": [1, 2, 4]}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    for line in re.findall(r".*overtakes.*", text):
        assert "within noise" not in line and "significant" in line, line
    assert "## Learning curves" in text


# --------------------------------------------------------------------------- one data pipeline for images too


def test_image_data_takes_shots_and_refuses_text_only_flags(tmp_path, colour_folder, capsys):
    out = tmp_path / "shots"
    assert main(["baseline", "--kind", "majority", "--dataset", str(colour_folder), "--shots", "2",
                 "--out", str(out)]) == 0
    assert metrics_of(out)["data"]["sizes"]["train"] == 2 * 3
    assert metrics_of(out)["data"]["sizes"]["validation"] == 2 * 3  # K validation examples per class too
    for flags, message in ((["--train-split", "nonexistent"], "--train-split applies to text data"),
                           (["--problem", "regression"], "--problem regression: class folders give one class"),
                           (["--text-pair-column", "other"], "--text-pair-column applies to text data"),
                           (["--threshold", "0.3"], "--threshold applies to label sets")):
        expect_error(capsys, ["baseline", "--kind", "majority", "--dataset", colour_folder, *flags, "--out",
                              tmp_path / "x"], message)
        assert not (tmp_path / "x").exists()


def test_one_predictor_description_and_old_runs_still_served(tfidf_run, capsys):
    record = json.loads((tfidf_run / "model" / "predictor.json").read_text())
    assert record["format"] == "tunelab-predictor" and record["version"] == 1 and record["task"] == "baseline"
    assert sorted(p.name for p in (tfidf_run / "model").glob("*.json")) == ["predictor.json"]
    # A run made before predictor.json kept its task's own sidecar: it is still served.
    old = {k: v for k, v in record.items() if k not in ("format", "version", "task")}
    (tfidf_run / "model" / "baseline.json").write_text(json.dumps(old))
    (tfidf_run / "model" / "predictor.json").unlink()
    assert main(["predict", str(tfidf_run), "sport ball goal"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[0] in ("music", "science", "sport")
