"""The query service's pure parts: micro-batching, the embed step, the cache, keys, the API schema."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

from producer import keys
from producer.api.batching import MicroBatcher
from producer.api.embedder import EmbedItem, VectorCache, as_query, embed_batch
from producer.api.models import EmbeddingsRequest, LevelName, ModeName, SearchRequest
from producer.api.stores import as_unavailable
from workers.core.access import AccessLevel
from workers.core.constants import SEARCH_MODES
from workers.core.errors import ServiceUnavailable
from workers.core.settings import FleetSettings
from workers.embedding import load_encoder

# -- micro-batching ---------------------------------------------------------------------------------


def test_items_waiting_together_run_in_one_batch_within_the_budget():
    started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def process(items: list[int]) -> list[int]:
        batches.append(items)
        started.set()
        release.wait(5)
        return [item * 10 for item in items]

    batcher = MicroBatcher("test", process, budget=4)
    first = batcher.submit(0)
    started.wait(5)  # the first batch runs; the next six wait behind it
    waiting = [batcher.submit(item) for item in range(1, 7)]
    release.set()
    assert [future.result(5) for future in [first, *waiting]] == [0, 10, 20, 30, 40, 50, 60]
    assert batches == [[0], [1, 2, 3, 4], [5, 6]]
    batcher.close()
    assert not batcher.alive


def test_the_collect_window_gathers_items_that_arrive_soon_after():
    batches: list[list[int]] = []
    batcher = MicroBatcher("test", lambda items: batches.append(items) or items, budget=100, wait_s=0.3)
    futures = [batcher.submit(0)]
    time.sleep(0.05)
    futures.append(batcher.submit(1))
    assert [future.result(5) for future in futures] == [0, 1]
    assert batches == [[0, 1]]
    batcher.close()


def test_a_failing_batch_fails_its_items_and_the_thread_goes_on():
    def process(items: list[int]) -> list:
        if 0 in items:
            raise RuntimeError("boom")
        return [ValueError("odd") if item % 2 else item for item in items]

    batcher = MicroBatcher("test", process, budget=1)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(0).result(5)
    with pytest.raises(ValueError, match="odd"):
        batcher.submit(1).result(5)
    assert batcher.submit(2).result(5) == 2
    assert batcher.alive
    batcher.close()


# -- the embed step ---------------------------------------------------------------------------------


def test_a_text_embedded_in_a_batch_equals_it_embedded_alone():
    encoder = load_encoder("fake:64")
    texts = ["short", "a somewhat longer text with more words in it", "x " * 300]
    together = embed_batch([EmbedItem(encoder, 64, text) for text in texts], budget=256)
    for text, result in zip(texts, together, strict=True):
        np.testing.assert_allclose(result.vector, encoder.encode_documents([text])[0], atol=1e-6)
        assert result.tokens == len(encoder.tokenize([text])[0])


def test_items_of_two_index_versions_are_embedded_each_by_its_own():
    old, new = load_encoder("fake:64"), load_encoder("fake:48")
    text = " ".join(f"word{number}" for number in range(200))  # the fake model's vectors are sparse
    results = embed_batch([EmbedItem(old, 64, text), EmbedItem(new, 32, text), EmbedItem(old, 16, text)], 1024)
    assert [result.vector.shape for result in results] == [(64,), (32,), (16,)]
    np.testing.assert_allclose([np.linalg.norm(result.vector) for result in results], 1.0, atol=1e-6)


def test_a_query_carries_the_models_query_prompt():
    encoder = load_encoder("fake:64")
    assert as_query(encoder, "annual leave") == encoder.info.query_prompt + "annual leave"


def test_the_cache_forgets_the_least_recently_used():
    cache = VectorCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
    off = VectorCache(0)
    off.put("a", 1)
    assert off.get("a") is None


# -- keys --------------------------------------------------------------------------------------------


def test_keys_are_random_and_only_their_hash_identifies_them():
    made = {keys.new_key() for _ in range(100)}
    assert len(made) == 100
    key = made.pop()
    assert key.startswith(keys.KEY_PREFIX) and len(key) == len(keys.KEY_PREFIX) + 43  # 32 bytes, base64
    digest = keys.key_hash(key)
    assert len(digest) == 64 and key not in digest
    assert keys.same_hash(digest, keys.key_hash(key)) and not keys.same_hash(digest, keys.key_hash(key + "x"))


@pytest.mark.parametrize("name", ["", "-leading", "has space", "a" * 65, "semi;colon"])
def test_key_names_are_checked(name):
    with pytest.raises(Exception, match="key name"):
        keys.check_name(name)


# -- the HTTP surface ---------------------------------------------------------------------------------


def test_the_api_levels_are_the_access_levels():
    assert list(LevelName.__args__) == AccessLevel.names()


def test_the_api_modes_are_the_search_modes():
    assert ModeName.__args__ == SEARCH_MODES


@pytest.mark.parametrize(
    "body",
    [
        {"query": "x", "mode": "dense", "weights": {"dense": 1, "keyword": 1}},
        {"query": "x", "mode": "keyword", "weights": {"dense": 1, "keyword": 1}},
        {"query": "x", "weights": {"dense": 0, "keyword": 0}},
        {"query": "x", "weights": {"dense": -1, "keyword": 1}},
        {"query": "x", "mode": "bm25"},
    ],
)
def test_weights_belong_to_hybrid_searches(body):
    with pytest.raises(ValidationError):
        SearchRequest.model_validate(body)


@pytest.mark.parametrize(
    "body",
    [{"query": "x", "top_k": "3"}, {"query": "x", "top_k": True}, {"query": " "}, {"query": "x", "extra": 1}],
)
def test_search_requests_are_strict(body):
    with pytest.raises(ValidationError):
        SearchRequest.model_validate(body)


def test_embeddings_requests_take_openai_fields():
    request = EmbeddingsRequest.model_validate({"input": "x", "model": "m", "user": "u", "encoding_format": "base64"})
    assert (request.input, request.input_type, request.dimensions) == ("x", "document", None)
    for bad in ({"input": [1, 2]}, {"input": []}, {"input": "x", "dimensions": 0}):
        with pytest.raises(ValidationError):
            EmbeddingsRequest.model_validate(bad)


def test_the_openapi_document_lists_every_route_and_the_bearer_scheme(tmp_path):
    from producer.api import create_app

    schema = create_app(FleetSettings(_env_file=None, data_dir=tmp_path)).openapi()
    assert {"/v1/search", "/v1/embeddings", "/v1/models", "/healthz", "/readyz", "/info", "/metrics"} <= set(
        schema["paths"]
    )
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_store_errors_become_503_reasons():
    import psycopg
    from pymilvus import MilvusException

    assert "Postgres" in str(as_unavailable(psycopg.OperationalError("connection refused")))
    assert "Milvus" in str(as_unavailable(MilvusException(2, "Fail connecting to server")))
    assert isinstance(as_unavailable(ServiceUnavailable("down")), ServiceUnavailable)
    assert as_unavailable(ValueError("a bug")) is None


def test_settings_keep_the_revocation_promise():
    with pytest.raises(ValidationError):
        FleetSettings(_env_file=None, api_poll_s=30)


def test_the_service_does_not_import_torch_until_it_loads_a_model():
    probe = "import sys, producer.api.server, producer.keys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
