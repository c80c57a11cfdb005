"""Training machinery shared by fine-tuning tasks: sampler, callbacks, checkpoints,
distributed set-up. The loop itself is the Hugging Face Trainer's."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback

from tunelab.core.errors import TunelabError
from tunelab.core.runtime import resolve_device, resolve_dtype
from tunelab.core.tracking import Tracker
from tunelab.core.trial import report
from tunelab.problems.metrics import LOWER_IS_BETTER
from tunelab.training.config import DEFAULT_MAX_STEPS

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
# Weight files a Trainer checkpoint holds (a full model, or a LoRA adapter).
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class SeededLengthGroupedSampler(Sampler[int]):
    """Batches of similar length, shuffled reproducibly per epoch.

    Indices are shuffled with a generator seeded by (seed, epoch), cut into
    mega-batches of ``mega`` batches, and sorted by length inside each, so that
    every batch pads little. Seeding per epoch (not from the global RNG, as the
    Trainer's own sampler does) makes a resumed run draw exactly the batches an
    uninterrupted run draws.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).numpy()
        size = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        # Shuffle whole batches; a short final batch stays last so batches stay aligned.
        tail = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        for index in shuffled:
            yield from batches[index].tolist()
        for batch in tail:
            yield from batch.tolist()


class TrackerCallback(TrainerCallback):
    """Forwards the Trainer's logs to the run's tracker: loss, learning rate,
    validation metrics and samples/s."""

    def __init__(self, tracker: Tracker | None, samples_per_step: int):
        self.tracker = tracker
        self.samples_per_step = samples_per_step
        self._last = (0, time.perf_counter())

    def on_log(self, args, state, control, logs: Mapping[str, float] | None = None, **kwargs):
        if self.tracker is None or not logs or not state.is_world_process_zero:
            return
        values = {}
        for key, value in logs.items():
            if not isinstance(value, (int, float)):
                continue
            if key.startswith("eval_"):
                values[f"validation/{key[5:]}"] = value
            elif key in ("loss", "learning_rate", "grad_norm", "epoch"):
                values[f"train/{'lr' if key == 'learning_rate' else key}"] = value
        if "loss" in logs:
            step, then = self._last
            now = time.perf_counter()
            if state.global_step > step and now > then:
                values["train/samples_per_s"] = (state.global_step - step) * self.samples_per_step / (now - then)
            self._last = (state.global_step, now)
        if values:
            self.tracker.log(values, step=state.global_step)


class SearchCallback(TrainerCallback):
    """Validation metrics at every evaluation to a hyperparameter search
    (tunelab.core.trial); a pruned run stops training there and finishes normally, with
    the best checkpoint so far, so that it keeps what it wrote."""

    def __init__(self):
        self.evaluations = 0

    def on_evaluate(self, args, state, control, metrics: Mapping[str, float] | None = None, **kwargs):
        if not metrics or not state.is_world_process_zero:
            return
        self.evaluations += 1  # the pruner compares trials at the same evaluation (1, 2, ...)
        values = {k[5:]: float(v) for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        # The last evaluation ends the training anyway: a trial that gets there is complete.
        if report(self.evaluations, values, can_stop=state.global_step < state.max_steps):
            control.should_training_stop = True


class InterruptCallback(TrainerCallback):
    """Ctrl-C during training: save a checkpoint at the end of the current step, then stop."""

    def __init__(self):
        self.interrupted = False
        self._previous = None

    def install(self) -> None:
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        if self.interrupted:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.interrupted = True
        logger.warning("interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that is whole, falling back to older ones: a kill mid-save
    (or a full disk) can leave the newest torn, and resuming from it would fail."""
    if not folder.is_dir():
        return None
    candidates = []
    for path in folder.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            candidates.append((int(suffix), path))
    for _, path in sorted(candidates, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping checkpoint %s: %s", path.name, problem)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None when its state parses and every
    weight file (each shard of an index) is present and whole."""
    import json
    import zipfile

    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or "global_step" not in state:
            return "trainer_state.json holds no training state"
    except (OSError, ValueError):
        return "trainer_state.json is missing or unreadable"
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    for index in (path / name for name in WEIGHT_INDEXES):
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError):
                return f"{index.name} is unreadable"
            weights += [path / shard for shard in sorted(shards)]
    if not weights:
        return "it holds no weights"
    for file in weights:
        if not file.is_file():
            return f"{file.name} is missing"
        if file.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(file), framework="numpy") as handle:
                    handle.keys()
            except Exception:  # safetensors raises its own error types for torn files
                return f"{file.name} is incomplete"
        elif not zipfile.is_zipfile(file):  # torch.save writes zip archives
            return f"{file.name} is incomplete"
    for name in ("optimizer.pt", "scheduler.pt"):
        if (path / name).is_file() and not zipfile.is_zipfile(path / name):
            return f"{name} is incomplete"
    return unsafe_state_file(path)


