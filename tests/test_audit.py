"""tunelab audit: copies within and across splits (exact after normalising, near by
MinHash), conflicting copies, label errors by confident learning (the same rows as
cleanlab flags on the same probabilities), the files it writes and the one-line errors."""

import csv
import json
import random
from importlib import resources

import numpy as np
import pytest

from tests.conftest import write_csv
from tunelab.cli import main
from tunelab.data.duplicates import difference_hash, exact_groups, hamming, near_duplicate_pairs, normalise_text
from tunelab.problems.label_quality import confident_learning, out_of_fold_probabilities

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def sentence(rng: random.Random, keyword: str, words: int = 12) -> str:
    filler = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8))) for _ in range(words)]
    filler[rng.randrange(words)] = keyword
    filler[rng.randrange(words)] = keyword
    return " ".join(filler)


def test_normalised_copies_and_near_copies():
    assert normalise_text("  A Film,  really!  ") == normalise_text("a film really") == "a film really"
    assert exact_groups(["a", "b", "a", "c", "b", "a"]) == [[0, 2, 5], [1, 4]]
    rng = random.Random(0)
    texts = [sentence(rng, "sport", 16) for _ in range(300)]
    edited = texts[5].split()
    edited[3] = "changed"
    texts.append(" ".join(edited))  # 300: one word of 16 changed
    texts.append(texts[7].replace(" ", "  ").upper() + " !")  # 301: an exact copy once normalised
    pairs = {(i, j) for i, j, _ in near_duplicate_pairs(texts)}
    assert (5, 300) in pairs and (7, 301) in pairs
    assert len(pairs) == 2  # no unrelated pair among 45,451
    assert all(s >= 0.7 for _, _, s in near_duplicate_pairs(texts))


def test_perceptual_hash_of_near_identical_images():
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (64, 64, 3)).astype("uint8")
    other = rng.integers(0, 255, (64, 64, 3)).astype("uint8")
    first, resized = Image.fromarray(pixels), Image.fromarray(pixels).resize((80, 80))
    assert hamming(difference_hash(first), difference_hash(resized)) <= 6
    assert hamming(difference_hash(first), difference_hash(Image.fromarray(other))) > 12


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_confident_learning_flags_the_rows_cleanlab_flags(classes):
    cleanlab = pytest.importorskip("cleanlab.filter")
    rng = np.random.default_rng(classes)
    n = 1500
    truth = rng.integers(0, classes, n)
    features = rng.normal(size=(n, 8))
    features[np.arange(n), truth] += 2.0
    labels = truth.copy()
    flipped = rng.random(n) < 0.08
    labels[flipped] = (labels[flipped] + rng.integers(1, classes, flipped.sum())) % classes
    probabilities, _ = out_of_fold_probabilities(features, labels, folds=5, seed=0)
    ours = set(confident_learning(labels, probabilities).rows.tolist())
    theirs = set(np.flatnonzero(cleanlab.find_label_issues(labels, probabilities)).tolist())
    assert len(ours & theirs) / len(ours | theirs) >= 0.97
    planted = set(np.flatnonzero(flipped).tolist())
    assert 2 * len(ours & planted) / (len(ours) + len(planted)) >= 0.5


