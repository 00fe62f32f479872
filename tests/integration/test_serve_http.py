"""The HTTP server's own bounds, probed with raw sockets as a hostile client would: headers sent
slowly, headers without end, an idle connection, bytes that are not HTTP. Each is refused (JSON,
like every error) and its connection closed, and the server's memory stays bounded.

The service here gives headers FLEET_API_HEADER_TIMEOUT_S = 2 s (10 by default), so that the
tests wait little; timings are checked against that setting, never a fixed figure.
"""

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_serve import bearer, read_response, served_corpus

HEADER_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 16_384  # the default


@pytest.fixture(scope="module")
def service(pg_admin, tmp_path_factory) -> Iterator[dict]:
    env = {"FLEET_API_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    with served_corpus(pg_admin, tmp_path_factory.mktemp("serve_http"), **env) as served:
        yield served


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def json_error(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def test_a_client_sending_its_headers_slowly_gets_408_and_is_disconnected(service):
    """A slowloris: one byte every 0.2 s of a header that never ends. uvicorn's keep-alive timer
    does not cover it (every byte resets it): the header timer does, from the request's start."""
    stop = threading.Event()
    with connect(service["url"]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\nX-Slow: ")
        started = time.monotonic()

        def trickle() -> None:
            while not stop.is_set():
                try:
                    sock.sendall(b"a")
                except OSError:
                    return
                time.sleep(0.2)

        threading.Thread(target=trickle, daemon=True).start()
        response = read_until_closed(sock)
        closed_after = time.monotonic() - started
        stop.set()
    status, body = json_error(response)
    assert status == 408 and "FLEET_API_HEADER_TIMEOUT_S" in body["detail"]
    assert closed_after >= HEADER_TIMEOUT_S * 0.9, "closed before the client had its time"


def test_slow_headers_on_a_kept_alive_connection_are_timed_from_their_first_byte(service):
    with connect(service["url"]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT_S * 1.5)  # idle between requests: keep-alive's business, not closed
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200"), "an idle keep-alive connection was closed"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\n")  # and the rest never comes
        status, _ = json_error(read_until_closed(sock))
    assert status == 408


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(service):
    with connect(service["url"]) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9


@pytest.mark.parametrize("complete", [False, True], ids=["unfinished", "in-one-piece"])
def test_headers_over_the_limit_get_431_and_the_connection_closed(service, complete):
    with connect(service["url"]) as sock:
        header = b"GET /healthz HTTP/1.1\r\nHost: fleet\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 100)
        sock.sendall(header + (b"\r\n\r\n" if complete else b""))
        status, body = json_error(read_until_closed(sock))
    assert status == 431
    assert str(MAX_HEADER_BYTES) in body["detail"] and "FLEET_API_MAX_HEADER_BYTES" in body["detail"]


def test_four_clients_sending_100_mb_of_unfinished_headers_cost_the_server_little_memory(service):
    """What held 400 MB for as long as the clients stayed: now each is cut off after the limit."""
    pid = service["url"].pid
    before = rss_mb(pid)
    sent: list[int] = []

    def flood() -> None:
        total = 0
        with connect(service["url"]) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\nX-Flood: ")
                while total < 100 * 2**20:
                    sock.sendall(b"a" * 2**20)
                    total += 2**20
            except OSError:  # the server closed it: what the test wants
                pass
            sent.append(total)
            peak.append(rss_mb(pid))

    peak: list[float] = []
    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(total < 100 * 2**20 for total in sent), f"a client sent all its 100 MB: {sent}"
    grown = max(peak) - before
    print(f"server RSS {before:.0f} MB before, +{grown:.1f} MB at most; clients sent {sent} bytes")
    assert grown < 50, f"the server grew by {grown:.0f} MB"


def test_bytes_that_are_not_http_get_400_json(service):
    with connect(service["url"]) as sock:
        sock.sendall(b"HELLO THERE\r\n\r\n")
        status, body = json_error(read_until_closed(sock))
    assert status == 400 and body["detail"]


def test_ordinary_requests_are_untouched(service):
    """Headers near the limit, and a body in several writes after them, are served as before."""
    url, key = service["url"], service["keys"]["public"]
    headers = {**bearer(key), "X-Padding": "p" * (MAX_HEADER_BYTES // 2)}
    assert httpx.post(f"{url}/v1/search", headers=headers, json={"query": "cafeteria"}).status_code == 200
    chunks = iter([b'{"query": ', b'"the cafeteria opens at seven"', b"}"])
    body = httpx.post(f"{url}/v1/search", headers={**bearer(key), "Content-Type": "application/json"}, content=chunks)
    assert body.status_code == 200, body.text
