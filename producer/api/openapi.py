"""The OpenAPI schema states every limit the routes enforce, so that a client (or a fuzzer) that
follows it is never refused.

Static constraints live on the models (`top_k` 1–100, `query` not blank, inputs not empty). The
others depend on settings or on the live index, so they are written into FastAPI's schema each
time it is served: the longest text (FLEET_API_MAX_QUERY_CHARS), the most inputs
(FLEET_API_MAX_INPUTS), the largest `dimensions` (the live index's dimension: it changes
with a re-index, and the schema follows it) and the search modes the live index answers.
"""

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from workers.core.settings import FleetSettings
from workers.core.stores.catalog import IndexVersion

Schema = dict[str, Any]


class LimitedOpenAPI:
    def __init__(self, app: FastAPI, settings: FleetSettings):
        self.app = app
        self.settings = settings
        self._generate: Callable[[], Schema] = app.openapi  # FastAPI's, cached in app.openapi_schema

    def install(self) -> None:
        self.app.openapi = self.schema  # type: ignore[method-assign]

    def schema(self) -> Schema:
        """FastAPI's schema with the limits of these settings and of the live index now."""
        schema = copy.deepcopy(self._generate())
        models = schema["components"]["schemas"]
        texts = {"maxLength": self.settings.api_max_query_chars}
        models["SearchRequest"]["properties"]["query"].update(texts)
        embeddings = models["EmbeddingsRequest"]["properties"]
        for option in embeddings["input"]["anyOf"]:
            if option["type"] == "array":
                option["maxItems"] = self.settings.api_max_inputs
                option["items"].update(texts)
            else:
                option.update(texts)
        if (live := self._live()) is not None:
            for option in embeddings["dimensions"]["anyOf"]:
                if option["type"] == "integer":
                    option["maximum"] = live.dim
            for option in models["SearchRequest"]["properties"]["mode"]["anyOf"]:
                if "enum" in option:
                    option["enum"] = list(live.modes)
        return schema

    def _live(self) -> IndexVersion | None:
        service = getattr(self.app.state, "service", None)
        live = service.live.current if service is not None else None
        return live.version if live is not None else None