def planted_data(folder, rng):
    """Three splits of two classes with: a test text copied into train (case and punctuation
    changed), a test text copied with one word changed, an exact copy with the other label,
    and three flipped training labels."""
    splits = {name: [(sentence(rng, kw), kw) for kw in ("sport", "music") for _ in range(n)]
              for name, n in (("train", 60), ("validation", 15), ("test", 15))}
    for rows in splits.values():
        rng.shuffle(rows)
    test = splits["test"]
    splits["train"].append((test[0][0].upper() + " !", test[0][1]))
    words = test[1][0].split()
    words[4] = "edited"
    splits["train"].append((" ".join(words), test[1][1]))
    splits["train"].append((test[2][0], "music" if test[2][1] == "sport" else "sport"))
    flipped = []
    for i in range(3):
        text, label = splits["train"][i]
        splits["train"][i] = (text, "music" if label == "sport" else "sport")
        flipped.append(str(i + 1))  # the id: the row's number among the file's data rows
    for name, rows in splits.items():
        write_csv(folder / f"{name}.csv", rows)
    return folder, flipped


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_an_audit_finds_planted_copies_and_flipped_labels(tiny_bert_dir, tmp_path, capsys):
    data, flipped = planted_data(tmp_path / "data", random.Random(1))
    out = tmp_path / "audit"
    assert main(["audit", str(data), "--model", str(tiny_bert_dir), "--out", str(out), "--pooling", "mean",
                 "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "audited 183 rows" in printed and "audit.md" in printed
    record = json.loads((out / "audit.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(record, json.loads((resources.files("tunelab.schemas") / "audit.schema.json").read_text()))
    assert record["rows"] == 183 and record["splits"] == {"train": 123, "validation": 30, "test": 30}
    rows = read_rows(out / "audit.csv")
    assert list(rows[0]) == ["split", "id", "issue", "score", "given", "suggested", "copy_split", "copy_id", "text"]
    by_issue = {}
    for row in rows:
        by_issue.setdefault(row["issue"], []).append(row)
    exact = [(r["split"], r["copy_split"]) for r in by_issue["exact duplicate"]]
    assert exact.count(("test", "train")) == 2  # the recased copy and the relabelled copy
    assert [(r["split"], r["copy_split"]) for r in by_issue["near duplicate"]] == [("test", "train")]
    conflicts = by_issue["conflicting duplicate"]
    assert len(conflicts) == 1 and conflicts[0]["split"] == "test"
    assert conflicts[0]["suggested"] != conflicts[0]["given"]
    assert record["duplicates"]["across_splits"] == {"test-train": 3}
    errors = {r["id"] for r in by_issue.get("label error", []) if r["split"] == "train"}
    assert len(errors & set(flipped)) >= 2  # a random tiny encoder still finds most of three flipped labels
    assert (out / "audit.md").read_text().startswith("# Audit of")
    assert main(["audit", str(data), "--model", str(tiny_bert_dir), "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err


def test_bad_input_gets_one_line(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunelab: error:") and len(err.splitlines()) == 1 and "missing.csv" in err
    assert not (tmp_path / "a").exists()
    assert main(["audit", str(tmp_path / "x.csv"), "--folds", "0"]) == 2


def test_a_run_also_scores_test_without_its_copies_of_train(tmp_path, caplog):
    data, _ = planted_data(tmp_path / "data", random.Random(1))
    assert main(["baseline", "--dataset", str(data), "--out", str(tmp_path / "plain")]) == 0
    metrics = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    dedup = metrics["deduplicated"]["test"]
    assert dedup["copies_of_train"] == 3 and dedup["n"] == 27
    rows = read_rows(tmp_path / "plain" / "predictions" / "test.csv")
    copied = {1, 2, 3}  # the first three test rows were copied into train
    kept = [r for r in rows if int(r["id"]) not in copied]
    assert dedup["metrics"]["accuracy"] == pytest.approx(np.mean([r["label"] == r["prediction"] for r in kept]))
    assert "test: 3 of 30 rows copy training rows; without them accuracy" in caplog.text
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(metrics, json.loads((resources.files("tunelab.schemas") / "metrics.schema.json").read_text()))

    assert main(["baseline", "--dataset", str(data), "--dedup", "--out", str(tmp_path / "dedup")]) == 0
    metrics = json.loads((tmp_path / "dedup" / "metrics.json").read_text())
    assert metrics["data"]["sizes"]["train"] == 120 and "deduplicated" not in metrics
    assert any("--dedup dropped 3 of 123 training rows: 3 copies" in note for note in metrics["data"]["notes"])


def test_a_comparison_report_shows_each_method_without_the_copies(tmp_path):
    data, _ = planted_data(tmp_path / "data", random.Random(1))
    for kind in ("majority", "tfidf"):
        assert main(["baseline", "--dataset", str(data), "--out", str(tmp_path / kind), "--set", f"kind={kind}"]) == 0
    assert main(["report", str(tmp_path / "majority"), str(tmp_path / "tfidf"), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "## Data audit" in text and "3 of 30" in text and "Without them the order of the methods" in text
    analysis = json.loads((tmp_path / "r.analysis.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(analysis, json.loads((resources.files("tunelab.schemas") / "analysis.schema.json").read_text()))
    tested = [c for c in analysis["comparisons"] if c["tested"]]
    assert tested and all(c["low"] <= c["delta"] <= c["high"] for c in tested)
    assert all((c["low"] > 0 or c["high"] < 0) == c["significant"] for c in tested)
    run_report = (tmp_path / "tfidf" / "report.md").read_text()
    assert run_report.index("## Data audit") < run_report.index("## Metrics")
    assert "3 of 30 test rows copy training rows" in run_report


def test_an_image_audit_finds_a_resized_copy_across_splits_and_broken_files(colour_folder, tmp_path):
    import shutil

    from PIL import Image

    data = tmp_path / "images"
    shutil.copytree(colour_folder, data)
    source = sorted((data / "test" / "red").glob("*.png"))[0]
    Image.open(source).resize((56, 56)).save(data / "train" / "red" / "copy.jpg", quality=90)
    Image.open(source).convert("L").save(data / "train" / "green" / "grey.png")
    (data / "train" / "blue" / "broken.png").write_bytes(source.read_bytes()[:80])
    Image.new("RGB", (12, 12), "blue").save(data / "train" / "blue" / "tiny.png")
    out = tmp_path / "audit"
    assert main(["audit", str(data), "--out", str(out)]) == 0
    record = json.loads((out / "audit.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(record, json.loads((resources.files("tunelab.schemas") / "audit.schema.json").read_text()))
    rows = read_rows(out / "audit.csv")
    copies = {(r["split"], r["id"].rsplit("/", 1)[-1], r["copy_split"]) for r in rows
              if r["issue"] == "image duplicate"}
    # the test image copies a train image (resized, re-encoded); the grey one is a copy too, in another class
    assert ("test", source.name, "train") in copies and len(copies) == 2
    issues = {(r["issue"], r["id"].rsplit("/", 1)[-1]) for r in rows}
    assert {("unreadable image", "broken.png"), ("tiny image", "tiny.png"), ("grayscale image", "grey.png")} <= issues
    assert record["duplicates"]["conflicting"] >= 1 and record["duplicates"]["across_splits"] == {"test-train": 1}
    assert record["images"]["unreadable"] == 1 and record["label_errors"]["flagged"] == 0
