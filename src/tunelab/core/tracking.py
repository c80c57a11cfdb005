"""A run's trackers (TensorBoard always, W&B when asked; their absence never breaks a
run), the package versions and environment a run records, and its per-split pictures."""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.core.config import TrackingConfig
from tunelab.core.plots import figure, png

logger = logging.getLogger(__name__)



def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("tunelab", "torch", "transformers", "datasets", "peft", "accelerate", "scikit-learn"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


class Tracker:
    """TensorBoard always; W&B when asked and installed. Absence never breaks a run."""

    def __init__(self, log_dir: Path, run_name: str, config: Mapping[str, Any], tracking: TrackingConfig):
        self._tb = None
        self._wandb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(log_dir))
        except ImportError:
            logger.warning("tensorboard is not installed; no event files will be written")
        if tracking.wandb:
            try:
                import wandb

                self._wandb = wandb.init(
                    project=tracking.wandb_project, name=run_name, config=dict(config), dir=str(log_dir)
                )
            except Exception as exc:  # missing package, no login, offline: report and go on
                logger.warning("W&B tracking is off: %s", str(exc).splitlines()[0] if str(exc) else exc)

    def log(self, values: Mapping[str, float], step: int = 0) -> None:
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(dict(values), step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def environment(device: str) -> dict[str, str]:
    versions = package_versions()
    return {
        "tunelab": versions.get("tunelab", "unknown"),
        "torch": versions.get("torch", "unknown"),
        "transformers": versions.get("transformers", "unknown"),
        "python": versions["python"],
        "device": device,
        "platform": platform.platform(),
    }


def confusion_png(matrix: np.ndarray, class_names: Sequence[str], split: str) -> bytes:
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = figure(size, size * 0.9)
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: {split}")
    threshold = matrix.max() / 2 if matrix.size else 0
    if n <= 15:
        for (t, p), count in np.ndenumerate(matrix):
            ax.text(p, t, str(count), ha="center", va="center",
                    color="white" if count > threshold else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return png(fig)


def scatter_png(gold: np.ndarray, predicted: np.ndarray, split: str) -> bytes:
    fig, ax = figure(4.5, 4.5)
    ax.scatter(gold, predicted, s=6, alpha=0.4)
    low = float(min(np.min(gold), np.min(predicted))) if len(gold) else 0.0
    high = float(max(np.max(gold), np.max(predicted))) if len(gold) else 1.0
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set_xlabel("gold")
    ax.set_ylabel("predicted")
    ax.set_title(f"predicted vs gold: {split}")
    return png(fig)
