"""Progress of long loops (feature extraction, evaluation, zero-shot scoring): a bar on
a terminal, and a log line every LOG_EVERY seconds when output goes to a file or a
pipe (a CI log, `nohup`), as training already logs its steps."""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger("tunelab")

LOG_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


class Progress:
    """``with progress(total, desc, unit) as bar: bar.update(n)``."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self.started = self.last = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit)

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last >= LOG_EVERY:
            self.last = now
            self._log(now)

    def _log(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        logger.info("%s: %d/%d %ss (%.1f/s, about %.0f s left)", self.desc, self.done, self.total, self.unit, rate,
                    left)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done and time.perf_counter() - self.started >= LOG_EVERY:
            self._log(time.perf_counter())


def progress(total: int, desc: str, unit: str = "item") -> Progress:
    return Progress(total, desc, unit)
