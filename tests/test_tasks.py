"""The seams: one task registry, one run lifecycle, one metrics.json schema, flags
generated from the configs, and config rules that hold however a config is given."""

import ast
import csv
import dataclasses
import json
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import topic_rows, write_csv
from tunelab.cli import build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"


def metrics_of(run):
    return json.loads((Path(run) / "metrics.json").read_text())


# --------------------------------------------------------------------------- one schema for every task


@pytest.fixture(scope="module")
def four_runs(tiny_bert_dir, tiny_clip_dir, colour_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("four")
    topics = root / "topics"
    write_csv(topics / "train.csv", topic_rows(20, seed=1))
    write_csv(topics / "test.csv", topic_rows(5, seed=2))
    runs = {
        "probe": ["probe", "--model", tiny_bert_dir, "--dataset", topics, "--classifier", "logreg"],
        "finetune": ["finetune", "--model", tiny_bert_dir, "--dataset", topics, "--max-steps", 4, "--eval-every", 2,
                     "--batch-size", 8],
        "zeroshot": ["zeroshot", "--model", tiny_clip_dir, "--dataset", colour_folder, "--num-workers", 0],
        "clip-finetune": ["clip-finetune", "--model", tiny_clip_dir, "--dataset", colour_folder, "--max-steps", 2,
                          "--eval-every", 2, "--batch-size", 8, "--num-workers", 0],
    }
    for name, args in runs.items():
        assert main([*map(str, args), "--out", str(root / name)]) == 0, name
    return {name: root / name for name in runs}


def test_every_task_writes_metrics_in_the_one_schema(four_runs):
    import jsonschema

    schema = json.loads((resources.files("tunelab.schemas") / "metrics.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    keys = {"command", "model", "dataset", "splits", "params", "timing", "environment", "skipped", "data", "task"}
    for name, run in four_runs.items():
        metrics = metrics_of(run)
        jsonschema.validate(metrics, schema)
        assert list(metrics) == list(schema["required"]) and set(metrics) == keys, name
        assert set(metrics["timing"]["throughput"]) == {"train_samples_per_s", "eval_samples_per_s"}
        assert metrics["timing"]["throughput"]["eval_samples_per_s"] > 0
        assert metrics["environment"]["processes"] == 1
        assert metrics["skipped"] == {"count": 0, "files": []}
        assert metrics["timing"]["peak_rss_mb"] > 50
    assert metrics_of(four_runs["zeroshot"])["timing"]["throughput"]["train_samples_per_s"] is None
    assert metrics_of(four_runs["finetune"])["task"]["training"]["steps"] == 4


def test_a_wrong_key_fails_the_schema(four_runs):
    import jsonschema

    schema = json.loads((resources.files("tunelab.schemas") / "metrics.schema.json").read_text())
    metrics = metrics_of(four_runs["probe"])
    metrics["skipped_images"] = {"count": 0, "files": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(metrics, schema)


def test_tracker_keys_are_the_same_in_every_task(four_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, run in four_runs.items():
        events = EventAccumulator(str(run))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"final/test/accuracy", "final/test/f1_macro", "throughput/eval_samples_per_s"} <= tags, name


# --------------------------------------------------------------------------- a new task, with no edit to tunelab


def _word_vote_task():
    from tunelab.core.config import DataConfig, RuntimeConfig, TrackingConfig, setting
    from tunelab.core.registry import Task
    from tunelab.data.text import load_text_dataset
    from tunelab.models.predictor import Prediction
    from tunelab.problems.scores import ClassScores
    from tunelab.tasks.contract import Outcome, Prepared
    from tunelab.tasks.evaluation import evaluate_split

    @dataclasses.dataclass
    class WordVote:
        model: str | None = None
        data: DataConfig = dataclasses.field(default_factory=DataConfig)
        smoothing: float = setting(1.0, "add-k smoothing of the word counts", flag="--smoothing")
        runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
        tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
        seed: int = setting(0, "seed", flag="--seed")

    def scores_for(counts, texts, smoothing):
        totals = {c: sum(v.values()) for c, v in counts.items()}
        out = np.zeros((len(texts), len(counts)))
        for row, text in enumerate(texts):
            for col, cls in enumerate(sorted(counts)):
                out[row, col] = sum(np.log((counts[cls].get(w, 0) + smoothing) / (totals[cls] + smoothing))
                                    for w in text.split())
        return out

    def prepare(config):
        dataset = load_text_dataset(config.data, seed=config.seed)
        return Prepared(config, None, dataset, dataset.eval_split_names(config.data.splits))

    def execute(prepared, context):
        dataset, run = prepared.dataset, context.run
        train = dataset.splits["train"]
        counts = {int(c): Counter() for c in range(len(dataset.class_names))}
        for text, label in zip(train.texts, train.labels):
            counts[int(label)].update(text.split())
        run.write_json("model/counts.json", {"class_names": dataset.class_names,
                                             "counts": {str(k): dict(v) for k, v in counts.items()}})
        splits, reports = {}, {}
        for split in prepared.eval_splits:
            data = dataset.splits[split]
            scores = ClassScores.from_full(scores_for(counts, data.texts, prepared.config.smoothing), "log_score")
            splits[split], reports[split] = evaluate_split(run, split, dataset.class_names, data.labels, scores,
                                                           data.ids, data.inputs.columns())
        return Outcome(splits=splits, reports=reports, params={"total": 0, "trainable": 0},
                       seconds={"train": 0.0, "eval": 0.0},
                       throughput={"train_samples_per_s": None, "eval_samples_per_s": None},
                       task={"smoothing": prepared.config.smoothing})

    def load_predictor(run_dir, config):
        saved = json.loads((run_dir / "model" / "counts.json").read_text())
        counts = {int(k): Counter(v) for k, v in saved["counts"].items()}

        def predict(texts):
            scores = ClassScores.from_full(scores_for(counts, texts, config.smoothing), "log_score")
            return [Prediction(t, saved["class_names"][p], float(s), "log_score")
                    for t, p, s in zip(texts, scores.predicted, scores.score)]
        return predict

    return Task(name="word-vote", config_class=WordVote, prepare=prepare, execute=execute,
                summary="word counts vote", load_predictor=load_predictor,
                describe=lambda metrics: f"word vote, smoothing {metrics['task']['smoothing']}")


@pytest.fixture
def word_vote():
    import tunelab
    from tunelab.core.registry import unregister_task

    task = tunelab.register_task(_word_vote_task())
    yield task
    unregister_task(task.name)


def test_a_task_defined_outside_tunelab_runs_everywhere(word_vote, tmp_path, capsys):
    import tunelab

    data = tmp_path / "topics"
    write_csv(data / "train.csv", topic_rows(20, seed=1))
    write_csv(data / "test.csv", topic_rows(6, seed=2))
    # 1. the command line, with a flag generated from its config
    assert "--smoothing" in build_parser()._subparsers._group_actions[0].choices["word-vote"].format_help()
    cli_run = tmp_path / "cli"
    assert main(["word-vote", "--dataset", str(data), "--smoothing", "0.5", "--out", str(cli_run)]) == 0
    metrics = metrics_of(cli_run)
    assert metrics["command"] == "word-vote" and metrics["task"] == {"smoothing": 0.5}
    assert metrics["splits"]["test"]["accuracy"] > 0.8  # the keywords decide the topic
    assert yaml.safe_load((cli_run / "config.yaml").read_text())["smoothing"] == 0.5
    # 2. the Python API
    config = word_vote.config_class(data=tunelab.DataConfig(dataset=str(data)), smoothing=0.5)
    api = tunelab.word_vote(config, out=tmp_path / "api")
    assert api.metrics["splits"] == metrics["splits"]
    # 3. a study step, then the report
    study = {"name": "s", "steps": [{"name": "votes", "command": "word-vote", "data": {"dataset": str(data)},
                                     "smoothing": 0.5}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "study")]) == 0
    assert metrics_of(tmp_path / "study" / "votes")["splits"] == metrics["splits"]
    assert "word vote, smoothing 0.5" in (tmp_path / "study" / "report.md").read_text()
    # 4. predict
    with open(cli_run / "predictions" / "test.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    capsys.readouterr()
    assert main(["predict", str(cli_run), row["text"]]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[0] == row["prediction"]


# --------------------------------------------------------------------------- the same config however it is given


SETTINGS = {
    "probe": ({"model": "M", "seed": 3, "data": {"dataset": "D", "max_eval_samples": 50},
               "features": {"pooling": "mean", "batch_size": 16, "cache": False},
               "classifier": {"kind": "logreg", "c": 0.5}},
              ["--model", "M", "--seed", "3", "--dataset", "D", "--max-eval-samples", "50", "--pooling", "mean",
               "--batch-size", "16", "--no-cache", "--classifier", "logreg", "--C", "0.5"]),
    "finetune": ({"model": "M", "data": {"dataset": "D"}, "train": {"method": "lora", "epochs": 2, "batch_size": 8},
                  "lora": {"r": 4, "targets": ["q_lin", "v_lin"]}},
                 ["--model", "M", "--dataset", "D", "--method", "lora", "--epochs", "2", "--batch-size", "8",
                  "--lora-r", "4", "--lora-targets", "q_lin,v_lin"]),
    "zeroshot": ({"model": "M", "data": {"dataset": "D", "splits": ["validation"]}, "templates": "ensemble",
                  "images": {"batch_size": 32, "num_workers": 0}},
                 ["--model", "M", "--dataset", "D", "--splits", "validation", "--templates", "ensemble",
                  "--batch-size", "32", "--num-workers", "0"]),
    "clip-finetune": ({"model": "M", "data": {"dataset": "D"}, "train": {"batch_size": 8, "max_steps": 30},
                       "loss": "ce", "images": {"strict": True}},
                      ["--model", "M", "--dataset", "D", "--batch-size", "8", "--max-steps", "30", "--loss", "ce",
                       "--strict"]),
}


def _from_api(task, values):
    """The config built by hand with the dataclasses, as a Python user would."""
    fields = {f.name: f for f in dataclasses.fields(task.config_class)}
    kwargs = {}
    for key, value in values.items():
        # A group the user names starts from the task's own defaults for it.
        kwargs[key] = dataclasses.replace(fields[key].default_factory(), **value) if isinstance(value, dict) \
            else value
    return task.config_class(**kwargs)


@pytest.mark.parametrize("command", list(SETTINGS))
def test_flags_yaml_study_and_api_give_the_same_config(command, tmp_path):
    from tunelab.cli import config_overrides
    from tunelab.core.config import build_config, dump_yaml
    from tunelab.core.registry import get_task
    from tunelab.study.spec import load_study, resolve_step

    task = get_task(command)
    values, flags = SETTINGS[command]
    args = build_parser().parse_args([command, *flags])
    from_flags = build_config(task.config_class, command, None, config_overrides(args))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"command": command, **values}))
    from_yaml = build_config(task.config_class, command, str(tmp_path / "c.yaml"))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "steps": [{"name": "x", "command": command,
                                                                             **values}]}))
    study = load_study(str(tmp_path / "s.yaml"))
    from_study = resolve_step(study, study.steps[0])
    from_api = _from_api(task, values)
    texts = {dump_yaml(c, command) for c in (from_flags, from_yaml, from_study, from_api)}
    assert len(texts) == 1, texts


