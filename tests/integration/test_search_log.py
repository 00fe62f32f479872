"""Every search accounted for, over real HTTP and real Postgres: each search recorded with its key,
level, version and documents, found again by `producer audit` (the command, in its own process);
`--document` names exactly the keys that got it; refusals and key events are recorded; a hashed log
keeps no query text; old records are deleted; FLEET_AUDIT_REQUIRED refuses a search it cannot
record and answers again once it can, and without it the record waits and is written later."""

import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from producer import keys
from tests.integration.conftest import cli_env, run_json
from tests.integration.test_serve import LEVEL_OF, LEVELS, QUOTES, bearer, search, served_corpus, wait_until
from workers.core.access import AccessLevel
from workers.core.stores import audit, postgres

FAST = {"FLEET_API_POLL_S": "0.5"}


@pytest.fixture(scope="module")
def logged(pg_admin, tmp_path_factory):
    with served_corpus(pg_admin, tmp_path_factory.mktemp("search_log"), **FAST) as served:
        yield served


def audited(served, *args: str) -> dict:
    return run_json(cli_env(served["settings"]), "producer", "audit", *args)


def recorded(served, search_ids: set[str]) -> dict[str, dict]:
    """The records of these searches, once the service has written them (it does at every poll)."""
    found: dict[str, dict] = {}

    def all_there() -> bool:
        found.update({s["search_id"]: s for s in audited(served, "--limit", "1000")["searches"]})
        return search_ids <= found.keys()

    wait_until(all_there, 15, "every search in the log")
    return found


def test_every_search_is_recorded_with_its_key_level_version_and_documents(logged):
    answers = {}
    for level in LEVELS:
        for quote in QUOTES.values():
            response = search(logged["url"], logged["keys"][level], quote, top_k=5, mode="hybrid")
            assert response.status_code == 200
            answers[response.json()["search_id"]] = (level, quote, response.json())
    records = recorded(logged, set(answers))
    for search_id, (level, quote, answer) in answers.items():
        record = records[search_id]
        assert (record["key"], record["level"], record["query"]) == (f"key-{level}", level, quote)
        assert (record["index"], record["mode"], record["top_k"]) == (answer["index"]["name"], "hybrid", 5)
        assert record["documents"] == list(dict.fromkeys(hit["source_path"] for hit in answer["hits"]))


def test_who_saw_a_document_is_exactly_the_keys_that_got_it(logged):
    document = "board/acquisition.md"  # director_only
    got = set()
    for level in LEVELS:
        for quote in QUOTES.values():
            answer = search(logged["url"], logged["keys"][level], f"{quote} who saw it", top_k=10).json()
            if any(hit["source_path"] == document for hit in answer["hits"]):
                got.add(f"key-{level}")
    assert got == {"key-director_only"}
    wait_until(lambda: audited(logged, "--document", document)["searches"], 15, "the searches written")
    time.sleep(1.5)  # the last ones too
    seen = {search["key"] for search in audited(logged, "--document", document, "--limit", "1000")["searches"]}
    assert seen == got
    levels = {search["level"] for search in audited(logged, "--level", "public", "--limit", "1000")["searches"]}
    assert levels == {"public"}


def test_refusals_and_key_events_are_audit_events(logged):
    unknown = search(logged["url"], "fk_" + "B" * 43, "anything")
    above = search(logged["url"], logged["keys"]["public"], "anything", level="director_only")
    assert (unknown.status_code, above.status_code) == (401, 403)
    with closing(postgres.connect(logged["settings"])) as conn:
        keys.create(conn, "short-lived", AccessLevel.employee_only)
        keys.revoke(conn, "short-lived")

    def events() -> list[dict]:
        return audited(logged, "--since", "1h", "--limit", "1000")["events"]

    wait_until(lambda: any(event["status"] == 401 for event in events()), 15, "the refusals written")
    found = events()
    assert any(e["kind"] == "refused" and e["status"] == 403 and e["key"] == "key-public" for e in found)
    assert any(e["kind"] == "refused" and e["status"] == 401 and e["key"] is None for e in found)
    kinds = [e["kind"] for e in audited(logged, "--key", "short-lived")["events"]]
    assert kinds == ["key_revoked", "key_created"]  # newest first