def unsafe_state_file(path: Path) -> str | None:
    """A checkpoint file that ``torch.load(weights_only=True)`` refuses (it would build
    arbitrary objects), found before the Trainer loads it, so that resuming falls back
    to an earlier checkpoint instead of failing with PyTorch's advice to trust it."""
    import torch

    try:
        from transformers.trainer_pt_utils import safe_globals
    except ImportError:  # pragma: no cover - older transformers
        safe_globals = contextlib.nullcontext
    files = [path / name for name in ("optimizer.pt", "scheduler.pt", "pytorch_model.bin")]
    files += sorted(path.glob("rng_state*.pth"))
    for file in files:
        if not file.is_file():
            continue
        try:
            with safe_globals():
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # UnpicklingError for a refused object, others for a damaged archive
            return f"{file.name} is refused as unsafe (it holds objects that are not plain tensors) or damaged"
    return None


class Interrupted(TunelabError):
    """Training stopped by Ctrl-C after saving a checkpoint."""

    exit_code = 130


def relative_path(path: str | None, root: Path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


def quiet_progress(trainer) -> None:
    """Keep the Trainer's progress bars (rate, ETA) but not its raw log dictionaries;
    evaluations are reported through the logger instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgressCallback(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "eval_accuracy" in logs:
                logger.info("step %d: validation accuracy %.4f, loss %.4f", state.global_step,
                            logs["eval_accuracy"], logs.get("eval_loss", float("nan")))

    trainer.pop_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback())


def total_steps(train, num_examples: int, world: int) -> int:
    """Optimiser steps of the schedule: ``max_steps``, or ``epochs`` over the data, or the
    reference's 1,000 steps when neither is given."""
    if train.max_steps:
        return train.max_steps
    if train.epochs is None:
        return DEFAULT_MAX_STEPS
    per_step = train.batch_size * train.grad_accum * world
    return math.ceil(math.ceil(num_examples / per_step) * train.epochs)


def _checkpointing_argument() -> str:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    import inspect

    from transformers import TrainingArguments

    names = inspect.signature(TrainingArguments).parameters
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def training_arguments(train, runtime, seed: int, output_dir: Path, num_examples: int, world: int,
                       evaluate: bool = True, **extra):
    """TrainingArguments from tunelab's TrainConfig: the schedule, evaluation and
    checkpoint cadence, best-model selection, precision, and CPU data parallelism."""
    from transformers import TrainingArguments

    device = resolve_device(runtime.device)
    resolve_dtype(runtime.precision, device)  # fp16 on a CPU fails here with a clear message
    steps = total_steps(train, num_examples, world)
    every = min(train.eval_every, steps)
    schedule = dict(eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every,
                    save_total_limit=train.save_total_limit, load_best_model_at_end=True,
                    metric_for_best_model=train.best_metric or "accuracy",
                    greater_is_better=(train.best_metric or "accuracy") not in LOWER_IS_BETTER) if evaluate else \
        dict(eval_strategy="no", save_strategy="no")
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup if train.warmup < 1 else int(train.warmup),
        max_steps=steps,
        logging_steps=train.logging_steps,
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=runtime.precision == "bf16",
        fp16=runtime.precision == "fp16",
        use_cpu=device.type == "cpu",
        # Batches (pinned) go to the GPU without the host waiting for the previous step.
        **({"accelerator_config": {"non_blocking": True}} if device.type == "cuda" else {}),
        ddp_backend="gloo" if (world > 1 and device.type == "cpu") else None,
        **{_checkpointing_argument(): train.gradient_checkpointing},
        disable_tqdm=not sys.stderr.isatty(),  # a log file gets the logged steps, not a bar's redraws
        **schedule,
        **extra,
    )


def train_resumable(trainer, interrupt: InterruptCallback, run_dir: Path, resume: bool, command: str):
    """Train, from the last complete checkpoint when resuming; Ctrl-C saves a checkpoint
    and stops with a line that says how to continue. Returns the Trainer's metrics."""
    checkpoint = last_complete_checkpoint(run_dir / "checkpoints") if resume else None
    if resume:
        if checkpoint is None:
            logger.warning("no complete checkpoint in %s: starting from step 0", run_dir / "checkpoints")
        else:
            logger.info("resuming from %s", checkpoint)
    interrupt.install()
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        interrupt.uninstall()
    if interrupt.interrupted:
        raise Interrupted(f"interrupted at step {trainer.state.global_step}; checkpoint saved in "
                          f"{run_dir / 'checkpoints'}; continue with: tunelab {command} --out {run_dir} --resume")
    return output.metrics


def training_summary(trainer, train, run_dir: Path, world: int, resume: bool) -> dict:
    """metrics.json's ``training`` block."""
    return {
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "learning_rate": train.learning_rate,
        "best_checkpoint": relative_path(trainer.state.best_model_checkpoint, run_dir),
        "best_validation_" + (train.best_metric or "accuracy"): trainer.state.best_metric,
        "world_size": world,
        "resumed": resume,
    }


def prune_checkpoints(run_dir: Path, train) -> str | None:
    """A completed run keeps what predict, report, export and a rerun need: the best model
    (already saved in model/), not every checkpoint's optimizer state, unless
    ``keep_checkpoints``. Returns what happened, for the training summary."""
    import shutil

    folder = run_dir / "checkpoints"
    if train.keep_checkpoints or not folder.is_dir():
        return None
    shutil.rmtree(folder)
    return "removed after completion (the best model is in model/; --keep-checkpoints keeps them)"
