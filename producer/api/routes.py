"""The routes: thin, each checks what the request may ask and calls the service."""

import base64
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST

from producer.api.auth import caller
from producer.api.models import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    IndexInfo,
    Info,
    ModelCard,
    ModelList,
    SearchRequest,
    SearchResponse,
)
from producer.api.service import QueryService
from producer.keys import Caller
from workers.core.access import AccessLevel
from workers.core.stores.milvus import Weights
from workers.embedding.base import fit_dimension

router = APIRouter()

_ERRORS: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "Missing, wrong or revoked API key",
        413: "Too long a text, too many inputs or tokens, or a body over FLEET_API_MAX_BODY_BYTES",
        422: "Malformed JSON, a wrong type, a value out of range, or a search mode the index does not have",
        503: "A store is down, no index is live yet, or the live one cannot be loaded; the reason is in `detail`",
    }.items()
}
_FORBIDDEN = {"model": ErrorBody, "description": "`level` above the key's own level"}
_TOO_MANY = {
    "model": ErrorBody,
    "description": "The key is over its rate (FLEET_API_RATE_PER_KEY or its own --rate), or has too many tokens of "
    "embeddings in flight: retry after `Retry-After` seconds",
}


def _service(request: Request) -> QueryService:
    return request.app.state.service


def _too_large(reason: str) -> HTTPException:
    return HTTPException(413, reason)


def _check_lengths(service: QueryService, texts: list[str]) -> None:
    limit = service.settings.api_max_query_chars
    longest = max(len(text) for text in texts)
    if longest > limit:
        raise _too_large(
            f"a text of {longest} characters is over the limit of {limit} (FLEET_API_MAX_QUERY_CHARS): shorten it"
        )


@router.post(
    "/v1/search",
    tags=["query"],
    responses={**_ERRORS, 403: _FORBIDDEN, 429: _TOO_MANY},
)
async def search(body: SearchRequest, request: Request, who: Annotated[Caller, Depends(caller)]) -> SearchResponse:
    """The best chunks for `query` among those the key (or the lower `level` asked) may read, in
    `mode` (the response says which ran)."""
    service = _service(request)
    _check_lengths(service, [body.query])
    level = who.level if body.level is None else AccessLevel.parse(body.level)
    if level > who.level:
        raise HTTPException(403, f"this key reads up to {who.level.name}: it cannot search as {level.name}")
    weights = Weights(body.weights.dense, body.weights.keyword) if body.weights else None
    answer = await service.search(body.query, level, body.top_k, who.name, body.mode, weights)
    # Plain data: FastAPI validates and serialises it once, against SearchResponse.
    return {  # type: ignore[return-value]
        "hits": [vars(hit) for hit in answer.hits],
        "index": answer.live.describe(),
        "mode": answer.mode,
        "search_id": answer.search_id,
    }


@router.post(
    "/v1/feedback",
    tags=["query"],
    responses={
        **_ERRORS,
        403: {"model": ErrorBody, "description": "The search was made with another key"},
        404: {"model": ErrorBody, "description": "No such search is recorded (or FLEET_SEARCH_LOG=off)"},
        422: {"model": ErrorBody, "description": "Malformed body, or a chunk the search did not return"},
        429: _TOO_MANY,
    },
)
async def feedback(
    body: FeedbackRequest, request: Request, who: Annotated[Caller, Depends(caller)]
) -> FeedbackResponse:
    """Whether a hit of one of this key's searches answered it: kept with the search (a second
    verdict replaces the first), trained on by `migrate finetune --from-feedback`, counted in each
    version's useful rate."""
    await _service(request).feedback(who.name, body.search_id, body.chunk_id, body.relevant, body.note)
    return FeedbackResponse(search_id=body.search_id, chunk_id=body.chunk_id, relevant=body.relevant)


@router.post("/v1/embeddings", tags=["query"], responses={**_ERRORS, 429: _TOO_MANY})
async def embeddings(
    body: EmbeddingsRequest, request: Request, who: Annotated[Caller, Depends(caller)]
) -> EmbeddingsResponse:
    """OpenAI-compatible embeddings by the live index's model (inputs as documents unless `input_type` is query).

    Served after every search waiting; at most FLEET_API_MAX_REQUEST_TOKENS tokens per request
    (413), and FLEET_API_MAX_KEY_TOKENS_IN_FLIGHT per key being computed at once (429)."""
    service = _service(request)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if len(texts) > service.settings.api_max_inputs:
        raise _too_large(
            f"{len(texts)} inputs is over the limit of {service.settings.api_max_inputs} (FLEET_API_MAX_INPUTS): "
            "send them in several requests"
        )
    _check_lengths(service, texts)
    live, embedded = await service.embed(who.name, texts, body.input_type, body.dimensions)
    encode = body.encoding_format
    data = [
        {"object": "embedding", "index": index, "embedding": _encode(item.vector, body.dimensions, encode)}
        for index, item in enumerate(embedded)
    ]
    tokens = sum(item.tokens for item in embedded)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    # Plain data: FastAPI validates and serialises it once, against EmbeddingsResponse.
    return {"object": "list", "data": data, "model": live.version.model, "usage": usage}  # type: ignore[return-value]


def _encode(vector: np.ndarray, dimensions: int | None, encoding_format: str) -> list[float] | str:
    if dimensions is not None and dimensions < vector.shape[0]:
        vector = fit_dimension(vector[None, :], dimensions)[0]
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.get(
    "/v1/models", tags=["query"], responses={401: _ERRORS[401], 503: _ERRORS[503]}, dependencies=[Depends(caller)]
)
async def models(request: Request) -> ModelList:
    """The one model there is: the live index's (OpenAI clients list models)."""
    live = _service(request).current()
    return ModelList(data=[ModelCard(id=live.version.model, created=int(live.since))])


@router.get("/healthz", tags=["operations"])
async def healthz() -> Health:
    """Alive: the process answers HTTP."""
    return Health(status="alive")


@router.get("/readyz", tags=["operations"], responses={503: {"model": Health, "description": "Not ready"}})
async def readyz(request: Request, response: Response) -> Health:
    """Ready: the live model is loaded, and Postgres and Milvus answer."""
    problems = await run_in_threadpool(_service(request).ready)
    if problems:
        response.status_code = 503
        return Health(status="not ready", problems=problems)
    return Health(status="ready")


@router.get("/info", tags=["operations"])
async def info(request: Request) -> Info:
    """The live index the service follows, the access levels, and the service's version."""
    live = _service(request).live.current
    return Info(
        index=IndexInfo(**live.describe()) if live else None,
        levels=AccessLevel.names(),
        version=request.app.version,
    )


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
