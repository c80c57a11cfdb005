"""tunelab serve RUN [RUN...]: the command's arguments and its handler, which calls
tunelab.serve.server.serve."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tunelab.core.errors import TunelabError
from tunelab.serve.app import Limits
from tunelab.serve.predict import BACKENDS, PRECISIONS
from tunelab.serve.ray_serve import serve_on_ray
from tunelab.serve.server import API_KEY_VARIABLE, serve


def add_serve_command(commands) -> None:
    """tunelab serve RUN [RUN...]"""
    defaults = Limits()
    parser = commands.add_parser(
        "serve", help="serve finished runs over HTTP (batched, with health checks and metrics)",
        description="Serve finished runs as an HTTP API: POST /v1/predict, GET /v1/models, /health, /ready, "
                    "/metrics (Prometheus) and /docs. Concurrent requests are batched; a full queue answers 503 "
                    "with Retry-After, bad input 422 with one message. Ctrl-C or SIGTERM answers what is queued, "
                    "then exits.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a finished run directory, or NAME=DIR to name it "
                                                                 "(default name: the folder's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                                                              "needs --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="auto (default): the run's ONNX export where it has one (tunelab export), else torch")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="as for predict: the task's default unless given")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help=f"most inputs per model call (default {defaults.max_batch})")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help=f"longest a request waits for others to batch with (default {defaults.max_wait_ms:g})")
    parser.add_argument("--chunk", type=int, default=defaults.chunk,
                        help=f"texts per model call inside a batch, sorted by length so each pads little (default "
                             f"{defaults.chunk}; on a GPU, set it to --max-batch)")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help=f"inputs that may wait per model before 503 (default {defaults.max_queue})")
    parser.add_argument("--max-inputs", type=int, default=defaults.max_inputs,
                        help=f"most inputs in one request before 413 (default {defaults.max_inputs})")
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20,
                        help=f"largest request body in MiB before 413 (default {defaults.max_body_bytes / 2**20:g})")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s,
                        help=f"seconds a request may wait for its answer before 504 (default {defaults.timeout_s:g})")
    parser.add_argument("--api-key", default=None,
                        help=f"ask every request for this key (or set {API_KEY_VARIABLE})")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local (default): this process; ray: Ray Serve replicas behind Ray's HTTP proxy")
    parser.add_argument("--replicas", type=int, default=2, help="--executor ray: copies of the app (default 2)")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0,
                        help="--executor ray: CPUs Ray reserves for each replica (default 1)")
    parser.add_argument("--ray-address", default=None,
                        help="--executor ray: a running Ray cluster (default: start a local instance)")
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    for flag in ("max_batch", "max_queue", "max_inputs", "chunk"):
        if getattr(args, flag) < 1:
            raise TunelabError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_wait_ms < 0 or args.timeout <= 0 or args.max_body_mb <= 0:
        raise TunelabError("--max-wait-ms must be at least 0, --timeout and --max-body-mb above 0")
    limits = Limits(max_batch=args.max_batch, chunk=args.chunk, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    max_inputs=args.max_inputs, max_body_bytes=int(args.max_body_mb * 2**20), timeout_s=args.timeout)
    if args.executor == "ray":
        serve_on_ray(args.runs, host=args.host, port=args.port, backend=args.backend, precision=args.precision,
                     limits=limits, api_key=args.api_key, replicas=args.replicas,
                     cpus_per_replica=args.cpus_per_replica, address=args.ray_address)
        return 0
    serve(args.runs, host=args.host, port=args.port, backend=args.backend, precision=args.precision, limits=limits,
          api_key=args.api_key, log_level="warning" if getattr(args, "quiet", False) else "info")
    return 0
