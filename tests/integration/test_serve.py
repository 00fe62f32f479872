"""`producer serve` over real HTTP: a uvicorn process started by the test, real Postgres, a Milvus
Lite server shared with the test process, keys made by the `producer keys` commands.

One service (fake model) answers the tests of keys, levels, bad requests, the OpenAI shape and
concurrency; a cutover, a store outage and MiniLM each get their own.
"""

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from migrations import commands as migrate
from producer import commands, keys
from producer.search import query_vector
from tests import services
from tests.conftest import PG_ADMIN_URL, free_port, wait_for_port
from tests.integration.conftest import CORPUS, REPO, cli_env, run_cli, run_json, write_corpus
from workers.core.access import AccessLevel
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, milvus, postgres
from workers.embedding import load_encoder

LEVELS = AccessLevel.names()
# A quote from each document of the corpus (the fake model is lexical: a quote finds its document).
QUOTES = {
    "handbook/welcome.md": "The cafeteria opens at seven every weekday morning",
    "finance/salary-bands.md": "Salary bands for 2027: engineers earn 40 to 95 million dong",
    "board/acquisition.md": "The board plans to acquire Blue River Freight in the third quarter",
}
LEVEL_OF = {path: AccessLevel.parse(level) for path, level, _ in CORPUS}
FAST_POLL = {"FLEET_API_POLL_S": "0.5", "FLEET_API_STORE_TIMEOUT_S": "2"}
ALL_MODES = {"modes": ["dense", "keyword", "hybrid"], "default_mode": "hybrid"}
LIVE_INDEX = {"name": "chunks_v1", "model": "fake:64", "dim": 64, **ALL_MODES}


# -- the service process --------------------------------------------------------------------------


class ServiceURL(str):
    """The service's base URL, and its process id (for the tests that look at its memory)."""

    pid: int


