"""One small driver per HTTP client, so one behavioural suite runs against every adapter.

Each driver builds its client with our adapter (aiohttp's middleware, httpx's
and httpx2's transport, requests' adapter) and answers ``await request(...)``
the same way. Sync clients run in a worker thread, so the test's event loop
keeps serving the local :class:`~tests.http_server.FaultServer`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import httpx2
import requests

from connector_resilience.aiohttp import ResilienceMiddleware
from connector_resilience.httpx import ResilientTransport
from connector_resilience.requests import ResilientAdapter

#: Every client the shared suite runs against.
KINDS = ("aiohttp", "httpx", "httpx-async", "httpx2", "requests")


@dataclass
class Answer:
    """A response as the caller saw it."""

    status: int
    text: str
    headers: dict[str, str]  #: lower-case names


class Driver:
    """A client of one kind with our adapter installed.

    Args:
        kind: one of :data:`KINDS`.
        options: the adapter's keyword options (the same for every kind).
    """

    def __init__(
        self, kind: str, connector: str, *, fallback_url: str | None = None, **options: Any
    ) -> None:
        self.kind = kind
        self.adapter: Any
        self._client: Any
        #: What the fallback was called with (``fallback_url``: it answers from there).
        self.fallback_seen: list[BaseException] = []
        if fallback_url is not None:
            options["fallback"] = self._fallback_from(fallback_url)
        if kind == "aiohttp":
            self.adapter = ResilienceMiddleware(connector, **options)
            self._client = None  # made inside the running loop
        elif kind in ("httpx", "httpx-async", "httpx2"):
            self.adapter = ResilientTransport(connector, **options)
            module: Any = httpx2 if kind == "httpx2" else httpx
            factory = module.AsyncClient if kind == "httpx-async" else module.Client
            self._client = factory(transport=self.adapter, follow_redirects=True)
        elif kind == "requests":
            self.adapter = ResilientAdapter(connector, **options)
            self._client = requests.Session()
            self._client.mount("http://", self.adapter)
        else:
            raise ValueError(kind)

    @property
    def timeout_errors(self) -> tuple[type[BaseException], ...]:
        """What this client raises when an attempt runs out of time."""
        if self.kind == "aiohttp":
            return (TimeoutError, aiohttp.ServerTimeoutError)
        if self.kind == "requests":
            return (requests.Timeout,)
        return (httpx.TimeoutException, httpx2.TimeoutException)

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        stream: list[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Send one request; ``stream`` sends the body as a one-shot generator."""
        if self.kind == "aiohttp":
            return await self._aiohttp(method, url, body, stream, headers)
        if self.kind == "httpx-async":
            content: Any = body if stream is None else _agen(stream)
            r = await self._client.request(method, url, content=content, headers=headers)
            return Answer(r.status_code, r.text, _lower(r.headers))

        def send() -> Answer:
            if self.kind == "requests":
                data: Any = body if stream is None else _gen(stream)
                r = self._client.request(method, url, data=data, headers=headers, timeout=10)
                return Answer(r.status_code, r.text, _lower(r.headers))
            content: Any = body if stream is None else _gen(stream)
            r = self._client.request(method, url, content=content, headers=headers)
            return Answer(r.status_code, r.text, _lower(r.headers))

        return await asyncio.to_thread(send)

    async def _aiohttp(
        self,
        method: str,
        url: str,
        body: bytes | None,
        stream: list[bytes] | None,
        headers: dict[str, str] | None,
    ) -> Answer:
        if self._client is None:
            self._client = aiohttp.ClientSession(middlewares=(self.adapter,))
        data: Any = body if stream is None else _agen(stream)
        async with self._client.request(method, url, data=data, headers=headers) as r:
            return Answer(r.status, await r.text(), _lower(r.headers))

    def _fallback_from(self, url: str) -> Any:
        """A fallback that answers with a plain client of this kind fetching ``url``."""
        seen = self.fallback_seen
        if self.kind == "aiohttp":

            async def from_aiohttp(exc: BaseException) -> aiohttp.ClientResponse:
                seen.append(exc)
                async with aiohttp.ClientSession() as session:
                    response = await session.get(url)
                    await response.read()  # the body outlives the session
                    return response

            return from_aiohttp
        if self.kind == "requests":

            def from_requests(exc: BaseException) -> requests.Response:
                seen.append(exc)
                return requests.get(url, timeout=10)

            return from_requests
        module: Any = httpx2 if self.kind == "httpx2" else httpx
        if self.kind == "httpx-async":

            async def from_httpx_async(exc: BaseException) -> httpx.Response:
                seen.append(exc)
                async with httpx.AsyncClient() as client:
                    return await client.get(url)

            return from_httpx_async

        def from_httpx(exc: BaseException) -> Any:
            seen.append(exc)
            with module.Client() as client:
                return client.get(url)

        return from_httpx

    async def close(self) -> None:
        """Close the client (and through it, the adapter)."""
        if self._client is None:
            return
        if self.kind in ("aiohttp", "httpx-async"):
            await (self._client.close() if self.kind == "aiohttp" else self._client.aclose())
        else:
            self._client.close()


def _gen(chunks: list[bytes]) -> Iterator[bytes]:
    yield from chunks


async def _agen(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}
