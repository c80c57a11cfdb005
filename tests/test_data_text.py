import json

import numpy as np
import pytest

from tests.conftest import topic_rows, write_csv
from tunelab.core.config import DataConfig
from tunelab.core.errors import DataError
from tunelab.data.labels import stratified_indices, stratified_subsample
from tunelab.data.text import load_text_dataset


def load(dataset, **kwargs):
    return load_text_dataset(DataConfig(dataset=str(dataset), **kwargs), seed=42)


# --------------------------------------------------------------------------- Rotten Tomatoes


@pytest.fixture(scope="module")
def rt(rt_available):
    if not rt_available:
        pytest.skip("../shared/data/rotten_tomatoes is not present")
    return load("rotten_tomatoes")


def test_rt_splits_match_the_hub_dataset(rt):
    assert {k: len(v) for k, v in rt.splits.items()} == {"train": 8530, "validation": 1066, "test": 1066}
    assert rt.class_names == ["neg", "pos"]
    for split in rt.splits.values():
        assert split.labels.sum() == len(split) // 2  # balanced; label 1 = pos


def test_rt_first_lines_of_each_split(rt):
    train, val, test = rt.splits["train"], rt.splits["validation"], rt.splits["test"]
    assert train.texts[0].startswith("the rock is destined to be the 21st century's new \" conan \"")
    assert train.labels[0] == 1 and train.ids[0] == "rt-polarity.pos:1"
    assert train.texts[4265] == "simplistic , silly and tedious ."
    assert train.labels[4265] == 0
    assert val.texts[0].startswith("compassionately explores the seemingly irreconcilable situation")
    assert test.texts[0].startswith("lovingly photographed in the manner of a golden book sprung to life")
    assert test.texts[533].startswith("this slender plot feels especially thin")
    assert all(t == t.strip() for t in train.texts[:100])


def test_rt_utf8_text_is_intact(rt):
    train = rt.splits["train"]
    assert "the clichés disappear into the vertiginous perspectives" in train.texts[96]
    assert "a slew of songs — a few potential hits" in train.texts[57]
    assert not any("Ã" in t for t in train.texts)  # no mojibake


def test_rt_caps_are_stratified_and_seeded(need_rt):
    a = load("rotten_tomatoes", max_train_samples=101, max_eval_samples=50)
    b = load("rotten_tomatoes", max_train_samples=101, max_eval_samples=50)
    assert len(a.splits["train"]) == 101 and len(a.splits["test"]) == 50
    assert abs(int(a.splits["train"].labels.sum()) - 50) <= 1
    assert a.splits["train"].ids == b.splits["train"].ids


def test_rt_positive_label_override(need_rt):
    ds = load("rotten_tomatoes", positive_label="neg", max_eval_samples=10)
    assert ds.class_names == ["pos", "neg"]
    assert ds.splits["train"].labels[0] == 0  # the first train line is positive


# --------------------------------------------------------------------------- files and folders


def test_csv_folder_with_string_labels(topic_folder):
    ds = load(topic_folder)
    assert ds.class_names == ["music", "science", "sport"]  # sorted label values
    assert [len(ds.splits[s]) for s in ("train", "validation", "test")] == [90, 24, 24]
    assert ds.eval_split_names() == ["validation", "test"]
    first = ds.splits["train"]
    assert ds.class_names[first.labels[0]] == topic_rows(30, seed=1)[0][1]


def test_single_file_is_split_80_10_10_stratified(tmp_path):
    path = write_csv(tmp_path / "all.csv", topic_rows(40))
    ds = load(path)
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 96, "validation": 12, "test": 12}
    for split in ds.splits.values():
        assert np.bincount(split.labels).tolist() == [len(split) // 3] * 3
    all_ids = sum((s.ids for s in ds.splits.values()), [])
    assert len(set(all_ids)) == 120
    assert any("80/10/10" in n for n in ds.notes)
    assert load(path).splits["test"].ids == ds.splits["test"].ids  # seeded


def test_missing_validation_is_made_from_train(tmp_path):
    write_csv(tmp_path / "d" / "train.csv", topic_rows(20))
    write_csv(tmp_path / "d" / "test.csv", topic_rows(5))
    ds = load(tmp_path / "d")
    assert len(ds.splits["validation"]) == 6 and len(ds.splits["train"]) == 54
    assert any("validation split from 10% of train" in n for n in ds.notes)


def test_jsonl_and_parquet_with_integer_labels(tmp_path):
    import pandas as pd

    rows = [{"sentence": f"text number {i}", "labels": [2, 10, 9][i % 3]} for i in range(30)]
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows[:9]).to_parquet(folder / "test.parquet")
    ds = load(folder)
    assert ds.class_names == ["2", "9", "10"]  # numeric order, not text order
    assert ds.text_column == "sentence" and ds.label_column == "labels"
    assert any("used column 'sentence'" in n for n in ds.notes)
    assert set(ds.splits) == {"train", "validation", "test"}


