"""The query service's protection of search from bulk work and of keys from each other: the model's
lanes, turns between keys, the token budgets and the rate per key."""

import asyncio
import socket
import threading
import time

import pytest
from fastapi import HTTPException

from producer.api.batching import FairLane, MicroBatcher
from producer.api.budget import TokenBudget
from producer.api.embedder import EmbedItem, embed_batch, estimated_tokens
from producer.api.ratelimit import LocalBuckets, Rate, RateLimiter, rate_of
from producer.keys import Caller, Limits
from workers.core.access import AccessLevel
from workers.core.settings import FleetSettings
from workers.embedding import load_encoder

SEARCH, BULK = 0, 1


def blocked_batcher(budget: int = 2) -> tuple[MicroBatcher, list[list[str]], threading.Event, threading.Event]:
    """A two-lane batcher whose first batch waits for `release`: what queues meanwhile is visible."""
    started, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def process(items: list[str]) -> list[str]:
        batches.append(items)
        started.set()
        release.wait(5)
        return items

    return MicroBatcher("test", process, budget=budget, lanes=2), batches, started, release


def test_a_search_goes_before_every_bulk_item_queued_ahead_of_it():
    batcher, batches, started, release = blocked_batcher()
    running = batcher.submit("bulk-0", BULK)
    started.wait(5)  # a bulk pass runs; eight more bulk items queue behind it, then a search
    bulk = [batcher.submit(f"bulk-{n}", BULK) for n in range(1, 9)]
    search = batcher.submit("search", SEARCH)
    release.set()
    assert search.result(5) == "search"
    assert [future.result(5) for future in [running, *bulk]] == [f"bulk-{n}" for n in range(9)]
    # It waited for the pass already running, and for nothing else.
    assert batches[:2] == [["bulk-0"], ["search"]]
    assert batches[2:] == [["bulk-1", "bulk-2"], ["bulk-3", "bulk-4"], ["bulk-5", "bulk-6"], ["bulk-7", "bulk-8"]]
    batcher.close()


def test_searches_and_bulk_items_never_share_a_pass():
    batcher, batches, started, release = blocked_batcher(budget=10)
    batcher.submit("bulk-0", BULK)
    started.wait(5)
    futures = [batcher.submit("bulk-1", BULK), batcher.submit("search-1", SEARCH), batcher.submit("search-2", SEARCH)]
    release.set()
    for future in futures:
        future.result(5)
    assert batches == [["bulk-0"], ["search-1", "search-2"], ["bulk-1"]]
    batcher.close()


def test_a_bulk_batch_collecting_goes_at_once_when_a_search_arrives():
    """The collect window waits for more of the same lane, never while a search waits."""
    batches: list[list[str]] = []
    batcher = MicroBatcher("test", lambda items: batches.append(items) or items, budget=10, wait_s=30, lanes=2)
    bulk = batcher.submit("bulk", BULK)
    time.sleep(0.3)  # the thread took it, and waits for more bulk items
    search = batcher.submit("search", SEARCH)
    assert bulk.result(5) == "bulk"  # not after the 30 s window
    batcher.close()  # the search's own batch waits its window for more searches: closing ends it
    assert search.result(5) == "search"
    assert batches == [["bulk"], ["search"]]


def test_a_cancelled_bulk_item_is_skipped():
    batcher, batches, started, release = blocked_batcher()
    batcher.submit("bulk-0", BULK)
    started.wait(5)
    abandoned = batcher.submit("abandoned", BULK)  # its client went away
    assert abandoned.cancel()
    kept = batcher.submit("kept", BULK)
    release.set()
    assert kept.result(5) == "kept"
    assert ["abandoned"] not in batches and all("abandoned" not in batch for batch in batches)
    batcher.close()


def test_items_counted_by_their_request_are_embedded_as_the_same_text_alone():
    encoder = load_encoder("fake:64")
    texts = ["annual leave policy", "salary bands for 2027 " * 20]
    ids = encoder.tokenize(texts)
    counted = [EmbedItem(encoder, 64, text, sequence) for text, sequence in zip(texts, ids, strict=True)]
    assert [estimated_tokens(item) for item in counted] == [len(sequence) for sequence in ids]
    together = embed_batch([*counted, EmbedItem(encoder, 64, texts[0])], budget=256)
    alone = encoder.encode_documents(texts)
    for result, expected in zip(together, [*alone, alone[0]], strict=True):
        assert result.vector == pytest.approx(expected, abs=1e-6)


# -- token budgets ---------------------------------------------------------------------------------


def test_a_request_over_the_token_limit_is_413_naming_the_limit_and_what_to_do():
    budget = TokenBudget(max_request=1000, max_key_in_flight=5000)
    budget.check_request(1000)
    with pytest.raises(HTTPException) as refused:
        budget.check_request(1001)
    assert refused.value.status_code == 413
    detail = str(refused.value.detail)
    assert "1001" in detail and "1000" in detail and "FLEET_API_MAX_REQUEST_TOKENS" in detail and "smaller" in detail


def test_a_request_larger_than_a_keys_whole_budget_is_413_not_429():
    """It could never be admitted: waiting (429) would not help."""
    budget = TokenBudget(max_request=10_000, max_key_in_flight=3000)
    with pytest.raises(HTTPException) as refused, budget.hold("app", 3001):
        pass
    assert refused.value.status_code == 413 and "FLEET_API_MAX_KEY_TOKENS_IN_FLIGHT" in str(refused.value.detail)