def test_a_hashed_log_keeps_no_query_text(pg_admin, tmp_path):
    env = {**FAST, "FLEET_SEARCH_LOG": "hashed", "FLEET_SEARCH_LOG_KEY": "test-secret-of-the-hash"}
    with served_corpus(pg_admin, tmp_path, **env) as served:
        quote = QUOTES["handbook/welcome.md"]
        ids = {search(served["url"], served["keys"]["public"], quote).json()["search_id"] for _ in range(2)}
        records = recorded(served, ids)
        with closing(postgres.connect(served["settings"])) as conn:
            (stored,) = conn.execute("SELECT string_agg(row_to_json(s)::text, ' ') FROM searches s").fetchone()
    assert quote not in stored and "cafeteria" not in stored
    hashes = {records[search_id]["query_hash"] for search_id in ids}
    assert len(hashes) == 1 and None not in hashes  # the same query, counted, not read
    assert all(records[search_id]["query"] is None for search_id in ids)


def test_records_older_than_the_retention_are_deleted(make_settings, migrated_url):
    settings = make_settings(database_url=migrated_url)
    now = datetime.now(UTC)
    with closing(postgres.connect(settings)) as conn:
        records = [
            audit.SearchRecord(
                f"00000000-0000-0000-0000-00000000000{n}", "app", 0, "v1", "dense", "q", None, 5, 1.0, at
            )
            for n, at in enumerate([now - timedelta(days=91), now - timedelta(days=89), now])
        ]
        audit.write_searches(conn, records)
        assert audit.prune(conn, 90) == 1
        left = {row[0] for row in conn.execute("SELECT id::text FROM searches")}
    assert left == {records[1].id, records[2].id}


@pytest.mark.parametrize("required", [True, False])
def test_a_search_that_cannot_be_recorded(pg_admin, tmp_path, required):
    """FLEET_AUDIT_REQUIRED: refused (503) while its record cannot be written, answered again once
    it can. Without it: answered, and the record written once the table is back."""
    env = {**FAST, "FLEET_AUDIT_REQUIRED": str(required).lower()}
    with served_corpus(pg_admin, tmp_path, **env) as served:
        key, quote = served["keys"]["employee_only"], QUOTES["handbook/welcome.md"]
        with closing(postgres.connect(served["settings"])) as conn:
            conn.execute("ALTER TABLE searches RENAME TO searches_away")  # the log cannot be written
            try:
                during = search(served["url"], key, quote)
            finally:
                conn.execute("ALTER TABLE searches_away RENAME TO searches")
        after = search(served["url"], key, quote)
        assert after.status_code == 200
        if required:
            assert during.status_code == 503 and "FLEET_AUDIT_REQUIRED" in during.json()["detail"]
            recorded(served, {after.json()["search_id"]})
        else:
            assert during.status_code == 200
            recorded(served, {during.json()["search_id"], after.json()["search_id"]})
        assert LEVEL_OF["handbook/welcome.md"] <= AccessLevel.employee_only


def test_a_full_buffer_drops_and_counts_never_silently(pg_admin, tmp_path):
    env = {**FAST, "FLEET_SEARCH_LOG_BUFFER": "3"}
    with served_corpus(pg_admin, tmp_path, **env) as served:
        key, quote = served["keys"]["public"], QUOTES["handbook/welcome.md"]
        with closing(postgres.connect(served["settings"])) as conn:
            conn.execute("ALTER TABLE searches RENAME TO searches_away")
            try:
                answered = [search(served["url"], key, f"{quote} {n}").status_code for n in range(6)]
                metrics = httpx.get(f"{served['url']}/metrics").text
            finally:
                conn.execute("ALTER TABLE searches_away RENAME TO searches")
        assert answered == [200] * 6
        dropped = next(line for line in metrics.splitlines() if line.startswith("fleet_api_search_log_dropped_total"))
        assert float(dropped.split()[-1]) == 3
        log = (tmp_path / "serve.log").read_text()
        assert "search log buffer is full" in log
        assert bearer(key)  # the key still works afterwards
        assert search(served["url"], key, quote).status_code == 200