def test_epochs_replace_a_presets_steps_in_every_path(tmp_path):
    from tunelab.cli import config_overrides
    from tunelab.core.config import build_config
    from tunelab.study.spec import load_study, resolve_step
    from tunelab.tasks.finetune import FinetuneConfig

    args = build_parser().parse_args(["finetune", "--config", "lab03-finetune", "--epochs", "2"])
    flags = build_config(FinetuneConfig, "finetune", "lab03-finetune", config_overrides(args))
    assert (flags.train.epochs, flags.train.max_steps) == (2.0, None)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "settings": {"train": {"max_steps": 1000}},
                                                     "steps": [{"name": "x", "command": "finetune",
                                                                "train": {"epochs": 1}}]}))
    study = load_study(str(tmp_path / "s.yaml"), {"x.train.max_steps": 7})
    step = resolve_step(study, study.steps[0])
    assert (step.train.epochs, step.train.max_steps) == (None, 7)  # the --set layer wins
    from tunelab.training.trainer import total_steps

    assert total_steps(FinetuneConfig().train, 10, 1) == 1000  # neither given: the reference's 1,000 steps
    from tunelab.core.errors import ConfigError
    from tunelab.training.config import TrainConfig

    with pytest.raises(ConfigError, match="both give the schedule's length"):
        TrainConfig(epochs=1, max_steps=5)


