"""Feedback from the people who search, over real HTTP and real Postgres: a verdict on a hit is
stored with its search (a second replaces the first); refused for an unknown search (404), for
another key's (403), for a chunk the search did not return (422), so it cannot probe chunk ids;
counted in each version's useful rate (/metrics, `migrate status`); and turned by `migrate
finetune --from-feedback` into pairs with the rejected hits as hard negatives, only from text at
or below --max-level."""

import json
import uuid
from contextlib import closing

import httpx
import pytest

from migrations.finetune.feedback import feedback_pairs
from tests.integration.conftest import cli_env, run_cli, run_json
from tests.integration.test_search_log import FAST, audited
from tests.integration.test_serve import LEVEL_OF, QUOTES, bearer, search, served_corpus, wait_until
from workers.core.access import AccessLevel
from workers.core.stores import postgres


@pytest.fixture(scope="module")
def served(pg_admin, tmp_path_factory):
    with served_corpus(pg_admin, tmp_path_factory.mktemp("feedback"), **FAST) as served:
        yield served


def feedback(served, key: str, search_id: str, chunk_id: str, relevant: bool = True, **fields) -> httpx.Response:
    body = {"search_id": search_id, "chunk_id": chunk_id, "relevant": relevant, **fields}
    return httpx.post(f"{served['url']}/v1/feedback", headers=bearer(key), json=body, timeout=30)


def searched(served, level: str, query: str, **fields) -> dict:
    response = search(served["url"], served["keys"][level], query, **fields)
    assert response.status_code == 200, response.text
    return response.json()


def stored(served, search_id: str) -> list[tuple]:
    with closing(postgres.connect(served["settings"])) as conn:
        return conn.execute(
            "SELECT chunk_id, relevant, note FROM search_feedback WHERE search_id = %s", (search_id,)
        ).fetchall()


def test_a_verdict_is_stored_with_its_search_and_a_second_replaces_it(served):
    answer = searched(served, "employee_only", QUOTES["handbook/welcome.md"])
    hit = answer["hits"][0]
    key = served["keys"]["employee_only"]
    # At once: the search's record is still waiting in the service's buffer, written first.
    response = feedback(served, key, answer["search_id"], hit["chunk_id"], True, note="what I needed")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "search_id": answer["search_id"],
        "chunk_id": hit["chunk_id"],
        "relevant": True,
        "recorded": True,
    }
    assert stored(served, answer["search_id"]) == [(hit["chunk_id"], True, "what I needed")]
    assert feedback(served, key, answer["search_id"], hit["chunk_id"], False).status_code == 200
    assert stored(served, answer["search_id"]) == [(hit["chunk_id"], False, None)]


def test_feedback_cannot_reach_another_keys_search_nor_probe_chunk_ids(served):
    employee, director = served["keys"]["employee_only"], served["keys"]["director_only"]
    mine = searched(served, "employee_only", QUOTES["handbook/welcome.md"], top_k=1)
    theirs = searched(served, "director_only", QUOTES["board/acquisition.md"])
    secret = next(hit for hit in theirs["hits"] if hit["source_path"] == "board/acquisition.md")
    assert LEVEL_OF["board/acquisition.md"] > AccessLevel.employee_only

    # A chunk above the key's level, and one it could read but this search did not return: 422.
    above = feedback(served, employee, mine["search_id"], secret["chunk_id"])
    assert above.status_code == 422 and "not among this search's hits" in above.json()["detail"]
    returned = {hit["chunk_id"] for hit in mine["hits"]}
    other = next(h for h in searched(served, "employee_only", "annual leave")["hits"] if h["chunk_id"] not in returned)
    assert feedback(served, employee, mine["search_id"], other["chunk_id"]).status_code == 422
    # Another key's search, even with a chunk it did return: 403, and audited.
    foreign = feedback(served, employee, theirs["search_id"], secret["chunk_id"])
    assert foreign.status_code == 403 and "another key" in foreign.json()["detail"]
    assert feedback(served, director, mine["search_id"], mine["hits"][0]["chunk_id"]).status_code == 403
    # A search nobody made, a malformed id, no key.
    unknown = feedback(served, employee, str(uuid.uuid4()), mine["hits"][0]["chunk_id"])
    assert unknown.status_code == 404 and "no search" in unknown.json()["detail"]
    assert feedback(served, employee, "not-a-search", mine["hits"][0]["chunk_id"]).status_code == 422
    bare = httpx.post(f"{served['url']}/v1/feedback", json={"search_id": mine["search_id"]}, timeout=30)
    assert bare.status_code == 401
    assert stored(served, theirs["search_id"]) == [] and stored(served, mine["search_id"]) == []

    def refusal_recorded() -> bool:
        events = audited(served, "--key", "key-employee_only", "--since", "1h")["events"]
        return any(e["status"] == 403 and "/v1/feedback" in e["detail"] for e in events)

    wait_until(refusal_recorded, 15, "the 403 in the audit events")


