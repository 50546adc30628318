"""Batched inference across concurrent requests: a queue that gathers requests for a few ms, answered in one call.

One worker thread runs the models, so requests never fight over the CPU cores and the detector
and recognizer see a batch instead of one image each. A failing batch fails its own requests
(their futures get the exception); the worker goes on with the next.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

_STOP = object()


class Batcher:
    """`submit(item) -> Future`; `answer(items) -> results` is called with up to `max_batch` items
    that arrived within `wait_ms` of the first."""

    def __init__(self, answer: Callable[[list[Any]], list[Any]], max_batch: int = 16, wait_ms: float = 5.0):
        self.answer, self.max_batch, self.wait = answer, max(1, int(max_batch)), max(0.0, wait_ms) / 1000
        self.queue: queue.Queue = queue.Queue()
        self.batches = 0  # answered batches, for /healthz and the bench
        self.thread = threading.Thread(target=self._run, name="facepipe-batcher", daemon=True)
        self.thread.start()

    def submit(self, item) -> Future:
        future: Future = Future()
        self.queue.put((item, future))
        return future

    def close(self) -> None:
        self.queue.put(_STOP)
        self.thread.join(timeout=30)

    def _gather(self) -> tuple[list, bool]:
        first = self.queue.get()
        if first is _STOP:
            return [], True
        batch, deadline = [first], time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._gather()
            if not batch:
                continue
            try:
                results = self.answer([item for item, _ in batch])
            except BaseException as exc:  # the worker outlives any one batch
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            for (_, future), result in zip(batch, results):
                future.set_result(result)
