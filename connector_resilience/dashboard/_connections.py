"""Connection limits of the dashboard server: a deadline for the request head, a connection cap.

The server's own keep-alive timer does not cover a client that opens a
connection and sends part of a request head (or nothing) and stops: such
half-open connections would be held for ever, one file descriptor each. The
guard wraps the server's protocol factory: a connection that has not sent a
whole request head within ``header_timeout_s`` is closed, and beyond
``max_connections`` open at once a new one is answered 503 and closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["ConnectionGuard"]

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
    b"Retry-After: 1\r\n\r\n"
)
_HEAD_END = b"\r\n\r\n"


class ConnectionGuard:
    """A protocol factory for ``loop.create_server`` that limits another one.

    Args:
        factory: the server's protocol factory (aiohttp's ``AppRunner.server``).
        max_connections: connections open at once; more are refused with 503.
        header_timeout_s: seconds a connection has to send its first request head.

    Attributes:
        open: connections open now.
        refused: connections refused for the cap so far.
        timed_out: connections closed for a late request head so far.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        max_connections: int,
        header_timeout_s: float,
    ) -> None:
        self._factory = factory
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open = 0
        self.refused = 0
        self.timed_out = 0

    def __call__(self) -> asyncio.Protocol:
        # Counted here, not in connection_made: the loop may accept a burst of
        # connections (calling this for each) before any of them is made.
        if self.open >= self.max_connections:
            self.refused += 1
            return _Refused()
        self.open += 1
        return _Guarded(self, self._factory())


class _Refused(asyncio.Protocol):
    """Says 503 and hangs up: the cap is reached."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class _Guarded(asyncio.Protocol):
    """Passes everything to the server's protocol; closes the connection on a late head."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self._inner = inner
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._counted = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout_s, self._late)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            # Only the first head is timed here: later idle time is the server's
            # keep-alive timeout.
            seen = self._tail + data
            if _HEAD_END in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-(len(_HEAD_END) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _late(self) -> None:
        self._timer = None
        self._guard.timed_out += 1
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows
