"""Every error a client gets is JSON `{"detail": ...}`, with the status the README documents.

4xx for what the request got wrong (a body that is not JSON or not UTF-8: 422, like any other
malformed body; over FLEET_API_MAX_BODY_BYTES: 413, refused before it is read), 503 with the
reason when a store is down or nothing is indexed yet (the service recovers by itself), 500 only
for a bug. Validation errors echo the input: it is rendered so that any input can be (a lone
surrogate escaped, a NaN or Infinity that Python's JSON reader let in written as a string: a
bare `NaN` is not JSON).
"""

import json
import logging
import math

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymilvus import MilvusException
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.api.stores import as_unavailable
from workers.core.errors import ConfigError, InvalidInput, ServiceUnavailable

log = logging.getLogger(__name__)

# Clients may retry a 503 after this many seconds.
RETRY_AFTER_S = 2


def install(app: FastAPI, max_body_bytes: int) -> None:
    """The error handlers, and the body limit (inside the metrics middleware, added after it)."""
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, _unprocessable)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(InvalidInput, _invalid)
    for error in (ServiceUnavailable, ConfigError, psycopg.Error, MilvusException):
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(Exception, _internal)


def finite(value: object) -> object:
    """`value` with every float that is not finite written as a string ("NaN", "Infinity")."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


class ErrorJSONResponse(JSONResponse):
    """Strict JSON, ASCII only: an echoed input may hold a lone surrogate, valid in JSON's escapes
    but not encodable as UTF-8 (the default rendering fails with a 500), or a float that is not
    finite (rendered by default as a bare `NaN`)."""

    def render(self, content: object) -> bytes:
        return json.dumps(finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_body(status: int, detail: object, headers: dict[str, str] | None = None) -> ErrorJSONResponse:
    return ErrorJSONResponse({"detail": detail}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 — unread when Content-Length says so, else
    as soon as the bytes received pass the limit (a chunked body)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(declared)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # An HTTPException: FastAPI passes it on from its body reader to the handler below.
                raise HTTPException(413, self._reason(None))
            return message

        await self.app(scope, counted, send)

    def _too_large(self, size: int) -> ErrorJSONResponse:
        return error_body(413, self._reason(size))

    def _reason(self, size: int | None) -> str:
        said = f"is {size} bytes, over" if size is not None else "passed"
        return (
            f"the body {said} the limit of {self.max_bytes} bytes (FLEET_API_MAX_BODY_BYTES): "
            "send fewer or shorter inputs per request"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn's parser refuses it before the app sees it
    return None


async def _unprocessable(request: Request, err: RequestValidationError) -> ErrorJSONResponse:
    """FastAPI's 422 (each problem with where and why), rendered so that any input can be echoed."""
    return error_body(422, jsonable_encoder(err.errors()))


async def _http_error(request: Request, err: HTTPException) -> ErrorJSONResponse:
    if err.status_code == 400:
        # FastAPI's answer to a body its JSON reader failed on other than by a syntax error (bytes
        # that are not UTF-8, nesting too deep): malformed JSON, which the README answers with 422.
        cause = err.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause else str(err.detail)
        problem = {"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error", "ctx": {"error": reason}}
        return error_body(422, [problem])
    if err.status_code in AUDITED_REFUSALS:
        _audit_refusal(request, err)
    return error_body(err.status_code, err.detail, err.headers)


# Refusals the audit keeps (an unknown key, a level above the key's, too much at once).
AUDITED_REFUSALS = (401, 403, 429)


def _audit_refusal(request: Request, err: HTTPException) -> None:
    service = getattr(request.app.state, "service", None)
    if service is not None:
        key_name = getattr(request.state, "key_name", None)
        detail = f"{request.method} {request.url.path}: {err.detail}"
        service.search_log.record_refusal(key_name, err.status_code, detail)


async def _invalid(request: Request, err: Exception) -> ErrorJSONResponse:
    return error_body(422, str(err))


async def _unavailable(request: Request, err: Exception) -> ErrorJSONResponse:
    reason = str(as_unavailable(err) or err)
    # Every request would say it during an outage: the pollers warn once, the metrics count them.
    log.debug("%s %s: 503 %s", request.method, request.url.path, reason)
    return error_body(503, reason, {"Retry-After": str(RETRY_AFTER_S)})


async def _internal(request: Request, err: Exception) -> ErrorJSONResponse:
    # Starlette logs the traceback (it re-raises after this answer): a bug, never the client's.
    return error_body(500, "internal error: the service logged it")
