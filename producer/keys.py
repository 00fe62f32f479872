"""API keys of the query service: each carries an access level, and only its SHA-256 is stored.

A key is `fk_` followed by 32 random bytes (URL-safe base64). `producer keys create` prints it
once; Postgres keeps its hash, a short prefix to recognise it by, its name and level, and its
limits: a rate (requests per second, with a burst) and an expiry. A key is never logged. Keys are
high-entropy, so one unsalted SHA-256 is enough (nothing to brute-force).
"""

import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.rows import class_row

from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput
from workers.core.stores import audit

KEY_PREFIX = "fk_"
KEY_BYTES = 32
# "fk_" and 7 characters of the random part (42 of its 256 bits): enough to tell keys apart.
SHOWN_PREFIX_CHARS = len(KEY_PREFIX) + 7
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Bounds of a key's own limits: past them a number is a typing mistake, not a policy.
MAX_RATE = 100_000.0
MAX_BURST = 1_000_000


@dataclass(frozen=True)
class KeyRecord:
    name: str
    access_level: int
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    rate_per_s: float | None
    burst: int | None
    expires_at: datetime | None

    def to_dict(self) -> dict:
        record = {
            "name": self.name,
            "level": AccessLevel(self.access_level).name,
            "prefix": self.prefix,
            "created": self.created_at.isoformat(),
            "last_used": self.last_used_at.isoformat() if self.last_used_at else None,
            "rate": self.rate_per_s,
            "burst": self.burst or (default_burst(self.rate_per_s) if self.rate_per_s else None),
            "expires": self.expires_at.isoformat() if self.expires_at else None,
        }
        if self.revoked_at:
            record["revoked"] = self.revoked_at.isoformat()
        return record


@dataclass(frozen=True)
class Limits:
    """A key's own limits; None: the service's defaults (FLEET_API_RATE_PER_KEY, ...), no expiry."""

    rate_per_s: float | None = None
    burst: int | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Caller:
    """Who a valid key belongs to, the highest level it reads, and its own limits."""

    name: str
    level: AccessLevel
    limits: Limits = Limits()

    def expired(self, now: datetime) -> bool:
        return self.limits.expires_at is not None and self.limits.expires_at <= now


def default_burst(rate_per_s: float) -> int:
    """A key's burst when none is given: a second's worth of requests, at least one."""
    return max(1, math.ceil(rate_per_s))


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def same_hash(stored: str, computed: str) -> bool:
    """Constant-time comparison: how long it takes says nothing about how much matched."""
    return hmac.compare_digest(stored.encode(), computed.encode())


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidInput(
            f"key name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_limits(limits: Limits, now: datetime) -> Limits:
    if limits.rate_per_s is not None and not 0 < limits.rate_per_s <= MAX_RATE:
        raise InvalidInput(f"--rate {limits.rate_per_s:g}: give requests per second above 0 and at most {MAX_RATE}")
    if limits.burst is not None:
        if limits.rate_per_s is None:
            raise InvalidInput("--burst needs --rate: it is the number of requests the key may send at once")
        if not 1 <= limits.burst <= MAX_BURST:
            raise InvalidInput(f"--burst {limits.burst}: give a whole number from 1 to {MAX_BURST}")
    if limits.expires_at is not None and limits.expires_at <= now:
        raise InvalidInput(f"--expires {limits.expires_at.isoformat()} is not in the future")
    return limits


def create(conn: psycopg.Connection, name: str, level: AccessLevel, limits: Limits = Limits()) -> str:
    """Store a new key for `name` at `level` with its `limits`; returns the key, which is not kept anywhere."""
    check_name(name)
    check_limits(limits, datetime.now(UTC))
    key = new_key()
    try:
        with conn.transaction():  # the key and its audit event, or neither
            conn.execute(
                "INSERT INTO api_keys (name, prefix, key_sha256, access_level, rate_per_s, burst, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    name,
                    key[:SHOWN_PREFIX_CHARS],
                    key_hash(key),
                    int(level),
                    limits.rate_per_s,
                    limits.burst,
                    limits.expires_at,
                ),
            )
            audit.record_event(conn, audit.KEY_CREATED, name, _described(level, key, limits))
    except psycopg.errors.UniqueViolation as err:
        raise InvalidInput(
            f"a key named {name!r} exists: revoke it first (`producer keys revoke {name}`) or choose another name"
        ) from err
    return key


def _described(level: AccessLevel, key: str, limits: Limits) -> str:
    detail = f"reads up to {level.name}; prefix {key[:SHOWN_PREFIX_CHARS]}"
    if limits.rate_per_s is not None:
        detail += f"; {limits.rate_per_s:g} requests/s" + (f", burst {limits.burst}" if limits.burst else "")
    if limits.expires_at is not None:
        detail += f"; expires {limits.expires_at.isoformat()}"
    return detail


_COLUMNS = "name, access_level, prefix, created_at, last_used_at, revoked_at, rate_per_s, burst, expires_at"


def list_keys(conn: psycopg.Connection, include_revoked: bool = False) -> list[KeyRecord]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    with conn.cursor(row_factory=class_row(KeyRecord)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY name, created_at").fetchall()


def revoke(conn: psycopg.Connection, name: str) -> KeyRecord:
    """Revoke the active key called `name`; the service refuses it within `FLEET_API_POLL_S`."""
    with conn.transaction(), conn.cursor(row_factory=class_row(KeyRecord)) as cur:
        record = cur.execute(
            f"UPDATE api_keys SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL RETURNING {_COLUMNS}",
            (name,),
        ).fetchone()
        if record is not None:
            audit.record_event(conn, audit.KEY_REVOKED, name, f"prefix {record.prefix}")
    if record is None:
        raise InvalidInput(f"no active key named {name!r}: `producer keys list` shows them")
    return record


def active_keys_by_prefix(conn: psycopg.Connection, prefix: str | None = None) -> list[tuple[str, str, Caller]]:
    """(prefix, hash, caller) of every key not revoked (expired ones too: the service says why it
    refuses them), or of those with this prefix."""
    query = (
        "SELECT prefix, key_sha256, name, access_level, rate_per_s, burst, expires_at"
        " FROM api_keys WHERE revoked_at IS NULL"
    )
    rows = conn.execute(query + " AND prefix = %s", (prefix,)) if prefix is not None else conn.execute(query)
    return [
        (found, digest, Caller(name, AccessLevel(level), Limits(rate, burst, expires)))
        for found, digest, name, level, rate, burst, expires in rows.fetchall()
    ]


def mark_used(conn: psycopg.Connection, digests: list[str]) -> None:
    """Record that these keys were used (batched by the service: one write per poll, not per request)."""
    if digests:
        conn.execute("UPDATE api_keys SET last_used_at = now() WHERE key_sha256 = ANY(%s)", (digests,))
