"""Requests per second per key: a token bucket, one budget over every replica of the service.

A key's own rate (`producer keys create --rate R [--burst B]`), else the service's defaults
(FLEET_API_RATE_PER_KEY, FLEET_API_BURST_PER_KEY); neither: no limit (one application key often
serves a whole intranet). A request past the budget is refused with 429 and Retry-After, before
it costs anything else, and held for a second first (REFUSAL_HOLD_S, the least Retry-After
says anyway): a client that retries at once sends one request a second per connection, not as
many as it can, so a flood of refusals does not take the machine's time from the other keys (on
a small machine a client's own CPU slows the model's threads too).

With a broker configured the buckets live in its Redis: one Lua script takes a token atomically,
by Redis's clock, so every replica draws from the same budget. When Redis does not answer, each
replica keeps its own buckets for 5 s at a time (said each time): a rate limit is about sharing the
hardware, not about access, and must not take the service down with Redis.
"""

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import HTTPException

from producer.keys import Caller, default_burst
from workers.core.settings import FleetSettings

log = logging.getLogger(__name__)

# How long a refusal is held back before it is sent.
REFUSAL_HOLD_S = 1.0
# After Redis failed, buckets stay in process this long before Redis is asked again.
LOCAL_AFTER_FAILURE_S = 5.0
# Redis is on every limited request's path: a slow one is treated as away, not waited for.
REDIS_TIMEOUT_S = 0.25
BUCKET_PREFIX = "fleet:rate:"

# KEYS[1] the bucket; ARGV rate (tokens/s), burst. Returns {1, "0"} when a token was taken, else
# {0, seconds until one is there}. The state is (tokens, time of the last take), by Redis's clock.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(1000 * burst / rate) + 1000)
if wait > 0 then return {0, tostring(wait)} end
return {1, '0'}
"""


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: int


def rate_of(caller: Caller, settings: FleetSettings) -> Rate | None:
    """The key's own rate, else the service's default; None: not limited."""
    per_s = caller.limits.rate_per_s
    burst = caller.limits.burst
    if per_s is None:
        per_s, burst = settings.api_rate_per_key, settings.api_burst_per_key
    if per_s is None:
        return None
    return Rate(per_s, burst or default_burst(per_s))


class LocalBuckets:
    """Buckets in this process (no broker, or Redis away). Event-loop only: no lock. One bucket
    per key name: only keys that passed the check get one, so there are as many as keys."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, time.monotonic())

    def take(self, name: str, rate: Rate) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        tokens, at = self._buckets.get(name, (float(rate.burst), now))
        tokens = min(float(rate.burst), tokens + (now - at) * rate.per_s)
        if tokens >= 1:
            self._buckets[name] = (tokens - 1, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1 - tokens) / rate.per_s


class RateLimiter:
    def __init__(self, settings: FleetSettings):
        self.settings = settings
        self.local = LocalBuckets()
        self._redis = None
        url = settings.broker_url.get_secret_value() if settings.broker_url else ""
        if url.startswith(("redis://", "rediss://")):
            self._redis = aioredis.Redis.from_url(
                url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            )
            self._take = self._redis.register_script(_TAKE)
        self._local_until = 0.0  # time.monotonic() until which Redis is not asked (it failed)

    @property
    def shared(self) -> bool:
        """Whether the buckets are shared by every replica now."""
        return self._redis is not None and time.monotonic() >= self._local_until

    async def admit(self, caller: Caller) -> None:
        """Take one of the key's tokens, or refuse with 429 and Retry-After."""
        rate = rate_of(caller, self.settings)
        if rate is None:
            return
        wait = await self._wait(caller.name, rate)
        if wait > 0:
            await asyncio.sleep(REFUSAL_HOLD_S)
            wait -= REFUSAL_HOLD_S
            raise HTTPException(
                429,
                f"this key is over its limit of {rate.per_s:g} requests/s (burst {rate.burst}): "
                "retry after the seconds in Retry-After, or ask for a key with a higher --rate",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def _wait(self, name: str, rate: Rate) -> float:
        if not self.shared:
            return self.local.take(name, rate)
        try:
            taken, wait = await self._take(keys=[BUCKET_PREFIX + name], args=[rate.per_s, rate.burst])
        except Exception as err:  # away: this replica's own buckets meanwhile
            log.warning(
                "rate limits: Redis did not answer (%s); each replica counts on its own for %.0f s",
                err.__class__.__name__,
                LOCAL_AFTER_FAILURE_S,
            )
            self._local_until = time.monotonic() + LOCAL_AFTER_FAILURE_S
            return self.local.take(name, rate)
        return 0.0 if int(taken) else float(wait)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
