"""Sans-I/O HTTP rules shared by the aiohttp, httpx and requests adapters: each rule once.

Nothing here does I/O or imports an HTTP client. An adapter translates its
client's request and response into plain values (method, scheme, host, port,
status, a case-insensitive header lookup) and asks:

* which requests may be repeated (:meth:`HttpRules.retryable_request`);
* which responses are retried and which count as breaker failures
  (:meth:`HttpRules.should_retry`, :meth:`HttpRules.is_failure`), which
  exceptions are transient (:func:`is_transient_error`);
* when the server asks us to come back (:func:`retry_at`: Retry-After,
  GitHub's and the IETF's rate-limit fields) and how long to wait
  (:func:`server_wait_s`), or whether the server forbids a retry
  (:func:`stripe_should_retry`);
* the metric labels of an attempt (:meth:`HttpRules.labels`);
* which origins may receive a token (:meth:`HttpRules.may_authenticate`);
* how long one attempt may take (:func:`attempt_timeout_s`).
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
from collections.abc import Collection, Mapping
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from connector_resilience import _clock
from connector_resilience.retry import parse_retry_after

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "KEYED_METHODS",
    "AsyncTokenSource",
    "AuthOrigins",
    "HeaderLookup",
    "HttpRules",
    "SyncTokenSource",
    "attempt_timeout_s",
    "default_port",
    "is_transient_error",
    "normalize_origin",
    "origin",
    "retry_at",
    "server_wait_s",
    "status_of",
    "stripe_should_retry",
]

logger = logging.getLogger("connector_resilience.http")

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})
#: Methods that are retried only when they carry an idempotency key.
KEYED_METHODS: frozenset[str] = frozenset({"POST", "PATCH"})

#: A Retry-After wait gets up to RETRY_JITTER_PCT of itself added, counted on
#: at most this many seconds of it: a fleet told "come back at 12:00:00" spreads
#: over about a second instead of arriving in one instant, and a long wait does
#: not grow by minutes.
_SERVER_WAIT_JITTER_BASIS_S = 5.0
_LABEL_CACHE_MAX = 10_000


class HeaderLookup(Protocol):
    """A case-insensitive header mapping (aiohttp's, httpx's and requests' all are)."""

    def get(self, key: str, default: None = None, /) -> str | None:
        """The header's value, or ``None``."""
        ...


class AsyncTokenSource(Protocol):
    """What an async adapter needs of a token manager (``connector_resilience.oauth2``)."""

    async def aget_token(self) -> str:
        """A valid access token, refreshed first if it is about to expire."""
        ...

    async def arefresh_after_unauthorized(self, rejected_access_token: str) -> str:
        """A new token after a 401 with ``rejected_access_token`` (refreshed at most once)."""
        ...


class SyncTokenSource(Protocol):
    """What a sync adapter needs of a token manager (``connector_resilience.oauth2``)."""

    def get_token(self) -> str:
        """A valid access token, refreshed first if it is about to expire."""
        ...

    def refresh_after_unauthorized(self, rejected_access_token: str) -> str:
        """A new token after a 401 with ``rejected_access_token`` (refreshed at most once)."""
        ...


# When the server asks us to come back ------------------------------------------

_SF_ITEM = re.compile(r'\s*(?:"(?P<quoted>[^"]*)"|(?P<token>[^;,\s]+))(?P<params>(?:\s*;[^,]*)?)')
_SF_PARAM = re.compile(r";\s*([a-z][a-z0-9_.*-]*)\s*(?:=\s*(\"[^\"]*\"|[^;\s]*))?")


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip().strip('"'))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _sf_list(value: str) -> list[tuple[str, dict[str, str]]]:
    """A structured-field list (RFC 8941) of items with parameters, leniently parsed."""
    items: list[tuple[str, dict[str, str]]] = []
    for part in value.split(","):
        match = _SF_ITEM.match(part)
        if match is None:
            continue
        name = match.group("quoted") if match.group("quoted") is not None else match.group("token")
        params = {k: v.strip('"') for k, v in _SF_PARAM.findall(match.group("params") or "")}
        items.append((name or "", params))
    return items


