"""Ordered classes (problems/ordinal.py): detected from a rating column or asked for,
trained with an order-respecting loss, predicted as the median class, scored with MAE,
quadratic weighted kappa and Spearman, and taken by every task that takes classes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tests.conftest import assert_predictor_reproduces, metrics_of, write_csv
from tunelab.cli import main
from tunelab.problems import PROBLEMS, detect_problem, get_problem, headline_metric
from tunelab.problems.ordinal import median_class, ordinal_metrics

WORDS = {1: ["awful", "terrible"], 2: ["bad", "weak"], 3: ["fine", "ok"], 4: ["good", "great"],
         5: ["wonderful", "brilliant"]}


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    root = tmp_path_factory.mktemp("ratings")
    rng = random.Random(0)
    for split, n in (("train", 80), ("validation", 25), ("test", 25)):
        rows = []
        for _ in range(n):
            r = rng.randint(1, 5)
            rows.append((f"{rng.choice(WORDS[r])} film {rng.choice(['story', 'plot'])} {rng.choice(WORDS[r])}", r))
        write_csv(root / f"{split}.csv", rows, header=("text", "rating"))
    return root


def test_a_run_of_whole_numbers_in_a_rating_column_is_ordinal():
    assert detect_problem(["1", "3", "2", "5", "4"], None, None, "x", "rating").name == "ordinal"
    assert detect_problem([1, 3, 2], None, None, "x", "stars").name == "ordinal"
    assert detect_problem(["1", "3", "2", "5", "4"], None, None, "x", "label").name == "single-label"
    assert detect_problem(["1", "5"], None, None, "x", "rating").name == "single-label"  # not a run of 3
    assert detect_problem(["1", "3", "5"], None, None, "x", "rating").name == "single-label"  # gaps
    assert detect_problem(["0.5", "1.2"], None, None, "x", "rating").name == "regression"
    assert get_problem("ordinal").fits(("single-label", "regression")) and "ordinal" in PROBLEMS


def test_median_class_and_metrics():
    probabilities = np.array([[0.1, 0.2, 0.3, 0.4], [0.6, 0.1, 0.1, 0.2], [0.25, 0.25, 0.25, 0.25]])
    assert median_class(probabilities).tolist() == [2, 0, 1]
    values = ordinal_metrics(np.array([0, 1, 2, 3]), np.array([0, 2, 2, 1]), 4)
    assert values["mae"] == pytest.approx(0.75)
    from sklearn.metrics import cohen_kappa_score

    assert values["qwk"] == pytest.approx(cohen_kappa_score([0, 1, 2, 3], [0, 2, 2, 1], weights="quadratic"))
    assert headline_metric({"accuracy": 0.5, "f1_macro": 0.4, "mae": 1.0, "qwk": 0.3, "spearman": 0.2,
                            "balanced_accuracy": 0.5}) == "qwk"
    assert headline_metric({"accuracy": 0.5, "f1_macro": 0.4, "balanced_accuracy": 0.5}) == "accuracy"


def test_the_loss_respects_order():
    problem = get_problem("ordinal")
    labels = torch.tensor([0])
    near = problem.loss(torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.0]]), labels, None)
    far = problem.loss(torch.tensor([[0.0, 0.0, 0.0, 0.0, 3.0]]), labels, None)
    assert float(near) < float(far)  # cross-entropy alone scores the two mistakes alike
    logits = torch.zeros(2, 5, requires_grad=True)
    problem.loss(logits, torch.tensor([1, 3]), None).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_probe_and_fine_tuning_on_ordered_classes(ratings, tiny_bert_dir, tmp_path, capsys):
    probe = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(ratings), "--out", str(probe)]) == 0
    metrics = metrics_of(probe)
    assert metrics["data"]["problem"] == "ordinal"
    test = metrics["splits"]["test"]
    assert {"mae", "qwk", "spearman", "accuracy"} <= set(test) and test["mae"] >= 0
    assert json.loads((probe / "model" / "predictor.json").read_text())["problem"] == "ordinal"
    assert assert_predictor_reproduces(probe) > 0
    fine = tmp_path / "ft"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--dataset", str(ratings), "--out", str(fine),
                 "--max-steps", "6", "--eval-every", "3", "--batch-size", "16", "--lr", "1e-3",
                 "--precision", "fp32"]) == 0
    metrics = metrics_of(fine)
    assert metrics["task"]["training"]["best_validation_qwk"] is not None and "qwk" in metrics["splits"]["test"]
    assert assert_predictor_reproduces(fine) > 0
    capsys.readouterr()
    assert main(["predict", str(fine), "good film plot great"]) == 0
    label = capsys.readouterr().out.splitlines()[1].split("\t")[0]
    assert label in {"1", "2", "3", "4", "5"}  # a class, never a number between classes


def test_problem_ordinal_is_asked_for_on_any_labels(ratings, tmp_path):
    out = tmp_path / "floor"
    assert main(["baseline", "--kind", "tfidf", "--dataset", str(ratings), "--label-column", "rating",
                 "--problem", "ordinal", "--out", str(out)]) == 0
    assert metrics_of(out)["data"]["problem"] == "ordinal" and "qwk" in metrics_of(out)["splits"]["test"]