def test_the_learning_rate_used_is_recorded():
    from tunelab.tasks.clip_finetune import ClipFinetuneConfig
    from tunelab.tasks.finetune import FinetuneConfig
    from tunelab.training.config import TrainConfig

    assert FinetuneConfig().train.lr == 2e-5
    assert FinetuneConfig(train=TrainConfig(method="lora")).train.lr == 1e-3
    assert ClipFinetuneConfig().train.lr == 1e-4


# --------------------------------------------------------------------------- flags from the configs


def _help(command):
    return " ".join(build_parser()._subparsers._group_actions[0].choices[command].format_help().split())


def test_help_defaults_come_from_each_tasks_config():
    assert "--eval-every N steps between evaluations (and checkpoints) (default 200)" in _help("clip-finetune")
    assert "--eval-every N steps between evaluations (and checkpoints) (default 100)" in _help("finetune")
    assert "up to 8 with a GPU" in _help("zeroshot") and "up to 4" not in _help("zeroshot")
    assert "--max-length" not in _help("clip-finetune")
    assert "CFG:" not in _help("probe") and "--pooling cls|mean" in _help("probe")


def test_every_documented_flag_parses():
    parser = build_parser()
    for command, flags in {
        "probe": ["--pooling", "mean", "--classifier", "svc", "--C", "2", "--standardize", "--tune", "--no-cache",
                  "--max-length", "64", "--batch-size", "8"],
        "finetune": ["--method", "lora", "--epochs", "1", "--max-steps", "3", "--lr", "1e-3", "--warmup", "0.1",
                     "--weight-decay", "0", "--batch-size", "4", "--grad-accum", "2", "--max-length", "32",
                     "--eval-every", "5", "--metric", "f1", "--save-total-limit", "3", "--early-stopping", "2",
                     "--merge-lora", "--gradient-checkpointing", "--lora-r", "4", "--lora-alpha", "8",
                     "--lora-dropout", "0", "--lora-targets", "q_lin", "--resume"],
        "zeroshot": ["--templates", "ensemble", "--batch-size", "8", "--num-workers", "0", "--strict"],
        "clip-finetune": ["--loss", "ce", "--method", "full", "--templates", "simple", "--resume"],
    }.items():
        common = ["--model", "m", "--dataset", "d", "--text-column", "t", "--label-column", "l", "--positive-label",
                  "p", "--max-train-samples", "5", "--max-eval-samples", "5", "--splits", "test", "--seed", "1",
                  "--device", "cpu", "--precision", "bf16", "--wandb", "--out", "o", "--overwrite", "--set", "a=1"]
        parser.parse_args([command, *common, *flags])


