"""The query service's error bodies and its OpenAPI limits, without a model or a store: the app
is driven by Starlette's test client, its lifespan not started (the refusals come before it)."""

import json
import math
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from producer.api import create_app
from producer.api.errors import ErrorJSONResponse, finite
from workers.core.constants import SEARCH_MODES
from workers.core.settings import FleetSettings

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def client(tmp_path) -> TestClient:
    settings = FleetSettings(_env_file=None, data_dir=tmp_path, api_max_body_bytes=10_000)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_floats_that_are_not_finite_are_rendered_as_strings():
    content = {"detail": [{"input": math.nan, "ctx": {"limits": (math.inf, -math.inf, 1.5)}}]}
    assert finite(content) == {"detail": [{"input": "NaN", "ctx": {"limits": ["Infinity", "-Infinity", 1.5]}}]}
    rendered = ErrorJSONResponse(content).body.decode()
    assert "NaN" in rendered and json.loads(rendered, parse_constant=_refuse) == finite(content)


def _refuse(constant: str) -> None:
    raise AssertionError(f"bare {constant} in a JSON body")


@pytest.mark.parametrize(
    ("body", "headers"),
    [(b"x" * 10_001, JSON), (iter([b" " * 6000] * 2), JSON)],
    ids=["content-length", "chunked"],
)
def test_an_oversized_body_gets_413_json_saying_the_limit(client, body, headers):
    response = client.post("/v1/search", content=body, headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "10000" in response.json()["detail"] and "FLEET_API_MAX_BODY_BYTES" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [b'{"query": "\xff\xfe annual leave"}', b"[" * 5000, b'{"query": "x"'],
    ids=["not-utf8", "nested-too-deep", "cut-short"],
)
def test_a_malformed_json_body_gets_422_not_400(client, body):
    response = client.post("/v1/search", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_unknown_paths_and_methods_get_json(client):
    missing = client.get("/nowhere")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = client.put("/v1/search")
    assert wrong.status_code == 405 and wrong.json()["detail"] and wrong.headers["allow"] == "POST"


# -- the OpenAPI schema states the limits ------------------------------------------------------------


def schema_of(app, live_dim: int | None = None, modes: tuple[str, ...] = SEARCH_MODES) -> dict:
    if live_dim is not None:  # what the lifespan sets: only the live version's dimension and modes are read
        version = SimpleNamespace(dim=live_dim, modes=modes)
        app.state.service = SimpleNamespace(live=SimpleNamespace(current=SimpleNamespace(version=version)))
    return app.openapi()["components"]["schemas"]


def test_the_schema_states_what_search_accepts(tmp_path):
    app = create_app(FleetSettings(_env_file=None, data_dir=tmp_path, api_max_query_chars=500))
    query = schema_of(app)["SearchRequest"]["properties"]["query"]
    assert (query["minLength"], query["maxLength"], query["pattern"]) == (1, 500, r"\S")
    top_k = schema_of(app)["SearchRequest"]["properties"]["top_k"]
    assert (top_k["minimum"], top_k["maximum"]) == (1, 100)


def test_the_schema_states_the_search_modes_of_the_live_version(tmp_path):
    app = create_app(FleetSettings(_env_file=None, data_dir=tmp_path))

    def modes(**live) -> list[str]:
        (enum,) = [
            option["enum"]
            for option in schema_of(app, **live)["SearchRequest"]["properties"]["mode"]["anyOf"]
            if "enum" in option
        ]
        return enum

    assert modes() == ["dense", "keyword", "hybrid"]  # no live index yet: every mode there is
    assert modes(live_dim=64, modes=("dense",)) == ["dense"]  # built before keyword search
    assert modes(live_dim=64) == ["dense", "keyword", "hybrid"]


def test_the_schema_states_what_embeddings_accept_and_follows_the_live_dimension(tmp_path):
    app = create_app(FleetSettings(_env_file=None, data_dir=tmp_path, api_max_query_chars=500, api_max_inputs=8))
    properties = schema_of(app)["EmbeddingsRequest"]["properties"]
    text, array = sorted(properties["input"]["anyOf"], key=lambda option: option["type"] == "array")
    assert (text["minLength"], text["maxLength"]) == (1, 500)
    assert (array["minItems"], array["maxItems"]) == (1, 8)
    assert (array["items"]["minLength"], array["items"]["maxLength"]) == (1, 500)
    (dimensions,) = [option for option in properties["dimensions"]["anyOf"] if option["type"] == "integer"]
    assert dimensions["minimum"] == 1 and "maximum" not in dimensions  # no live index: none to state
    for dim in (64, 32):  # a re-index cut it: the schema says so at once
        (dimensions,) = [
            option
            for option in schema_of(app, live_dim=dim)["EmbeddingsRequest"]["properties"]["dimensions"]["anyOf"]
            if option["type"] == "integer"
        ]
        assert dimensions["maximum"] == dim


def test_every_error_the_routes_answer_is_documented_as_json(tmp_path):
    paths = create_app(FleetSettings(_env_file=None, data_dir=tmp_path)).openapi()["paths"]
    documented = {"/v1/search": (401, 403, 413, 422, 503), "/v1/embeddings": (401, 413, 422, 429, 503)}
    for path, statuses in documented.items():
        responses = paths[path]["post"]["responses"]
        for status in statuses:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