def _ietf_wait_s(headers: HeaderLookup) -> float | None:
    """Seconds until an exhausted IETF quota resets (``RateLimit``, ``RateLimit-Policy``).

    Drafts 08 and later: ``RateLimit: "default";r=0;t=30`` (``t`` missing: the
    window ``w`` of the ``RateLimit-Policy`` item of that name); draft 07:
    ``RateLimit: limit=100, remaining=0, reset=30``; drafts up to 06:
    ``RateLimit-Remaining: 0`` with ``RateLimit-Reset: 30``.
    """
    field = headers.get("RateLimit")
    if field is not None:
        if "remaining=" in field.replace(" ", ""):  # draft 07's dictionary
            pairs = dict(p.strip().split("=", 1) for p in field.split(",") if "=" in p)
            if _number(pairs.get("remaining")) == 0:
                return _number(pairs.get("reset"))
            return None
        windows: dict[str, float | None] = {}
        policy = headers.get("RateLimit-Policy")
        if policy is not None:
            windows = {name: _number(p.get("w")) for name, p in _sf_list(policy)}
        waits = [
            _number(params.get("t")) if "t" in params else windows.get(name)
            for name, params in _sf_list(field)
            if _number(params.get("r")) == 0
        ]
        known = [w for w in waits if w is not None]
        return max(known) if known else None
    if _number(headers.get("RateLimit-Remaining")) == 0:
        return _number(headers.get("RateLimit-Reset"))
    return None


def retry_at(status: int, headers: HeaderLookup, *, now: float | None = None) -> float | None:
    """When the server asks us to come back: a wall-clock time (epoch seconds), or ``None``.

    One answer from every field a server uses to say "not before", the latest
    when several speak (never come back earlier than any of them asked):

    * ``Retry-After``, in seconds or as an HTTP-date, on an error status;
    * GitHub's primary limit: ``x-ratelimit-remaining: 0`` with
      ``x-ratelimit-reset`` (epoch seconds); its secondary limits send
      ``Retry-After`` with their 403 or 429;
    * the IETF ``RateLimit`` / ``RateLimit-Policy`` fields (an exhausted quota
      and its reset), and their older ``RateLimit-Remaining`` / ``RateLimit-Reset``.

    An exhausted quota is reported on any status, even a 200: it says the
    *next* call would be refused, which a rate limiter wants to know. Whether
    a retry is allowed at all is :func:`stripe_should_retry`'s question.

    Args:
        status: the response status.
        headers: the response headers, looked up case-insensitively.
        now: the wall-clock time the response arrived (now if ``None``).

    Returns:
        The epoch time before which the server asks for no new request, at
        least ``now``; ``None`` when the response says nothing about waiting.
    """
    reference = _clock.wall() if now is None else now
    times: list[float] = []
    if status >= 400:
        after = headers.get("Retry-After")
        if after is not None:
            seconds = parse_retry_after(after, now=reference)
            if seconds is not None:
                times.append(reference + seconds)
    if headers.get("x-ratelimit-remaining") == "0":
        reset = _number(headers.get("x-ratelimit-reset"))
        if reset is not None:
            times.append(max(reference, reset))
    ietf = _ietf_wait_s(headers)
    if ietf is not None:
        times.append(reference + ietf)
    return max(times) if times else None


def stripe_should_retry(headers: HeaderLookup) -> bool | None:
    """``Stripe-Should-Retry``: ``True`` or ``False`` when the server says, else ``None``.

    Stripe sends it to overrule the client's own judgement both ways: ``false``
    on a 5xx it must not repeat, ``true`` on a 409 (a lock timeout) it may.
    """
    value = headers.get("Stripe-Should-Retry")
    if value is None:
        return None
    value = value.strip().lower()
    return True if value == "true" else False if value == "false" else None


