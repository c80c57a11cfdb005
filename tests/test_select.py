"""tunelab select: the examples a run is least sure of, ranked with its own Predictor;
the same rows for the same seed, no near copies in a diverse batch, one line for bad
input."""

import csv
import random

import numpy as np
import pytest

import tunelab
from tests.conftest import write_csv, write_topic_splits
from tunelab.cli import main
from tunelab.data.duplicates import near_duplicate_pairs, normalise_text
from tunelab.serve.select import select

LETTERS = "abcdefghij"


@pytest.fixture(scope="module")
def probe_run(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    data = write_topic_splits(root / "data", 30, 8, 8)
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(data), "--out", str(root / "probe"),
                 "--classifier", "logreg", "--pooling", "mean", "--precision", "fp32"]) == 0
    return root / "probe", data


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Unlabelled texts, some of them copies of others (case, punctuation, one word)."""
    rng = random.Random(3)
    words = ["sport", "music", "science", "red", "blue", "green", "film", "story", "dog", "cat", "the", "a"]
    texts = [" ".join(rng.choice(words) for _ in range(7)) + f" item{i}" for i in range(60)]
    texts += [texts[i].upper() + " !" for i in range(0, 20, 2)]  # ten exact copies once normalised
    path = tmp_path_factory.mktemp("pool") / "pool.csv"
    write_csv(path, [(t,) for t in texts], header=("text",))
    return path, texts


def read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_entropy_and_margin_rank_what_the_predictor_is_least_sure_of(probe_run, pool, tmp_path):
    run, _ = probe_run
    path, texts = pool
    chosen = select(run, path, 12, "entropy", seed=1)
    assert len({c.row for c in chosen}) == 12 and [c.rank for c in chosen] == list(range(1, 13))
    predictions = tunelab.load_predictor(run)(texts)
    entropy = np.array([p.uncertainty["entropy"] for p in predictions])
    assert [c.score for c in chosen] == pytest.approx(sorted(entropy, reverse=True)[:12])
    assert [c.predicted for c in chosen] == [predictions[c.row - 1].label for c in chosen]
    assert [c.row for c in select(run, path, 12, "entropy", seed=1)] == [c.row for c in chosen]
    margin = select(run, path, 5, "margin")
    gaps = np.array([p.uncertainty["margin"] for p in predictions])
    assert [c.score for c in margin] == pytest.approx(sorted(gaps, reverse=True)[:5])
    out = tmp_path / "to-label.csv"
    assert main(["select", str(run), "--pool", str(path), "--k", "12", "--seed", "1", "--out", str(out)]) == 0
    rows = read(out)
    assert list(rows[0]) == ["rank", "row", "text", "entropy", "predicted", "predicted_score"]
    assert [int(r["row"]) for r in rows] == [c.row for c in chosen]
    assert rows[0]["text"] == texts[chosen[0].row - 1]


def test_random_is_seeded_and_distinct(probe_run, pool):
    run, _ = probe_run
    path, _ = pool
    first = [c.row for c in select(run, path, 20, "random", seed=7)]
    assert len(set(first)) == 20 and first == [c.row for c in select(run, path, 20, "random", seed=7)]
    assert first != [c.row for c in select(run, path, 20, "random", seed=8)]


def test_a_diverse_batch_holds_no_near_copies(probe_run, pool, tiny_bert_dir):
    run = probe_run[0]
    chosen = select(run, pool[0], 15, "diverse", seed=0, embedder=str(tiny_bert_dir))
    picked = [c.text for c in chosen]
    assert len(set(c.row for c in chosen)) == 15
    assert len({normalise_text(t) for t in picked}) == 15
    assert near_duplicate_pairs(picked) == []
    plain = select(run, pool[0], 15, "entropy", seed=0)
    assert len({normalise_text(c.text) for c in plain}) <= 15  # entropy alone may pick copies; diverse never does


def test_bad_input_gets_one_line(probe_run, tmp_path, capsys):
    run, data = probe_run
    labels_only = tmp_path / "labels.csv"
    write_csv(labels_only, [("sport",), ("music",)], header=("label",))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    small = tmp_path / "small.txt"
    small.write_text("sport red\nmusic blue\n")
    assert main(["baseline", "--dataset", str(data), "--kind", "majority", "--out", str(tmp_path / "floor")]) == 0
    capsys.readouterr()
    cases = [
        ([str(run), "--pool", str(labels_only)], "text"),
        ([str(run), "--pool", str(empty)], "is empty"),
        ([str(run), "--pool", str(small), "--k", "5"], "choose between 1 and the pool's 2 examples"),
        ([str(tmp_path / "floor"), "--pool", str(small), "--k", "1"], "equally sure of every example"),
        ([str(run), "--pool", str(tmp_path / "missing.csv")], "not found"),
    ]
    for argv, message in cases:
        if "--k" not in argv:
            argv += ["--k", "1"]
        assert main(["select", *argv, "--out", str(tmp_path / "o.csv")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert not (tmp_path / "o.csv").exists()