@contextmanager
def running_service(settings: FleetSettings, log: Path, meanwhile=lambda: None, **env: str) -> Iterator[ServiceURL]:
    """`producer serve` on a free port, ready (model loaded, stores answering); yields its URL.

    `meanwhile()` runs while the service starts (an ingest: the service waits for an index)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "producer", "serve", "--port", str(port)],
        env={**cli_env(settings), **FAST_POLL, **env},
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = ServiceURL(f"http://127.0.0.1:{port}")
    url.pid = process.pid
    try:
        meanwhile()
        wait_for_port(port, timeout=120, process=process)
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, f"{url} ready; log: {log}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # SIGTERM is how a service is stopped: a clean exit, not an interruption.
    assert process.returncode == 0, f"`producer serve` exited {process.returncode} on SIGTERM; log: {log}"


def wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.1)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def search(url: str, key: str, query: str, **fields) -> httpx.Response:
    return httpx.post(f"{url}/v1/search", headers=bearer(key), json={"query": query, **fields}, timeout=30)


def sources(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {hit["source_path"] for hit in response.json()["hits"]}


# -- one service for most tests ---------------------------------------------------------------------


@contextmanager
def served_corpus(pg_admin, root: Path, model: str = "fake:64", **env: str) -> Iterator[dict]:
    """A database and a Milvus Lite server with the corpus ingested (by `model`), a key per level,
    and the service running on them (with `env`)."""
    name = f"fleet_test_{root.name}_{os.getpid()}"
    pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg_admin.execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    milvus = subprocess.Popen(
        services.milvus_lite_server(root / "milvus", port), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("FLEET_")}
    try:
        wait_for_port(port, process=milvus)
        settings = FleetSettings(
            _env_file=None,
            data_dir=root / "fleet",
            database_url=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}",
            milvus_uri=f"http://127.0.0.1:{port}",
            model=model,
            collect_ms=5,
            chunk_min_tokens=40,
            chunk_max_tokens=80,
        )
        with closing(postgres.connect(settings, migrate=True)):
            pass
        commands.ingest(settings, write_corpus(root / "docs"), None, wait=False)
        with closing(postgres.connect(settings)) as conn:
            level_keys = {level: keys.create(conn, f"key-{level}", AccessLevel.parse(level)) for level in LEVELS}
        with running_service(settings, root / "serve.log", **env) as url:
            yield {"url": url, "settings": settings, "keys": level_keys, "root": root}
    finally:
        os.environ.update(saved)
        milvus.terminate()
        milvus.wait(timeout=30)
        pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stack(pg_admin, tmp_path_factory) -> Iterator[dict]:
    """The corpus ingested with the fake model, a key per level, and the service running on them."""
    # Below what 256 inputs can reach with the fake model (a token a word), so that it can be tested.
    env = {"FLEET_API_MAX_REQUEST_TOKENS": "100000"}
    with served_corpus(pg_admin, tmp_path_factory.mktemp("serve"), **env) as served:
        yield served


# -- keys and levels --------------------------------------------------------------------------------


def test_each_key_reads_exactly_the_documents_at_or_below_its_level(stack):
    for level in LEVELS:
        visible = {path for path, of in LEVEL_OF.items() if of <= AccessLevel.parse(level)}
        for query in QUOTES.values():
            response = search(stack["url"], stack["keys"][level], query, top_k=100)
            hits = response.json()["hits"]
            assert all(AccessLevel.parse(hit["access_level"]) <= AccessLevel.parse(level) for hit in hits), level
            assert {hit["source_path"] for hit in hits} == visible, (level, query)
        assert response.json()["index"] == LIVE_INDEX
        assert response.json()["mode"] == "hybrid"


def test_a_key_may_search_below_its_level_never_above(stack):
    url, director, employee = stack["url"], stack["keys"]["director_only"], stack["keys"]["employee_only"]
    assert sources(search(url, director, QUOTES["board/acquisition.md"], top_k=100, level="public")) == {
        "handbook/welcome.md"
    }
    assert "board/acquisition.md" in sources(
        search(url, director, QUOTES["board/acquisition.md"], level="director_only")
    )
    refused = search(url, employee, QUOTES["finance/salary-bands.md"], level="manager_only")
    assert refused.status_code == 403
    assert "employee_only" in refused.json()["detail"]


def test_hits_are_those_of_producer_search(stack):
    for level in LEVELS:
        query = QUOTES["board/acquisition.md"]
        expected = [
            hit.to_dict() for hit in commands.search(stack["settings"], query, AccessLevel.parse(level), 5).hits
        ]
        got = search(stack["url"], stack["keys"][level], query, top_k=5).json()["hits"]
        assert [hit["chunk_id"] for hit in got] == [hit["chunk_id"] for hit in expected]
        for hit, cli in zip(got, expected, strict=True):
            assert hit.keys() == cli.keys()
            assert hit["score"] == pytest.approx(cli["score"], abs=1e-5)
            assert {**hit, "score": 0} == {**cli, "score": 0}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer fk_" + "A" * 43},
    ],
    ids=["none", "basic", "empty", "malformed", "unknown"],
)
def test_requests_without_a_valid_key_get_401(stack, headers):
    for method, path, body in [
        ("POST", "/v1/search", {"query": "cafeteria"}),
        ("POST", "/v1/embeddings", {"input": "cafeteria"}),
        ("GET", "/v1/models", None),
    ]:
        response = httpx.request(method, stack["url"] + path, headers=headers, json=body)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_keys_commands_a_new_key_at_once_and_a_revoked_one_refused_within_10_s(stack):
    url, env = stack["url"], cli_env(stack["settings"])
    created = run_json(env, "producer", "keys", "create", "--name", "intranet", "--level", "manager_only")
    key = created["key"]
    assert created == {
        "name": "intranet",
        "level": "manager_only",
        "key": key,
        "rate": None,  # the service's default: FLEET_API_RATE_PER_KEY, unset here
        "burst": None,
        "expires": None,
    }
    assert key.startswith("fk_") and len(key) >= 3 + 43  # 32 random bytes
    assert "finance/salary-bands.md" in sources(search(url, key, QUOTES["finance/salary-bands.md"]))

    plain = run_cli(env, "producer", "keys", "create", "--name", "plain", "--level", "public")
    assert plain.stdout.strip().startswith("fk_") and len(plain.stdout.splitlines()) == 1  # KEY=$(...) works
    duplicate = run_cli(env, "producer", "keys", "create", "--name", "plain", "--level", "public", check=False)
    assert duplicate.returncode == 2 and len(duplicate.stderr.strip().splitlines()) == 1

    revoking = time.monotonic()
    assert run_json(env, "producer", "keys", "revoke", "intranet")["name"] == "intranet"
    wait_until(lambda: search(url, key, "salary").status_code == 401, 10 - (time.monotonic() - revoking), "refused")
    assert run_cli(env, "producer", "keys", "revoke", "intranet", check=False).returncode == 2

    listed = run_json(env, "producer", "keys", "list", "--all")
    revoked = next(entry for entry in listed if entry["name"] == "intranet")
    assert revoked["level"] == "manager_only" and revoked["revoked"] and revoked["last_used"]
    assert {entry["name"] for entry in run_json(env, "producer", "keys", "list")} >= {"plain", "key-public"}
    assert "intranet" not in {entry["name"] for entry in run_json(env, "producer", "keys", "list")}
    # The key itself is nowhere: not listed, not in the database, not in the service's log.
    with closing(postgres.connect(stack["settings"])) as conn:
        stored = json.dumps(conn.execute("SELECT row_to_json(k) FROM api_keys k").fetchall(), default=str)
    for where in (json.dumps(listed), stored, (stack["root"] / "serve.log").read_text()):
        assert key not in where and key[12:] not in where


# -- bad requests ----------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("/v1/search", b'{"query": "x"', 422),
    ("/v1/search", b"query=x", 422),
    ("/v1/search", {}, 422),
    ("/v1/search", [{"query": "x"}], 422),
    ("/v1/search", {"query": 5}, 422),
    ("/v1/search", {"query": "   "}, 422),
    ("/v1/search", {"query": "x", "top_k": "5"}, 422),
    ("/v1/search", {"query": "x", "top_k": 2.5}, 422),
    ("/v1/search", {"query": "x", "top_k": 0}, 422),
    ("/v1/search", {"query": "x", "top_k": 101}, 422),
    ("/v1/search", {"query": "x", "level": "root"}, 422),
    ("/v1/search", {"query": "x", "topk": 3}, 422),
    ("/v1/search", {"query": "x" * 2001}, 413),
    # A lone surrogate: valid JSON, not valid Unicode (a tokenizer cannot take it).
    ("/v1/search", b'{"query": "annual leave \\ud800"}', 422),
    ("/v1/embeddings", {"input": []}, 422),
    ("/v1/embeddings", {"input": ""}, 422),
    ("/v1/embeddings", {"input": [1, 2, 3]}, 422),
    ("/v1/embeddings", {"input": "x", "dimensions": 65}, 422),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, 422),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 422),
    ("/v1/embeddings", {"input": "x", "input_type": "passage"}, 422),
    ("/v1/embeddings", {"input": "x" * 2001}, 413),
    ("/v1/embeddings", {"input": ["x", "y" * 2001]}, 413),
    ("/v1/embeddings", {"input": ["x"] * 257}, 413),
    ("/v1/embeddings", b'{"input": ["fine", "\\udcff"]}', 422),
    # Malformed in ways Python's JSON reader does not call a syntax error: still malformed JSON.
    ("/v1/search", b'{"query": "annual leave \xff\xfe"}', 422),
    pytest.param("/v1/search", b"[" * 5000, 422, id="nested-too-deep"),
    # NaN and Infinity are not JSON (Python's reader takes them): refused, and never echoed bare.
    ("/v1/search", b'{"query": "x", "top_k": NaN}', 422),
    ("/v1/embeddings", b'{"input": "x", "dimensions": Infinity}', 422),
    ("/v1/embeddings", b'{"input": "x", "dimensions": -1e999}', 422),
    # 256 inputs of 1,000 one-letter words: 256,256 tokens of the fake model, over the 100,000 set.
    pytest.param("/v1/embeddings", {"input": ["a " * 1000] * 256}, 413, id="over-the-request-tokens"),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_REQUESTS)
def test_bad_requests_get_4xx(stack, path, body, status):
    headers = {**bearer(stack["keys"]["public"]), "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(stack["url"] + path, headers=headers, content=content)
    assert response.status_code == status, response.text
    assert_json_error(response)


def assert_json_error(response: httpx.Response) -> None:
    """An error as the README promises it: strict JSON `{"detail": ...}`, no bare NaN or Infinity."""
    assert response.headers["content-type"] == "application/json", response.headers
    assert json.loads(response.text, parse_constant=_not_json)["detail"], response.text


def _not_json(constant: str) -> None:
    raise AssertionError(f"bare {constant} in an error body")


def test_other_bad_requests_get_4xx_too(stack):
    url, headers = stack["url"], bearer(stack["keys"]["public"])
    wrong_method = httpx.get(f"{url}/v1/search", headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    missing = httpx.get(f"{url}/nowhere", headers=headers)
    assert missing.status_code == 404
    big = httpx.post(f"{url}/v1/search", headers=headers, json={"query": "x" * 1_000_001})
    assert big.status_code == 413 and "FLEET_API_MAX_BODY_BYTES" in big.json()["detail"]
    chunked = httpx.post(f"{url}/v1/search", headers=headers, content=iter([b" " * 400_000] * 3))
    assert chunked.status_code == 413
    for response in (wrong_method, missing, big, chunked):
        assert_json_error(response)


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response, headers and body: TCP may deliver them in several reads."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
    )
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_oversized_body_is_refused_before_it_is_sent(stack):
    """Only the headers and a few bytes of a 50 MB body are sent: the 413 comes without the rest."""
    host, port = stack["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/search HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {stack['keys']['public']}\r\n"
            f'Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{{"query": '.encode()
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"content-type: application/json" in answer.lower() and b"FLEET_API_MAX_BODY_BYTES" in answer


# -- embeddings, the OpenAI way --------------------------------------------------------------------


def test_embeddings_have_the_openai_shape(stack):
    url, headers = stack["url"], bearer(stack["keys"]["public"])
    texts = ["The cafeteria opens at seven", "Salary bands"]
    floats = httpx.post(f"{url}/v1/embeddings", headers=headers, json={"input": texts}).json()
    assert set(floats) == {"object", "data", "model", "usage"}
    assert (floats["object"], floats["model"]) == ("list", "fake:64")
    assert [set(item) for item in floats["data"]] == [{"object", "index", "embedding"}] * 2
    assert [(item["object"], item["index"]) for item in floats["data"]] == [("embedding", 0), ("embedding", 1)]
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] > 0
    vectors = np.array([item["embedding"] for item in floats["data"]])
    np.testing.assert_allclose(vectors, load_encoder("fake:64").encode_documents(texts), atol=1e-6)

    encoded = httpx.post(f"{url}/v1/embeddings", headers=headers, json={"input": texts, "encoding_format": "base64"})
    decoded = [np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in encoded.json()["data"]]
    np.testing.assert_allclose(np.array(decoded), vectors, atol=1e-6)
    single = httpx.post(f"{url}/v1/embeddings", headers=headers, json={"input": texts[0], "dimensions": 16}).json()
    assert len(single["data"]) == 1 and len(single["data"][0]["embedding"]) == 16
    assert np.linalg.norm(single["data"][0]["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_an_openai_client_works_by_base_url(stack):
    import openai

    client = openai.OpenAI(base_url=f"{stack['url']}/v1", api_key=stack["keys"]["public"], max_retries=0)
    texts = ["The cafeteria opens at seven", "Salary bands for 2027"]
    response = client.embeddings.create(model="anything", input=texts)
    assert response.model == "fake:64" and [item.index for item in response.data] == [0, 1]
    expected = load_encoder("fake:64").encode_documents(texts)
    np.testing.assert_allclose(np.array([item.embedding for item in response.data]), expected, atol=1e-6)
    floats = client.embeddings.create(model="anything", input=texts[0], encoding_format="float", dimensions=32)
    assert len(floats.data[0].embedding) == 32 and floats.usage.total_tokens > 0
    queries = client.embeddings.create(model="anything", input=texts, extra_body={"input_type": "query"})
    assert len(queries.data) == 2
    assert [model.id for model in client.models.list()] == ["fake:64"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack['url']}/v1", api_key="fk_wrong", max_retries=0).embeddings.create(
            model="anything", input="x"
        )


# -- concurrency, health, metrics --------------------------------------------------------------------


def test_many_clients_at_once_are_all_answered_correctly(stack):
    url = stack["url"]
    cases = [(level, path) for level in LEVELS for path in QUOTES]

    def one(number: int) -> str | None:
        level, path = cases[number % len(cases)]
        response = client.post(
            f"{url}/v1/search",
            headers=bearer(stack["keys"][level]),
            json={"query": f"{QUOTES[path]} {number}", "top_k": 3},  # distinct: no cache, real batches
        )
        if response.status_code != 200:
            return f"{number}: {response.status_code} {response.text}"
        hits = response.json()["hits"]
        if any(AccessLevel.parse(hit["access_level"]) > AccessLevel.parse(level) for hit in hits):
            return f"{number}: a hit above {level}"
        if LEVEL_OF[path] <= AccessLevel.parse(level) and hits[0]["source_path"] != path:
            return f"{number}: {path} not first for {level}"
        return None

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64)) as client, ThreadPoolExecutor(64) as pool:
        problems = [problem for problem in pool.map(one, range(320)) if problem]
    assert problems == []
    metrics = httpx.get(f"{url}/metrics").text
    for stage in ("embed", "search"):
        count, total = (metric(metrics, f'fleet_api_batch_size_{part}{{stage="{stage}"}}') for part in ("count", "sum"))
        assert total > count, f"no {stage} batch held more than one request"


def test_searches_in_every_mode_at_once_answer_as_producer_search_does(stack):
    """Concurrent searches of the three modes (and a weighted hybrid) are batched by mode and
    level, and each gets the hits `producer search` gives in its mode, and says which mode ran."""
    modes = [("dense", None), ("keyword", None), ("hybrid", None), ("hybrid", {"dense": 0.2, "keyword": 0.8})]
    cases = [(level, path, mode, weights) for level in LEVELS for path in QUOTES for mode, weights in modes]

    def one(case) -> dict:
        level, path, mode, weights = case
        body = {"query": QUOTES[path], "top_k": 5, "mode": mode} | ({"weights": weights} if weights else {})
        return httpx.post(
            f"{stack['url']}/v1/search", headers=bearer(stack["keys"][level]), json=body, timeout=60
        ).json()

    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(one, cases))
    for (level, path, mode, weights), answer in zip(cases, answers, strict=True):
        assert answer["mode"] == mode
        as_weights = milvus.Weights(**weights) if weights else None
        expected = commands.search(stack["settings"], QUOTES[path], AccessLevel.parse(level), 5, mode, as_weights)
        assert [hit["chunk_id"] for hit in answer["hits"]] == [hit.chunk_id for hit in expected.hits], (mode, level)
        assert [hit["score"] for hit in answer["hits"]] == pytest.approx([hit.score for hit in expected.hits], abs=1e-4)


def metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_health_info_docs_and_metrics(stack):
    url = stack["url"]
    assert httpx.get(f"{url}/healthz").json()["status"] == "alive"
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "problems": []}
    info = httpx.get(f"{url}/info").json()
    assert info["index"] == LIVE_INDEX
    assert info["levels"] == LEVELS and info["version"]
    assert httpx.get(f"{url}/docs").status_code == 200
    assert {"/v1/search", "/v1/embeddings"} <= set(httpx.get(f"{url}/openapi.json").json()["paths"])

    before = metric(httpx.get(f"{url}/metrics").text, "fleet_api_cache_hits_total")
    for _ in range(2):
        assert search(url, stack["keys"]["public"], "the same question twice").status_code == 200
    text = httpx.get(f"{url}/metrics").text
    assert metric(text, "fleet_api_cache_hits_total") >= before + 1
    assert metric(text, 'fleet_api_request_seconds_count{method="POST",route="/v1/search",status="200"}') >= 2
    assert metric(text, "fleet_api_live_index_version") == 1
    assert metric(text, 'fleet_api_live_index_info{dim="64",model="fake:64",name="chunks_v1"}') == 1


# -- following the live index --------------------------------------------------------------------


class SearchLoop(threading.Thread):
    """A client that searches without pause, recording every answer's index and any failure."""

    def __init__(self, url: str, key: str):
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.stop = threading.Event()
        self.indexes: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(
                        f"{self.url}/v1/search",
                        headers=bearer(self.key),
                        json={"query": QUOTES["handbook/welcome.md"], "top_k": 3},
                    )
                    body = response.json()
                    if response.status_code != 200 or body["hits"][0]["source_path"] != "handbook/welcome.md":
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        self.indexes.append(body["index"]["name"])
                except Exception as err:  # every failure is the finding
                    self.failures.append(repr(err))

    def finish(self) -> None:
        self.stop.set()
        self.join(30)


