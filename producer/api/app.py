"""The app factory: `create_app(settings)`. The lifespan starts the service (keys read, live
model loaded and warmed) before the first request and stops it after the last.

Errors (errors.py) are JSON and the caller's to act on: 4xx for what the request got wrong, 503
with the reason when a store is down or nothing is indexed yet (the service recovers by itself),
500 only for a bug. The OpenAPI schema (openapi.py) states the limits the routes enforce.
"""

import importlib.metadata
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from producer.api import errors
from producer.api.metrics import ApiMetrics, RequestMetrics
from producer.api.openapi import LimitedOpenAPI
from producer.api.routes import router
from producer.api.service import QueryService
from workers.core.settings import FleetSettings

log = logging.getLogger(__name__)

DESCRIPTION = """Search and embeddings over the live index, for applications.

Authenticate with `Authorization: Bearer KEY` (`producer keys create --name NAME --level LEVEL`).
A key reads up to its access level: `/v1/search` never returns a chunk above it. `/v1/embeddings`
is OpenAI-compatible: point an OpenAI client's `base_url` at `http://HOST:PORT/v1`.
Every error is JSON `{"detail": ...}`.
"""


def create_app(settings: FleetSettings) -> FastAPI:
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = QueryService(settings, metrics)
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="Embedding fleet query service",
        description=DESCRIPTION,
        version=_version(),
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    errors.install(app, settings.api_max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: it times refusals too
    app.include_router(router)
    LimitedOpenAPI(app, settings).install()
    return app


def _version() -> str:
    try:
        return importlib.metadata.version("embedding-fleet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
