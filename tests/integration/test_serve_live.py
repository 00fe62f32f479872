"""Serving what is live, or saying so: a replica that cannot load the version the alias `chunks`
now names does not go on answering from the retired one (it no longer receives new chunks): it
is not ready, requests get 503 with the reason, and it tries again at every poll.
"""

import shutil
from contextlib import closing

import httpx

from migrations import commands as migrate
from producer import commands, keys
from tests.integration.conftest import write_corpus
from tests.integration.test_serve import QUOTES, bearer, metric, running_service, search, wait_until
from workers.core.access import AccessLevel
from workers.core.stores import milvus, postgres


def test_a_live_version_whose_model_cannot_be_loaded_makes_the_replica_unready_until_it_loads(
    make_settings, migrated_url, milvus_server, qwen_tiny, tmp_path
):
    """A real fault, produced on demand: chunks_v2 is built with a model directory (not cut over),
    the directory then loses its weights — as on a replica whose image or volume lacks the new
    model — and the alias is pointed at chunks_v2, as a cutover does. Putting the weights back
    repairs it, and the next poll must find that out by itself.

    (Milvus Lite cannot be made to refuse a collection on demand: it loads one whose vector
    index was dropped, and will not drop a collection an alias names.)"""
    settings = make_settings(database_url=migrated_url, milvus_uri=milvus_server, model="fake:64")
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        key = keys.create(conn, "app", AccessLevel.public)
    model = shutil.copytree(qwen_tiny, tmp_path / "model")
    weights, aside = model / "model.safetensors", tmp_path / "model.safetensors"
    query = QUOTES["handbook/welcome.md"]
    with running_service(settings, tmp_path / "serve.log") as url:
        assert search(url, key, query).json()["index"]["name"] == "chunks_v1"
        built = migrate.run_reindex(settings, str(model), None, False, None, False, False, 1.0)
        assert built["green"]["name"] == "chunks_v2" and not built["cutover"]
        weights.rename(aside)
        client = milvus.connect(settings)
        milvus.point_live_alias(client, "chunks_v2")
        client.close()

        # The first model this replica loads imports torch and transformers (13 s on a slow disk).
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 503, 60, "unready")
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["status"] == "not ready"
        assert any("chunks_v2" in problem and "chunks_v1" in problem for problem in ready["problems"]), ready
        refused = search(url, key, query)
        assert refused.status_code == 503, f"answered from the retired chunks_v1: {refused.text}"
        assert "chunks_v2" in refused.json()["detail"] and refused.headers["retry-after"]
        embeddings = httpx.post(f"{url}/v1/embeddings", headers=bearer(key), json={"input": "annual leave"})
        assert embeddings.status_code == 503
        assert metric(httpx.get(f"{url}/metrics").text, "fleet_api_live_index_behind") == 1

        aside.rename(weights)
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, "ready again on chunks_v2")
        answered = search(url, key, query)
        assert answered.status_code == 200 and answered.json()["index"]["name"] == "chunks_v2", answered.text
        assert metric(httpx.get(f"{url}/metrics").text, "fleet_api_live_index_behind") == 0