def server_wait_s(
    status: int,
    headers: HeaderLookup,
    *,
    cap_s: float,
    jitter_pct: float = 0.0,
    rng: random.Random | None = None,
    now: float | None = None,
) -> float | None:
    """Seconds to wait before retrying on the server's word, ``inf`` if that is beyond ``cap_s``.

    Args:
        status: the response status.
        headers: the response headers.
        cap_s: the longest wait the policy allows (``RETRY_CAP_MS``): a server
            asking for longer gets ``math.inf``, meaning "do not retry", never
            an earlier retry than it asked for.
        jitter_pct: a positive jitter of up to this share of the wait (counted
            on at most 5 s of it) is added, so a fleet does not return at once.
        rng: random source for the jitter.
        now: the response's arrival time (wall clock; now if ``None``).

    Returns:
        The wait, ``math.inf``, or ``None`` when the server did not say (the
        computed backoff applies).
    """
    reference = _clock.wall() if now is None else now
    when = retry_at(status, headers, now=reference)
    if when is None:
        return None
    wait = when - reference
    if wait > cap_s:
        return math.inf
    if jitter_pct > 0:
        wait += (rng or random).uniform(0, jitter_pct * min(wait, _SERVER_WAIT_JITTER_BASIS_S))
    return wait


# Exceptions ---------------------------------------------------------------------


def _tls_failure(exc: BaseException) -> bool:
    """Whether ``exc`` or anything it was raised from is a TLS or certificate error."""
    import ssl

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def is_transient_error(
    exc: BaseException,
    *,
    transient: tuple[type[BaseException], ...],
    permanent: tuple[type[BaseException], ...] = (),
) -> bool:
    """Whether an exception of a client is worth another attempt.

    Connection errors, disconnects and timeouts (``transient``, the client's
    classes) are; TLS and certificate failures never are, whatever class the
    client wraps them in, nor ``permanent`` ones (bad URLs, redirect loops).
    """
    if isinstance(exc, permanent) or not isinstance(exc, transient):
        return False
    return not _tls_failure(exc)


# Origins, ports, timeouts ---------------------------------------------------------


#: The port a URL of a lower-case scheme means when it names none (read-only);
#: an adapter on a request's hot path reads it before calling :func:`default_port`.
DEFAULT_PORTS: Final[Mapping[str, int]] = {"https": 443, "http": 80, "wss": 443, "ws": 80}


def default_port(scheme: str) -> int | None:
    """The port a URL of ``scheme`` means when it names none."""
    port = DEFAULT_PORTS.get(scheme)
    return port if port is not None else DEFAULT_PORTS.get(scheme.lower())


