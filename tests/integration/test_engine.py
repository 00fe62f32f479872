"""The embed engine on real Postgres and Milvus Lite: batching across tasks, failures, races."""

import threading
import time
from contextlib import closing

import numpy as np
import pytest

from producer import commands
from tests.integration.conftest import write_corpus
from workers.core.errors import DeviceOutOfMemory, ServiceUnavailable
from workers.core.sending import make_tasks
from workers.core.stores import catalog, milvus, postgres, progress
from workers.embedding import load_encoder
from workers.embedding.fake import FakeEncoder
from workers.engine import EmbedEngine
from workers.engine.claim import STARVING_CLAIM_CHUNKS


class RecordingEncoder(FakeEncoder):
    """The fake encoder, remembering the size of every forward pass."""

    def __init__(self, info, on_encode=None):
        super().__init__(info)
        self.batches: list[int] = []
        self.on_encode = on_encode

    def forward(self, batch: list[list[int]], dim: int) -> np.ndarray:
        self.batches.append(len(batch))
        if self.on_encode:
            self.on_encode(batch)
        return super().forward(batch, dim)


class BrokenEncoder(FakeEncoder):
    def forward(self, batch, dim):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@pytest.fixture
def settings(make_settings, migrated_url):
    return make_settings(database_url=migrated_url, model="fake:64", chunk_min_tokens=20, chunk_max_tokens=60)


@pytest.fixture
def pending(settings, tmp_path):
    """A corpus registered in Postgres with nothing embedded yet: (version, chunk ids)."""
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        version = catalog.live_version(conn)
        conn.execute("UPDATE chunk_embeddings SET embedded_at = NULL, attempts = 0")
        ids = progress.pending_chunk_ids(conn, version.id)
    milvus.connect(settings).delete(version.collection, ids=ids)
    return version, ids


def run_engine(settings, encoder, tasks):
    engine = EmbedEngine(settings, encoder_loader=lambda *_: encoder)
    futures = [engine.submit(task) for task in tasks]
    try:
        return [future.result(timeout=60) for future in futures]
    finally:
        engine.close()


def test_chunks_of_many_tasks_share_forward_passes(settings, pending):
    version, ids = pending
    encoder = RecordingEncoder(load_encoder("fake:64").info)
    tasks = make_tasks(version.id, ids, 2)
    results = run_engine(settings.model_copy(update={"collect_ms": 200}), encoder, tasks)
    assert sum(r.embedded for r in results) == len(ids)
    assert len(encoder.batches) < len(tasks) / 2
    with closing(postgres.connect(settings)) as conn:
        assert progress.progress(conn, version.id).embedded == len(ids)
    assert milvus.count(milvus.connect(settings), version.collection) == len(ids)


def test_the_first_forward_takes_one_small_group_then_batches_grow(settings, pending):
    version, ids = pending
    assert len(ids) > 4 * STARVING_CLAIM_CHUNKS, "the corpus is too small to tell"
    # A device that takes a while per batch: while it works, the next batches fill up.
    encoder = RecordingEncoder(load_encoder("fake:64").info, on_encode=lambda batch: time.sleep(0.05))
    tasks = make_tasks(version.id, ids, 4)
    results = run_engine(settings.model_copy(update={"collect_ms": 200}), encoder, tasks)
    assert sum(r.embedded for r in results) == len(ids)
    # All tasks were waiting at once; the first forward still had only the first group's chunks.
    assert encoder.batches[0] <= STARVING_CLAIM_CHUNKS < max(encoder.batches), encoder.batches


def test_redelivered_task_embeds_nothing_twice(settings, pending):
    version, ids = pending
    encoder = RecordingEncoder(load_encoder("fake:64").info)
    task = make_tasks(version.id, ids, len(ids))[0]
    run_engine(settings, encoder, [task])
    (again,) = run_engine(settings, encoder, [task])
    assert (again.embedded, again.skipped) == (0, len(ids))
    assert sum(encoder.batches) == len(ids)


def test_chunk_deleted_while_embedding_leaves_no_vector(settings, pending):
    version, ids = pending
    victim = ids[0]

    def delete_victim(_texts):
        with closing(postgres.connect(settings)) as conn:
            conn.execute("DELETE FROM chunks WHERE id = %s", (victim,))

    encoder = RecordingEncoder(load_encoder("fake:64").info, on_encode=delete_victim)
    (result,) = run_engine(settings, encoder, make_tasks(version.id, ids, len(ids)))
    assert result.embedded == len(ids) - 1
    client = milvus.connect(settings)
    assert client.get(version.collection, ids=[victim]) == []
    assert milvus.count(client, version.collection) == len(ids) - 1