def test_a_key_over_its_tokens_in_flight_gets_429_until_its_earlier_requests_end():
    budget = TokenBudget(max_request=1000, max_key_in_flight=1500)
    with budget.hold("app", 1000):
        assert budget.in_flight("app") == 1000
        with pytest.raises(HTTPException) as refused, budget.hold("app", 600):
            pass
        assert refused.value.status_code == 429
        assert refused.value.headers == {"Retry-After": "1"}
        assert "1000" in str(refused.value.detail) and "FLEET_API_MAX_KEY_TOKENS_IN_FLIGHT" in str(refused.value.detail)
        with budget.hold("app", 500):  # what fits is admitted
            assert budget.in_flight("app") == 1500
        with budget.hold("other", 1000):  # another key has its own budget
            pass
    assert budget.in_flight("app") == 0
    with budget.hold("app", 1000):  # the earlier request ended: room again
        pass


def test_a_failed_request_gives_its_tokens_back():
    budget = TokenBudget(max_request=1000, max_key_in_flight=1000)
    with pytest.raises(RuntimeError), budget.hold("app", 1000):
        raise RuntimeError("the model failed")
    assert budget.in_flight("app") == 0


# -- keys take turns -------------------------------------------------------------------------------


def test_a_key_with_many_items_waiting_delays_another_keys_first_by_one_of_its_own():
    batcher, batches, started, release = blocked_batcher(budget=2)
    batcher.submit("busy-0", SEARCH, owner="busy")
    started.wait(5)  # a pass runs; the busy key queues twenty more, then the quiet key one
    busy = [batcher.submit(f"busy-{n}", SEARCH, owner="busy") for n in range(1, 21)]
    quiet = batcher.submit("quiet", SEARCH, owner="quiet")
    release.set()
    assert quiet.result(5) == "quiet"
    assert [future.result(5) for future in busy] == [f"busy-{n}" for n in range(1, 21)]
    assert batches[1] == ["busy-1", "quiet"]  # the next pass: one item of each key in turn
    assert [item for batch in batches[2:] for item in batch] == [f"busy-{n}" for n in range(2, 21)]
    batcher.close()


def test_keys_take_turns_item_by_item_each_in_its_own_order():
    lane = FairLane()
    for owner, count in (("a", 3), ("b", 1), ("c", 2)):
        for number in range(count):
            lane.append(owner, f"{owner}{number}")
    taken = []
    while lane:
        assert lane.peek() == lane.peek()
        taken.append(lane.popleft())
    assert taken == ["a0", "b0", "c0", "a1", "c1", "a2"]


# -- requests per second per key -------------------------------------------------------------------


def limited(rate: float | None = None, burst: int | None = None) -> Caller:
    return Caller("app", AccessLevel.public, Limits(rate, burst))


def test_a_bucket_allows_its_burst_then_its_rate():
    buckets, rate = LocalBuckets(), Rate(per_s=10.0, burst=3)
    assert [buckets.take("app", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("app", rate)
    assert 0 < wait <= 0.1  # a token comes every 0.1 s
    time.sleep(0.12)
    assert buckets.take("app", rate) == 0.0
    assert buckets.take("other", rate) == 0.0  # each key its own bucket


def test_a_keys_own_rate_wins_over_the_default_and_no_rate_is_no_limit():
    unlimited = FleetSettings(_env_file=None)
    assert rate_of(limited(), unlimited) is None
    assert rate_of(limited(5), unlimited) == Rate(5, 5)  # a second's worth of burst
    assert rate_of(limited(0.5), unlimited) == Rate(0.5, 1)
    defaults = FleetSettings(_env_file=None, api_rate_per_key=20, api_burst_per_key=40)
    assert rate_of(limited(), defaults) == Rate(20, 40)
    assert rate_of(limited(2, 3), defaults) == Rate(2, 3)
    with pytest.raises(ValueError, match="FLEET_API_RATE_PER_KEY"):
        FleetSettings(_env_file=None, api_burst_per_key=40)


def test_over_the_rate_is_429_with_retry_after():
    limiter = RateLimiter(FleetSettings(_env_file=None))  # no broker: buckets in this process
    caller = limited(1, 2)

    async def three() -> None:
        await limiter.admit(caller)
        await limiter.admit(caller)
        with pytest.raises(HTTPException) as refused:
            await limiter.admit(caller)
        assert refused.value.status_code == 429 and refused.value.headers == {"Retry-After": "1"}
        await limiter.admit(limited())  # a key without a rate: never refused

    asyncio.run(three())


def test_a_redis_that_does_not_answer_leaves_each_replica_its_own_buckets(caplog):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    limiter = RateLimiter(FleetSettings(_env_file=None, broker_url=f"redis://127.0.0.1:{port}/0"))
    assert limiter.shared
    caller = limited(1, 1)

    async def two() -> None:
        await limiter.admit(caller)  # Redis refuses the connection: counted here instead
        with pytest.raises(HTTPException):
            await limiter.admit(caller)
        await limiter.close()

    asyncio.run(two())
    assert not limiter.shared
    assert "each replica counts on its own" in caplog.text
