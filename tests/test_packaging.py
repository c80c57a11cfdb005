"""The install files agree: environment.yml names what pyproject.toml requires."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name where they differ
CONDA_NAMES = {"torch": "pytorch", "prometheus-client": "prometheus_client"}


def pyproject_requirements() -> dict[str, str]:
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', block))


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = {}
    for entry in environment["dependencies"]:
        if isinstance(entry, str) and ">=" in entry and not entry.startswith("python"):
            name, version = entry.split(">=", 1)
            conda[name] = version.split("=", 1)[0]
    expected = {CONDA_NAMES.get(name, name): version for name, version in pyproject_requirements().items()}
    assert conda == expected
    pip = next(e["pip"] for e in environment["dependencies"] if isinstance(e, dict))
    assert any(".[minilm]" in line for line in pip)  # the package itself, with the offline encoder
    assert "=cpu" in next(e for e in environment["dependencies"] if isinstance(e, str) and e.startswith("pytorch"))
