"""Fine-tuning end to end on a tiny random DistilBERT: full, LoRA, resume, two processes."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_adapter, topic_rows, write_csv
from tunelab.cli import main

CONTRACT = ["config.yaml", "command.txt", "metrics.json", "report.md", "history.json",
            "predictions/validation.csv", "predictions/test.csv", "confusion_test.png"]


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    folder = tmp_path_factory.mktemp("topics")
    write_csv(folder / "train.csv", topic_rows(60, seed=1))
    write_csv(folder / "validation.csv", topic_rows(10, seed=2))
    write_csv(folder / "test.csv", topic_rows(10, seed=3))
    return folder


def finetune_args(model, data, out, *extra):
    return ["finetune", "--model", str(model), "--dataset", str(data), "--out", str(out),
            "--batch-size", "8", "--eval-every", "25", "--seed", "3", *map(str, extra)]


def metrics_of(run):
    return json.loads((Path(run) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def full_run(tiny_bert_dir, topics, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "full"
    assert main(finetune_args(tiny_bert_dir, topics, out, "--max-steps", 100, "--lr", "1e-3",
                              "--keep-checkpoints")) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, topics, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "lora"
    assert main(finetune_args(tiny_bert_dir, topics, out, "--method", "lora", "--max-steps", 100,
                              "--lr", "2e-2", "--lora-r", 4, "--merge-lora")) == 0
    return out


def test_full_run_writes_the_contract_and_learns(full_run):
    for name in CONTRACT:
        assert (full_run / name).is_file(), name
    assert (full_run / "model" / "model.safetensors").is_file()
    assert not list((full_run / "model").glob("*.bin")) and not list((full_run / "model").glob("*.pt"))
    metrics = metrics_of(full_run)
    assert metrics["params"]["trainable"] == metrics["params"]["total"]
    assert metrics["splits"]["validation"]["n"] == 30 and metrics["splits"]["test"]["n"] == 30
    assert metrics["splits"]["validation"]["accuracy"] > 0.5  # chance is 1/3
    assert metrics["task"]["training"]["steps"] == 100
    history = json.loads((full_run / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
    evals = [h for h in history if "eval_accuracy" in h]
    assert [h["step"] for h in evals] == [25, 50, 75, 100]
    best = max(e["eval_accuracy"] for e in evals)
    assert metrics["task"]["training"]["best_validation_accuracy"] == pytest.approx(best)
    # The best checkpoint and the last survive rotation.
    kept = sorted(p.name for p in (full_run / "checkpoints").iterdir())
    assert metrics["task"]["training"]["best_checkpoint"].split("/")[-1] in kept and "checkpoint-100" in kept


def test_tensorboard_has_training_curves(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(full_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "validation/accuracy", "train/samples_per_s"} <= tags
    assert len(events.Scalars("validation/accuracy")) == 4


def test_lora_trains_only_adapters_and_head(lora_run, full_run):
    metrics = metrics_of(lora_run)
    params = metrics["params"]
    # q_lin and v_lin of 2 layers, r=4, dim 32: 2 layers x 2 modules x (32*4 + 4*32)
    adapters = 2 * 2 * (32 * 4 + 4 * 32)
    head = (32 * 32 + 32) + (32 * 3 + 3)  # pre_classifier + classifier
    assert params["trainable"] == adapters + head
    assert params["total"] == metrics_of(full_run)["params"]["total"] + adapters + head  # + head copies
    model_dir = lora_run / "model"
    assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "adapter_config.json").exists()
    assert metrics["task"]["training"]["learning_rate"] == 2e-2
    assert metrics["splits"]["validation"]["accuracy"] > 0.4


def test_lora_default_learning_rate(tiny_bert_dir, topics, tmp_path):
    out = tmp_path / "lr"
    assert main(finetune_args(tiny_bert_dir, topics, out, "--method", "lora", "--max-steps", 2,
                              "--eval-every", 1)) == 0
    assert metrics_of(out)["task"]["training"]["learning_rate"] == 1e-3


@pytest.mark.parametrize("run_name", ["full_run", "lora_run"])
def test_predict_matches_the_runs_predictions(run_name, request, tmp_path):
    run = request.getfixturevalue(run_name)
    with open(run / "predictions" / "test.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    write_csv(tmp_path / "in.csv", [(r["text"], "") for r in rows])
    assert main(["predict", str(run), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv"),
                 "--precision", "run"]) == 0  # the run's own precision reproduces its predictions
    with open(tmp_path / "o.csv", newline="", encoding="utf-8") as handle:
        predicted = list(csv.DictReader(handle))
    assert [p["prediction"] for p in predicted] == [r["prediction"] for r in rows]
    # A LoRA run's predictions were made with the adapter beside the weights; predict serves
    # them merged, which in bf16 rounds differently (in fp32 they agree to 1e-5: see below).
    np.testing.assert_allclose([float(p["probability"]) for p in predicted],
                               [float(r["probability"]) for r in rows], rtol=1e-5 if run_name == "full_run" else 1e-2)


def test_epochs_replace_max_steps(tiny_bert_dir, topics, tmp_path):
    out = tmp_path / "ep"
    assert main(finetune_args(tiny_bert_dir, topics, out, "--epochs", 1, "--max-train-samples", 40,
                              "--eval-every", 1000)) == 0
    assert metrics_of(out)["task"]["training"]["steps"] == 5  # 40 examples / batch 8


def _cli(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return [sys.executable, "-m", "tunelab", *map(str, args)], env


def test_resume_after_sigkill_gives_the_same_metrics(tiny_bert_dir, topics, tmp_path):
    schedule = ["--max-steps", 300, "--eval-every", 50, "--lr", "1e-3"]
    reference = tmp_path / "reference"
    assert main(finetune_args(tiny_bert_dir, topics, reference, *schedule)) == 0

    killed = tmp_path / "killed"
    cmd, env = _cli(*finetune_args(tiny_bert_dir, topics, killed, *schedule))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoints" / "checkpoint-50" / "trainer_state.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "checkpoint-50").is_dir(), "the run never reached its first checkpoint"
    assert not (killed / "metrics.json").exists()
    last = max(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("checkpoint-*"))
    assert last < 300, "the run finished before it was killed"

    assert main(["finetune", "--out", str(killed), "--resume"]) == 0
    resumed, uninterrupted = metrics_of(killed), metrics_of(reference)
    assert resumed["task"]["training"]["resumed"] is True
    assert resumed["splits"] == uninterrupted["splits"]
    assert resumed["task"]["training"]["best_checkpoint"] == uninterrupted["task"]["training"]["best_checkpoint"]


def test_resume_refuses_finished_or_missing_runs(full_run, tiny_bert_dir, topics, tmp_path, capsys):
    assert main(["finetune", "--out", str(full_run), "--resume"]) == 2
    assert "holds a finished run" in capsys.readouterr().err
    # Good data and model: the refusal is about the missing run, nothing else.
    assert main(finetune_args(tiny_bert_dir, topics, tmp_path / "none", "--resume")) == 2
    assert "nothing to resume in" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_ctrl_c_saves_a_checkpoint(tiny_bert_dir, topics, tmp_path):
    out = tmp_path / "interrupted"
    cmd, env = _cli(*finetune_args(tiny_bert_dir, topics, out, "--max-steps", 5000, "--eval-every", 4000))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("events.out.tfevents.*")):
        time.sleep(0.05)
    time.sleep(3)  # well into training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    checkpoints = list((out / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file()


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_write_one_complete_run(tiny_bert_dir, topics, tmp_path):
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "tunelab",
           *finetune_args(tiny_bert_dir, topics, out, "--max-steps", 20, "--eval-every", 10)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = metrics_of(out)
    assert metrics["task"]["training"]["world_size"] == 2
    assert metrics["splits"]["validation"]["n"] == 30 and metrics["splits"]["test"]["n"] == 30
    for name in CONTRACT:
        assert (out / name).is_file(), name
    assert len(list(out.glob("events.out.tfevents.*"))) == 1


def test_early_stopping_stops_when_validation_stalls(tiny_bert_dir, topics, tmp_path):
    out = tmp_path / "early"
    # A learning rate too small to change anything: accuracy never improves after the first evaluation.
    assert main(finetune_args(tiny_bert_dir, topics, out, "--max-steps", 100, "--eval-every", 5, "--lr", "1e-12",
                              "--early-stopping", 2)) == 0
    metrics = metrics_of(out)
    assert metrics["task"]["training"]["steps"] == 15  # evaluations at 5 (best), 10 and 15 (no gain twice)
    assert metrics["task"]["training"]["best_checkpoint"].endswith("checkpoint-5")


def test_merged_lora_weights_give_the_adapters_predictions(lora_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter_model = load_adapter(lora_run / "model" / "adapter")
    merged = AutoModelForSequenceClassification.from_pretrained(lora_run / "model").eval()
    batch = AutoTokenizer.from_pretrained(lora_run / "model")(["sport red film", "music blue story"],
                                                             return_tensors="pt", padding=True)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapter_model(**inputs).logits, atol=1e-5, rtol=1e-4)
