"""``ResilienceMiddleware``: retries, a breaker, metrics and auth for an aiohttp session.

::

    async with aiohttp.ClientSession(
        base_url="https://api.github.com",
        middlewares=(ResilienceMiddleware("github", tokens=manager),),
    ) as session:
        async with session.get("/user") as response:
            ...

Per request:

* Only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are
  retried, and POST or PATCH only when they carry an ``Idempotency-Key``
  header (``add_idempotency_key=True`` adds one).
* Retried: 429, 502, 503 and 504 responses, connection errors, server
  disconnects and socket timeouts; never TLS or certificate errors, invalid
  URLs or too many redirects. A response's ``Retry-After`` (seconds or an
  HTTP-date) replaces the computed backoff, capped at ``RETRY_CAP_MS``.
* No retry wait may end past the session's ``ClientTimeout.total`` (nor the
  policy's deadline); a response that is retried is released first, so its
  connection goes back to the pool; a body that was a one-shot stream is
  never re-sent (the last outcome is returned, with a warning).
* The connector's circuit breaker (or one per host) refuses calls while open
  without touching the network; every attempt is recorded with method, host
  and status code (never the URL).
* With ``tokens=``, ``Authorization: Bearer`` is added for the API's origin
  only (never for another origin after a redirect); a 401 makes the manager
  refresh once and the request is sent once more.

Place it last in ``middlewares=``, closest to the network, so that middlewares
before it (logging, signing) see one logical request and it retries only the
network exchange. aiohttp runs middlewares again for each redirect hop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

try:
    import aiohttp
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from connector_resilience.errors import ConfigurationError

    raise ConfigurationError(
        "connector_resilience.aiohttp needs aiohttp >= 3.12: "
        "pip install 'connector-resilience[aiohttp]'"
    ) from exc

from connector_resilience import _clock
from connector_resilience._engine import (
    CallSpec,
    Engine,
    EngineOptions,
    RetryEvent,
    build_engine,
    run_async,
)
from connector_resilience.errors import CircuitOpenError
from connector_resilience.retry import retry_after_from

if TYPE_CHECKING:
    from connector_resilience.backends import Store
    from connector_resilience.circuit import StateChange
    from connector_resilience.policy import Policy

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "AsyncTokenSource",
    "ResilienceMiddleware",
]

logger = logging.getLogger("connector_resilience.aiohttp")

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})
#: Responses that may ask the whole connector to pause (a rate limit's 403 too).
_PAUSE_STATUSES = frozenset({429, 403})
#: Methods that are retried only when they carry an idempotency key.
_KEYED_METHODS = frozenset({"POST", "PATCH"})

#: Failures that are never worth repeating: the request itself is wrong, or
#: the peer is not who it must be.
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientSSLError,
    aiohttp.ClientConnectorCertificateError,
    aiohttp.InvalidURL,
    aiohttp.TooManyRedirects,
)
#: The caller's mistakes: they say nothing about the service's health.
_CALLER_ERRORS: tuple[type[BaseException], ...] = (aiohttp.InvalidURL, aiohttp.TooManyRedirects)


def is_transient_client_error(exc: BaseException) -> bool:
    """Connection errors, server disconnects and timeouts; not TLS, bad URLs or redirect loops."""
    if isinstance(exc, _PERMANENT_ERRORS):
        return False
    return isinstance(exc, aiohttp.ClientConnectionError | asyncio.TimeoutError)


class AsyncTokenSource(Protocol):
    """What the middleware needs of a token manager (``connector_resilience.oauth2``)."""

    async def aget_token(self) -> str:
        """A valid access token, refreshed first if it is about to expire."""
        ...

    async def arefresh_after_unauthorized(self, rejected_access_token: str) -> str:
        """A new token after a 401 with ``rejected_access_token`` (refreshed at most once)."""
        ...


class ResilienceMiddleware:
    """An aiohttp client middleware that makes every request of a session resilient.

    Args:
        connector: the connector's name (metrics, breaker, policy overrides).
        policy: settings (the environment's policy, read at the first request, if ``None``).
        store: a store or store URL (the policy's store if ``None``).
        tokens: a token manager; adds ``Authorization: Bearer`` and handles 401.
        retry_statuses: response statuses that are retried.
        retry_methods: methods retried without an idempotency key.
        idempotency_header: the header that makes a POST or PATCH retryable.
        add_idempotency_key: add that header (a random UUID) to POST and PATCH
            requests that lack one, making them retryable.
        breaker_per_host: one breaker per host instead of one per connector.
        auth_origins: origins (``https://api.example.com``) that may receive the
            token; by default the origin of the first request the middleware sees.
        max_attempts: attempts per request (``RETRY_MAX_ATTEMPTS`` if ``None``).
        deadline_s: budget per request, on top of the session's total timeout.
        metrics: record every attempt.
        on_retry: called with a :class:`~connector_resilience.RetryEvent` before a retry.
        on_state_change: called when the breaker moves.
        on_reject: called with the :class:`CircuitOpenError` of a refused request.
        fallback: called with the exception when the circuit is open, the rate
            limiter, bulkhead or retry budget refuses, or retries run out; what
            it returns (a ``ClientResponse``, sync or awaited) is the answer.
    """

    def __init__(
        self,
        connector: str,
        *,
        policy: Policy | None = None,
        store: Store | str | None = None,
        tokens: AsyncTokenSource | None = None,
        retry_statuses: Collection[int] = DEFAULT_RETRY_STATUSES,
        retry_methods: Collection[str] = IDEMPOTENT_METHODS,
        idempotency_header: str = "Idempotency-Key",
        add_idempotency_key: bool = False,
        breaker_per_host: bool = False,
        auth_origins: Collection[str] | None = None,
        max_attempts: int | None = None,
        deadline_s: float | None = None,
        metrics: bool = True,
        on_retry: Callable[[RetryEvent], object] | None = None,
        on_state_change: Callable[[StateChange], object] | None = None,
        on_reject: Callable[[CircuitOpenError], object] | None = None,
        fallback: Callable[[BaseException], Any] | None = None,
    ) -> None:
        if not connector:
            raise ValueError("ResilienceMiddleware needs a connector name")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        statuses = frozenset(retry_statuses)
        self.connector = connector
        self.tokens = tokens
        self.retry_methods = frozenset(m.upper() for m in retry_methods)
        self.idempotency_header = idempotency_header
        self.add_idempotency_key = add_idempotency_key
        self.breaker_per_host = breaker_per_host
        self.deadline_s = deadline_s
        self._auth_origins = {o.rstrip("/") for o in auth_origins} if auth_origins else None
        self._policy = policy
        self._store = store
        self._options = EngineOptions(
            retry_on=is_transient_client_error,
            retry_on_result=lambda response: response.status in statuses,
            failure_result=lambda response: response.status >= 500 or response.status in statuses,
            failure_on=None,
            ignore=_CALLER_ERRORS,
            max_attempts=max_attempts,
            deadline_s=None,
            wait=None,
            stop=None,
            breaker=True,
            metrics=metrics,
            labels=None,
            on_retry=on_retry,
            on_state_change=on_state_change,
            on_reject=on_reject,
            fallback=fallback,
        )
        self._engines: dict[tuple[str, str | None], Engine] = {}
        self._statuses = statuses
        self._label_cache: dict[tuple[str, str, int | None], dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"ResilienceMiddleware({self.connector!r})"

    async def __call__(
        self, request: ClientRequest, handler: ClientHandlerType, *, _admitted: bool = False
    ) -> ClientResponse:
        """Send ``request`` through ``handler`` with retries, the breaker, metrics and auth."""
        host = request.url.host or ""
        key = (request.method, host if self.breaker_per_host else None)
        # Building an engine opens the store and reads the breaker (network I/O
        # for Redis): the first request of a kind does it in a worker thread.
        engine = self._engines.get(key)
        if engine is None:
            engine = await asyncio.to_thread(self._engine, *key)
        if engine.admission is not None and not _admitted:
            try:
                return await engine.admission.acall(self.__call__, request, handler, _admitted=True)
            except Exception as exc:
                if not engine.wants_fallback(exc):
                    raise
                return await self._fallback(engine, exc)
        method = request.method
        breaker = engine.breaker
        probe = None
        if breaker is not None and _clock.monotonic() >= breaker.admit_until:
            try:
                probe = await breaker.aacquire()
            except CircuitOpenError as exc:
                engine.rejected(exc, self._labels(method, host, None))
                if engine.fallback is None or _admitted:
                    raise
                return await self._fallback(engine, exc)
        if self.add_idempotency_key and method in _KEYED_METHODS:
            # Before the first send, so that every attempt carries the same key.
            request.headers.setdefault(self.idempotency_header, str(uuid.uuid4()))
        # The first attempt runs inline, as @resilient's does: the retry plan is
        # only built once an attempt fails or answers with a retryable status.
        start = time.perf_counter()
        try:
            response = await (
                self._send(request, handler) if self.tokens is not None else handler(request)
            )
        except BaseException as exc:
            first: tuple[bool, Any, float, float] = (False, exc, start, time.perf_counter())
        else:
            end = time.perf_counter()
            status = response.status
            if status in _PAUSE_STATUSES:
                await self._learn_pause(engine, response)
            if status < 500 and status not in self._statuses:
                if engine.succeeded(start, end, probe, self._labels(method, host, status)):
                    assert breaker is not None
                    await breaker.areport(probe, "success", duration_ms=(end - start) * 1000.0)
                return response
            first = (True, response, start, end)
        spec = CallSpec(
            max_attempts=None if self._retryable(request) else 1,
            deadline_s=_min_or_none(self.deadline_s, _session_total_timeout(request)),
            labels=self._labels(method, host, None),
            can_retry=lambda: _replay_refusal(request),
        )
        try:
            retried: ClientResponse = await run_async(
                engine.plan(probe, first, spec),
                self._send_learning,
                (engine, request, handler),
                {},
                engine,
                discard=_release,
            )
        except Exception as exc:
            if _admitted or not engine.wants_fallback(exc):
                raise
            return await self._fallback(engine, exc)
        return retried

    async def _send_learning(
        self, engine: Engine, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        """A retry's attempt: :meth:`_send`, then learn a pause the server asked for."""
        response = await self._send(request, handler)
        if response.status in _PAUSE_STATUSES:
            await self._learn_pause(engine, response)
        return response

    async def _learn_pause(self, engine: Engine, response: ClientResponse) -> None:
        # Until the shared HTTP rules land, Retry-After alone says when to come back.
        seconds = retry_after_from(response)
        if seconds is not None and seconds > 0:
            await engine.load.apause(until=_clock.wall() + seconds)

    async def _fallback(self, engine: Engine, exc: BaseException) -> ClientResponse:
        assert engine.fallback is not None
        engine.refused("FallbackUsed")
        answer = engine.fallback(exc)
        response: ClientResponse = await answer if inspect.isawaitable(answer) else answer
        return response

    def _labels(self, method: str, host: str, status: int | None) -> dict[str, str]:
        """Metric labels, made once per (method, host, status): a request's hot path."""
        key = (method, host, status)
        labels = self._label_cache.get(key)
        if labels is None:
            labels = {"method": method, "host": host}
            if status is not None:
                labels["status_code"] = str(status)
            if len(self._label_cache) < 10_000:  # hosts and statuses are few; be safe anyway
                self._label_cache[key] = labels
        return labels

    def _engine(self, method: str, host: str | None) -> Engine:
        key = (method, host)
        engine = self._engines.get(key)
        if engine is None:
            engine = build_engine(
                connector=self.connector,
                operation=method,
                policy=self._policy,
                store=self._store,
                options=self._options,
                breaker_name=f"{self.connector}@{host}" if host is not None else None,
            )
            self._engines[key] = engine
        return engine

    def _retryable(self, request: ClientRequest) -> bool:
        method = request.method.upper()
        if method in self.retry_methods:
            return True
        return method in _KEYED_METHODS and self.idempotency_header in request.headers

    async def _send(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """One attempt: authenticate, send, and on a 401 refresh once and send once more."""
        tokens = self.tokens
        if tokens is None or not self._may_authenticate(request):
            if tokens is not None:
                request.headers.pop(hdrs.AUTHORIZATION, None)
            return await handler(request)
        token = await tokens.aget_token()
        request.headers[hdrs.AUTHORIZATION] = f"Bearer {token}"
        response = await handler(request)
        if response.status != 401:
            return response
        if _replay_refusal(request) is not None:
            return response  # the body is gone: the 401 is the answer
        response.release()
        token = await tokens.arefresh_after_unauthorized(token)
        request.headers[hdrs.AUTHORIZATION] = f"Bearer {token}"
        return await handler(request)

    def _may_authenticate(self, request: ClientRequest) -> bool:
        origin = str(request.url.origin())
        if self._auth_origins is None:
            # Trust on first use: the connector's API is where its first request goes.
            self._auth_origins = {origin}
            logger.debug("%s: tokens go to %s only", self.connector, origin)
        return origin in self._auth_origins


def _release(response: Any) -> None:
    if isinstance(response, ClientResponse):
        response.release()


def _replay_refusal(request: ClientRequest) -> str | None:
    body = request.body
    if isinstance(body, aiohttp.payload.Payload) and body.consumed:
        return (
            f"{request.method} {request.url.host}: the request body was a one-shot stream "
            "that has been sent; pass bytes or a seekable file to make it retryable"
        )
    return None


def _session_total_timeout(request: ClientRequest) -> float | None:
    session = request.session
    timeout = getattr(session, "timeout", None) if session is not None else None
    total = getattr(timeout, "total", None)
    return float(total) if isinstance(total, int | float) and total > 0 else None


def _min_or_none(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None
