"""Read and chunk documents in a pool of processes, so that a folder of PDFs uses every core.

Binary formats (PDF, Word, HTML) go to `FLEET_PARSE_WORKERS` processes; text formats, which
parse faster than they would pickle, are read here. Results come back in walk order, a window
ahead, so the database and queue work of one document overlaps the parsing of the next ones.
A parser that crashes its process (a malformed file can do that to a C library) costs only
that file: the files in flight are read again one at a time, and the one that crashes again is
refused.
"""

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

from producer.chunking import Chunk, ChunkLimits, chunk_text
from producer.documents import Document, Rejection, Source, Unchanged, read_document
from producer.parsers import ParsedDocument, parser_for
from workers.embedding.model_info import ModelInfo
from workers.embedding.tokenizer import load_token_counter

# Files read ahead of the one being stored, per parser process.
WINDOW_PER_WORKER = 4


@dataclass(frozen=True)
class Prepared:
    document: Document
    chunks: list[Chunk]


Outcome = Prepared | Unchanged | Rejection


def prepare(source: Source, limits: ChunkLimits, model: ModelInfo) -> Outcome:
    """Read, parse and chunk one document; whatever goes wrong is its refusal, never the run's end."""
    try:
        read = read_document(source)
        if not isinstance(read, tuple):
            return read
        document, parsed = read
        chunks = chunk_text(parsed.text, load_token_counter(model), limits)
        return Prepared(document, [_placed(chunk, parsed) for chunk in chunks])
    except Exception as err:  # a parser library's own failure: this file's refusal
        return Rejection(source.name, f"could not be read ({err.__class__.__name__}: {err})")


def _placed(chunk: Chunk, parsed: ParsedDocument) -> Chunk:
    place = parsed.place(chunk.start, chunk.end)
    return replace(chunk, page_start=place.page_start, page_end=place.page_end, section=place.section)


def _init_worker() -> None:
    # Ctrl-C is the parent's to handle (it stops us); one tokenizer thread per process, since
    # the processes already use every core.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


Work = Callable[[Source, ChunkLimits, ModelInfo], Outcome]


class Intake:
    """`work` (prepare; a module-level function: it is pickled to the processes) for each source."""

    def __init__(self, workers: int, limits: ChunkLimits, model: ModelInfo, work: Work = prepare):
        self.workers = workers
        self.limits = limits
        self.model = model
        self.work = work
        self._pool: ProcessPoolExecutor | None = None

    def run(self, sources: Iterable[Source]) -> Iterator[Outcome]:
        """The outcome of each source, in order."""
        pending: deque[tuple[Source, Future | None]] = deque()
        window = max(1, self.workers * WINDOW_PER_WORKER)
        for source in sources:
            pending.append((source, self._submit(source) if self._in_pool(source) else None))
            while len(pending) > window:
                yield self._outcome(*pending.popleft())
        while pending:
            yield self._outcome(*pending.popleft())

    def close(self, cancel: bool = False) -> None:
        """Stop the parser processes; `cancel`: at once, dropping the files they are reading."""
        if self._pool is None:
            return
        if cancel:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=not cancel, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> "Intake":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(cancel=error is not None)

    def _in_pool(self, source: Source) -> bool:
        parser = parser_for(Path(source.name).suffix)
        return self.workers > 1 and parser is not None and parser.heavy

    def _submit(self, source: Source) -> Future:
        if self._pool is None:
            self._pool = self._new_pool(self.workers)
        return self._pool.submit(self.work, source, self.limits, self.model)

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        # spawn, not fork: this process has threads (Milvus and Postgres clients, an embed engine).
        # (Workers forked from a fork server parsed 30 % slower here than spawned ones.)
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)

    def _outcome(self, source: Source, future: Future | None) -> Outcome:
        if future is None:
            return self.work(source, self.limits, self.model)
        try:
            return future.result()
        except (BrokenProcessPool, CancelledError):  # a crash took the pool and the files in it
            self.close(cancel=True)  # the files after it go to a fresh pool
            return self._alone(source)

    def _alone(self, source: Source) -> Outcome:
        """Read one file in a process of its own: a crash there is this file's."""
        with self._new_pool(1) as solo:
            try:
                return solo.submit(self.work, source, self.limits, self.model).result()
            except BrokenProcessPool:
                return Rejection(source.name, "its parser crashed (a malformed or hostile file?)")
