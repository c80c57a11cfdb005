"""The serve command's ASGI app: finished runs behind an HTTP API. Each run's Predictor
(the one ``tunelab predict`` and evaluation use) sits behind a dynamic batcher; requests
are checked before they queue, so a bad one is answered 422 in one line and never
reaches the model. Limits answer early: 413 for a body or input count over the limit,
503 with Retry-After for a full queue or a server shutting down, 504 for a request
that waited too long; never a 500 for a client's mistake."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from tunelab.core.errors import TunelabError
from tunelab.models.predictor import Predictor
from tunelab.serve.batching import Batcher, QueueFull
from tunelab.serve.inputs import BadInput, ImageFiles, parse_inputs
from tunelab.serve.telemetry import Telemetry

log = logging.getLogger("tunelab.serve")
OPEN_PATHS = {"/health", "/ready"}  # probes answer without a key


@dataclasses.dataclass
class Limits:
    """How much one request and the queue may hold, and how long a request may wait."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    chunk: int = 8  # texts per model call inside a batch (sorted by length); images: max_batch
    max_queue: int = 1024  # inputs waiting, per model
    max_inputs: int = 256  # per request
    max_body_bytes: int = 8 * 1024 * 1024
    timeout_s: float = 30.0


@dataclasses.dataclass
class ServedModel:
    """One run as the server shows it."""

    name: str
    predictor: Predictor
    inputs: str  # text | pairs | images
    info: dict
    batcher: Batcher | None = None


