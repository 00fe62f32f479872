"""HTTP/1.1 connections whose request headers are bounded in size and in time.

uvicorn's httptools protocol reads headers with no limit on either: `h11_max_incomplete_event_size`
applies to its h11 parser only, and `timeout_keep_alive` runs only between requests (the first
byte of the next one cancels it, and nothing times a fresh connection). So a client that trickles
an endless header keeps its connection, and the bytes sent so far, for as long as it likes: four
such clients held 400 MB. This subclass adds both bounds before any ASGI code runs:

- a request's headers must be complete within FLEET_API_HEADER_TIMEOUT_S of its first byte (of
  the connection's opening, for the first request); else 408 and the connection closes (closed
  without a word when the client sent nothing);
- they must fit in FLEET_API_MAX_HEADER_BYTES; else 431 and the connection closes. Memory held
  per connection stays under that plus one socket read (256 KiB).

Every answer it gives, and uvicorn's 400 to a request that is not HTTP, is JSON like the app's.
"""

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class _Refused(Exception):
    """Stops the parser after the connection was answered and closed."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded headers; the limits are set by `bounded_http`."""

    max_header_bytes = 16_384
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # received of the headers being read
        self._in_message = False  # from a request's first byte to its end
        self._in_headers = False  # from a request's first byte to the end of its headers
        self._answered = False

    # -- the timer: from the first byte (or the opening) to the end of the headers -----------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        if not self._in_message:
            self._start_header_timer()  # a byte after an idle keep-alive: a request is coming
        super().data_received(data)
        if self._answered or not self._in_headers:
            return  # the parser drops the empty lines between requests: only headers are held
        self._header_bytes += len(data)  # headers still incomplete: all of it is theirs
        if self._header_bytes > self.max_header_bytes:
            self._answer(431, self._too_large(f"over {self.max_header_bytes}"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = self._in_headers = True
        self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        self._stop_header_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:  # they came in one read: complete, but too large all the same
            self._answer(431, self._too_large(str(size)))
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            self._answer(
                408,
                f"the request's headers did not arrive within {self.header_timeout_s:g} s "
                "(FLEET_API_HEADER_TIMEOUT_S): send them at once",
            )
        else:  # an idle connection, no request begun: nothing to answer
            self._answered = True
            self.transport.close()

    # -- answers -----------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not an HTTP request (or to our _Refused: answered)."""
        if not self._answered:
            self._answer(400, f"{msg} {self._not_http_hint()}")

    def _too_large(self, size: str) -> str:
        return (
            f"the request's headers are {size} bytes, over the limit of {self.max_header_bytes} "
            "(FLEET_API_MAX_HEADER_BYTES): send fewer or shorter headers"
        )

    @staticmethod
    def _not_http_hint() -> str:
        return "Send HTTP/1.1: a request line, headers, an empty line."

    def _answer(self, status: int, detail: str) -> None:
        """Write a JSON error and close the connection (before or instead of the app)."""
        self._answered = True
        self._stop_header_timer()
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def bounded_http(max_header_bytes: int, header_timeout_s: float) -> type[BoundedHttpProtocol]:
    """The protocol class for uvicorn's `http=`, with these limits."""
    limits = {"max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s}
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), limits)
