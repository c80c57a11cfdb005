"""Conformance, driven by the registry: every registered task, for every problem kind and
input it declares (Task.problems, Task.inputs), goes through the same checks: the command
line, predict, a study step, the report and the metrics schema. A new task gets them
without editing this file (the way peft's test matrix runs every method through shared
checks)."""

import dataclasses
import json
import random
from importlib import resources
from pathlib import Path

import pytest
import yaml

from tests.conftest import assert_predictor_reproduces, metrics_of, write_csv
from tunelab.cli import main
from tunelab.core.registry import all_tasks

WORDS = {"sport": ["ball", "goal", "team"], "music": ["song", "band", "tune"], "art": ["paint", "museum", "brush"]}


def rows(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.choice(sorted(WORDS))
        other = rng.choice(sorted(WORDS))
        out.append({"text": " ".join([rng.choice(WORDS[topic])] * 2 + [f"w{rng.randint(0, 9)}"]),
                    "label": topic, "tags": ";".join(sorted({topic, other})),
                    "score": f"{(['art', 'music', 'sport'].index(topic) + rng.random()):.3f}",
                    "text_pair": " ".join([rng.choice(WORDS[other])] * 2), "same": str(int(topic == other))})
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, colour_folder):
    """(input kind, problem) -> (dataset folder, extra flags)."""
    root = tmp_path_factory.mktemp("conformance")
    made = {}
    for kind, problem, columns, flags in (
            ("text", "single-label", ("text", "label"), []),
            ("text", "multi-label", ("text", "tags"), ["--label-column", "tags", "--label-separator", ";"]),
            ("text", "regression", ("text", "score"), ["--label-column", "score", "--problem", "regression"]),
            ("pairs", "single-label", ("text", "text_pair", "same"), ["--label-column", "same",
                                                                      "--text-pair-column", "text_pair"]),
            ("pairs", "regression", ("text", "text_pair", "score"), ["--label-column", "score", "--problem",
                                                                     "regression", "--text-pair-column", "text_pair"])):
        folder = root / f"{kind}-{problem}"
        folder.mkdir()
        for split, n, seed in (("train", 48, 1), ("validation", 18, 2), ("test", 18, 3)):
            write_csv(folder / f"{split}.csv", [tuple(r[c] for c in columns) for r in rows(n, seed)],
                      header=columns)
        made[(kind, problem)] = (folder, flags)
    made[("images", "single-label")] = (colour_folder, [])
    return made


def fast_flags(task) -> list[str]:
    """Small settings for whatever groups the task's config has."""
    fields = {f.name for f in dataclasses.fields(task.config_class)}
    flags = ["--max-eval-samples", "12"]
    if "train" in fields:
        flags += ["--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", "train.batch_size=8",
                  "--set", "train.epochs=null"]
    if "images" in fields:
        flags += ["--set", "images.num_workers=0"]
    if "classifier" in fields:
        flags += ["--set", "classifier.kind=null"]
    return flags


def cases():
    for task in all_tasks().values():
        for problem in task.problems:
            for kind, model in task.inputs:
                if (kind, problem) in (("images", "single-label"), ("text", "single-label"), ("text", "multi-label"),
                                       ("text", "regression"), ("pairs", "single-label"), ("pairs", "regression")):
                    yield pytest.param(task.name, problem, kind, model, id=f"{task.name}-{problem}-{kind}")
                    break  # one input kind per problem keeps the matrix small


@pytest.mark.parametrize("command, problem, kind, model", list(cases()))
def test_every_task_through_every_surface(command, problem, kind, model, datasets, tiny_bert_dir, tiny_clip_dir,
                                          tmp_path, capsys):
    import jsonschema

    data, flags = datasets[(kind, problem)]
    # "vision": any vision backbone; CLIP's image tower is one (transformers makes an image classifier of it).
    models = {"text-encoder": ["--model", str(tiny_bert_dir)], "clip": ["--model", str(tiny_clip_dir)],
              "vision": ["--model", str(tiny_clip_dir)], None: []}
    task = all_tasks()[command]
    args = [command, *models[model], "--dataset", str(data), *flags, *fast_flags(task)]
    run = tmp_path / "run"
    assert main([*args, "--out", str(run)]) == 0, capsys.readouterr().err
    metrics = metrics_of(run)
    schema = json.loads((resources.files("tunelab.schemas") / "metrics.schema.json").read_text())
    jsonschema.validate(metrics, schema)
    assert metrics["data"]["problem"] == problem and metrics["command"] == command
    # predict
    capsys.readouterr()
    if kind == "images":
        inputs = [str(p) for p in sorted((data / "test").rglob("*.png"))[:2]]
        assert main(["predict", str(run), *inputs]) == 0
    elif kind == "pairs":
        assert main(["predict", str(run), "--pair", "ball ball", "song song", "--pair", "paint", "brush"]) == 0
    else:
        assert main(["predict", str(run), "ball goal w1", "paint brush w2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3  # a header and one line per input
    # evaluation and serving are one predictor: the loaded Predictor gives the predictions files again
    assert assert_predictor_reproduces(run, data) > 0
    # a study step with the same settings, from its saved config
    study = {"name": "conformance", "steps": [{"name": "step", "command": command,
                                               **{k: v for k, v in yaml.safe_load((run / "config.yaml").read_text())
                                                  .items() if k != "command"}}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "study")]) == 0
    assert json.loads((tmp_path / "study" / "study.json").read_text())["steps"][0]["status"] == "completed"
    # the report of both
    assert main(["report", str(run), str(tmp_path / "study"), "--out", str(tmp_path / "report.md")]) == 0
    assert f"## {command}" in Path(tmp_path / "report.md").read_text()


def test_the_matrix_covers_every_registered_task():
    covered = {case.values[0] for case in cases()}
    assert covered == set(all_tasks())
