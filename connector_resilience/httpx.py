"""``ResilientTransport``: retries, a breaker, metrics and auth for an httpx client.

::

    client = httpx.Client(base_url="https://api.github.com",
                          transport=ResilientTransport("github"))
    aclient = httpx.AsyncClient(transport=ResilientTransport("github"))

One class serves ``httpx.Client`` and ``httpx.AsyncClient`` (and the
``httpx2`` fork's), wrapping any inner transport: the client library's default
HTTP transport when ``transport=None``. The rules are the aiohttp
middleware's (see :mod:`connector_resilience._http`): idempotent methods only
unless the request has an idempotency key; 429/502/503/504 and rate-limit
403s, connection errors and timeouts retried; the server's requested wait
honoured exactly; a retried response closed first; a body that is a stream
(a generator, a file) sent once; ``attempt_timeout_s`` applied through the
request's ``timeout`` extension, within the deadline.

:class:`BearerAuth` is the same token handling as ``tokens=``, as an
``httpx.Auth`` for clients that prefer it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Generator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from connector_resilience._http import (
    DEFAULT_PORTS,
    DEFAULT_RETRY_STATUSES,
    IDEMPOTENT_METHODS,
    AuthOrigins,
    default_port,
    origin,
)
from connector_resilience._http_calls import HttpCalls, authenticated_async, authenticated_sync
from connector_resilience.errors import ConfigurationError

_FLAVOURS: dict[str, ModuleType] = {}
for _name in ("httpx", "httpx2"):
    with contextlib.suppress(ImportError):
        _FLAVOURS[_name] = importlib.import_module(_name)
if not _FLAVOURS:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "connector_resilience.httpx needs httpx (or its httpx2 fork): "
        "pip install 'connector-resilience[httpx]'"
    )

if TYPE_CHECKING:
    import httpx
else:  # the types below name httpx's; httpx2's are used alike at run time
    httpx = _FLAVOURS.get("httpx") or _FLAVOURS["httpx2"]

if TYPE_CHECKING:
    from connector_resilience._engine import RetryEvent
    from connector_resilience.backends import Store
    from connector_resilience.circuit import StateChange
    from connector_resilience.errors import CircuitOpenError
    from connector_resilience.oauth2 import TokenSource
    from connector_resilience.policy import Policy

__all__ = ["DEFAULT_RETRY_STATUSES", "IDEMPOTENT_METHODS", "BearerAuth", "ResilientTransport"]


def _classes(*names: str) -> tuple[type[BaseException], ...]:
    """The exception classes ``names`` of every httpx flavour installed."""
    return tuple(getattr(module, name) for module in _FLAVOURS.values() for name in names)


#: Worth another attempt: timeouts, network errors, the server hanging up.
_TRANSIENT_ERRORS = _classes("TimeoutException", "NetworkError", "RemoteProtocolError")
#: The caller's mistakes: neither success nor failure for the breaker.
_CALLER_ERRORS = _classes("UnsupportedProtocol", "LocalProtocolError", "InvalidURL")
#: Each installed flavour's transport bases, so either library's client takes it.
_BASES: tuple[type, ...] = tuple(
    base
    for module in _FLAVOURS.values()
    for base in (module.BaseTransport, module.AsyncBaseTransport)
)
#: Each flavour's Auth: httpx accepts an auth= only if it is an instance of its own.
_AUTH_BASES: tuple[type, ...] = tuple(module.Auth for module in _FLAVOURS.values())


def _replay_refusal(request: httpx.Request) -> str | None:
    """Why ``request``'s body cannot be sent again (it is a stream), or ``None``."""
    try:
        request.content  # noqa: B018 - raises when the body is a stream, not bytes
    except Exception:  # httpx.RequestNotRead, of whichever flavour
        return (
            f"{request.method} {request.url.host}: the request body is a stream "
            "(a generator or a file) that has been sent; pass bytes to make it retryable"
        )
    return None


def _with_timeout(request: httpx.Request, timeout_s: float) -> None:
    """Bound every phase of the next send (connect, each read and write, the pool wait)."""
    current = request.extensions.get("timeout") or {}
    bounded = {}
    for phase in ("connect", "read", "write", "pool"):
        given = current.get(phase)
        bounded[phase] = timeout_s if given is None else min(given, timeout_s)
    request.extensions = {**request.extensions, "timeout": bounded}


def _set_bearer(request: httpx.Request) -> Callable[[str], None]:
    def set_token(token: str) -> None:
        request.headers["Authorization"] = f"Bearer {token}"

    return set_token