# --------------------------------------------------------------------------- module hygiene


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunelab"):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def test_info_and_the_package_root_read_the_registry():
    import tunelab
    from tunelab.core.registry import all_tasks

    for task in all_tasks().values():
        assert callable(getattr(tunelab, task.api_name))
    assert "tunelab.tasks" not in (SRC / "training" / "info.py").read_text()


# --------------------------------------------------------------------------- training and evaluation bookkeeping


def test_length_grouped_sampler_is_seeded_and_groups_lengths():
    from tunelab.training.trainer import SeededLengthGroupedSampler

    lengths = np.random.default_rng(0).integers(1, 200, size=1000)
    first = list(SeededLengthGroupedSampler(lengths, 16, seed=3, mega=4))
    assert first == list(SeededLengthGroupedSampler(lengths, 16, seed=3, mega=4))
    assert first != list(SeededLengthGroupedSampler(lengths, 16, seed=4, mega=4))
    assert sorted(first) == list(range(1000))  # every example once
    sampler = SeededLengthGroupedSampler(lengths, 16, seed=3, mega=4)
    sampler.set_epoch(1)
    assert list(sampler) != first
    # Batches are near-uniform in length: far less padding than random batches.
    batches = [lengths[first[i:i + 16]] for i in range(0, 1000 - 16, 16)]
    waste = np.mean([b.max() - b.mean() for b in batches])
    random_order = np.random.default_rng(1).permutation(1000)
    random_waste = np.mean([lengths[random_order[i:i + 16]].max() - lengths[random_order[i:i + 16]].mean()
                            for i in range(0, 1000 - 16, 16)])
    assert waste < random_waste / 3