class Refusal(Exception):
    """A request answered with ``status`` and one message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def create_app(models: list[ServedModel], limits: Limits | None = None, api_key: str | None = None) -> FastAPI:
    """The app serving ``models`` (names unique); ``api_key``, when given, is asked of every
    request but the health probes (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)."""
    limits = limits or Limits()
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise TunelabError("two served runs share a name: name them NAME=DIR")
    telemetry = Telemetry()
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for model in models:
            texts = model.inputs != "images"
            model.batcher = Batcher(model.predictor, limits.max_batch, limits.max_wait_ms, limits.max_queue,
                                    telemetry.batch_stats(model.name), model.name,
                                    chunk=limits.chunk if texts else None, length=text_length if texts else None)
            model.batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False  # refuse new work, finish what is queued
        await asyncio.gather(*(m.batcher.close() for m in models))

    app = FastAPI(title="tunelab serve", lifespan=lifespan,
                  description="Predictions from finished tunelab runs, batched across concurrent requests.")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        path = request.url.path
        try:
            if api_key and path not in OPEN_PATHS and not _key_matches(request, api_key):
                raise Refusal(401, "missing or wrong API key (Authorization: Bearer KEY, or X-API-Key: KEY)")
            response = await call_next(request)
        except Refusal as refusal:
            response = refusal_response(refusal)
        telemetry.observe_request(path, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(Refusal)
    async def refused(request: Request, refusal: Refusal):
        return refusal_response(refusal)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return refusal_response(Refusal(error.status_code, str(error.detail), dict(error.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unexpected error answering %s", request.url.path)
        first = (str(error).strip().splitlines() or [""])[0]
        return refusal_response(Refusal(500, f"the server failed: {type(error).__name__}: {first}"))

    @app.get("/health", summary="The process is up")
    async def health():
        return {"status": "ok", "process": os.getpid()}

    @app.get("/ready", summary="Models are loaded and the server takes requests")
    async def ready():
        if not state["ready"]:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready", "models": list(by_name)}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        for model in models:
            telemetry.queue_depth(model.name, model.batcher.depth if model.batcher else 0)
        return Response(telemetry.exposition(), media_type=telemetry.content_type)

    @app.get("/v1/models", summary="The served runs")
    async def list_models():
        return {"models": [{"name": m.name, "inputs": m.inputs, **m.info} for m in models]}

    @app.post("/v1/predict", summary="Predict for a list of inputs",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": PREDICT_SCHEMA}}}})
    async def predict(request: Request):
        body = await read_body(request, limits.max_body_bytes)
        try:
            payload = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise Refusal(422, "the body is not UTF-8") from None
        except json.JSONDecodeError as error:
            raise Refusal(422, f"the body is not JSON: {error.msg} at character {error.pos}") from None
        if not isinstance(payload, dict):
            raise Refusal(422, 'the body must be a JSON object: {"model": NAME, "inputs": [...]}')
        unknown = sorted(set(payload) - {"model", "inputs"})
        if unknown:
            raise Refusal(422, f"unknown field {unknown[0]!r}: give 'inputs' (and 'model' when several are served)")
        if "inputs" not in payload:
            raise Refusal(422, "the body has no 'inputs'")
        model = pick_model(by_name, payload.get("model"))
        if isinstance(payload["inputs"], list) and len(payload["inputs"]) > limits.max_inputs:
            raise Refusal(413, f"{len(payload['inputs'])} inputs in one request; at most {limits.max_inputs}")
        try:
            items = parse_inputs(model.inputs, payload["inputs"])
        except BadInput as error:
            raise Refusal(422, str(error)) from None
        return await run_model(model, items, limits, state)

    @app.post("/v1/models/{name}/image", summary="Predict for one image sent as the raw body",
              openapi_extra={"requestBody": {"required": True, "content": {"image/*": {
                  "schema": {"type": "string", "format": "binary"}}}}})
    async def predict_image(name: str, request: Request):
        model = pick_model(by_name, name)
        if model.inputs != "images":
            raise Refusal(422, f"{name} takes {model.inputs}, not images: POST /v1/predict")
        return await run_model(model, [await read_body(request, limits.max_body_bytes)], limits, state)

    return app


PREDICT_SCHEMA = {"type": "object", "required": ["inputs"], "properties": {
    "model": {"type": "string", "description": "a served run's name (optional when one is served)"},
    "inputs": {"type": "array", "minItems": 1, "description": "texts; [first, second] pairs; or base64 images",
               "items": {}}}}


async def run_model(model: ServedModel, items: list, limits: Limits, state: dict) -> dict:
    if not state["ready"]:
        raise Refusal(503, "the server is shutting down", {"Retry-After": "1"})
    try:
        if model.inputs == "images":
            files = await asyncio.to_thread(ImageFiles, items)  # decoding off the event loop
            with files as paths:
                predictions = await asyncio.wait_for(model.batcher.submit(paths), limits.timeout_s)
        else:
            predictions = await asyncio.wait_for(model.batcher.submit(items), limits.timeout_s)
    except BadInput as error:
        raise Refusal(422, str(error)) from None
    except QueueFull as error:
        raise Refusal(503, f"busy: {error}; retry shortly",
                      {"Retry-After": str(max(1, math.ceil(limits.max_wait_ms / 1000))) }) from None
    except asyncio.TimeoutError:
        raise Refusal(504, f"no answer within {limits.timeout_s:g} s; retry, or send fewer inputs") from None
    except TunelabError as error:
        raise Refusal(422, str(error)) from None
    return {"model": model.name, "predictions": [prediction_json(p) for p in predictions]}


def text_length(item) -> int:
    """Characters of a text or pair: the order a batch is chunked in (tokens follow them)."""
    return len(item) if isinstance(item, str) else sum(len(part) for part in item)


def prediction_json(prediction) -> dict:
    """One prediction as the API gives it: predict's label and score (and for label sets
    the labels)."""
    out = {"label": prediction.label, "score": float(prediction.score), "score_kind": prediction.score_kind}
    if prediction.labels is not None:
        out["labels"] = list(prediction.labels)
    return out


def pick_model(by_name: dict, name) -> ServedModel:
    if name is None:
        if len(by_name) == 1:
            return next(iter(by_name.values()))
        raise Refusal(422, f"several runs are served: name one in 'model' ({', '.join(by_name)})")
    if not isinstance(name, str) or name not in by_name:
        raise Refusal(404 if isinstance(name, str) else 422,
                      f"no served model {name!r}; served: {', '.join(by_name)}")
    return by_name[name]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (from the header
    when it says so, else while it streams in)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refusal(413, f"the body is {int(declared):,} bytes; at most {limit:,}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"the body passes {limit:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Refusal(400, "the client left before sending its whole body") from None
    body = b"".join(chunks)
    if not body:
        raise Refusal(422, "the body is empty")
    return body


def refusal_response(refusal: Refusal) -> JSONResponse:
    return JSONResponse({"error": refusal.message}, status_code=refusal.status, headers=refusal.headers)


def _key_matches(request: Request, api_key: str) -> bool:
    given = request.headers.get("x-api-key") or ""
    bearer = request.headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        given = bearer[7:].strip()
    return hmac.compare_digest(given.encode(), api_key.encode())


__all__ = ["Limits", "ServedModel", "create_app"]
