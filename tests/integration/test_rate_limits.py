"""Limits per key, over real HTTP, real Redis and real Postgres: a key past its rate gets 429 with
Retry-After while a key without a rate is never refused for rate; two service processes draw
from one budget (the buckets are in the broker's Redis); the refusals are audit events, counted;
an expired key is refused like a revoked one; `producer keys` creates, checks and lists limits."""

import asyncio
import time
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from producer import keys
from tests.conftest import REDIS_URL
from tests.integration.conftest import cli_env, run_cli, run_json
from tests.integration.test_search_log import FAST, audited
from tests.integration.test_serve import QUOTES, bearer, running_service, search, served_corpus, wait_until
from workers.core.access import AccessLevel
from workers.core.stores import postgres

QUOTE = QUOTES["handbook/welcome.md"]


@pytest.fixture(scope="module")
def replicas(pg_admin, tmp_path_factory):
    """Two service processes on one index, with the broker's Redis for the buckets."""
    root = tmp_path_factory.mktemp("rate_limits")
    env = {**FAST, "FLEET_BROKER_URL": REDIS_URL}
    with (
        served_corpus(pg_admin, root, **env) as served,
        running_service(served["settings"], root / "second.log", **env) as second,
    ):
        yield {**served, "urls": [served["url"], second]}


def created(replicas, *options: str) -> tuple[str, str, dict]:
    """A new key (a name of its own: Redis keeps buckets between runs) with these options."""
    name = f"app-{uuid.uuid4().hex[:8]}"
    env = cli_env(replicas["settings"])
    record = run_json(env, "producer", "keys", "create", "--name", name, "--level", "public", *options)
    return name, record["key"], record


async def burst(url: str, key: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=bearer(key), timeout=30) as client:
        return await asyncio.gather(*(client.post("/v1/search", json={"query": f"{QUOTE} {n}"}) for n in range(count)))


def test_a_key_past_its_rate_gets_429_and_a_key_without_one_never_does(replicas):
    name, key, record = created(replicas, "--rate", "2", "--burst", "3")
    assert (record["rate"], record["burst"]) == (2.0, 3)
    started = time.monotonic()
    answers = asyncio.run(burst(replicas["url"], key, 12))
    allowed = 3 + 2 * (time.monotonic() - started) + 1
    statuses = [response.status_code for response in answers]
    assert set(statuses) == {200, 429} and 3 <= statuses.count(200) <= allowed, statuses
    refused = [response for response in answers if response.status_code == 429]
    assert all(int(response.headers["Retry-After"]) >= 1 for response in refused)
    assert "over its limit of 2 requests/s" in refused[0].json()["detail"]

    # Meanwhile and after, a key without a rate: every request answered.
    unlimited = asyncio.run(burst(replicas["url"], replicas["keys"]["public"], 40))
    assert [response.status_code for response in unlimited] == [200] * 40
    time.sleep(1.1)  # the limited key's bucket fills again
    assert search(replicas["url"], key, QUOTE).status_code == 200

    def counted() -> list[dict]:
        return [e for e in audited(replicas, "--key", name)["events"] if e["status"] == 429]

    wait_until(lambda: sum(e["count"] for e in counted()) == len(refused), 15, "every 429 counted in the audit")


def test_two_service_processes_draw_from_one_budget(replicas):
    _, key, _ = created(replicas, "--rate", "0.2", "--burst", "4")
    statuses = [search(replicas["urls"][n % 2], key, f"{QUOTE} {n}").status_code for n in range(8)]
    # Four in all, not four from each: the second process saw the tokens the first took.
    assert statuses == [200, 200, 200, 200, 429, 429, 429, 429]


def test_an_expired_key_is_refused_like_a_revoked_one(replicas):
    name = f"temp-{uuid.uuid4().hex[:8]}"
    with closing(postgres.connect(replicas["settings"])) as conn:
        soon = datetime.now(UTC) + timedelta(seconds=2)
        key = keys.create(conn, name, AccessLevel.public, keys.Limits(expires_at=soon))
    assert search(replicas["url"], key, QUOTE).status_code == 200
    wait_until(lambda: search(replicas["url"], key, QUOTE).status_code == 401, 10, "the key refused once expired")
    refused = search(replicas["urls"][1], key, QUOTE)
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]


def test_keys_commands_set_check_and_list_limits(replicas):
    env = cli_env(replicas["settings"])
    name, key, record = created(replicas, "--rate", "5", "--expires", "90d")
    assert record["burst"] == 5  # a second's worth
    expires = datetime.fromisoformat(record["expires"])
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)
    assert search(replicas["url"], key, QUOTE).status_code == 200

    def listed() -> dict:
        return next(k for k in run_json(env, "producer", "keys", "list") if k["name"] == name)

    wait_until(lambda: listed()["last_used"] is not None, 15, "the key's last use recorded")
    entry = listed()
    assert (entry["rate"], entry["burst"], entry["expires"]) == (5.0, 5, record["expires"])
    assert "5/s burst 5" in run_cli(env, "producer", "keys", "list").stdout

    for options, reason in [
        (["--rate", "0"], "--rate 0"),
        (["--burst", "3"], "--burst needs --rate"),
        (["--rate", "1", "--expires", "2020-01-01"], "is not in the future"),
        (["--rate", "1", "--expires", "soon"], "is not a time"),
    ]:
        base = ["producer", "keys", "create", "--name", f"bad-{uuid.uuid4().hex[:6]}", "--level", "public"]
        refused = run_cli(env, *base, *options, check=False)
        assert refused.returncode == 2 and reason in refused.stderr, (options, refused.stderr)
