"""Where a study's runs run: here, one at a time; ``--jobs N`` processes of their own
with the CPU threads shared out (or one GPU each); or Ray tasks. A run that fails is
reported with tunelab's own one-line error, or the signal that killed it and its last
log line, and the study goes on."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import traceback
from pathlib import Path
from typing import Any

from tunelab.core.config import dump_yaml
from tunelab.core.errors import TunelabError
from tunelab.core.files import load_yaml
from tunelab.core.registry import get_task
from tunelab.core.safety import atomic_write_bytes
from tunelab.core.typed import from_dict
from tunelab.study.spec import Step
from tunelab.tasks.lifecycle import run_task

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


@dataclasses.dataclass
class PlannedRun:
    step: Step
    config: Any
    mode: str  # new | resume | overwrite
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # a search trial's TUNELAB_TRIAL


def _failure_text(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, TunelabError):
        message = f"{type(exc).__name__}: {message}"
        logger.debug("%s", traceback.format_exc())
    return message


def run_planned(command: str, config, out: Path, mode: str) -> tuple[str, str, float]:
    """One run, in this process: (status, detail, seconds)."""
    start = time.perf_counter()
    try:
        run_task(get_task(command), config, out=out, resume=mode == "resume", overwrite=mode == "overwrite",
                 argv=[command, "--config", str(out / "config.yaml")])
        return "completed", "", time.perf_counter() - start
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failed run is reported; the study goes on
        return "failed", _failure_text(exc), time.perf_counter() - start


def run_here(planned: PlannedRun, root: Path) -> tuple[str, str, float]:
    logger.info("step %s: tunelab %s", planned.step.name, planned.step.command)
    return run_planned(planned.step.command, planned.config, root / planned.step.name, planned.mode)


def run_in_processes(todo: list[PlannedRun], root: Path, jobs: int) -> list[tuple[str, str, float]]:
    """``jobs`` runs at a time, each a ``python -m tunelab`` process of its own: the CPU
    threads shared out between them, or one GPU each where there are GPUs."""
    import os
    import queue
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        gpus = 0
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    configs = root / ".configs"
    configs.mkdir(exist_ok=True)

    def run(planned: PlannedRun) -> tuple[str, str, float]:
        slot = slots.get()
        start = time.perf_counter()
        try:
            path = configs / f"{planned.step.name}.yaml"
            atomic_write_bytes(path, dump_yaml(planned.config, planned.step.command).encode("utf-8"))
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                       TOKENIZERS_PARALLELISM="false", **planned.env)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            command = [sys.executable, "-m", "tunelab", "-q", planned.step.command, "--config", str(path),
                       "--out", str(root / planned.step.name)]
            command += {"resume": ["--resume"], "overwrite": ["--overwrite"]}.get(planned.mode, [])
            logger.info("step %s: tunelab %s (job %d)", planned.step.name, planned.step.command, slot + 1)
            done = subprocess.run(command, env=env, capture_output=True, text=True, errors="replace")
            if done.returncode == 0:
                return "completed", "", time.perf_counter() - start
            return "failed", failure_from_process(done.returncode, done.stderr), time.perf_counter() - start
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run, todo))


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def last_log_line(text: str) -> str:
    """The last line of a log that says something: terminal escapes, control characters
    and progress-bar redraws stripped."""
    for line in reversed(re.split(r"[\r\n]+", text or "")):
        line = _CONTROL.sub("", _ESCAPES.sub("", line)).strip()
        if not line or re.search(r"\d+%\|", line) or re.fullmatch(r"[\s|#=>.-]*", line):
            continue
        return line[:300]
    return ""


def failure_from_process(returncode: int, stderr: str) -> str:
    """Why a job's process failed: tunelab's own one-line error where it printed one,
    else the exit status (or the signal that killed it) and the last log line."""
    import signal

    lines = [last_log_line(line) for line in (stderr or "").splitlines() if line.startswith("tunelab:")]
    if lines and returncode > 0:
        return lines[-1].split(": ", 1)[-1].removeprefix("error: ")
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        status = f"killed by signal {-returncode} ({name})"
    else:
        status = f"exit status {returncode}"
    last = last_log_line(stderr)
    return status + (f"; last log line: {last}" if last else "")


def _remote_run(command: str, config_yaml: str, out: str, mode: str,
                env: dict[str, str] | None = None) -> tuple[str, str, float]:
    """A Ray task: rebuild the typed config from its YAML and run it on the worker (with
    a search trial's environment while it runs)."""
    import os

    values = load_yaml(config_yaml)
    values.pop("command", None)
    config = from_dict(get_task(command).config_class, values)
    before = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        return run_planned(command, config, Path(out), mode)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_on_ray(todo: list[PlannedRun], root: Path, address: str | None) -> list[tuple[str, str, float]]:
    """Each run a Ray task (one GPU each where the cluster has GPUs); without an address a
    local Ray instance is started here and shut down when done. Run directories must lie
    on a path every worker reaches."""
    try:
        import ray
    except ImportError:
        raise TunelabError("--executor ray needs Ray: pip install 'tunelab[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        # No automatic retry: a retried run would find its own half-written directory and fail
        # with a misleading message; the cause is reported and a rerun of the study resumes it.
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=0)(_remote_run)
        futures = [remote.remote(p.step.command, dump_yaml(p.config, p.step.command), str(root.resolve() /
                                 p.step.name), p.mode, p.env) for p in todo]
        results = []
        for future in futures:
            try:
                results.append(tuple(ray.get(future)))
            except Exception as exc:  # the worker died (killed, out of memory) or the task raised
                cause = last_log_line(str(exc).split("\n", 1)[0]) or type(exc).__name__
                results.append(("failed", f"the Ray task failed ({type(exc).__name__}): {cause}", 0.0))
        return results
    finally:
        if started:
            ray.shutdown()
