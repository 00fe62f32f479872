"""Micro-batching: work submitted by concurrent requests runs together, on one thread of its own.

Requests put items on a queue; the batch thread takes what is waiting (and what arrives within
a short collect window) up to a budget, runs them in one call, and resolves each item's future.
While one batch runs, the next one gathers, so under load batches grow by themselves and an idle
service adds no more than the window to a request. The blocking work (a model's forward pass, a
Milvus search) never runs on the event loop.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Runs `process(items)` on batches of submitted items; `process` returns one result or
    exception per item, in order (an exception it raises fails the whole batch). `on_batch` hears
    each batch's size and seconds."""

    def __init__(
        self,
        name: str,
        process: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        budget: int,
        cost: Callable[[T], int] = lambda item: 1,
        wait_s: float = 0.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.name = name
        self._process = process
        self._budget = budget
        self._cost = cost
        self._wait_s = wait_s
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carry: tuple[T, Future] | None = None  # taken, but over the last batch's budget
        self._thread = threading.Thread(target=self._run, name=f"api-{name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, item: T) -> Future:
        """Queue `item` from any thread; the future resolves with its result."""
        future: Future = Future()
        self._queue.put((item, future))
        return future

    async def run_many(self, items: list[T]) -> list[R]:
        """The results of `items`, batched with whatever else is waiting."""
        futures = [self.submit(item) for item in items]
        return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in futures)))

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch, stop = self._collect()
            live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)
            if stop:
                return

    def _collect(self) -> tuple[list[tuple[T, Future]], bool]:
        """The next batch: the first item (waiting for it), then what comes within the window."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            return [], True
        batch = [first]
        spent = self._cost(first[0])
        deadline = time.monotonic() + self._wait_s
        while spent < self._budget:
            try:
                left = deadline - time.monotonic()
                entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                self._queue.put(_STOP)  # finish this batch, then stop
                break
            cost = self._cost(entry[0])
            if spent + cost > self._budget:
                self._carry = entry
                break
            batch.append(entry)
            spent += cost
        return batch, False

    def _run_batch(self, batch: list[tuple[T, Future]]) -> None:
        started = time.perf_counter()
        try:
            results = self._process([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items")
        except BaseException as err:  # the batch fails; the thread goes on serving
            results = [err] * len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - started)
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