def test_csv_integer_labels_are_numeric(tmp_path):
    path = write_csv(tmp_path / "x.csv", [(f"t {i}", [3, 12][i % 2]) for i in range(20)])
    assert load(path).class_names == ["3", "12"]


def test_saved_hf_dataset(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["bad", "good"])})
    make = lambda n: Dataset.from_dict({"text": [f"s {i}" for i in range(n)], "label": [i % 2 for i in range(n)]},
                                       features=features)
    DatasetDict({"train": make(20), "test": make(6)}).save_to_disk(str(tmp_path / "saved"))
    ds = load(tmp_path / "saved")
    assert ds.class_names == ["bad", "good"]
    assert len(ds.splits["test"]) == 6


def test_stratified_helpers():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    parts = stratified_indices(labels, [0.8, 0.1, 0.1], seed=0)
    assert [len(p) for p in parts] == [80, 10, 10]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    sub = stratified_subsample(labels, 10, seed=0)
    assert np.bincount(labels[sub]).tolist() == [5, 3, 2]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "setup, kwargs, message",
    [
        (lambda p: p / "nope", {}, "dataset '.*nope' not found"),
        (lambda p: (p / "x.xlsx").write_text("x") and p / "x.xlsx", {}, "unknown file type '.xlsx'"),
        (lambda p: write_csv(p / "a.csv", [("x", 1)] * 4, header=("body", "label")), {},
         r"no column 'text'; columns present: body, label; name one with --text-column"),
        (lambda p: write_csv(p / "a.csv", [("x", 1)] * 4), {"label_column": "y"},
         r"no column 'y' \(--label-column\); columns present: text, label"),
        (lambda p: write_csv(p / "a.csv", [("x", 0), ("", 1), ("  ", 0), ("y", 1)] * 3), {},
         r"a.csv: 6 rows have empty or non-text text \(empty; rows 2, 3, 6, 7, 10, 11\)"),
        (lambda p: write_csv(p / "a.csv", [("x", "only")] * 10), {}, "single class \\(only\\)"),
        (lambda p: write_csv(p / "a.csv", [("x", "a"), ("y", "")] * 5), {}, "5 rows have no label"),
    ],
    ids=["missing", "unknown-format", "no-text-column", "no-label-column", "empty-text", "one-class",
         "missing-label"],
)
def test_bad_input_is_one_clear_line(tmp_path, setup, kwargs, message):
    path = setup(tmp_path)
    with pytest.raises(DataError, match=message) as info:
        load(path, **kwargs)
    assert "\n" not in str(info.value)


def test_non_string_text_in_jsonl(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    rows = [{"text": "ok", "label": "a"}, {"text": 5, "label": "b"}, {"text": None, "label": "a"}] * 4
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"train.jsonl: 8 train rows have empty or non-text text \(.*int.*rows 2, 3, 5"):
        load(folder)


def test_label_unseen_in_train(topic_folder):
    write_csv(topic_folder / "test.csv", [("sport red", "sport"), ("art", "painting")])
    message = r"test.csv: 1 test row has labels that the training data lacks \('painting'; row 2\)"
    with pytest.raises(DataError, match=message):
        load(topic_folder)


def test_ambiguous_default_column_lists_columns(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("x", "y", 1)] * 4, header=("sentence", "review", "label"))
    with pytest.raises(DataError, match="columns present: sentence, review, label"):
        load(path)


def test_image_dataset_for_text_command(tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "cat" / "a.jpg")
    with pytest.raises(DataError, match="image-folder dataset \\(images\\); this command needs text"):
        load(tmp_path / "imgs")
