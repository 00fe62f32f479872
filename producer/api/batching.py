"""Micro-batching: work submitted by concurrent requests runs together, on one thread of its own.

Requests put items in a lane; the batch thread takes what is waiting (and what arrives within a
short collect window) up to a budget, runs them in one call, and resolves each item's future.
While one batch runs, the next one gathers, so under load batches grow by themselves and an idle
service adds no more than the window to a request. The blocking work (a model's forward pass, a
Milvus search) never runs on the event loop.

Lanes are priorities: a batch is taken from the first lane that has work, and only from it, so
a search's forward pass waits for at most the batch already running, never for a queue of bulk
embeddings (lane 0 before lane 1).

Within a lane the owners of the work (API keys) take turns: one item of each owner with work,
then the next round, each owner's items in arrival order. A key with a thousand items waiting
delays another key's first item by at most one item of its own, so it cannot starve the others.
"""

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class FairLane(Generic[T]):
    """One lane's waiting work: the owners in turn, each owner's items in arrival order."""

    def __init__(self) -> None:
        self._by_owner: OrderedDict[str, deque[T]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._by_owner)

    def append(self, owner: str, entry: T) -> None:
        self._by_owner.setdefault(owner, deque()).append(entry)  # a new owner: after those waiting

    def peek(self) -> T:
        return next(iter(self._by_owner.values()))[0]

    def popleft(self) -> T:
        owner, waiting = next(iter(self._by_owner.items()))
        entry = waiting.popleft()
        if waiting:
            self._by_owner.move_to_end(owner)  # its next item after every other owner's
        else:
            del self._by_owner[owner]
        return entry


class MicroBatcher(Generic[T, R]):
    """Runs `process(items)` on batches of submitted items; `process` returns one result or
    exception per item, in order (an exception it raises fails the whole batch). `on_batch` hears
    each batch's size and seconds. `lanes` priorities, 0 the most urgent."""

    def __init__(
        self,
        name: str,
        process: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        budget: int,
        cost: Callable[[T], int] = lambda item: 1,
        wait_s: float = 0.0,
        on_batch: Callable[[int, float], None] | None = None,
        lanes: int = 1,
    ):
        self.name = name
        self._process = process
        self._budget = budget
        self._cost = cost
        self._wait_s = wait_s
        self._on_batch = on_batch
        self._lanes: list[FairLane[tuple[T, Future]]] = [FairLane() for _ in range(lanes)]
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"api-{name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, item: T, lane: int = 0, owner: str = "") -> Future:
        """Queue `item` of `owner` from any thread; the future resolves with its result."""
        future: Future = Future()
        with self._changed:
            self._lanes[lane].append(owner, (item, future))
            self._changed.notify()
        return future

    async def run_many(self, items: list[T], lane: int = 0, owner: str = "") -> list[R]:
        """The results of `items`, batched with whatever else is waiting in their lane (taking
        turns with other owners'). Cancelling the caller cancels the items not yet running."""
        futures = [self.submit(item, lane, owner) for item in items]
        return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in futures)))

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop the thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)

    def _collect(self) -> list[tuple[T, Future]] | None:
        """The next batch, from the most urgent lane with work: its first item (waiting for one),
        then what comes within the window, up to the budget. None once stopped and drained."""
        with self._changed:
            while not any(self._lanes):
                if self._stopping:
                    return None
                self._changed.wait()
            lane = next(index for index, waiting in enumerate(self._lanes) if waiting)
            waiting = self._lanes[lane]
            batch = [waiting.popleft()]
            spent = self._cost(batch[0][0])
            deadline = time.monotonic() + self._wait_s
            while spent < self._budget:
                if waiting:
                    cost = self._cost(waiting.peek()[0])
                    if spent + cost > self._budget:
                        break  # it heads the next batch of its lane
                    batch.append(waiting.popleft())
                    spent += cost
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping or any(self._lanes[:lane]):
                    break  # the window is over, or more urgent work came: go now
                self._changed.wait(left)
            return batch

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