def test_encoder_failure_fails_the_task_and_marks_nothing(settings, pending):
    version, ids = pending
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_engine(settings, BrokenEncoder(load_encoder("fake:64").info), make_tasks(version.id, ids, len(ids)))
    with closing(postgres.connect(settings)) as conn:
        assert progress.progress(conn, version.id).pending == len(ids)


def test_chunks_delivered_too_often_are_recorded_as_failures(settings, pending):
    version, ids = pending
    with closing(postgres.connect(settings)) as conn:
        conn.execute("UPDATE chunk_embeddings SET attempts = %s WHERE chunk_id = %s", (settings.max_attempts, ids[0]))
    (result,) = run_engine(
        settings, RecordingEncoder(load_encoder("fake:64").info), make_tasks(version.id, ids, len(ids))
    )
    assert (result.failed, result.embedded) == (1, len(ids) - 1)
    with closing(postgres.connect(settings)) as conn:
        kind, error = conn.execute("SELECT kind, error FROM failures WHERE chunk_id = %s", (ids[0],)).fetchone()
    assert kind == "attempts" and "gave up after" in error


def test_chunk_over_the_batch_budget_is_a_recorded_failure_not_truncated(settings, pending):
    version, ids = pending
    with closing(postgres.connect(settings)) as conn:
        conn.execute("UPDATE chunks SET text = repeat('word ', 5000) WHERE id = %s", (ids[0],))
    small = settings.model_copy(update={"batch_tokens": 4096})
    (result,) = run_engine(small, RecordingEncoder(load_encoder("fake:64").info), make_tasks(version.id, ids, len(ids)))
    assert result.failed == 1
    with closing(postgres.connect(settings)) as conn:
        (kind,) = conn.execute("SELECT kind FROM failures WHERE chunk_id = %s", (ids[0],)).fetchone()
    assert kind == "too_long"


class OutOfMemoryAbove(FakeEncoder):
    """Runs out of 'device memory' on batches of more than `limit` sequences."""

    def __init__(self, info, limit: int):
        super().__init__(info)
        self.limit = limit
        self.batches: list[int] = []

    def forward(self, batch, dim):
        if len(batch) > self.limit:
            raise DeviceOutOfMemory(f"simulated OOM on {len(batch)} sequences")
        self.batches.append(len(batch))
        return super().forward(batch, dim)


def test_out_of_memory_splits_the_batch_and_shrinks_the_budget(settings, pending):
    version, ids = pending
    encoder = OutOfMemoryAbove(load_encoder("fake:64").info, limit=5)
    engine = EmbedEngine(settings, encoder_loader=lambda *_: encoder)
    (result,) = [f.result(timeout=60) for f in [engine.submit(make_tasks(version.id, ids, len(ids))[0])]]
    engine.close()
    assert result.embedded == len(ids)
    assert max(encoder.batches) <= 5
    assert engine.budget.tokens < settings.batch_tokens


def test_chunks_over_a_shrunken_budget_still_embed(settings, pending):
    version, ids = pending
    engine = EmbedEngine(settings, encoder_loader=lambda *_: RecordingEncoder(load_encoder("fake:64").info))
    engine.budget.tokens = 8  # as after many OOMs: below every chunk's length, but the configured limit is not
    (result,) = [f.result(timeout=60) for f in [engine.submit(make_tasks(version.id, ids, len(ids))[0])]]
    engine.close()
    assert (result.embedded, result.failed) == (len(ids), 0)


def test_a_chunk_that_never_fits_fails_its_task_until_its_attempts_run_out(settings, pending):
    version, ids = pending
    encoder = OutOfMemoryAbove(load_encoder("fake:64").info, limit=0)
    task = make_tasks(version.id, ids[:3], 3)[0]
    for _ in range(settings.max_attempts):  # each delivery: OOM, the task fails and would retry
        with pytest.raises(DeviceOutOfMemory):
            run_engine(settings, encoder, [task])
    (result,) = run_engine(settings, encoder, [task])
    assert result.failed == 3
    with closing(postgres.connect(settings)) as conn:
        kinds = {kind for (kind,) in conn.execute("SELECT kind FROM failures")}
    assert kinds == {"attempts"}


def test_task_split_across_batches_resolves_only_when_all_its_chunks_are_stored(settings, pending):
    version, ids = pending
    release = threading.Event()
    calls = []

    def hold_second_batch(_batch):
        calls.append(1)
        if len(calls) == 2:
            assert release.wait(30)

    encoder = RecordingEncoder(load_encoder("fake:64").info, on_encode=hold_second_batch)
    # A budget of a few chunks per batch: the task's chunks need several forward passes.
    engine = EmbedEngine(settings.model_copy(update={"batch_tokens": 200}), encoder_loader=lambda *_: encoder)
    future = engine.submit(make_tasks(version.id, ids, len(ids))[0])
    deadline = time.monotonic() + 30
    while embedded_count(settings, version) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < embedded_count(settings, version) < len(ids)
    assert not future.done()
    release.set()
    assert future.result(timeout=60).embedded == len(ids)
    engine.close()
    assert len(encoder.batches) > 2


