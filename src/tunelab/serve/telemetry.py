"""What /metrics shows, in the Prometheus text format (prometheus-client): requests by
path and status, latency, model batch sizes and times, and the queue depth per model.
Each app keeps its own registry, so two apps in one process (tests, a notebook) never
count each other's requests."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tunelab.serve.batching import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
KNOWN_PATHS = {"/v1/predict", "/v1/models", "/health", "/ready", "/metrics", "/docs", "/openapi.json"}


class Telemetry:
    """The server's counters, histograms and gauges in one registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "HTTP requests answered", ["path", "status"],
                                registry=self.registry)
        self.errors = Counter("tunelab_request_errors", "Requests answered 4xx or 5xx", ["path", "status"],
                              registry=self.registry)
        self.latency = Histogram("tunelab_request_seconds", "Time from request to answer", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("tunelab_batch_size", "Inputs per model call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("tunelab_batch_seconds", "Time of one model call", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("tunelab_queue_depth", "Inputs waiting for the model", ["model"], registry=self.registry)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        # Unknown paths share one label, so a scanner cannot grow the metrics without bound.
        path = path if path in KNOWN_PATHS or path.startswith("/v1/models/") else "other"
        if path.startswith("/v1/models/"):
            path = "/v1/models/{name}/image"
        self.requests.labels(path, str(status)).inc()
        if status >= 400:
            self.errors.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def batch_stats(self, model: str) -> BatchStats:
        def on_batch(size: int, seconds: float) -> None:
            self.batch_size.labels(model).observe(size)
            self.batch_seconds.labels(model).observe(seconds)

        return BatchStats(on_batch=on_batch, on_queue=lambda depth: self.queue.labels(model).set(depth))

    def queue_depth(self, model: str, depth: int) -> None:
        self.queue.labels(model).set(depth)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