def test_sampler_resumes_mid_epoch_to_the_same_order():
    """The Trainer resumes by skipping the batches already seen in the epoch: the order
    must not depend on anything but (seed, epoch)."""
    from tunelab.training.trainer import SeededLengthGroupedSampler

    lengths = np.random.default_rng(2).integers(1, 50, size=300)
    uninterrupted = SeededLengthGroupedSampler(lengths, 8, seed=5)
    uninterrupted.set_epoch(2)
    order = list(uninterrupted)
    resumed = SeededLengthGroupedSampler(lengths, 8, seed=5)  # a new process
    np.random.seed(123)  # whatever the global random state is
    resumed.set_epoch(2)
    assert list(resumed)[80:] == order[80:]


def test_score_accumulator_keeps_top_k_and_absorbs_shards():
    import torch

    from tunelab.problems.scores import ScoreAccumulator

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(10, 12)).astype(np.float32)
    whole = ScoreAccumulator(10, 12, "similarity")
    whole.add(np.arange(10), torch.from_numpy(scores))
    result = whole.result()
    np.testing.assert_array_equal(result.top_indices, np.argsort(-scores, axis=1)[:, :5])
    np.testing.assert_allclose(result.score, scores.max(1))
    assert result.full is None  # 12 classes: only the top-5 are kept
    merged = ScoreAccumulator(10, 12, "similarity")
    for rows in (np.arange(0, 10, 2), np.arange(1, 10, 2)):
        part = ScoreAccumulator(len(rows), 12, "similarity")
        part.add(np.arange(len(rows)), torch.from_numpy(scores[rows]))
        merged.absorb(part, rows)
    np.testing.assert_array_equal(merged.result().top_indices, result.top_indices)
    unseen = ScoreAccumulator(3, 12, "similarity")
    unseen.add(np.array([0, 2]), torch.from_numpy(scores[:2]))
    assert len(unseen.result().predicted) == 2  # an unreadable row is left out


def test_top_k_loss_is_exact_with_every_class_and_bounded_with_the_top_k():
    from tunelab.problems.scores import ClassScores, top_k_nll

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)) * 3
    labels = np.array([0, 1, 2, 3, 0, 1])
    exact = -np.mean(np.log(np.exp(logits)[np.arange(6), labels] / np.exp(logits).sum(1)))
    assert top_k_nll(ClassScores.from_full(logits, "logit"), labels) == pytest.approx(exact)
    many = rng.normal(size=(6, 20)) * 3
    kept = ClassScores.from_full(many, "logit")  # 20 classes: the top-5 only
    assert kept.full is None
    labels = np.argsort(-many, axis=1)[:, 7]  # every true class outside the top-5
    top = np.sort(many, axis=1)[:, ::-1][:, :5]
    lowest = top[:, -1] - np.log(np.exp(top).sum(1))
    assert top_k_nll(kept, labels) == pytest.approx(-lowest.mean())


def test_every_command_in_the_readme_parses():
    """The README's examples are the documented interface: each must parse."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("tunelab ")]
    commands += [line.split(" -m tunelab ", 1)[1] and "tunelab " + line.split(" -m tunelab ", 1)[1]
                 for line in lines if " -m tunelab " in line]
    assert len(commands) >= 10
    from tunelab.cli import parse_command_line

    parser = build_parser()
    for command in commands:
        parse_command_line(shlex.split(command)[1:], parser)


def test_baselines_write_the_one_schema(tmp_path):
    import jsonschema

    from tests.conftest import write_topic_splits

    data = write_topic_splits(tmp_path / "topics", 10, 3, 3)
    schema = json.loads((resources.files("tunelab.schemas") / "metrics.schema.json").read_text())
    for kind in ("majority", "tfidf"):
        assert main(["baseline", "--kind", kind, "--dataset", str(data), "--out", str(tmp_path / kind)]) == 0
        metrics = metrics_of(tmp_path / kind)
        jsonschema.validate(metrics, schema)
        assert metrics["model"] is None and metrics["task"]["kind"] == kind
        if kind == "tfidf":  # the floor's C is chosen on validation, like every method's settings
            assert metrics["task"]["classifier"]["tuning"]["split"] == "validation"