def embedded_count(settings, version) -> int:
    with closing(postgres.connect(settings)) as conn:
        return progress.progress(conn, version.id).embedded


def test_milvus_failure_fails_the_task_and_marks_nothing(settings, pending, monkeypatch):
    version, ids = pending

    def unreachable(*_args, **_kwargs):
        raise ServiceUnavailable("Milvus is down (simulated)")

    monkeypatch.setattr(milvus, "upsert", unreachable)
    with pytest.raises(ServiceUnavailable):
        run_engine(settings, RecordingEncoder(load_encoder("fake:64").info), make_tasks(version.id, ids, len(ids)))
    assert embedded_count(settings, version) == 0


def test_an_upsert_cut_halfway_puts_chunks_another_delivery_stored_back_to_pending(settings, pending, monkeypatch):
    """Milvus Lite's upsert is a delete then an insert: killed between them, the rows it replaced
    are gone. If another delivery of the same chunks had stored and marked them meanwhile, they
    must not stay "embedded" without a vector. (The kill cannot be placed between the two halves
    on cue: the cut upsert is simulated, on the real stores.)"""
    version, ids = pending
    task = make_tasks(version.id, ids, len(ids))[0]
    real_upsert = milvus.upsert

    def cut_halfway(client, collection, rows, keyword=False):
        real_upsert(client, collection, rows, keyword)  # the other delivery stored and marked them
        with closing(postgres.connect(settings)) as conn:
            progress.mark_embedded(conn, version.id, [row.chunk_id for row in rows])
        client.delete(collection, ids=[row.chunk_id for row in rows])  # this upsert's delete, then the crash
        raise ServiceUnavailable("Milvus went away in the middle of an upsert (simulated)")

    monkeypatch.setattr(milvus, "upsert", cut_halfway)
    with pytest.raises(ServiceUnavailable):
        run_engine(settings, RecordingEncoder(load_encoder("fake:64").info), [task])
    assert embedded_count(settings, version) == 0  # back to pending, not embedded without a vector
    monkeypatch.undo()
    (redelivered,) = run_engine(settings, RecordingEncoder(load_encoder("fake:64").info), [task])
    assert redelivered.embedded == len(ids)
    client = milvus.connect(settings)
    stored = client.query(version.collection, filter="", output_fields=["chunk_id"], limit=16384)
    assert {row["chunk_id"] for row in stored} == set(ids)


@pytest.mark.parametrize(("model", "attention"), [("minilm", "auto"), ("qwen_tiny", "padded"), ("qwen_tiny", "packed")])
def test_pipeline_vectors_equal_sentence_transformers(request, make_settings, migrated_url, tmp_path, model, attention):
    import torch
    from sentence_transformers import SentenceTransformer

    path = request.getfixturevalue(model)
    assert load_encoder(path, "cpu", attention).packs_sequences == (attention == "packed")
    settings = make_settings(
        database_url=migrated_url, model=path, batch_tokens=2048, chunk_max_tokens=200, attention=attention
    )
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        version = catalog.live_version(conn)
        rows = conn.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
    client = milvus.connect(settings)
    milvus.ensure_loaded(client, version.collection)
    stored = {
        row["chunk_id"]: np.array(row["vector"])
        for row in client.get(version.collection, ids=[r[0] for r in rows], output_fields=["vector"])
    }
    expected = SentenceTransformer(path, device="cpu", model_kwargs={"dtype": torch.float32}).encode(
        [r[1] for r in rows], normalize_embeddings=True
    )
    cosines = [float(stored[chunk_id] @ vector) for (chunk_id, _), vector in zip(rows, expected, strict=True)]
    assert len(stored) == len(rows) > 5
    assert min(cosines) >= 0.999


class BrokenTokenizer(FakeEncoder):
    def tokenize(self, texts):
        raise RuntimeError("tokenizer crashed")


def test_tokenizer_failure_fails_every_waiting_task_and_the_engine_goes_on(settings, pending):
    version, ids = pending
    tasks = make_tasks(version.id, ids, 4)
    encoder = BrokenTokenizer(load_encoder("fake:64").info)
    engine = EmbedEngine(settings.model_copy(update={"collect_ms": 0}), encoder_loader=lambda *_: encoder)
    futures = [engine.submit(task) for task in tasks]
    for future in futures:  # every one resolves (none hangs), each with the tokenizer's error
        with pytest.raises(RuntimeError, match="tokenizer crashed"):
            future.result(timeout=30)
    engine.check_healthy()  # the stage survived the item
    engine.close()
    assert embedded_count(settings, version) == 0
