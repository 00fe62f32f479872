"""The app factory: `create_app(settings)`. The lifespan starts the service (keys read, live
model loaded and warmed) before the first request and stops it after the last.

Errors are the caller's to act on: 4xx for what the request got wrong, 503 with the reason when a
store is down or nothing is indexed yet (the service recovers by itself), 500 only for a bug.
"""

import importlib.metadata
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymilvus import MilvusException

from producer.api.metrics import ApiMetrics, RequestMetrics
from producer.api.routes import router
from producer.api.service import QueryService
from producer.api.stores import as_unavailable
from workers.core.errors import ConfigError, InvalidInput, ServiceUnavailable
from workers.core.settings import FleetSettings

log = logging.getLogger(__name__)

DESCRIPTION = """Search and embeddings over the live index, for applications.

Authenticate with `Authorization: Bearer KEY` (`producer keys create --name NAME --level LEVEL`).
A key reads up to its access level: `/v1/search` never returns a chunk above it. `/v1/embeddings`
is OpenAI-compatible: point an OpenAI client's `base_url` at `http://HOST:PORT/v1`.
"""
# Clients may retry a 503 after this many seconds.
RETRY_AFTER_S = 2


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
        max_body_size=settings.api_max_body_bytes,
    )
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _unprocessable)
    app.add_exception_handler(InvalidInput, _invalid)
    for error in (ServiceUnavailable, ConfigError, psycopg.Error, MilvusException):
        app.add_exception_handler(error, _unavailable)
    return app


def _version() -> str:
    try:
        return importlib.metadata.version("embedding-fleet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an echoed input may hold a lone surrogate, which is valid in
    JSON's escapes but cannot be encoded as UTF-8 (the default rendering fails with a 500)."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


async def _unprocessable(request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 (each problem with where and why), rendered so that any input can be echoed."""
    return _AsciiJSONResponse({"detail": jsonable_encoder(err.errors())}, status_code=422)


async def _invalid(request: Request, err: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=422)


async def _unavailable(request: Request, err: Exception) -> JSONResponse:
    reason = str(as_unavailable(err) or err)
    # Every request would say it during an outage: the pollers warn once, the metrics count them.
    log.debug("%s %s: 503 %s", request.method, request.url.path, reason)
    return JSONResponse({"detail": reason}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
