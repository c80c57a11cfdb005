"""The serve command on Ray Serve: the same app, one copy per replica, behind Ray's HTTP
proxy (``tunelab serve RUN --executor ray --replicas N``, or ``serve run`` with a
deployment file naming ``tunelab.serve.ray_serve:app_builder``). Each replica loads the
runs itself (run directories must lie on a path every node reaches) and batches its own
requests; Ray spreads requests over the replicas."""

from __future__ import annotations

import dataclasses
import logging
import signal
import time

from tunelab.core.errors import TunelabError
from tunelab.serve.app import Limits, create_app
from tunelab.serve.server import check_exposure, parse_spec, served_model

log = logging.getLogger("tunelab.serve")


def _ray_serve():
    try:
        import ray  # here, not at the top: Ray is an optional extra
        from ray import serve  # here, not at the top: Ray is an optional extra
    except ImportError:
        raise TunelabError("--executor ray needs Ray Serve: pip install 'tunelab[ray]'") from None
    return ray, serve


def absolute_specs(runs: list[str]) -> list[str]:
    """NAME=DIR specs with absolute folders, as replicas in other processes need them."""
    specs = []
    for spec in runs:
        name, folder = parse_spec(spec)
        if not folder.is_dir():
            raise TunelabError(f"{folder} is not a run directory")
        specs.append(f"{name}={folder.resolve()}")
    return specs


def ray_application(runs: list[str], backend: str = "auto", precision: str | None = None,
                    limits: Limits | None = None, api_key: str | None = None, replicas: int = 2,
                    cpus_per_replica: float = 1.0):
    """A Ray Serve application serving ``runs`` from ``replicas`` copies of the app."""
    _, serve = _ray_serve()
    specs, limits = absolute_specs(runs), limits or Limits()
    for spec in specs:  # fail here, in one line, rather than in every replica
        served_model(spec, backend, precision)

    def build():
        return create_app([served_model(spec, backend, precision) for spec in specs], limits, api_key)

    deployment = serve.deployment(serve.ingress(build)(), name="tunelab", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus_per_replica})
    return deployment.bind()


def app_builder(args: dict):
    """For Ray Serve's own ``serve run`` and deployment files: ``args`` holds ``runs`` (a
    list of DIR or NAME=DIR), and optionally ``backend``, ``precision``, ``replicas``,
    ``cpus_per_replica``, ``api_key`` and any Limits field."""
    args = dict(args)
    runs = args.pop("runs", None)
    if isinstance(runs, str):
        runs = runs.split(",")
    if not runs:
        raise TunelabError("app_builder needs 'runs': a list of run directories")
    fields = {f.name for f in dataclasses.fields(Limits)}
    limits = Limits(**{k: type(getattr(Limits(), k))(args.pop(k)) for k in list(args) if k in fields})
    return ray_application(runs, args.pop("backend", "auto"), args.pop("precision", None), limits,
                           args.pop("api_key", None), int(args.pop("replicas", 2)),
                           float(args.pop("cpus_per_replica", 1.0)))


def serve_on_ray(runs: list[str], host: str = "127.0.0.1", port: int = 8000, backend: str = "auto",
                 precision: str | None = None, limits: Limits | None = None, api_key: str | None = None,
                 replicas: int = 2, cpus_per_replica: float = 1.0, address: str | None = None) -> None:
    """Serve ``runs`` on a Ray instance (a local one unless ``address``) until stopped;
    SIGTERM or Ctrl-C shuts Serve and the local instance down."""
    ray, serve = _ray_serve()
    api_key = check_exposure(host, api_key)
    if replicas < 1:
        raise TunelabError("--replicas must be at least 1")
    application = ray_application(runs, backend, precision, limits, api_key, replicas, cpus_per_replica)
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application, name="tunelab", route_prefix="/")
        log.info("serving on http://%s:%d with %d replicas (Ctrl-C or SIGTERM stops)", host, port, replicas)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping: Ray Serve finishes the requests it holds")
    finally:
        signal.signal(signal.SIGTERM, previous)
        serve.shutdown()
        ray.shutdown()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
