"""Active learning played on labelled data: the loop (probe --active), its record, its
one-line errors, and the al-sim study's report (labels saved against random at equal
label counts, recomputed from the runs)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import metrics_of, write_topic_splits
from tunelab.cli import main


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    return write_topic_splits(tmp_path_factory.mktemp("topics"), 40, 10, 20)


def active_run(tmp_path, model, data, strategy, labels, seed=0, name=None, extra=()):
    out = tmp_path / (name or f"{strategy}-{labels}-{seed}")
    code = main(["probe", "--model", str(model), "--dataset", str(data), "--pooling", "mean", "--classifier",
                 "logreg", "--active", strategy, "--active-start", "2", "--active-batch", "2", "--active-labels",
                 str(labels), "--seed", str(seed), "--out", str(out), *extra])
    return code, out


def selected(out: Path) -> list[list[str]]:
    return [r["selected"] for r in json.loads((out / "active.json").read_text())["rounds"]]


@pytest.mark.parametrize("strategy", ["entropy", "margin", "diverse", "random"])
def test_the_loop_selects_rounds_from_the_pool(tmp_path, tiny_bert_dir, topics, strategy):
    code, out = active_run(tmp_path, tiny_bert_dir, topics, strategy, 6)
    assert code == 0
    rounds = selected(out)
    assert [len(r) for r in rounds] == [6, 6, 6]  # 2 per class to start, then 2 per class a round, up to 6
    ids = [i for r in rounds for i in r]
    assert len(set(ids)) == 18  # never the same example twice
    with open(topics / "train.csv", newline="") as handle:
        train_rows = len(list(csv.DictReader(handle)))
    metrics = metrics_of(out)
    assert metrics["data"]["sizes"]["train"] == 18 and train_rows == 120
    assert metrics["task"]["active"] == {"strategy": strategy, "start": 2, "batch": 2, "labels_per_class": 6,
                                         "labels": 18, "pool": 120, "rounds": 2}
    assert metrics["data"]["labels_seen"] == 18  # the labels the loop revealed, no more
    again_code, again = active_run(tmp_path, tiny_bert_dir, topics, strategy, 6, name=f"again-{strategy}")
    assert again_code == 0 and selected(again) == rounds  # the same seed selects the same examples
    assert active_run(tmp_path, tiny_bert_dir, topics, strategy, 6, name=f"again-{strategy}",
                      extra=["--overwrite"])[0] == 0  # active.json is the run's own: --overwrite replaces it


def test_strategies_select_differently_from_the_same_start(tmp_path, tiny_bert_dir, topics):
    picks = {}
    for strategy in ("entropy", "random", "diverse"):
        assert active_run(tmp_path, tiny_bert_dir, topics, strategy, 4)[0] == 0
        picks[strategy] = selected(tmp_path / f"{strategy}-4-0")
    assert picks["entropy"][0] == picks["random"][0] == picks["diverse"][0]  # one start for all
    assert picks["entropy"][1:] != picks["random"][1:]


@pytest.mark.parametrize("extra, message", [
    (["--shots", "4"], "drop --shots"),
    (["--active-labels", "1"], "--active-labels 1 per class is fewer than the start"),
    (["--active-labels", "50"], "(150 examples for 3 classes) is more than the train split's 120 examples"),
    (["--active-batch", "0"], "--active-batch must be at least 1"),
])
def test_bad_settings_are_one_line(tmp_path, tiny_bert_dir, topics, capsys, extra, message):
    args = ["probe", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--active", "entropy",
            "--active-start", "2", "--active-labels", "4", "--out", str(tmp_path / "bad"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_the_study_says_how_many_labels_each_strategy_saves(tmp_path, tiny_bert_dir, topics):
    study = {"name": "al", "baseline": "random",
             "matrix": {"active.labels": [2, 4, 6], "seed": [0, 1]},
             "settings": {"data": {"dataset": str(topics)}},
             "steps": [{"name": name, "command": "probe", "model": str(tiny_bert_dir), "features": {"pooling": "mean"},
                        "classifier": {"kind": "logreg"}, "active": {"strategy": name, "start": 2, "batch": 1}}
                       for name in ("random", "entropy")]}
    path = tmp_path / "al.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    text = (out / "report.md").read_text()
    assert "## Active learning" in text
    analysis = json.loads((out / "analysis.json").read_text())
    [saving] = analysis["label_savings"]
    mean = {(m, n): np.mean([metrics_of(out / f"{m}-labels{n}-seed{s}")["splits"]["test"]["accuracy"]
                             for s in (0, 1)]) for m in ("random", "entropy") for n in (2, 4, 6)}
    level = mean["random", 6]
    assert saving["method"] == "entropy" and saving["level"] == pytest.approx(level)
    # Recomputed: the first size at which entropy's mean reaches random's final mean, linear in between.
    reach = None
    for before, size in ((None, 2), (2, 4), (4, 6)):
        if mean["entropy", size] >= level:
            reach = size if before is None else before + (level - mean["entropy", before]) / (
                mean["entropy", size] - mean["entropy", before]) * (size - before)
            break
    if reach is None:
        assert saving["reaches_at"] is None and saving["saves"] == 0 and "none" in text
    else:
        assert saving["reaches_at"] == pytest.approx(reach) and saving["saves"] == pytest.approx(6 - reach)
    # Each strategy is tested against random at the same label count, seeds paired.
    tested = {(c["a"], c["b"]) for c in analysis["comparisons"] if c["purpose"] == "floor"}
    assert tested == {(f"entropy-labels{n}", f"random-labels{n}") for n in (2, 4, 6)}
    # The start is the same examples for every strategy: equal predictions, one run.
    first = next(c for c in analysis["comparisons"] if c["a"] == "entropy-labels2")
    assert first["delta"] == 0


@pytest.mark.parametrize("strategy", ["entropy", "diverse"])
def test_image_probes_play_the_loop_too(tmp_path, tiny_clip_dir, strategy):
    from tests.conftest import write_colour_images

    root = write_colour_images(tmp_path / "colours", 12, seed=5)
    out = tmp_path / f"images-{strategy}"
    assert main(["probe", "--model", str(tiny_clip_dir), "--dataset", str(root), "--active", strategy,
                 "--active-start", "1", "--active-labels", "3", "--active-batch", "1", "--out", str(out)]) == 0
    rounds = selected(out)
    assert [len(r) for r in rounds] == [3, 3, 3] and len({i for r in rounds for i in r}) == 9
    assert metrics_of(out)["data"]["sizes"]["train"] == 9


def test_tuning_c_on_validation_still_plays_the_loop(tmp_path, tiny_bert_dir, topics):
    """Each round's model is fitted on the labelled rows alone; --tune chooses C for the final head."""
    code, out = active_run(tmp_path, tiny_bert_dir, topics, "entropy", 4, extra=["--tune"])
    assert code == 0 and [len(r) for r in selected(out)] == [6, 6]
    assert metrics_of(out)["task"]["classifier"]["tuning"]["split"] == "validation"
