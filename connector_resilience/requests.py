"""``ResilientAdapter``: retries, a breaker, metrics and auth for a requests session.

::

    session = requests.Session()
    session.mount("https://api.github.com/", ResilientAdapter("github"))

A ``requests.adapters.HTTPAdapter`` to mount per URL prefix, thread-safe like
the session. urllib3's own retries are off underneath (``Retry(0)``), so
attempts never multiply; the rules are the aiohttp middleware's (see
:mod:`connector_resilience._http`): idempotent methods only unless the request
has an idempotency key; 429/502/503/504 and rate-limit 403s, connection
errors and timeouts retried; the server's requested wait honoured exactly; a
retried response closed first; a file body rewound before a resend and a
generator body sent once; ``attempt_timeout_s`` applied through the send's
``timeout``, within the deadline.

:class:`BearerAuth` is the same token handling as ``tokens=``, as a
``requests.auth.AuthBase`` for sessions that prefer it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

try:
    import requests
    import urllib3
    from requests.adapters import HTTPAdapter
    from requests.auth import AuthBase
    from requests.utils import rewind_body
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from connector_resilience.errors import ConfigurationError

    raise ConfigurationError(
        "connector_resilience.requests needs requests: pip install 'connector-resilience[requests]'"
    ) from exc

from connector_resilience._http import (
    DEFAULT_RETRY_STATUSES,
    IDEMPOTENT_METHODS,
    AuthOrigins,
    SyncTokenSource,
    default_port,
    origin,
)
from connector_resilience._http_calls import HttpCalls, authenticated_sync

if TYPE_CHECKING:
    from connector_resilience._engine import RetryEvent
    from connector_resilience.backends import Store
    from connector_resilience.circuit import StateChange
    from connector_resilience.errors import CircuitOpenError
    from connector_resilience.policy import Policy

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "BearerAuth",
    "ResilientAdapter",
    "SyncTokenSource",
]

#: Worth another attempt: the connection failed (a timeout connecting included)
#: or the answer did not come in time.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
)
#: Never worth repeating: TLS, or a request that cannot be sent as written.
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.SSLError,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
)
#: The caller's mistakes: neither success nor failure for the breaker.
_CALLER_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.UnrewindableBodyError,
)
#: urllib3 underneath never retries or follows redirects: the attempts are ours.
_NO_URLLIB3_RETRIES = urllib3.Retry(total=0, read=False, redirect=False)


def _rewind(request: requests.PreparedRequest) -> str | None:
    """Make the body ready to send again, or say why it cannot be (a generator)."""
    body = request.body
    if body is None or isinstance(body, bytes | str):
        return None
    try:
        rewind_body(request)  # a file: back to where it started
    except requests.exceptions.UnrewindableBodyError:
        return (
            f"{request.method} {urlsplit(request.url or '').hostname}: the request body is a "
            "stream (a generator) that has been sent; pass bytes or a file to make it retryable"
        )
    return None


def _bounded(timeout: Any, limit_s: float) -> Any:
    """``timeout`` (None, seconds, a (connect, read) pair or a urllib3 Timeout), capped."""

    def cap(value: Any) -> float:
        return min(float(value), limit_s) if isinstance(value, int | float) else limit_s

    if isinstance(timeout, tuple):
        connect, read = timeout
        return (cap(connect), cap(read))
    if isinstance(timeout, urllib3.Timeout):
        return urllib3.Timeout(connect=cap(timeout.connect_timeout), read=cap(timeout.read_timeout))
    return cap(timeout)


def _close(response: Any) -> None:
    response.close()


#: What ``HTTPAdapter.send`` takes besides the request: stream, timeout, verify, cert, proxies.
_SendOptions = tuple[bool, Any, Any, Any, "dict[str, str] | None"]


def _head(url: str) -> str:
    """``url`` up to the slash after ``//``, any user and password left out.

    Scheme, host and port, and so the connection pool and the proxy of a
    request, are a function of it.
    """
    slashes = url.find("//") + 2
    end = url.find("/", slashes)
    head = url if end < 0 else url[:end]
    if "@" in head:  # credentials: not kept, not part of the answer
        head = head[:slashes] + head[head.rfind("@") + 1 :]
    return head


def _where(url: str) -> tuple[str, str, int | None]:
    """The scheme, host and port of ``url``, parsed once per scheme and authority.

    Parsing a URL is several microseconds; a connector's requests go to a
    handful of origins (see :func:`_head`).
    """
    key = _head(url)
    place = _PLACES.get(key)
    if place is None:
        parts = urlsplit(key)
        place = (parts.scheme, parts.hostname or "", parts.port or default_port(parts.scheme))
        if len(_PLACES) < _MAX_PLACES:
            _PLACES[key] = place
    return place


#: Scheme, host and port by URL head (see :func:`_where`); bounded, shared by all adapters.
_PLACES: dict[str, tuple[str, str, int | None]] = {}
_MAX_PLACES = 1024
#: Pools kept per adapter (see ResilientAdapter.get_connection_with_tls_context):
#: (origin, verify, cert) keys are few; past this many, no more are kept.
_MAX_POOL_KEYS = 256


class _KeptPools:
    """The pools one pool manager handed out, by (URL head, verify, cert).

    Valid while the manager holds ``held`` pools: a pool made or dropped
    anywhere else (``close()`` clears them all) changes that count.
    """

    __slots__ = ("by_key", "held", "manager")

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.held = -1
        self.by_key: dict[tuple[str, Any, Any], urllib3.HTTPConnectionPool] = {}


class ResilientAdapter(HTTPAdapter):
    """A requests transport adapter that makes every request through it resilient.

    Mount it on the prefix of the connector's API; a session's other
    requests go through the adapters they went through before.

    Args:
        connector: the connector's name (metrics, breaker, policy overrides).
        policy: settings (the environment's policy, read at the first request, if ``None``).
        store: a store or store URL (the policy's store if ``None``).
        tokens: a token manager (``connector_resilience.oauth2.TokenManager``, or
            anything with ``get_token`` and ``refresh_after_unauthorized``);
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
            it returns (a ``requests.Response``) is the answer.
        pool_connections: urllib3 pools to cache (``HTTPAdapter``'s option).
        pool_maxsize: connections kept per pool (``HTTPAdapter``'s option).
        pool_block: wait for a free connection instead of opening another.
    """

    def __init__(
        self,
        connector: str,
        *,
        policy: Policy | None = None,
        store: Store | str | None = None,
        tokens: SyncTokenSource | None = None,
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
        pool_connections: int = requests.adapters.DEFAULT_POOLSIZE,
        pool_maxsize: int = requests.adapters.DEFAULT_POOLSIZE,
        pool_block: bool = requests.adapters.DEFAULT_POOLBLOCK,
    ) -> None:
        self.connector = connector
        self._tokens = tokens
        self._calls: HttpCalls[requests.PreparedRequest, _SendOptions, requests.Response] = (
            HttpCalls(
                connector,
                send=self._attempt,
                can_retry=_rewind,
                discard=_close,
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
        )
        self._pool_slots = 0  # how many pools the pool manager keeps (see init_poolmanager)
        super().__init__(
            pool_connections=pool_connections,
            pool_maxsize=pool_maxsize,
            max_retries=_NO_URLLIB3_RETRIES,
            pool_block=pool_block,
        )
        # The send this adapter wraps (HTTPAdapter's, or the next class's in a
        # subclass's MRO), found once: super() on every attempt is a lookup each.
        self._plain_send: Callable[..., requests.Response] = super().send
        # HTTPAdapter.send finds the connection pool (a URL parse, the proxy
        # choice, the pool key, the pool manager's lock) and the URL form (parsed
        # again) on every request, from the origin and the send's settings alone.
        # A subclass that builds its own pool keys may use more: it is asked.
        self._kept = _KeptPools(self.poolmanager)
        self._caches_pools = (
            type(self).build_connection_pool_key_attributes
            is HTTPAdapter.build_connection_pool_key_attributes
        )

    def __repr__(self) -> str:
        return f"ResilientAdapter({self.connector!r})"

    @property
    def tokens(self) -> SyncTokenSource | None:
        """The token manager given as ``tokens=``, if any."""
        return self._tokens

    def send(  # noqa: PLR0917 - HTTPAdapter.send's signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` with retries, the breaker, metrics and auth (the session calls it)."""
        _, host, port = _where(request.url or "")
        if proxies is not None and not isinstance(proxies, dict):
            proxies = dict(proxies)  # what HTTPAdapter.send takes
        return self._calls.call_sync(
            (request.method or "GET").upper(),
            host,
            port,
            request,
            (stream, timeout, verify, cert, proxies),
        )

    def init_poolmanager(
        self,
        connections: int,
        maxsize: int,
        block: bool = requests.adapters.DEFAULT_POOLBLOCK,
        **pool_kwargs: Any,
    ) -> None:
        """HTTPAdapter's, noting how many pools the new pool manager keeps."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self._pool_slots = connections

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: dict[str, str] | None = None,
        cert: Any = None,
    ) -> urllib3.HTTPConnectionPool:
        """HTTPAdapter's pool for ``request``, without a proxy found once per origin, verify, cert.

        Kept only while it is the pool the manager would hand out: while the
        manager has room for more pools than it holds, it drops none (each
        request asks it once it is full, so that it drops the least recently
        used as ever), and the count of pools it holds is checked on every
        request (a pool made or dropped elsewhere, or ``close()``, starts
        afresh), as is the manager itself (``init_poolmanager`` makes a new
        one). A request through a proxy asks every time. Options set on a
        pool manager after its first request to an origin are not seen by
        that origin's requests: mount a new adapter instead.
        """
        manager = self.poolmanager
        if proxies or not self._caches_pools:
            return self._asked_pool(request, verify, proxies, cert)
        kept = self._kept
        pools = manager.pools
        if kept.manager is not manager or len(pools) != kept.held:
            kept = self._kept = _KeptPools(manager)
        key = (_head(request.url or ""), verify, cert)
        try:
            pool = kept.by_key.get(key)
        except TypeError:  # an unhashable verify or cert (a list): asked every time
            return self._asked_pool(request, verify, proxies, cert)
        if pool is None:
            pool = self._asked_pool(request, verify, proxies, cert)
            held = len(pools)
            if held < self._pool_slots and len(kept.by_key) < _MAX_POOL_KEYS:
                kept.by_key[key] = pool
                kept.held = held
        return pool

    def _asked_pool(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: dict[str, str] | None,
        cert: Any,
    ) -> urllib3.HTTPConnectionPool:
        pool: urllib3.HTTPConnectionPool = super().get_connection_with_tls_context(
            request, verify, proxies=proxies, cert=cert
        )
        return pool

    def request_url(self, request: requests.PreparedRequest, proxies: dict[str, str] | None) -> str:
        """HTTPAdapter's URL form: the path, or through an HTTP proxy the whole URL.

        Without proxies it is the path, as HTTPAdapter's would answer, without
        parsing the URL twice more to find that out. A path starting ``//`` is
        HTTPAdapter's to answer (newer requests trim the extra slashes).
        """
        path = request.path_url
        if proxies or path.startswith("//"):
            url: str = super().request_url(request, proxies)
            return url
        return path

    def _attempt(
        self, request: requests.PreparedRequest, options: _SendOptions, timeout_s: float | None
    ) -> requests.Response:
        """One attempt through urllib3, its timeout capped at ``timeout_s`` if given."""
        stream, timeout, verify, cert, proxies = options
        if timeout_s is not None:
            timeout = _bounded(timeout, timeout_s)
        tokens = self._tokens
        if tokens is not None:
            return self._authenticated(tokens, request, (stream, timeout, verify, cert, proxies))
        return self._plain_send(request, stream, timeout, verify, cert, proxies)

    def _authenticated(
        self, tokens: SyncTokenSource, request: requests.PreparedRequest, options: _SendOptions
    ) -> requests.Response:
        """One attempt with the token for an allowed origin (a 401: refreshed once)."""
        once = functools.partial(self._plain_send, request, *options)
        scheme, host, port = _where(request.url or "")
        if not self._calls.rules.auth_origins.allows(origin(scheme, host, port), self.connector):
            request.headers.pop("Authorization", None)
            response: requests.Response = once()
            return response

        def set_token(token: str) -> None:
            request.headers["Authorization"] = f"Bearer {token}"

        answer: requests.Response = authenticated_sync(
            tokens, once, set_token, rewind=functools.partial(_rewind, request), discard=_close
        )
        return answer


class BearerAuth(AuthBase):
    """``Authorization: Bearer`` from a token manager, as a ``requests`` auth.

    The token goes only to ``auth_origins`` (by default the origin of the first
    request); a 401 makes the manager refresh once (single-flight) and the
    request is sent once more, unless its body was a generator.

    Example::

        session.auth = BearerAuth(manager)

    Args:
        tokens: a token manager (``connector_resilience.oauth2.TokenManager``).
        auth_origins: origins that may receive the token.
    """

    def __init__(
        self, tokens: SyncTokenSource, *, auth_origins: Collection[str] | None = None
    ) -> None:
        self.tokens = tokens
        self._origins = AuthOrigins(auth_origins)

    def __repr__(self) -> str:
        return f"BearerAuth({self._origins!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Add the token (for an allowed origin) and a hook that handles a 401."""
        scheme, host, port = _where(request.url or "")
        if not self._origins.allows(origin(scheme, host, port)):
            return request
        token = self.tokens.get_token()
        request.headers["Authorization"] = f"Bearer {token}"

        def on_response(response: requests.Response, **kwargs: Any) -> requests.Response:
            return self._after(response, token, on_response, kwargs)

        request.register_hook("response", on_response)
        return request

    def _after(
        self,
        response: requests.Response,
        token: str,
        hook: Callable[..., Any],
        send_options: dict[str, Any],
    ) -> requests.Response:
        """On a 401: a new token, and the request once more (as requests' digest auth does)."""
        if response.status_code != 401:
            return response
        sent = response.request
        if _rewind(sent) is not None:
            return response
        fresh = self.tokens.refresh_after_unauthorized(token)
        response.content  # noqa: B018 - read it, so the connection goes back to the pool
        response.close()
        again = sent.copy()
        again.headers["Authorization"] = f"Bearer {fresh}"
        again.deregister_hook("response", hook)
        retried: requests.Response = response.connection.send(again, **send_options)
        retried.history.append(response)
        retried.request = again
        return retried
