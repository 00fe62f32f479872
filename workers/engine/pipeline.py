"""Stage plumbing for the worker pipeline: threads joined by bounded queues, with timings.

Each stage takes one item from its inbox, handles it, and puts its outputs in its outbox; a
full outbox makes it wait (backpressure), an empty inbox makes it idle. The time of each is
kept, so a run can say which stage waited on which. A stage that fails on an item reports the
item's chunks to `on_error` and goes on; a stage whose loop dies keeps its exception and calls
`on_death`: the engine fails the work in flight (it goes back to the queue) and refuses more.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

STOP = object()


@dataclass
class StageStats:
    items: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0  # waiting for input
    blocked_s: float = 0.0  # waiting for room downstream

    def to_dict(self) -> dict:
        return {"items": self.items, "busy_s": self.busy_s, "idle_s": self.idle_s, "blocked_s": self.blocked_s}


@dataclass
class Stage:
    """One thread: `work(item)` returns the items to pass on (or None)."""

    name: str
    inbox: "queue.Queue[Any]"
    work: Callable[[Any], Iterable[Any] | None]
    outbox: "queue.Queue[Any] | None"
    on_error: Callable[[Any, Exception], None]
    on_death: Callable[["Stage"], None] = lambda stage: None
    stats: StageStats = field(default_factory=StageStats)
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"embed-{self.name}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                started = time.perf_counter()
                item = self.inbox.get()
                self.stats.idle_s += time.perf_counter() - started
                if item is STOP:
                    self._put(STOP)
                    return
                started, blocked_before = time.perf_counter(), self.stats.blocked_s
                try:
                    # Outputs go downstream as they come: the first batch need not wait for the last.
                    for output in self.work(item) or ():
                        self._put(output)
                except Exception as err:  # the item's tasks fail and are retried; the stage goes on
                    log.exception("%s stage failed on an item", self.name)
                    self.on_error(item, err)
                self.stats.busy_s += time.perf_counter() - started - (self.stats.blocked_s - blocked_before)
                self.stats.items += 1
        except BaseException as err:
            log.exception("%s stage stopped", self.name)
            self.error = err
            self._put_nowait(STOP)  # the stages after it stop too, instead of waiting forever
            self.on_death(self)

    def _put_nowait(self, item: Any) -> None:
        if self.outbox is not None:
            try:
                self.outbox.put_nowait(item)
            except queue.Full:
                log.error("%s stage could not pass STOP on: its outbox is full", self.name)

    def _put(self, item: Any) -> None:
        if self.outbox is None:
            return
        started = time.perf_counter()
        self.outbox.put(item)
        self.stats.blocked_s += time.perf_counter() - started


def drain(inbox: "queue.Queue[Any]", first: Any, limit: int, size: Callable[[Any], int]) -> tuple[list, bool]:
    """`first` plus whatever is already waiting, up to `limit` by `size`; and whether STOP was met."""
    items, total = [first], size(first)
    while total < limit:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            break
        if item is STOP:
            return items, True
        items.append(item)
        total += size(item)
    return items, False