def _origin(url: httpx.URL) -> str:
    return origin(url.scheme, url.host, url.port)


#: An inner transport's ``handle_request`` or ``handle_async_request``.
_Send = Callable[[Any], Any]


def _close(response: Any) -> None:
    response.close()


def _aclose(response: Any) -> Any:
    return response.aclose()


class ResilientTransport(*_BASES):  # type: ignore[misc]
    """An httpx transport, sync and async, that makes every request of a client resilient.

    Args:
        connector: the connector's name (metrics, breaker, policy overrides).
        transport: the transport to send through (sync, async, or an object
            that is both); ``None``: the client library's default HTTP
            transport, made on first use (``httpx`` or ``httpx2``, whichever
            the client is). Client options such as ``verify=`` and
            ``limits=`` belong on this transport then, as with any custom
            httpx transport.
        policy: settings (the environment's policy, read at the first request, if ``None``).
        store: a store or store URL (the policy's store if ``None``).
        tokens: a token manager (``connector_resilience.oauth2.TokenManager``);
            adds ``Authorization: Bearer`` and refreshes once on a 401.
        retry_statuses: response statuses that are retried.
        retry_methods: methods retried without an idempotency key.
        idempotency_header: the header that makes a POST or PATCH retryable.
        add_idempotency_key: add that header (a random UUID) to POST and PATCH
            requests that lack one.
        breaker_per_host: one breaker per host instead of one per connector.
        auth_origins: origins that may receive the token; by default the
            origin of the first request.
        max_attempts: attempts per request (``RETRY_MAX_ATTEMPTS`` if ``None``).
        deadline_s: budget per request, on top of the policy's deadline.
        attempt_timeout_s: longest time one attempt may take
            (``RETRY_ATTEMPT_TIMEOUT_S`` if ``None``), capped by the remaining deadline.
        metrics: record every attempt.
        on_retry: called with a :class:`~connector_resilience.RetryEvent` before a retry.
        on_state_change: called when the breaker moves.
        on_reject: called with the :class:`CircuitOpenError` of a refused request.
        fallback: called with the exception when the circuit is open, the rate
            limiter, bulkhead or retry budget refuses, or retries run out; what
            it returns (an ``httpx.Response``, awaited first on an async client
            when it is awaitable) is the answer.
    """

    def __init__(
        self,
        connector: str,
        *,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        policy: Policy | None = None,
        store: Store | str | None = None,
        tokens: TokenSource | None = None,
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
        self._given = transport
        # The given transport's sends, looked up once rather than on every request.
        self._given_send: _Send | None = getattr(transport, "handle_request", None)
        self._given_asend: _Send | None = getattr(transport, "handle_async_request", None)
        self._defaults: dict[tuple[str, bool], Any] = {}  # (flavour, async) -> transport
        self._calls: HttpCalls[httpx.Request, _Send, httpx.Response] = HttpCalls(
            connector,
            send=self._attempt,
            asend=self._aattempt,
            direct=tokens is None,  # an attempt is then the inner transport's own
            can_retry=_replay_refusal,
            discard=_close,
            adiscard=_aclose,
            retry_statuses=retry_statuses,
            retry_methods=retry_methods,
            idempotency_header=idempotency_header,
            add_idempotency_key=add_idempotency_key,
            auth_origins=auth_origins,
            policy=policy,
            store=store,
            transient=_TRANSIENT_ERRORS,
            permanent=(),
            caller_errors=_CALLER_ERRORS,
            status_attribute="status_code",
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
        return f"ResilientTransport({self.connector!r})"

    @property
    def tokens(self) -> TokenSource | None:
        """The token manager given as ``tokens=``, if any."""
        return self._tokens

    # Inner transports

    def _inner(self, request: httpx.Request, is_async: bool) -> Any:
        if self._given is not None:
            return self._given
        flavour = type(request).__module__.partition(".")[0]
        inner = self._defaults.get((flavour, is_async))
        if inner is None:
            module = _FLAVOURS.get(flavour) or httpx
            inner = module.AsyncHTTPTransport() if is_async else module.HTTPTransport()
            self._defaults[(flavour, is_async)] = inner
        return inner

    def close(self) -> None:
        """Close the inner transport (httpx calls this when the client closes)."""
        close = getattr(self._given, "close", None)
        if close is not None:
            close()
        for (_, is_async), inner in list(self._defaults.items()):
            if not is_async:
                inner.close()

    async def aclose(self) -> None:
        """Close the inner transport (httpx awaits this when the async client closes)."""
        aclose = getattr(self._given, "aclose", None)
        if aclose is not None:
            await aclose()
        for (_, is_async), inner in list(self._defaults.items()):
            if is_async:
                await inner.aclose()

    # Requests

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with retries, the breaker, metrics and auth (``httpx.Client``)."""
        plain = self._given_send
        if plain is None:
            inner = self._given if self._given is not None else self._inner(request, False)
            plain = getattr(inner, "handle_request", None)
            if plain is None:
                raise TypeError(f"{inner!r} is an async transport; use it with httpx.AsyncClient")
        url = request.url
        port = url.port  # None: the scheme's default
        if port is None:
            port = DEFAULT_PORTS.get(url.scheme) or default_port(url.scheme)
        return self._calls.call_sync(request.method, url.host, port, request, plain)

    def handle_async_request(self, request: httpx.Request) -> Awaitable[httpx.Response]:
        """Send ``request`` with retries, the breaker, metrics and auth (``httpx.AsyncClient``)."""
        # The flow's coroutine itself, not one awaiting it: a coroutine less per request.
        plain = self._given_asend
        if plain is None:
            inner = self._given if self._given is not None else self._inner(request, True)
            plain = getattr(inner, "handle_async_request", None)
            if plain is None:
                raise TypeError(f"{inner!r} is a sync transport; use it with httpx.Client")
        url = request.url
        port = url.port  # None: the scheme's default
        if port is None:
            port = DEFAULT_PORTS.get(url.scheme) or default_port(url.scheme)
        return self._calls.call_async(request.method, url.host, port, request, plain)

    def _attempt(
        self, request: httpx.Request, plain: _Send, timeout_s: float | None
    ) -> httpx.Response:
        """One attempt with the inner transport's ``plain`` send, bounded by ``timeout_s``."""
        if timeout_s is not None:
            _with_timeout(request, timeout_s)
        tokens = self._tokens
        if tokens is None or not self._authenticates(request):
            response: httpx.Response = plain(request)
            return response
        answer: httpx.Response = authenticated_sync(
            tokens,
            functools.partial(plain, request),
            _set_bearer(request),
            rewind=functools.partial(_replay_refusal, request),
            discard=_close,
        )
        return answer

    def _aattempt(
        self, request: httpx.Request, plain: _Send, timeout_s: float | None
    ) -> Awaitable[httpx.Response]:
        """:meth:`_attempt` with an async inner transport."""
        if timeout_s is not None:
            _with_timeout(request, timeout_s)
        tokens = self._tokens
        if tokens is None or not self._authenticates(request):
            response: Awaitable[httpx.Response] = plain(request)
            return response
        return authenticated_async(
            tokens,
            functools.partial(plain, request),
            _set_bearer(request),
            rewind=functools.partial(_replay_refusal, request),
            discard=_aclose,
        )

    def _authenticates(self, request: httpx.Request) -> bool:
        """Whether ``request`` may carry the token; a request that may not loses any it has."""
        if self._calls.rules.auth_origins.allows(_origin(request.url), self.connector):
            return True
        request.headers.pop("Authorization", None)
        return False


class BearerAuth(*_AUTH_BASES):  # type: ignore[misc]
    """``Authorization: Bearer`` from a token manager, as an ``httpx.Auth``.

    The token goes only to ``auth_origins`` (by default the origin of the first
    request); a 401 makes the manager refresh once (single-flight) and the
    request is sent once more, unless its body was a stream.

    Example::

        client = httpx.Client(auth=BearerAuth(manager), transport=ResilientTransport("crm"))

    Args:
        tokens: a token manager (``connector_resilience.oauth2.TokenManager``).
        auth_origins: origins that may receive the token.
    """

    def __init__(self, tokens: TokenSource, *, auth_origins: Collection[str] | None = None) -> None:
        self.tokens = tokens
        self._origins = AuthOrigins(auth_origins)

    def __repr__(self) -> str:
        return f"BearerAuth({self._origins!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        """The flow for ``httpx.Client`` (the token manager's sync methods)."""
        if not self._origins.allows(_origin(request.url)):
            yield request
            return
        token = self.tokens.get_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and _replay_refusal(request) is None:
            token = self.tokens.refresh_after_unauthorized(token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow for ``httpx.AsyncClient`` (the token manager's async methods)."""
        if not self._origins.allows(_origin(request.url)):
            yield request
            return
        token = await self.tokens.aget_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and _replay_refusal(request) is None:
            token = await self.tokens.arefresh_after_unauthorized(token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