def reindex(settings: FleetSettings, model: str, dim: int | None = None) -> dict:
    return migrate.run_reindex(settings, model, dim, False, None, True, False, 0.02)


def test_follows_cutovers_and_a_rollback_while_a_client_searches(make_settings, migrated_url, milvus_server, tmp_path):
    settings = make_settings(database_url=migrated_url, milvus_uri=milvus_server, model="fake:64")
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        key = keys.create(conn, "app", AccessLevel.public)
    with running_service(settings, tmp_path / "serve.log") as url:
        loop = SearchLoop(url, key)
        loop.start()

        def serving() -> dict:
            return httpx.get(f"{url}/info").json()["index"]

        time.sleep(0.5)
        assert reindex(settings, "fake:64", 32)["plan"]["derive_from_version"] == 1  # same model, smaller dim
        v2 = {"name": "chunks_v2", "model": "fake:64", "dim": 32, **ALL_MODES}
        wait_until(lambda: serving() == v2, 10, "on chunks_v2")
        time.sleep(0.5)
        reindex(settings, "fake:48")  # another model: embedded again
        v3 = {"name": "chunks_v3", "model": "fake:48", "dim": 48, **ALL_MODES}
        wait_until(lambda: serving() == v3, 10, "on chunks_v3")
        time.sleep(0.5)
        assert migrate.rollback(settings)["to"] == "chunks_v2"
        wait_until(lambda: serving()["name"] == "chunks_v2", 10, "back on chunks_v2")
        time.sleep(0.5)
        loop.finish()
        switches = metric(httpx.get(f"{url}/metrics").text, "fleet_api_index_switches_total")
    assert loop.failures == []
    assert len(loop.indexes) > 50
    # Every answer came from the live index of its moment, in the order they went live.
    order = [name for position, name in enumerate(loop.indexes) if position == 0 or loop.indexes[position - 1] != name]
    assert order == ["chunks_v1", "chunks_v2", "chunks_v3", "chunks_v2"]
    assert switches == 3


