"""A canary through the real query service: `migrate reindex --canary` builds and verifies green,
then `producer serve` answers its share of the keys from it (each key from one version, named in
every answer), counted per version for `migrate status`; `migrate promote` cuts over, `migrate
rollback` ends a canary and `migrate abort` drops one, with searches running and none failing."""

import threading
from contextlib import closing

import httpx
import pytest

from migrations import commands as migrate
from producer import commands, keys
from producer.api.canary import answers_from_canary
from tests.integration.conftest import write_corpus
from tests.integration.test_serve import QUOTES, bearer, running_service, search, wait_until
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput
from workers.core.stores import catalog, postgres

KEYS = 200
QUERY = QUOTES["handbook/welcome.md"]


def canary_reindex(settings, model: str, percent: float) -> dict:
    return migrate.run_reindex(settings, model, None, False, None, True, False, 0.02, canary=percent)


@pytest.fixture
def fleet(make_settings, migrated_url, milvus_server, tmp_path):
    settings = make_settings(database_url=migrated_url, milvus_uri=milvus_server, model="fake:64", api_poll_s=0.5)
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        secrets = {f"app-{n:03d}": keys.create(conn, f"app-{n:03d}", AccessLevel.public) for n in range(KEYS)}
    return settings, secrets


def answered_by(url: str, secrets: dict[str, str]) -> dict[str, set[str]]:
    """Each key's answering versions over two searches (every answer must be a 200)."""
    seen: dict[str, set[str]] = {}
    with httpx.Client(timeout=30) as client:
        for name, secret in secrets.items():
            for _ in range(2):
                response = client.post(f"{url}/v1/search", headers=bearer(secret), json={"query": QUERY})
                assert response.status_code == 200, response.text
                seen.setdefault(name, set()).add(response.json()["index"]["name"])
    return seen


class Searching(threading.Thread):
    """Keys searching in turn without pause, recording failures."""

    def __init__(self, url: str, secrets: list[str]):
        super().__init__(daemon=True)
        self.url, self.secrets = url, secrets
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.answers = 0

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                for secret in self.secrets:
                    response = client.post(f"{self.url}/v1/search", headers=bearer(secret), json={"query": QUERY})
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    self.answers += 1

    def finish(self) -> None:
        self.stop.set()
        self.join(30)


def test_a_canary_answers_its_share_of_keys_each_from_one_version_then_is_promoted(fleet, tmp_path):
    settings, secrets = fleet
    with running_service(settings, tmp_path / "serve.log") as url:
        report = canary_reindex(settings, "fake:48", 10)
        assert report["canary"] == {"name": "chunks_v2", "percent": 10} and not report["cutover"]
        assert httpx.get(f"{url}/info").json()["index"]["name"] == "chunks_v1"  # live stays live
        some_key = next(secret for name, secret in secrets.items() if answers_from_canary(2, name, 10))
        wait_until(lambda: search(url, some_key, QUERY).json()["index"]["name"] == "chunks_v2", 10, "canary on")

        seen = answered_by(url, secrets)
        assert all(len(versions) == 1 for versions in seen.values()), "a key was answered by two versions"
        on_canary = {name for name, versions in seen.items() if versions == {"chunks_v2"}}
        assert on_canary == {name for name in secrets if answers_from_canary(2, name, 10)}
        assert 5 <= 100 * len(on_canary) / KEYS <= 15

        with pytest.raises(InvalidInput, match="already the canary"):
            canary_reindex(settings, "fake:32", 10)  # one canary at a time

        def counted() -> bool:  # by every replica, added to Postgres at each poll
            figures = _figures(settings)
            return bool(figures["chunks_v1"] and figures["chunks_v2"]) and (
                figures["chunks_v1"]["searches"] >= 2 * (KEYS - len(on_canary))
                and figures["chunks_v2"]["searches"] >= 2 * len(on_canary)
            )

        wait_until(counted, 5, "each version's searches counted for `migrate status`")
        assert _figures(settings)["chunks_v2"]["mean_ms"] > 0

        loop = Searching(url, list(secrets.values())[:20])
        loop.start()
        wait_until(lambda: loop.answers >= 10, 10, "searching")
        promoted = migrate.promote(settings)
        assert promoted["promoted"] == "chunks_v2"
        wait_until(lambda: httpx.get(f"{url}/info").json()["index"]["name"] == "chunks_v2", 10, "promoted")
        switched = loop.answers
        wait_until(lambda: loop.answers >= switched + 10, 10, "searching after the switch")
        loop.finish()
        assert loop.failures == []
        assert all(versions == {"chunks_v2"} for versions in answered_by(url, secrets).values())
    status = {v["name"]: v for v in migrate.status(settings)}
    assert status["chunks_v2"]["state"] == "live" and status["chunks_v2"]["canary_percent"] is None


def test_rollback_ends_a_canary_and_abort_drops_one_with_searches_running(fleet, tmp_path):
    settings, secrets = fleet
    with running_service(settings, tmp_path / "serve.log") as url:
        canary_reindex(settings, "fake:48", 50)
        loop = Searching(url, list(secrets.values())[:20])
        loop.start()
        wait_until(lambda: _answering(url, secrets) == {"chunks_v1", "chunks_v2"}, 10, "the canary answering")

        ended = migrate.rollback(settings)
        assert ended["canary_ended"] and (ended["from"], ended["to"]) == ("chunks_v2", "chunks_v1")
        wait_until(lambda: _answering(url, secrets) == {"chunks_v1"}, 10, "every key back on chunks_v1")
        assert [v["state"] for v in migrate.status(settings)] == ["live", "building"]  # kept, not dropped

        again = canary_reindex(settings, "fake:48", 50)  # the same build, resumed, a canary again
        assert again["canary"]["name"] == "chunks_v2"
        wait_until(lambda: _answering(url, secrets) == {"chunks_v1", "chunks_v2"}, 10, "the canary again")
        assert migrate.cleanup(settings, state="building") == ["chunks_v2"]  # `migrate abort`
        wait_until(lambda: _answering(url, secrets) == {"chunks_v1"}, 10, "every key back on chunks_v1")
        loop.finish()
    assert loop.failures == [] and loop.answers > 40
    with closing(postgres.connect(settings)) as conn:
        assert catalog.canary(conn) is None


def _answering(url: str, secrets: dict[str, str]) -> set[str]:
    with httpx.Client(timeout=30) as client:
        return {
            client.post(f"{url}/v1/search", headers=bearer(secret), json={"query": QUERY}).json()["index"]["name"]
            for secret in list(secrets.values())[:40]
        }


def _figures(settings) -> dict[str, dict | None]:
    return {v["name"]: v["searches"] for v in migrate.status(settings)}
