"""Token budgets of `/v1/embeddings`: what one request may ask, and what one key may have in flight.

Tokens are counted as the live model reads them (texts from the cache by their recorded count),
before any forward pass. A request over FLEET_API_MAX_REQUEST_TOKENS is refused with 413: split
it. A key's requests hold their tokens from admission until their vectors are computed; one that
would take the key over FLEET_API_MAX_KEY_TOKENS_IN_FLIGHT is refused with 429 and Retry-After:
wait for the earlier ones. So one key cannot fill the bulk lane for every other key; searches are
not counted (they have a lane of their own, ahead of this one).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

# Seconds a client refused for its key's tokens in flight may wait before it tries again.
RETRY_AFTER_S = 1


class TokenBudget:
    """Tokens in flight per key. Event-loop only: no lock."""

    def __init__(self, max_request: int, max_key_in_flight: int):
        self.max_request = max_request
        self.max_key_in_flight = max_key_in_flight
        self._held: dict[str, int] = {}

    def in_flight(self, key: str) -> int:
        return self._held.get(key, 0)

    def check_request(self, tokens: int) -> None:
        """413 when a request of `tokens` could never be admitted."""
        if tokens > self.max_request:
            raise HTTPException(
                413,
                f"this request has {tokens} tokens, over the limit of {self.max_request} per request "
                "(FLEET_API_MAX_REQUEST_TOKENS): send its inputs in several smaller requests",
            )
        if tokens > self.max_key_in_flight:
            raise HTTPException(
                413,
                f"this request has {tokens} tokens, over the limit of {self.max_key_in_flight} a key may have "
                "in flight (FLEET_API_MAX_KEY_TOKENS_IN_FLIGHT): send its inputs in several smaller requests",
            )

    @contextmanager
    def hold(self, key: str, tokens: int) -> Iterator[None]:
        """Hold `tokens` for `key` while the block runs; 429 when the key has no room for them."""
        self.check_request(tokens)
        held = self.in_flight(key)
        if held + tokens > self.max_key_in_flight:
            raise HTTPException(
                429,
                f"this key has {held} tokens of embeddings in flight, and {tokens} more would pass its limit of "
                f"{self.max_key_in_flight} (FLEET_API_MAX_KEY_TOKENS_IN_FLIGHT): wait for its earlier requests "
                "to be answered, or send fewer inputs at once",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._held[key] = held + tokens
        try:
            yield
        finally:
            left = self._held[key] - tokens
            if left:
                self._held[key] = left
            else:
                del self._held[key]
