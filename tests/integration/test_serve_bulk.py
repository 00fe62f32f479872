"""One client must not cost everyone: maximal `/v1/embeddings` requests from four keys keep the
model busy (MiniLM on the CPU, tens of seconds), and `/v1/search` is still answered — before any
of them. Timings are compared with each other, never with a fixed number: a slow machine slows
both. Figures: `ops/bench/serve.py` (search during bulk embeddings).
"""

import random
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field

import httpx
import pytest

from producer import keys
from tests.integration.test_serve import QUOTES, bearer, metric, search, served_corpus, wait_until
from workers.core.access import AccessLevel
from workers.core.stores import postgres

# What a maximal request holds under the default limits (FLEET_API_MAX_INPUTS, _MAX_QUERY_CHARS).
MAX_INPUTS, MAX_CHARS = 256, 2000
# MiniLM reads 256 tokens of a text: a maximal request is 65,536 tokens; a key may hold one.
KEY_TOKENS_IN_FLIGHT = 100_000
WORDS = ["annual", "leave", "salary", "bands", "cafeteria", "board", "freight", "quarter", "policy"]


@pytest.fixture(scope="module")
def service(pg_admin, minilm, tmp_path_factory) -> Iterator[dict]:
    """The corpus ingested with MiniLM, a key per bulk client and one to search, the service on them."""
    env = {"FLEET_API_MAX_KEY_TOKENS_IN_FLIGHT": str(KEY_TOKENS_IN_FLIGHT)}
    with served_corpus(pg_admin, tmp_path_factory.mktemp("serve_bulk"), minilm, **env) as served:
        with closing(postgres.connect(served["settings"])) as conn:
            made = {f"bulk-{n}": keys.create(conn, f"bulk-{n}", AccessLevel.public) for n in range(4)}
        yield {**served, "keys": {**made, "search": served["keys"]["director_only"]}}


def maximal_inputs(seed: int) -> list[str]:
    """MAX_INPUTS texts of MAX_CHARS characters, each new (the cache never answers)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(MAX_INPUTS):
        text = ""
        while len(text) < MAX_CHARS:
            text += f"{rng.choice(WORDS)}{rng.randrange(10**6)} "
        texts.append(text[:MAX_CHARS])
    return texts


@dataclass
class BulkRequest:
    key: str
    answered_at: float | None = None
    status: int | None = None
    thread: threading.Thread = field(init=False)


@pytest.fixture(scope="module")
def bulk(service) -> Iterator[list[BulkRequest]]:
    """Four maximal embeddings requests, one per key, sent at once and in flight: the model is
    running their passes. Left running at the end (the service is stopped under them)."""
    url = service["url"]
    embed_batches = lambda: metric(httpx.get(f"{url}/metrics").text, 'fleet_api_batch_size_count{stage="embed"}')  # noqa: E731
    before = embed_batches()
    requests = [BulkRequest(service["keys"][f"bulk-{n}"]) for n in range(4)]

    def send(request: BulkRequest, seed: int) -> None:
        try:
            response = httpx.post(
                f"{url}/v1/embeddings", headers=bearer(request.key), json={"input": maximal_inputs(seed)}, timeout=600
            )
            request.status = response.status_code
        except httpx.HTTPError:  # the service stopped under it, at the end of the module
            pass
        request.answered_at = time.monotonic()

    for seed, request in enumerate(requests):
        request.thread = threading.Thread(target=send, args=(request, seed), daemon=True)
        request.thread.start()
    wait_until(lambda: embed_batches() >= before + 8, 120, "bulk forward passes running")
    assert all(request.answered_at is None for request in requests), "the bulk load ended before the test"
    yield requests


def test_searches_are_answered_while_maximal_embeddings_run_before_any_of_them(service, bulk):
    url, key = service["url"], service["keys"]["search"]
    loaded = []
    for number in range(5):
        began = time.monotonic()
        response = search(url, key, f"{QUOTES['handbook/welcome.md']} {number}", top_k=3)
        loaded.append(time.monotonic() - began)
        assert response.status_code == 200, response.text
        assert response.json()["hits"][0]["source_path"] == "handbook/welcome.md"
    answered = [request.answered_at for request in bulk if request.answered_at is not None]
    print(f"searches during bulk: {[round(seconds, 3) for seconds in loaded]} s; bulk answered: {len(answered)}")
    # Queued behind the bulk passes, the first search would have come after at least one of them.
    assert answered == [], "a search waited for bulk embeddings to finish"


def test_a_key_with_a_maximal_request_in_flight_gets_429_for_another(service, bulk):
    first = bulk[0]
    assert first.answered_at is None, "precondition: the key's first maximal request is still in flight"
    response = httpx.post(
        f"{service['url']}/v1/embeddings",
        headers=bearer(first.key),
        json={"input": maximal_inputs(seed=99)},
        timeout=60,
    )
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    detail = response.json()["detail"]
    assert str(KEY_TOKENS_IN_FLIGHT) in detail and "FLEET_API_MAX_KEY_TOKENS_IN_FLIGHT" in detail and "wait" in detail
    # Its search is not refused for that: searches are not counted against the key.
    assert search(service["url"], first.key, QUOTES["handbook/welcome.md"]).status_code == 200
