"""Request and response bodies of the query service (they are also its OpenAPI schema at /docs).

Requests are strict: a wrong type is a 422, never coerced (`"top_k": "5"` is refused). Sizes that
depend on settings (query length, number of inputs) are checked by the routes (413), and so is
`dimensions` against the live index's; openapi.py writes those limits into the schema.
"""

import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from producer.search import check_text
from workers.core.errors import InvalidInput

# The four levels of workers.core.access.AccessLevel, in order (a unit test keeps them equal).
LevelName = Literal["public", "employee_only", "manager_only", "director_only"]
# workers.core.constants.SEARCH_MODES (the same unit test).
ModeName = Literal["dense", "keyword", "hybrid"]
# /v1/search's limit (the CLI's, workers.core.constants.MAX_TOP_K, is higher).
API_MAX_TOP_K = 100


def _valid_unicode(text: str) -> str:
    try:
        check_text(text, "the text")
    except InvalidInput as err:
        raise ValueError(str(err)) from None
    return text


# A string as JSON can carry it but a tokenizer cannot take it: refused with 422.
Text = Annotated[str, AfterValidator(_valid_unicode)]
# "Not blank" as the schema states it: a character that is not whitespace. The validator below
# enforces it in Python's meaning of whitespace (str.isspace), which is what `\S` means to the
# Python-based schema tools; pydantic's own `pattern` would use Rust's, which differs (U+001C).
NOT_BLANK = r"\S"


def _whole(value: object) -> object:
    # JSON has one number type: 5.0 is the integer 5 to JSON Schema, and so here. Anything else
    # (2.5, "5", true) is left for the strict check to refuse.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema counts them: 5 or 5.0, never "5" or true.
Integer = Annotated[int, BeforeValidator(_whole)]


class SearchWeights(BaseModel):
    # Not both 0, as the schema states it too.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"properties": {"dense": {"exclusiveMinimum": 0}}},
                {"properties": {"keyword": {"exclusiveMinimum": 0}}},
            ]
        },
    )

    dense: float = Field(ge=0, allow_inf_nan=False)
    keyword: float = Field(ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _not_both_zero(self) -> "SearchWeights":
        if not self.dense and not self.keyword:
            raise ValueError("at least one weight must be above 0")
        return self


class SearchRequest(BaseModel):
    # Weights belong to a hybrid search (the model validator below; the schema says it too).
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "not": {
                "required": ["mode", "weights"],
                "properties": {"mode": {"enum": ["dense", "keyword"]}, "weights": {"type": "object"}},
            }
        },
    )

    query: Text = Field(
        min_length=1,
        description="What to search for: some text that is not only whitespace.",
        examples=["How many days of annual leave do I get?"],
        json_schema_extra={"pattern": NOT_BLANK},
    )
    top_k: Integer = Field(10, ge=1, le=API_MAX_TOP_K, description="Hits to return, best first.")
    level: LevelName | None = Field(
        None, description="Search as this level; at most the key's own (higher: 403). Default: the key's level."
    )
    mode: ModeName | None = Field(
        None,
        description="`dense`: the query's vector; `keyword`: BM25 on the chunk text; `hybrid`: both, fused by "
        "rank (RRF, k = 60). In `keyword` and `hybrid`, identifiers in the query (`45/2019/NĐ-CP`) are also "
        "matched whole. Default: `hybrid` where the index has the text (see `index.modes`), else `dense`; "
        "a mode the index does not have is refused (422).",
    )
    weights: SearchWeights | None = Field(
        None, description="Hybrid only: weigh the two rankings' normalised scores instead of fusing by rank."
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("the query is empty: give the text to search for")
        return query

    @model_validator(mode="after")
    def _weights_for_hybrid(self) -> "SearchRequest":
        if self.weights is not None and self.mode not in (None, "hybrid"):
            raise ValueError(f"weights apply to hybrid searches, not to {self.mode} ones")
        return self


class Hit(BaseModel):
    chunk_id: str
    document_id: int
    source_path: str = Field(description="The document's path as ingested.")
    access_level: LevelName
    score: float = Field(
        description="Higher is better. `dense`: inner product of unit vectors (cosine similarity); "
        "`keyword`: BM25; `hybrid`: the fused score (RRF, or the weighted scores). A whole match of the "
        "query's identifiers adds its BM25 score (on the identifier field) in `keyword` and `hybrid`."
    )
    text: str
    page_start: int | None = Field(description="PDF: 1-based page where the chunk starts; null otherwise.")
    page_end: int | None
    section: str | None = Field(description="Heading path where the chunk starts, e.g. `Leave policy > Annual leave`.")


class IndexInfo(BaseModel):
    name: str = Field(description="The Milvus collection of the live index version, e.g. `chunks_v2`.")
    model: str
    dim: int
    modes: list[ModeName] = Field(description="The search modes it answers.")
    default_mode: ModeName = Field(description="The mode of a search that names none.")


class SearchResponse(BaseModel):
    hits: list[Hit]
    index: IndexInfo = Field(description="The index version that answered.")
    mode: ModeName = Field(description="The mode that ran.")
    search_id: str | None = Field(
        description="This search's record in the search log (`producer audit`); null with FLEET_SEARCH_LOG=off."
    )


def _search_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("not a search_id: give the `search_id` a /v1/search response carried") from None


# Feedback's bounds: a chunk id is a short hash; a note is a sentence or two, not a document.
MAX_CHUNK_ID_CHARS = 256
MAX_NOTE_CHARS = 2000


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    search_id: Annotated[str, AfterValidator(_search_id)] = Field(
        description="The `search_id` of a search this key made.", json_schema_extra={"format": "uuid"}
    )
    chunk_id: str = Field(
        min_length=1, max_length=MAX_CHUNK_ID_CHARS, description="A `chunk_id` among that search's hits."
    )
    relevant: bool = Field(description="Whether the hit answered the query.")
    note: Text | None = Field(None, max_length=MAX_NOTE_CHARS, description="Why, in the searcher's words.")


class FeedbackResponse(BaseModel):
    search_id: str
    chunk_id: str
    relevant: bool
    recorded: Literal[True] = Field(True, description="Stored with the search (a second verdict replaces the first).")


NonEmptyText = Annotated[Text, Field(min_length=1)]


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request; token-array inputs are not accepted (send text)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)]
    model: str | None = Field(
        None, description="Accepted for client compatibility; the live index's model always embeds (see `model`)."
    )
    # The bound inside the optional (a bound on `X | None` cannot be stated in the schema).
    dimensions: Annotated[int, Field(ge=1), BeforeValidator(_whole)] | None = Field(
        None, description="Truncate and renormalise to this many (at most the live index's dimension)."
    )
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["document", "query"] = Field(
        "document", description="`query` applies the model's query prompt, as `/v1/search` does."
    )
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32 values.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="The model that embedded: the live index's.")
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embedding-fleet"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Info(BaseModel):
    index: IndexInfo | None = Field(description="The live index the service follows; null before the first ingest.")
    levels: list[LevelName]
    version: str = Field(description="Version of the service (the embedding-fleet package).")


class ErrorBody(BaseModel):
    """Every error: a sentence, or (422 from validation) where and why each problem is."""

    detail: str | list[dict[str, Any]]


class Health(BaseModel):
    status: Literal["alive", "ready", "not ready"]
    problems: list[str] = []
