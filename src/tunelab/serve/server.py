"""The serve command: finished runs loaded once, then the app run on uvicorn. A host other
than this machine's loopback needs an API key; SIGTERM or Ctrl-C stops taking requests,
answers the queued ones, then exits."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import threading
from pathlib import Path

import uvicorn

from tunelab.core.errors import TunelabError
from tunelab.core.files import is_plain_name
from tunelab.models.predictor import run_inputs
from tunelab.problems import headline_metric
from tunelab.serve.app import Limits, ServedModel, create_app
from tunelab.serve.export import ONNX_DIR
from tunelab.serve.predict import load_predictor

API_KEY_VARIABLE = "TUNELAB_API_KEY"
log = logging.getLogger("tunelab.serve")


def parse_spec(spec: str) -> tuple[str, Path]:
    """(name, run directory) of ``DIR`` or ``NAME=DIR`` (the name defaults to the folder's)."""
    name, _, folder = spec.rpartition("=") if "=" in spec else ("", "", spec)
    run_dir = Path(folder).expanduser()
    name = name or run_dir.resolve().name
    if not is_plain_name(name):
        raise TunelabError(f"{name!r} cannot name a served model: use letters, digits, '.', '-' or '_' (NAME=DIR)")
    return name, run_dir


def served_model(spec: str, backend: str = "auto", precision: str | None = None) -> ServedModel:
    """A run to serve from ``DIR`` or ``NAME=DIR`` (the name defaults to the folder's).
    ``backend`` auto: the run's ONNX export where it has one (on the CPUs measured,
    ONNX Runtime answers a single text 2x faster than PyTorch and serves 1.3x more
    requests per second), else PyTorch."""
    name, run_dir = parse_spec(spec)
    predictor = load_auto(run_dir, precision) if backend == "auto" else load_predictor(run_dir, backend, precision)
    backend = predictor.backend
    info = {"task": predictor.task, "problem": predictor.record.get("problem"), "labels": predictor.class_names,
            "backend": backend, **headline_of(run_dir)}
    return ServedModel(name, predictor, run_inputs(run_dir), info)


def load_auto(run_dir: Path, precision: str | None):
    """The run's ONNX export when it has one that loads, else PyTorch (said in the log)."""
    if (run_dir / ONNX_DIR / "model.onnx").is_file() and precision in (None, "fp32"):
        try:
            return load_predictor(run_dir, "onnx")
        except TunelabError as error:
            log.warning("%s: serving with PyTorch, not its ONNX export (%s)", run_dir, error)
    elif precision in (None, "fp32"):
        log.info("%s has no ONNX export: serving with PyTorch (tunelab export %s makes it faster to serve)",
                 run_dir, run_dir)
    return load_predictor(run_dir, "torch", precision)


def headline_of(run_dir: Path) -> dict:
    """The run's headline metric on its test split (else the last split it scored)."""
    splits = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("splits") or {}
    split = "test" if "test" in splits else next(reversed(splits), None)
    if split is None:
        return {}
    metric = headline_metric(splits[split])
    return {"metric": metric, "value": splits[split][metric], "split": split}


def serve(runs: list[str], host: str = "127.0.0.1", port: int = 8000, backend: str = "auto",
          precision: str | None = None, limits: Limits | None = None, api_key: str | None = None,
          log_level: str = "info") -> None:
    """Serve ``runs`` (each DIR or NAME=DIR) until stopped."""
    if not runs:
        raise TunelabError("give at least one run directory to serve")
    api_key = check_exposure(host, api_key)
    models = [served_model(spec, backend, precision) for spec in runs]
    app = create_app(models, limits, api_key)
    for model in models:
        log.info("serving %s (%s, %s) as %s", model.predictor.run_dir, model.info["task"], model.inputs, model.name)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30,
                            access_log=False)
    server = uvicorn.Server(config)
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return
    # uvicorn drains on SIGTERM, then raises the signal again for the handler that was
    # there before; this one makes that a clean exit (status 0) instead of a kill.
    previous = signal.signal(signal.SIGTERM, _drained)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drained(signum, frame) -> None:
    log.info("stopped after answering every queued request")


def check_exposure(host: str, api_key: str | None) -> str | None:
    """The API key to ask for (given, else from the environment); one is required for
    any host but this machine's loopback."""
    api_key = api_key or os.environ.get(API_KEY_VARIABLE) or None
    if not _is_loopback(host) and not api_key:
        raise TunelabError(f"serving on {host} lets other machines in: give --api-key (or set {API_KEY_VARIABLE}), "
                           "or keep the default --host 127.0.0.1")
    return api_key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
