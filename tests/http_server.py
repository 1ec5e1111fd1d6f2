"""A real aiohttp server on 127.0.0.1 with programmable faults, for middleware tests.

Each path answers from a script of actions, then from a default; every request
is counted server-side with its method and headers.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Action:
    """What the server does with one request.

    Attributes:
        status: the status to answer.
        headers: extra response headers (Retry-After, Location...).
        delay_s: wait before answering (beyond the client's sock_read: a timeout).
        reset: drop the connection without answering.
        body: the response body.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    reset: bool = False
    body: str = "ok"


@dataclass
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FaultServer:
    """Serve scripted answers; ``down`` makes every request a 503."""

    def __init__(self) -> None:
        self.scripts: dict[str, collections.deque[Action]] = collections.defaultdict(
            collections.deque
        )
        self.defaults: dict[str, Action] = {}
        self.seen: list[Seen] = []
        self.down = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    def script(self, path: str, actions: Iterable[Action], *, then: Action | None = None) -> None:
        """Answer the next requests to ``path`` with ``actions``, then with ``then``."""
        self.scripts[path].extend(actions)
        if then is not None:
            self.defaults[path] = then

    def hits(self, path: str | None = None) -> int:
        """Requests received (to ``path``, or in all)."""
        return sum(1 for s in self.seen if path is None or s.path == path)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        if self.down:
            return web.Response(status=503, text="down")
        script = self.scripts.get(request.path)
        action = script.popleft() if script else self.defaults.get(request.path, Action())
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        if action.reset:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        return web.Response(status=action.status, text=action.body, headers=action.headers)

    async def start(self) -> FaultServer:
        """Listen on a free 127.0.0.1 port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        """Stop listening and close connections."""
        if self._runner is not None:
            await self._runner.cleanup()


async def fault_server() -> AsyncIterator[FaultServer]:
    """For pytest fixtures: a started server, stopped afterwards."""
    server = await FaultServer().start()
    try:
        yield server
    finally:
        await server.stop()
