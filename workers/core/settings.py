"""The one settings object, read from `FLEET_*` environment variables and `.env`.

Built once at an entry point (CLI, Celery app) and passed down; no other module reads the
environment.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.core.errors import ConfigError

DEFAULT_MODEL = "Qwen/Qwen3-Embedding-0.6B"


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path(".fleet"), description="Where the embedded services keep their files.")
    database_url: SecretStr | None = Field(None, description="Postgres URL; unset: embedded Postgres.")
    broker_url: SecretStr | None = Field(None, description="Celery broker URL; unset: run tasks in-process.")
    milvus_uri: str | None = Field(None, description="Milvus URL; unset: Milvus Lite file in the data dir.")
    milvus_token: SecretStr | None = Field(None, description="Milvus token (user:password) for a server.")

    model: str = Field(DEFAULT_MODEL, description="Hub id or local sentence-transformers directory.")
    embed_dim: int | None = Field(None, ge=1, description="Vector size; unset: the model's own.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    attention: Literal["auto", "packed", "padded"] = Field(
        "auto", description="auto: a packed kernel for Qwen3 on CUDA where one works; packed: insist; padded: never."
    )
    batch_tokens: int = Field(32768, ge=64, description="Token budget of one forward pass (padded).")
    quantize: Literal["none", "int8", "fp8"] = Field(
        "none", description="Quantised inference for new index versions: int8 (CPU) or fp8 (GPU)."
    )

    chunk_min_tokens: int = Field(500, ge=1)
    chunk_max_tokens: int = Field(1000, ge=16)
    chunk_max_chars: int = Field(
        8000, ge=200, description="Longest chunk in characters: text without spaces is cut here, whatever its tokens."
    )
    parse_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="Processes that read, parse and chunk files."
    )
    parse_memory_mb: int = Field(
        2048, ge=256, description="Address space a parse process may map beyond its start; more: the file is refused."
    )
    parse_timeout_s: float = Field(300.0, gt=0, description="Longest time one file may take to read; then refused.")
    max_file_mb: float = Field(200, gt=0, description="Larger files are refused, not read.")
    task_chunks: int = Field(32, ge=1, description="Chunks carried by one embed task.")
    worker_concurrency: int = Field(32, ge=1, description="Tasks a worker holds at once to fill batches.")
    collect_ms: int = Field(20, ge=0, description="How long a worker waits for more tasks to fill a batch.")
    visibility_timeout_s: int = Field(
        3600, ge=1, description="Unacknowledged tasks go back to the queue after this (Redis broker)."
    )
    max_attempts: int = Field(8, ge=1, description="Deliveries of a chunk before it is recorded as failed.")
    metrics_port: int = Field(9100, ge=0, description="Worker /metrics port; 0 turns it off.")
    heartbeat_s: float = Field(5.0, gt=0, description="How often a worker records its progress in Postgres.")
    stuck_after_s: float = Field(300.0, gt=0, description="No progress for this long while holding work: stuck.")
    reconcile_s: float = Field(15.0, ge=0, description="How often the reconciler looks for lost work; 0: never.")
    resend_after_s: float = Field(60.0, gt=0, description="A chunk sent or queued this recently is never sent again.")
    worker_gone_after_s: float = Field(30.0, gt=0, description="Without a heartbeat this long, a worker is gone.")
    pg_connect_timeout_s: float = Field(10.0, gt=0, description="Postgres connect timeout.")
    pg_statement_timeout_s: float = Field(300.0, gt=0, description="Longest Postgres statement.")
    milvus_timeout_s: float = Field(60.0, gt=0, description="Longest Milvus call.")
    redis_timeout_s: float = Field(10.0, gt=0, description="Redis connect and socket timeouts.")
    task_timeout_s: float = Field(1800.0, gt=0, description="Longest wait for one embed task's result.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # The query service, `producer serve`.
    api_host: str = Field("127.0.0.1", description="Address `producer serve` listens on (0.0.0.0: every interface).")
    api_port: int = Field(8080, ge=1, le=65535, description="Port `producer serve` listens on.")
    api_max_query_chars: int = Field(2000, ge=1, description="Longest text accepted: a query or an embeddings input.")
    api_max_inputs: int = Field(256, ge=1, description="Most inputs in one embeddings request.")
    api_max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies are refused unread.")
    api_batch_wait_ms: float = Field(2.0, ge=0, description="How long a forward pass waits for more queries.")
    # Small: on a CPU another short pass costs less than padding; raise it for a GPU.
    api_batch_tokens: int = Field(512, ge=64, description="Token budget of one query forward pass (padded).")
    api_cache_size: int = Field(10_000, ge=0, description="Query vectors kept (LRU); 0 turns the cache off.")
    api_threads: int = Field(0, ge=0, description="CPU threads of the query model; 0: torch's default, one per core.")
    # Bounded so that a revoked key is refused within 10 s (the poll also reloads the keys).
    api_poll_s: float = Field(2.0, gt=0, le=5, description="How often the live index version and the keys are read.")
    api_store_timeout_s: float = Field(5.0, gt=0, description="A store slower than this answers 503.")
    # One client must not cost everyone: bulk embeddings are bounded per request and per key. A
    # maximal request (256 inputs of 2,000 characters) of English or Vietnamese is 100-170k Qwen
    # tokens: admitted; a key may have two in flight.
    api_max_request_tokens: int = Field(
        262_144, ge=1, description="Most tokens in one embeddings request (as the model counts them); more: 413."
    )
    api_max_key_tokens_in_flight: int = Field(
        524_288, ge=1, description="Most embeddings tokens one key may have being computed at once; more: 429."
    )
    # Requests per second per key (a token bucket over every replica), for keys created without
    # --rate; unset: keys without their own rate are not limited.
    api_rate_per_key: float | None = Field(
        None, gt=0, description="Default requests/s of a key without its own --rate; unset: no limit."
    )
    api_burst_per_key: int | None = Field(
        None, ge=1, description="Default burst of those keys; unset: a second's worth (FLEET_API_RATE_PER_KEY)."
    )
    eval_alert_mrr: float = Field(
        0.6, ge=0, le=1, description="`producer serve-metrics` exports it: MRR@10 below it raises an alert."
    )
    # The HTTP server's own bounds, before any request reaches the app.
    api_max_header_bytes: int = Field(
        16_384, ge=1024, description="Larger request headers are refused (431) and the connection closed."
    )
    api_header_timeout_s: float = Field(
        10.0, gt=0, description="A request's headers must arrive within this of its first byte; else 408, closed."
    )
    api_keep_alive_s: float = Field(
        75.0, gt=0, description="An idle keep-alive connection is closed after this (above the balancer's)."
    )
    # Every search accounted for (producer audit): what is kept of the query, for how long, and
    # whether a search whose record cannot be written is answered at all.
    search_log: Literal["full", "hashed", "off"] = Field(
        "full", description="Search log: the query text, a keyed hash of it (FLEET_SEARCH_LOG_KEY), or no log."
    )
    search_log_key: SecretStr | None = Field(None, description="Key of the query hash (FLEET_SEARCH_LOG=hashed).")
    search_log_days: int = Field(90, ge=1, description="Searches and audit events older than this are deleted.")
    search_log_buffer: int = Field(
        10_000, ge=1, description="Search records waiting to be written; past it a record is dropped and counted."
    )
    audit_required: bool = Field(
        False, description="Refuse (503) a search whose record cannot be written, instead of answering it."
    )

    @model_validator(mode="after")
    def _chunk_bounds(self) -> "FleetSettings":
        if self.chunk_min_tokens <= self.chunk_max_tokens:
            return self
        if "chunk_min_tokens" not in self.model_fields_set:  # only the maximum was lowered: follow it
            self.chunk_min_tokens = self.chunk_max_tokens // 2
        else:
            raise ValueError(
                f"FLEET_CHUNK_MIN_TOKENS ({self.chunk_min_tokens}) is above FLEET_CHUNK_MAX_TOKENS "
                f"({self.chunk_max_tokens}): lower the minimum or raise the maximum"
            )
        return self

    @model_validator(mode="after")
    def _hash_key(self) -> "FleetSettings":
        if self.search_log == "hashed" and self.search_log_key is None:
            raise ValueError(
                "FLEET_SEARCH_LOG=hashed needs FLEET_SEARCH_LOG_KEY, the secret of the query hash "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if self.audit_required and self.search_log == "off":
            raise ValueError("FLEET_AUDIT_REQUIRED=true with FLEET_SEARCH_LOG=off would refuse every search")
        return self

    @model_validator(mode="after")
    def _default_rate(self) -> "FleetSettings":
        if self.api_burst_per_key is not None and self.api_rate_per_key is None:
            raise ValueError("FLEET_API_BURST_PER_KEY needs FLEET_API_RATE_PER_KEY: set the rate, or unset the burst")
        return self

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)

    def data_folder(self) -> Path:
        """FLEET_DATA_DIR, created if missing; the embedded services keep their files there."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError(f"FLEET_DATA_DIR={self.data_dir} is a file, not a folder: point it at a folder")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create FLEET_DATA_DIR={self.data_dir} ({err.strerror})") from err
        return self.data_dir

    @property
    def embedded_milvus_path(self) -> Path:
        return self.data_folder() / "milvus.db"

    @property
    def embedded_postgres_dir(self) -> Path:
        return self.data_folder() / "postgres"

    @property
    def uses_broker(self) -> bool:
        return self.broker_url is not None