def test_each_versions_useful_rate_in_metrics_and_migrate_status(served):
    key = served["keys"]["manager_only"]
    answer = searched(served, "manager_only", QUOTES["finance/salary-bands.md"], top_k=4)
    assert len(answer["hits"]) >= 4
    for number, hit in enumerate(answer["hits"][:4]):
        assert feedback(served, key, answer["search_id"], hit["chunk_id"], number == 0).status_code == 200
    with closing(postgres.connect(served["settings"])) as conn:
        relevant, marked = conn.execute(
            "SELECT count(*) FILTER (WHERE relevant), count(*) FROM search_feedback"
        ).fetchone()  # with the other tests' verdicts
    expected = relevant / marked

    def exported() -> float | None:
        metrics = httpx.get(f"{served['url']}/metrics", timeout=10).text
        line = next((x for x in metrics.splitlines() if x.startswith('fleet_api_useful_rate{index="chunks_v1"}')), None)
        return float(line.split()[-1]) if line else None

    wait_until(lambda: exported() == pytest.approx(expected), 15, "the useful rate in /metrics")
    status = run_json(cli_env(served["settings"]), "migrations", "status")
    (live,) = [version for version in status if version["name"] == "chunks_v1"]
    assert live["feedback"] == {"marked": marked, "relevant": relevant, "useful_rate": pytest.approx(expected)}


def test_finetune_from_feedback_pairs_relevant_hits_with_rejected_ones_as_negatives(served, minilm, tmp_path):
    key = served["keys"]["employee_only"]
    verdicts = {}  # query -> (relevant chunk, rejected chunk)
    for number in range(18):
        query = f"annual leave days request {number}"
        answer = searched(served, "employee_only", query, top_k=3, mode="keyword")
        first, second = answer["hits"][0], answer["hits"][1]
        assert feedback(served, key, answer["search_id"], first["chunk_id"], True).status_code == 200
        assert feedback(served, key, answer["search_id"], second["chunk_id"], False).status_code == 200
        verdicts[query] = (first["text"], second["text"])
    # A director's verdict: its query and chunk are above the level trained on.
    director = searched(served, "director_only", QUOTES["board/acquisition.md"])
    feedback(served, served["keys"]["director_only"], director["search_id"], director["hits"][0]["chunk_id"])

    with closing(postgres.connect(served["settings"])) as conn:
        made, report = feedback_pairs(conn, AccessLevel.employee_only)
    pairs = {pair.query: pair for pair, _ in made}
    for query, (positive, negative) in verdicts.items():
        assert (pairs[query].positive, pairs[query].negative) == (positive.strip(), negative.strip())
    assert not any("Blue River" in f"{p.query} {p.positive} {p.negative}" for p, _ in made)
    assert any("above --max-level employee_only" in refusal for refusal in report.refusals)

    out = tmp_path / "from-feedback"
    args = ["migrations", "finetune", "--from-feedback", "--max-level", "employee_only", "--base", minilm]
    args += ["--out", str(out), "--epochs", "1", "--batch-size", "4", "--json"]
    record = json.loads(run_cli(cli_env(served["settings"]), *args).stdout)
    used = record["data"]["from_feedback"]
    assert used["format"] == "feedback" and used["used"] >= len(verdicts)
    assert record["data"]["hard_negatives"]["from_feedback"] >= len(verdicts) - 4  # some queries held out
    assert set(record["data"]["levels_used"]) <= {"public", "employee_only"}
    assert (out / "training.json").is_file()