# -- stores that go away and come back -------------------------------------------------------------


class Proxy:
    """A TCP forwarder to a store that can be cut (connections dropped, new ones refused) and restored."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self.restore()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        # shutdown() first: on Linux, close() alone leaves a thread blocked in accept() accepting.
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._sockets = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_a_store_down_gives_503_with_the_reason_and_the_service_recovers(
    make_settings, migrated_url, milvus_server, tmp_path
):
    settings = make_settings(database_url=migrated_url, milvus_uri=milvus_server, model="fake:64")
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        key = keys.create(conn, "app", AccessLevel.public)
    pg, mv = Proxy(5432), Proxy(int(milvus_server.rsplit(":", 1)[1]))
    proxied = settings.model_copy(
        update={
            "database_url": SecretStr(migrated_url.replace(":5432/", f":{pg.port}/")),
            "milvus_uri": f"http://127.0.0.1:{mv.port}",
        }
    )
    query = QUOTES["handbook/welcome.md"]
    with running_service(proxied, tmp_path / "serve.log") as url:
        assert search(url, key, query).status_code == 200
        for proxy, store in ((mv, "Milvus"), (pg, "Postgres")):
            proxy.cut()
            down = search(url, key, f"{query} {store}")
            assert down.status_code == 503 and store in down.json()["detail"], down.text
            ready = httpx.get(f"{url}/readyz", timeout=30)
            assert ready.status_code == 503 and any(store in problem for problem in ready.json()["problems"])
            proxy.restore()
            took = wait_until(lambda: search(url, key, query).status_code == 200, 30, f"answering after {store}")
            print(store, "back after", round(took, 2))
            assert took < 15, f"{store} back, but the service took {took:.1f} s to answer again"
        assert httpx.get(f"{url}/readyz").status_code == 200


# -- a real model --------------------------------------------------------------------------------------


def test_minilm_over_http_answers_as_producer_search_does_and_follows_a_cut_to_256_dims(
    make_settings, migrated_url, milvus_server, minilm, tmp_path
):
    """Queries of different lengths sent at once share padded forward passes, and still get the
    vectors and hits that `producer search` computes alone; then the index is cut to 256 dims."""
    settings = make_settings(database_url=migrated_url, milvus_uri=milvus_server, model=minilm)
    with closing(postgres.connect(settings)) as conn:
        key = keys.create(conn, "app", AccessLevel.director_only)
    queries = [
        "When does the cafeteria open?",
        "salary bands for engineers in 2027",
        "acquire Blue River Freight",
        "annual leave",
        "Chính sách nghỉ phép năm của nhân viên",
        "How many days of paid leave does an employee accrue each year, and can unused days be carried over?",
    ]
    ingest = lambda: commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)  # noqa: E731
    with running_service(settings, tmp_path / "serve.log", meanwhile=ingest) as url:
        with ThreadPoolExecutor(len(queries)) as pool:
            answers = list(pool.map(lambda query: search(url, key, query, top_k=5).json(), queries))
        embedded = httpx.post(
            f"{url}/v1/embeddings", headers=bearer(key), json={"input": queries, "input_type": "query"}
        ).json()
        documents = httpx.post(f"{url}/v1/embeddings", headers=bearer(key), json={"input": queries}).json()
        hits_alone = [commands.search(settings, query, AccessLevel.director_only, 5).hits for query in queries]

        loop = SearchLoop(url, key)
        loop.start()
        reindex(settings, minilm, 256)
        wait_until(lambda: httpx.get(f"{url}/info").json()["index"]["dim"] == 256, 10, "on 256 dims")
        cut = httpx.post(f"{url}/v1/embeddings", headers=bearer(key), json={"input": "annual leave"}).json()
        loop.finish()
    assert loop.failures == [] and loop.indexes[-1] == "chunks_v2"
    assert len(cut["data"][0]["embedding"]) == 256
    assert answers[0]["hits"][0]["source_path"] == "handbook/welcome.md"
    assert answers[2]["hits"][0]["source_path"] == "board/acquisition.md"
    for query, answer, expected in zip(queries, answers, hits_alone, strict=True):
        assert [hit["chunk_id"] for hit in answer["hits"]] == [hit.chunk_id for hit in expected], query
        assert [hit["score"] for hit in answer["hits"]] == pytest.approx([hit.score for hit in expected], abs=1e-4)
    encoder = load_encoder(minilm, "cpu")
    with closing(postgres.connect(settings)) as conn:
        version = catalog.get_version(conn, 1)
    vectors_alone = np.array([query_vector(encoder, version, query) for query in queries])
    assert embedded["model"] == minilm and len(embedded["data"][0]["embedding"]) == 384
    np.testing.assert_allclose([item["embedding"] for item in embedded["data"]], vectors_alone, atol=1e-4)
    together = encoder.encode_documents(queries)
    np.testing.assert_allclose([item["embedding"] for item in documents["data"]], together, atol=1e-4)
