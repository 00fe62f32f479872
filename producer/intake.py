"""Read and chunk documents in a pool of processes: every core busy, and no file able to cost
more than its own refusal.

Every file, whatever its format, is read, parsed and chunked in one of `FLEET_PARSE_WORKERS`
processes (nothing is tokenized in the ingesting process). Each process may map at most
`FLEET_PARSE_MEMORY_MB` of address space beyond what it holds when it starts (`setrlimit`), and
each file may take at most `FLEET_PARSE_TIMEOUT_S`: a file past either bound is refused with the
bound it passed, and the pool is replaced. A parser that crashes its process (a malformed file
can do that to a C library) costs only that file too: the files in flight are read again one at
a time, and the one that crashes again is refused. Results come back in walk order, a window
ahead, so the database and queue work of one document overlaps the parsing of the next ones.
"""

import multiprocessing
import os
import resource
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

from producer.chunking import Chunk, ChunkLimits, chunk_text
from producer.documents import Document, Rejection, Source, Unchanged, read_document
from producer.parsers import ParsedDocument
from workers.embedding.model_info import ModelInfo
from workers.embedding.tokenizer import load_token_counter

# Files read ahead of the one being stored, per parser process.
WINDOW_PER_WORKER = 4


@dataclass(frozen=True)
class Prepared:
    document: Document
    chunks: list[Chunk]


Outcome = Prepared | Unchanged | Rejection


@dataclass(frozen=True)
class Bounds:
    """What one file may cost: address space of its process, and seconds."""

    memory_mb: int = 2048
    timeout_s: float = 300.0

    def too_large(self) -> str:
        return f"too large to read within {self.memory_mb} MB (FLEET_PARSE_MEMORY_MB)"

    def too_slow(self) -> str:
        return f"too large to read within {self.timeout_s:.0f} s (FLEET_PARSE_TIMEOUT_S)"


def prepare(source: Source, limits: ChunkLimits, model: ModelInfo) -> Outcome:
    """Read, parse and chunk one document; whatever goes wrong is its refusal, never the run's end."""
    try:
        read = read_document(source)
        if not isinstance(read, tuple):
            return read
        document, parsed = read
        chunks = chunk_text(parsed.text, load_token_counter(model), limits)
        return Prepared(document, [_placed(chunk, parsed) for chunk in chunks])
    except MemoryError:
        return Rejection(source.name, _MEMORY_REFUSAL)
    except Exception as err:  # a parser library's own failure: this file's refusal
        return Rejection(source.name, f"could not be read ({err.__class__.__name__}: {err})")


# Set in each parser process by `_init_worker`: the refusal of a file that ran out of memory.
_MEMORY_REFUSAL = "ran out of memory while it was read"


def _placed(chunk: Chunk, parsed: ParsedDocument) -> Chunk:
    place = parsed.place(chunk.start, chunk.end)
    return replace(chunk, page_start=place.page_start, page_end=place.page_end, section=place.section)


def _init_worker(bounds: Bounds) -> None:
    # Ctrl-C is the parent's to handle (it stops us); one tokenizer thread per process, since
    # the processes already use every core; and a cap on the address space, so that one file
    # cannot take the machine's memory (it gets a MemoryError, or its process dies: refused).
    global _MEMORY_REFUSAL
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _MEMORY_REFUSAL = bounds.too_large()
    limit = _address_space_bytes() + bounds.memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _address_space_bytes() -> int:
    """What this process has mapped before its first file: the cap comes on top of it. A spawned
    process imports the parent's main module first, and a program that imports torch at its top
    (a benchmark, a notebook) starts with gigabytes of address space reserved: a cap from zero
    would refuse every file there with "out of memory"."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except OSError:  # not Linux: the cap alone
        return 0


Work = Callable[[Source, ChunkLimits, ModelInfo], Outcome]


class Intake:
    """`work` (prepare; a module-level function: it is pickled to the processes) for each source."""

    def __init__(
        self, workers: int, limits: ChunkLimits, model: ModelInfo, work: Work = prepare, bounds: Bounds = Bounds()
    ):
        self.workers = max(1, workers)
        self.limits = limits
        self.model = model
        self.work = work
        self.bounds = bounds
        self._pool: ProcessPoolExecutor | None = None
        self._in_flight: set[Future] = set()  # submitted to the current pool, not yet taken
        self._innocent: set[Future] = set()  # in flight when a slow file's pool was stopped: sent again

    def run(self, sources: Iterable[Source]) -> Iterator[Outcome]:
        """The outcome of each source, in order."""
        pending: deque[tuple[Source, Future]] = deque()
        window = self.workers * WINDOW_PER_WORKER
        for source in sources:
            pending.append((source, self._submit(source)))
            while len(pending) > window:
                yield self._outcome(*pending.popleft())
        while pending:
            yield self._outcome(*pending.popleft())

    def close(self, cancel: bool = False) -> None:
        """Stop the parser processes; `cancel`: at once, dropping the files they are reading."""
        if self._pool is None:
            return
        if cancel:
            _terminate(self._pool)
        self._pool.shutdown(wait=not cancel, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> "Intake":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(cancel=error is not None)

    def _submit(self, source: Source) -> Future:
        if self._pool is None:
            self._pool = self._new_pool(self.workers)
            self._in_flight = set()
        future = self._pool.submit(self.work, source, self.limits, self.model)
        self._in_flight.add(future)
        return future

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        # spawn, not fork: this process has threads (Milvus and Postgres clients, an embed engine).
        # (Workers forked from a fork server parsed 30 % slower here than spawned ones.)
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(self.bounds,))

    def _outcome(self, source: Source, future: Future) -> Outcome:
        # The oldest file in flight: the ones before it are done, so it is being read (or next).
        self._in_flight.discard(future)
        try:
            return future.result(timeout=self.bounds.timeout_s)
        except FutureTimeout:
            # The only way to stop a parser is its process: the pool goes, the others go again.
            self._innocent |= self._in_flight
            self.close(cancel=True)
            return Rejection(source.name, self.bounds.too_slow())
        except (BrokenProcessPool, CancelledError):
            if future in self._innocent:
                self._innocent.discard(future)
                return self._outcome(source, self._submit(source))
            # A crash took the pool and the files in it: which one did is told by reading each alone.
            self.close(cancel=True)
            return self._alone(source)

    def _alone(self, source: Source) -> Outcome:
        """Read one file in a process of its own: a crash there is this file's."""
        solo = self._new_pool(1)
        try:
            return solo.submit(self.work, source, self.limits, self.model).result(timeout=self.bounds.timeout_s)
        except FutureTimeout:
            return Rejection(source.name, self.bounds.too_slow())
        except BrokenProcessPool:
            reason = f"its parser crashed (a malformed or hostile file?) or it is {self.bounds.too_large()}"
            return Rejection(source.name, reason)
        finally:
            _terminate(solo)
            solo.shutdown(wait=False, cancel_futures=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
