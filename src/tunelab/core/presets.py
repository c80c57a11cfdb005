"""The presets shipped in the package and YAML sources (a file or a preset name), and the
short names a matrix gives its runs (lora-shots8-seed1)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tunelab.core.errors import ConfigError
from tunelab.core.files import load_yaml

PRESET_PACKAGE = "tunelab.presets"


def list_presets(command: str | None = None) -> list[str]:
    """The shipped presets; with ``command``, those for that command ("study" for studies)."""
    folder = resources.files(PRESET_PACKAGE)
    names = sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
    if command is None:
        return names
    chosen = []
    for name in names:
        try:
            values = load_yaml((folder / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            continue
        declared = values.get("command", "study" if "steps" in values else None)
        if declared == command:
            chosen.append(name)
    return chosen


def load_yaml_source(source: str) -> tuple[dict[str, Any], str]:
    """Read a YAML file path or a shipped preset name; returns (mapping, where it came from)."""
    path = Path(source).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        origin = str(path)
    else:
        preset = resources.files(PRESET_PACKAGE) / f"{source}.yaml"
        if not preset.is_file():
            if source.endswith((".yaml", ".yml")) or "/" in source:
                raise ConfigError(f"config file not found: {source}")
            raise ConfigError(
                f"'{source}' is neither a YAML file nor a preset; presets: {', '.join(list_presets())}"
            )
        text = preset.read_text(encoding="utf-8")
        origin = f"preset:{source}"
    try:
        values = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{origin} must hold a mapping of settings, not {type(values).__name__}")
    return values, origin


# Short names of matrix keys in run names (lora-shots8-seed1); others: the key's last part.
MATRIX_LABELS = {"data.shots": "shots", "data.max_train_samples": "n", "seed": "seed", "train.lr": "lr",
                 "model": "model", "train.method": "", "train.epochs": "ep", "train.max_steps": "steps"}


def matrix_suffix(params: dict[str, Any]) -> str:
    """A run's matrix values as a name: ``{"data.shots": 8, "model": "/m/vit"}`` ->
    ``shots8-modelvit`` (paths by their last part). Study run names and report groups
    are named by it."""
    import re

    def text(value: Any) -> str:
        if value is None:
            return "all"
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        return re.sub(r"[^A-Za-z0-9.]+", "_", Path(shown).name if "/" in shown else shown).strip("_")[:40]

    return "-".join(MATRIX_LABELS.get(k, k.rsplit(".", 1)[-1].replace("_", "")) + text(v) for k, v in params.items())
