"""A worker's /healthz beside /metrics: what a container's probes ask."""

import urllib.error
import urllib.request

from tests.conftest import free_port, wait_for_port
from workers import metrics


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_healthz_says_why_a_worker_is_unwell_and_metrics_stay_served():
    state = {"healthy": True}
    port = free_port()
    metrics.serve(port, health=lambda: (state["healthy"], "ok" if state["healthy"] else "the forward stage stopped"))
    wait_for_port(port)
    assert get(port, "/healthz") == (200, "ok\n")
    state["healthy"] = False
    assert get(port, "/healthz") == (503, "the forward stage stopped\n")
    status, body = get(port, "/metrics")
    assert status == 200 and "fleet_chunks_embedded_total" in body
