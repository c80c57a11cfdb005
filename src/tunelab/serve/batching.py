"""Dynamic batching for a served run: concurrent requests wait in one bounded queue and
reach the model together, up to ``max_batch`` inputs or ``max_wait_ms`` after the first
arrived. The model runs on one worker thread (one copy per process; tokenising and
decoding happen there too, off the event loop). A batch is sorted by length and run in
chunks of ``chunk`` inputs, each padded only to its own longest: on a CPU the model's time
grows with the padded tokens, so 32 requests of mixed lengths run faster as four sorted
chunks of 8 than as one block padded to the longest (1.7x for MiniLM on Rotten Tomatoes
sentences, measured on 2 AMD EPYC cores).

Written here rather than taken from a serving framework: the batch boundary must be the
run's own Predictor call (the same code evaluation scored with), and a queue of a few
dozen lines is easier to reason about under faults (a failed batch is retried request by
request, so one bad input never fails its neighbours)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


class QueueFull(Exception):
    """The queue holds as many inputs as it may: the caller answers 503 and Retry-After."""


@dataclasses.dataclass
class _Job:
    inputs: Sequence
    future: asyncio.Future
    enqueued: float


@dataclasses.dataclass
class BatchStats:
    """What the batcher did, for /metrics: called after every model call."""

    on_batch: Callable[[int, float], None] = lambda size, seconds: None
    on_queue: Callable[[int], None] = lambda depth: None


class Batcher:
    """Queues requests for one model and runs them in batches on one worker thread."""

    def __init__(self, predict: Callable[[list], list], max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, stats: BatchStats | None = None, name: str = "model",
                 chunk: int | None = None, length: Callable[[object], int] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0 or (chunk is not None and chunk < 1):
            raise ValueError("max_batch, max_queue and chunk must be at least 1, max_wait_ms at least 0")
        self.predict, self.max_batch, self.max_queue = predict, max_batch, max_queue
        self.chunk, self.length = chunk or max_batch, length
        self.max_wait = max_wait_ms / 1000
        self.stats = stats or BatchStats()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued = 0  # inputs waiting
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"tunelab-{name}")

    @property
    def depth(self) -> int:
        """Inputs waiting for the model."""
        return self._queued

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, inputs: Sequence) -> list:
        """The predictions for ``inputs``, in order, once their batch has run."""
        if self._closing or self._worker is None:
            raise QueueFull("the server is shutting down")
        if self._queued and self._queued + len(inputs) > self.max_queue:
            raise QueueFull(f"the queue holds {self._queued} inputs (at most {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(inputs, future, time.monotonic()))
        self._queued += len(inputs)
        self.stats.on_queue(self._queued)
        self._arrived.set()
        return await future

    async def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        self._closing = True
        if self._worker is not None:
            self._arrived.set()
            await self._worker
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._fill()
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _fill(self) -> None:
        """Wait until a batch is full or the oldest request has waited max_wait."""
        deadline = self._jobs[0].enqueued + self.max_wait
        while self._queued < self.max_batch and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Job]:
        """Requests in arrival order up to max_batch inputs (a larger request runs alone);
        those whose client gave up are dropped."""
        batch, size = [], 0
        while self._jobs and (not batch or size + len(self._jobs[0].inputs) <= self.max_batch):
            job = self._jobs.popleft()
            self._queued -= len(job.inputs)
            if job.future.done():  # cancelled: timed out or disconnected
                continue
            batch.append(job)
            size += len(job.inputs)
        self.stats.on_queue(self._queued)
        return batch

    async def _execute(self, batch: list[_Job]) -> None:
        flat = [item for job in batch for item in job.inputs]
        try:
            results = await self._call(flat)
        except Exception as error:  # noqa: BLE001 - isolate the request that failed
            if len(batch) == 1:
                _settle(batch[0].future, error=error)
                return
            for job in batch:
                try:
                    _settle(job.future, await self._call(list(job.inputs)))
                except Exception as own:  # noqa: BLE001
                    _settle(job.future, error=own)
            return
        start = 0
        for job in batch:
            _settle(job.future, results[start:start + len(job.inputs)])
            start += len(job.inputs)

    async def _call(self, inputs: list) -> list:
        started = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self._chunked, inputs)
        self.stats.on_batch(len(inputs), time.perf_counter() - started)
        return results

    def _chunked(self, inputs: list) -> list:
        """The predictions for ``inputs`` in order, from length-sorted chunks."""
        order = list(range(len(inputs)))
        if self.length is not None:
            order.sort(key=lambda i: self.length(inputs[i]))
        results: list = [None] * len(inputs)
        for start in range(0, len(order), self.chunk):
            part = order[start:start + self.chunk]
            predictions = self.predict([inputs[i] for i in part])
            if len(predictions) != len(part):
                raise RuntimeError(f"the model gave {len(predictions)} predictions for {len(part)} inputs")
            for i, prediction in zip(part, predictions):
                results[i] = prediction
        return results


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