def origin(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host[:port]``, lower-case, the default port left out (as browsers compare)."""
    scheme, host = scheme.lower(), host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    if port is None or port == default_port(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def normalize_origin(url: str) -> str:
    """The origin of a URL or origin string given by a user (``auth_origins=``)."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.hostname:
        raise ValueError(
            f"auth_origins entries must look like https://api.example.com, got {url!r}"
        )
    return origin(parts.scheme, parts.hostname, parts.port)


def attempt_timeout_s(
    configured_s: float | None, deadline_at: float | None, *, now: float | None = None
) -> float | None:
    """How long one attempt may take: the configured per-attempt timeout, capped by the deadline.

    Args:
        configured_s: the per-attempt timeout (``RETRY_ATTEMPT_TIMEOUT_S``), or ``None``.
        deadline_at: the call's deadline on the monotonic clock, or ``None``.
        now: the monotonic time (now if ``None``).

    Returns:
        Seconds (never below 1 ms, so a client's "0 means no timeout" cannot
        bite), or ``None`` when neither bound is set.
    """
    remaining = None
    if deadline_at is not None:
        remaining = deadline_at - (_clock.monotonic() if now is None else now)
    bounds = [b for b in (configured_s, remaining) if b is not None]
    return max(0.001, min(bounds)) if bounds else None


# The rules of one adapter ----------------------------------------------------------


class AuthOrigins:
    """The origins that may receive a connector's token (thread-safe).

    Args:
        origins: URLs or origins (``https://api.example.com``); ``None``: the
            first origin a token is asked for (trust on first use).
    """

    def __init__(self, origins: Collection[str] | None = None) -> None:
        self._origins: frozenset[str] | None = (
            frozenset(normalize_origin(o) for o in origins) if origins else None
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AuthOrigins({sorted(self._origins) if self._origins else 'first seen'})"

    def allows(self, request_origin: str, connector: str = "") -> bool:
        """Whether a request to ``request_origin`` (see :func:`origin`) may carry the token."""
        origins = self._origins
        if origins is None:
            with self._lock:
                if self._origins is None:
                    # Trust on first use: the connector's API is where its first request goes.
                    self._origins = frozenset({request_origin})
                    logger.debug("%s: tokens go to %s only", connector or "auth", request_origin)
                origins = self._origins
        return request_origin in origins


class HttpRules:
    """The HTTP rules one adapter was configured with, and its small caches.

    Thread-safe: a ``requests`` adapter is shared by every thread of a session.

    Args:
        retry_statuses: statuses that are retried.
        retry_methods: methods retried without an idempotency key.
        idempotency_header: the header that makes a POST or PATCH retryable.
        add_idempotency_key: add that header to POST and PATCH requests without one.
        auth_origins: origins that may receive a token; ``None``: the first
            origin a token is asked for (trust on first use).
    """

    def __init__(
        self,
        *,
        retry_statuses: Collection[int],
        retry_methods: Collection[str],
        idempotency_header: str,
        add_idempotency_key: bool,
        auth_origins: Collection[str] | None,
    ) -> None:
        self.retry_statuses = frozenset(retry_statuses)
        self.retry_methods = frozenset(m.upper() for m in retry_methods)
        self.idempotency_header = idempotency_header
        self.add_idempotency_key = add_idempotency_key
        self.auth_origins = AuthOrigins(auth_origins)
        self._labels: dict[tuple[str, str, int | None, int | None], dict[str, str]] = {}

    # Requests

    def retryable_request(self, method: str, headers: Mapping[str, Any]) -> bool:
        """Whether a request may be sent again: an idempotent method, or a keyed POST/PATCH."""
        method = method.upper()
        if method in self.retry_methods:
            return True
        return method in KEYED_METHODS and self.idempotency_header in headers

    def wants_idempotency_key(self, method: str) -> bool:
        """Whether to add an idempotency key to a request of ``method`` that lacks one."""
        return self.add_idempotency_key and method.upper() in KEYED_METHODS

    # Responses

    def should_retry(self, status: int, headers: HeaderLookup) -> bool:
        """Whether a response is worth another attempt.

        ``Stripe-Should-Retry`` decides when present; else a retry status, or a
        403 that is a rate limit (GitHub's: it says when to come back).
        """
        says = stripe_should_retry(headers) if status >= 400 else None
        if says is not None:
            return says
        if status in self.retry_statuses:
            return True
        return status == 403 and retry_at(status, headers) is not None

    def is_failure(self, status: int, headers: HeaderLookup) -> bool:
        """Whether a response counts against the service: a 5xx, or one worth retrying.

        Other 4xx are the service working (the request was wrong).
        """
        return status >= 500 or self.should_retry(status, headers)

    def plainly_settles(self, status: int) -> bool:
        """The hot path: a status that settles the call whatever its headers say (a 2xx)."""
        return status < 400 and status not in self.retry_statuses

    def settles(self, status: int, headers: HeaderLookup) -> bool:
        """Whether a first answer ends the call as a success: neither retried nor a failure."""
        if status < 400:
            return status not in self.retry_statuses
        return status < 500 and not self.should_retry(status, headers)

    # Labels

    def labels(
        self, method: str, host: str, port: int | None, status: int | None
    ) -> dict[str, str]:
        """Metric labels of an attempt: method, host, port, status code; never the URL.

        Made once per (method, host, port, status): a request's hot path.
        """
        key = (method, host, port, status)
        labels = self._labels.get(key)
        if labels is None:
            labels = {"method": method, "host": host}
            if port is not None:
                labels["port"] = str(port)
            if status is not None:
                labels["status_code"] = str(status)
            if len(self._labels) < _LABEL_CACHE_MAX:  # hosts and statuses are few; be safe
                self._labels[key] = labels
        return labels


#: Which attribute holds the status, per response class (a missed getattr raises
#: and catches an AttributeError inside: too slow for every response).
_STATUS_ATTRIBUTE: dict[type, str] = {}


def status_of(response: Any) -> int:
    """The status of any client's response (``status`` on aiohttp, ``status_code`` elsewhere)."""
    cls = type(response)
    name = _STATUS_ATTRIBUTE.get(cls)
    if name is None:
        name = (
            "status_code" if isinstance(getattr(response, "status_code", None), int) else "status"
        )
        _STATUS_ATTRIBUTE[cls] = name
    status = getattr(response, name)
    assert isinstance(status, int)
    return status
