"""API keys at the door: `Authorization: Bearer KEY`, checked against the hashes in Postgres.

The active keys are read every FLEET_API_POLL_S, so a revoked key is refused within that (the
setting is at most 5 s), and a key created a moment ago is looked up on first sight. A key is
found by its non-secret prefix, then its hash compared in constant time; keys are never logged.
Keys that could not be re-read for 10 s fail closed (503): a revocation must not be missed. An
expired key is refused (401) from the moment it expires; a key past its rate, with 429
(ratelimit.py).
"""

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producer import keys
from producer.api.stores import Stores
from producer.keys import Caller
from workers.core.errors import ServiceUnavailable

# The promise: a revoked key is refused within 10 s.
STALE_AFTER_S = 10.0
# Unknown prefixes remembered between two reads of the keys (a flood of wrong keys stays off Postgres).
_MAX_MISSES = 10_000


@dataclass(frozen=True)
class _Entry:
    digest: str
    caller: Caller


class KeyRing:
    def __init__(self, stores: Stores):
        self.stores = stores
        self._by_prefix: dict[str, list[_Entry]] = {}
        self._misses: set[str] = set()
        self._used: set[str] = set()
        self._read_at: float | None = None  # time.monotonic() of the last successful read
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Record which keys were used since the last read, then read the active keys (blocking)."""
        with self._lock:
            used, self._used = self._used, set()
        try:
            with self.stores.connection() as conn:
                keys.mark_used(conn, sorted(used))
                active = keys.active_keys_by_prefix(conn)
        except BaseException:
            with self._lock:
                self._used |= used  # recorded at the next read
            raise
        by_prefix: dict[str, list[_Entry]] = {}
        for prefix, digest, caller in active:
            by_prefix.setdefault(prefix, []).append(_Entry(digest, caller))
        with self._lock:
            self._by_prefix = by_prefix
            self._misses = set()
            self._read_at = time.monotonic()

    def check_fresh(self) -> None:
        if self._read_at is None or time.monotonic() - self._read_at > STALE_AFTER_S:
            raise ServiceUnavailable("cannot check API keys: Postgres has not answered; try again shortly")

    def known(self, key: str, digest: str) -> Caller | bool | None:
        """The caller of `key` (whose hash is `digest`) from memory; False when it must be looked up
        in Postgres."""
        prefix = key[: keys.SHOWN_PREFIX_CHARS]
        entries = self._by_prefix.get(prefix)
        if entries is None:
            return None if prefix in self._misses or not key.startswith(keys.KEY_PREFIX) else False
        return _match(entries, digest)

    def look_up(self, key: str, digest: str) -> Caller | None:
        """Ask Postgres for a key not seen at the last read (created since): blocking."""
        prefix = key[: keys.SHOWN_PREFIX_CHARS]
        with self.stores.connection() as conn:
            found = [_Entry(stored, caller) for _, stored, caller in keys.active_keys_by_prefix(conn, prefix)]
        with self._lock:
            if found:
                self._by_prefix[prefix] = found
            elif len(self._misses) < _MAX_MISSES:
                self._misses.add(prefix)
        return _match(found, digest)

    def used(self, digest: str) -> None:
        with self._lock:
            self._used.add(digest)


def _match(entries: list[_Entry], digest: str) -> Caller | None:
    matched = None
    for entry in entries:  # every entry compared: the time taken does not depend on which matched
        if keys.same_hash(entry.digest, digest):
            matched = entry.caller
    return matched


_bearer = HTTPBearer(auto_error=False, description="An API key from `producer keys create`.")


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


async def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """The dependency of every authenticated route: who calls, and the highest level they read."""
    if credentials is None:
        raise _unauthorized("missing API key: send the header `Authorization: Bearer KEY`")
    ring: KeyRing = request.app.state.service.keys
    ring.check_fresh()
    key = credentials.credentials
    digest = keys.key_hash(key)
    found = ring.known(key, digest)
    if found is False:
        found = await run_in_threadpool(ring.look_up, key, digest)
    if found is None:
        raise _unauthorized("invalid or revoked API key")
    request.state.key_name = found.name  # for the audit of a refusal, here or later in the request
    if found.expired(datetime.now(UTC)):
        raise _unauthorized(
            f"this API key expired at {found.limits.expires_at.isoformat()}: ask for a new one (`producer keys create`)"
        )
    ring.used(digest)
    await request.app.state.service.limits.admit(found)
    return found
