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
* Retried: 429, 502, 503 and 504 responses, rate-limit 403s (GitHub's),
  connection errors, server disconnects and socket timeouts; never TLS or
  certificate errors, invalid URLs or too many redirects. When the server
  says when to come back (``Retry-After``, rate-limit fields) the retry waits
  exactly that long, plus a small positive jitter; a server asking for longer
  than ``RETRY_CAP_MS`` or the remaining deadline gets its response returned
  at once. ``Stripe-Should-Retry`` overrules both ways.
* No retry wait may end past the session's ``ClientTimeout.total`` (nor the
  policy's deadline); each attempt is bounded by ``attempt_timeout_s``
  (``RETRY_ATTEMPT_TIMEOUT_S``) and the remaining deadline; a response that
  is retried is released first, so its connection goes back to the pool; a
  body that was a one-shot stream is never re-sent (the last outcome is
  returned, with a warning).
* The connector's circuit breaker (or one per host) refuses calls while open
  without touching the network; every attempt is recorded with method, host,
  port and status code (never the URL).
* With ``tokens=``, ``Authorization: Bearer`` is added for the API's origin
  only (never for another origin after a redirect); a 401 makes the manager
  refresh once and the request is sent once more.

Place it last in ``middlewares=``, closest to the network, so that middlewares
before it (logging, signing) see one logical request and it retries only the
network exchange. aiohttp runs middlewares again for each redirect hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

try:
    import aiohttp
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from connector_resilience.errors import ConfigurationError

    raise ConfigurationError(
        "connector_resilience.aiohttp needs aiohttp >= 3.12: "
        "pip install 'connector-resilience[aiohttp]'"
    ) from exc

from connector_resilience._http import (
    DEFAULT_RETRY_STATUSES,
    IDEMPOTENT_METHODS,
    AsyncTokenSource,
    is_transient_error,
    origin,
)
from connector_resilience._http_calls import HttpCalls, authenticated_async

if TYPE_CHECKING:
    from connector_resilience._engine import RetryEvent
    from connector_resilience.backends import Store
    from connector_resilience.circuit import StateChange
    from connector_resilience.errors import CircuitOpenError
    from connector_resilience.policy import Policy

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "AsyncTokenSource",
    "ResilienceMiddleware",
]

#: Worth another attempt: the connection failed, the server hung up, a timeout.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    asyncio.TimeoutError,
)
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
    return is_transient_error(exc, transient=_TRANSIENT_ERRORS, permanent=_PERMANENT_ERRORS)


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
        attempt_timeout_s: longest time one attempt may take
            (``RETRY_ATTEMPT_TIMEOUT_S`` if ``None``), capped by the remaining deadline.
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
        attempt_timeout_s: float | None = None,
        metrics: bool = True,
        on_retry: Callable[[RetryEvent], object] | None = None,
        on_state_change: Callable[[StateChange], object] | None = None,
        on_reject: Callable[[CircuitOpenError], object] | None = None,
        fallback: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self.connector = connector
        self._tokens = tokens
        self._calls: HttpCalls[ClientRequest, ClientHandlerType, ClientResponse] = HttpCalls(
            connector,
            asend=self._attempt,
            direct=tokens is None,  # an attempt is then handler(request)
            can_retry=_replay_refusal,
            discard=_release,
            client_deadline_s=_session_total_timeout,
            retry_statuses=retry_statuses,
            retry_methods=retry_methods,
            idempotency_header=idempotency_header,
            add_idempotency_key=add_idempotency_key,
            auth_origins=auth_origins,
            policy=policy,
            store=store,
            transient=_TRANSIENT_ERRORS,
            permanent=_PERMANENT_ERRORS,
            caller_errors=_CALLER_ERRORS,
            status_attribute="status",
            breaker_per_host=breaker_per_host,
            max_attempts=max_attempts,
            deadline_s=deadline_s,
            attempt_timeout_s=attempt_timeout_s,
            metrics=metrics,
            on_retry=on_retry,
            on_state_change=on_state_change,
            on_reject=on_reject,
            fallback=fallback,
        )

    def __repr__(self) -> str:
        return f"ResilienceMiddleware({self.connector!r})"

    @property
    def tokens(self) -> AsyncTokenSource | None:
        """The token manager given as ``tokens=``, if any."""
        return self._tokens

    def __call__(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> Awaitable[ClientResponse]:
        """Send ``request`` through ``handler`` with retries, the breaker, metrics and auth."""
        # The flow's coroutine itself, not one awaiting it: a coroutine less per request.
        url = request.url
        return self._calls.call_async(request.method, url.host or "", url.port, request, handler)

    def _attempt(
        self, request: ClientRequest, handler: ClientHandlerType, timeout_s: float | None
    ) -> Awaitable[ClientResponse]:
        """One attempt, bounded by ``timeout_s`` if given."""
        if timeout_s is not None:
            return self._bounded(request, handler, timeout_s)
        return handler(request) if self._tokens is None else self._send(request, handler)

    async def _bounded(
        self, request: ClientRequest, handler: ClientHandlerType, timeout_s: float
    ) -> ClientResponse:
        # A middleware cannot reach the session's ClientTimeout; an asyncio
        # timeout around the exchange is aiohttp's own mechanism underneath.
        async with asyncio.timeout(timeout_s):
            return await self._send(request, handler)

    async def _send(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """One attempt: authenticate, send, and on a 401 refresh once and send once more."""
        tokens = self._tokens
        if tokens is None:
            return await handler(request)
        url = request.url
        if not self._calls.rules.auth_origins.allows(
            origin(url.scheme, url.host or "", url.port), self.connector
        ):
            request.headers.pop(hdrs.AUTHORIZATION, None)
            return await handler(request)

        def set_token(token: str) -> None:
            request.headers[hdrs.AUTHORIZATION] = f"Bearer {token}"

        return await authenticated_async(
            tokens,
            lambda: handler(request),
            set_token,
            rewind=lambda: _replay_refusal(request),
            discard=_release,
        )


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
