"""Tasks as plugins: a task from an installed package (entry-point group tunelab.tasks)
is a command, a study step (also under --jobs and Ray), and is served by predict and
compared by report, with no edit to tunelab."""

import json
import sys
import textwrap

import pytest
import yaml

from tests.conftest import assert_predictor_reproduces, metrics_of, write_topic_splits
from tunelab.cli import main
from tunelab.core import registry

PLUGIN = '''
import dataclasses

from tunelab.core.config import setting
from tunelab.core.registry import Task, register_task
from tunelab.tasks import baseline


@dataclasses.dataclass
class EchoConfig(baseline.BaselineConfig):
    kind: str = setting("majority", "what the echo floor predicts", flag="--kind", choices=("majority", "tfidf"))


TASK = register_task(Task("echo", EchoConfig, baseline.prepare, baseline.execute,
                          load_predictor=baseline.load_predictor, summary="a floor from a plugin package"))
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A package with a tunelab.tasks entry point, on the path of this process and of
    every process it starts (as `pip install` would make it)."""
    site = tmp_path / "site"
    (site / "tunelab_echo_plugin").mkdir(parents=True)
    (site / "tunelab_echo_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "tunelab_echo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tunelab-echo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tunelab.tasks]\necho = tunelab_echo_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site) + (":" + sys.path[0] if sys.path[0] else ""))
    registry._PLUGINS_LOADED.clear()
    yield site
    registry.unregister_task("echo")
    registry._PLUGINS_LOADED.clear()
    sys.modules.pop("tunelab_echo_plugin", None)


def test_a_plugin_task_is_a_command_a_study_step_and_served(installed_plugin, tmp_path, capsys):
    data = write_topic_splits(tmp_path / "topics", 12, 4, 6)
    assert "echo" in registry.all_tasks()
    run = tmp_path / "echo-run"
    assert main(["echo", "--dataset", str(data), "--out", str(run)]) == 0
    assert metrics_of(run)["command"] == "echo"
    assert assert_predictor_reproduces(run) > 0  # a plugin's predictor is the evaluation's too
    capsys.readouterr()
    assert main(["predict", str(run), "sport red film"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[0] in ("music", "science", "sport")
    study = {"name": "plugin", "steps": [{"name": "echo", "command": "echo", "data": {"dataset": str(data)},
                                          "matrix": {"seed": [0, 1]}},
                                         {"name": "floor", "command": "baseline", "kind": "majority",
                                          "data": {"dataset": str(data)}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--out", str(tmp_path / "jobs"), "--jobs", "2"]) == 0  # fresh processes
    state = json.loads((tmp_path / "jobs" / "study.json").read_text())
    assert {s["name"]: s["status"] for s in state["steps"]} == {"echo-seed0": "completed",
                                                                "echo-seed1": "completed", "floor": "completed"}
    assert main(["report", str(tmp_path / "jobs"), "--out", str(tmp_path / "r.md")]) == 0
    assert "## echo" in (tmp_path / "r.md").read_text()


@pytest.mark.slow
def test_a_plugin_task_runs_on_ray(installed_plugin, tmp_path):
    pytest.importorskip("ray")
    data = write_topic_splits(tmp_path / "topics", 12, 4, 6)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "ray", "steps": [{"name": "echo", "command": "echo",
                                                               "data": {"dataset": str(data)}}]}))
    assert main(["run", str(path), "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    assert metrics_of(tmp_path / "ray" / "echo")["command"] == "echo"
