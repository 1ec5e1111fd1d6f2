"""The request flow the HTTP adapters share: routes, breaker admission, first attempt, retries.

An adapter gives :class:`HttpCalls` its client's ``send(request, context,
timeout_s)`` once, then hands it each request with its method, host and port;
the rules come from :mod:`connector_resilience._http`, the retry plan and its
drivers from :mod:`connector_resilience._engine`.

The first attempt runs inline, as under ``@resilient``: everything that
depends only on (method, host, port) is decided once per route
(:class:`_Route`), including the metric series of each status that settles a
call whatever its headers say, so a plain success reads the clock twice and
appends one tuple. The plan is only built once an attempt fails or answers
with a status that needs a rule.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import operator
import threading
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from connector_resilience import _clock
from connector_resilience._engine import (
    CallSpec,
    Engine,
    EngineOptions,
    RetryEvent,
    build_engine,
    run_async,
    run_sync,
)
from connector_resilience._http import (
    AsyncTokenSource,
    HttpRules,
    SyncTokenSource,
    attempt_timeout_s,
    is_transient_error,
    retry_at,
    server_wait_s,
    status_of,
)
from connector_resilience.errors import CircuitOpenError
from connector_resilience.metrics import Series

if TYPE_CHECKING:
    from connector_resilience.backends import Store
    from connector_resilience.circuit import CircuitBreaker, StateChange
    from connector_resilience.policy import Policy

__all__ = ["HttpCalls", "authenticated_async", "authenticated_sync"]

logger = logging.getLogger("connector_resilience.http")


class _Request(Protocol):
    """What the flow reads of any client's request."""

    @property
    def headers(self) -> MutableMapping[str, Any]:
        """The request headers (an idempotency key and trace context go there)."""
        ...


class _Response(Protocol):
    """What the flow reads of any client's response (and ``status`` or ``status_code``)."""

    @property
    def headers(self) -> Any:
        """The response headers, case-insensitive."""
        ...


S = TypeVar("S", bound=_Request)  # the client's request
C = TypeVar("C")  # what the adapter's send needs besides the request (a handler, a transport)
R = TypeVar("R", bound=_Response)

#: One attempt with the client: ``(request, context, timeout_s)`` to a response.
SyncSend = Callable[[S, C, float | None], R]
AsyncSend = Callable[[S, C, float | None], Awaitable[R]]

#: Routes kept per adapter: (method, host, port) triples are few for a
#: connector; past this many, requests get a route made for them alone.
_MAX_ROUTES = 1024
#: A status whose success series is not known yet (``None``: known, metrics off).
_UNKNOWN: Final[Any] = object()


class HttpCalls(Generic[S, C, R]):
    """One adapter's routes and engines (per method, and per host if asked) and its request flow.

    Args:
        connector: the connector's name.
        send: one attempt with a sync client, ``(request, context, timeout_s)``.
        asend: one attempt with an async client.
        direct: with no timeout of ours to apply, an attempt is ``context(request)``:
            what ``send`` would do then, one call less on every request.
        can_retry: why a request cannot be sent again (a consumed body), or ``None``.
        discard: release a response a retry supersedes (sync).
        adiscard: the same for an async client (may return an awaitable);
            ``discard`` if ``None``.
        client_deadline_s: the client's own whole-request timeout, if it has one.
        retry_statuses: statuses that are retried.
        retry_methods: methods retried without an idempotency key.
        idempotency_header: the header that makes a POST or PATCH retryable.
        add_idempotency_key: add that header to POST and PATCH requests without one.
        auth_origins: origins that may receive a token (``None``: the first seen).
        policy: settings (the environment's policy, read at the first request, if ``None``).
        store: a store or store URL (the policy's store if ``None``).
        transient: the client's exception classes worth another attempt.
        permanent: the client's exception classes never worth one.
        caller_errors: the caller's mistakes: neither success nor failure for the breaker.
        status_attribute: the response attribute holding the status, when the
            client has one (``status``, ``status_code``); any client's otherwise.
        breaker_per_host: one breaker per host instead of one per connector.
        max_attempts: attempts per request (``RETRY_MAX_ATTEMPTS`` if ``None``).
        deadline_s: budget per request, on top of the policy's deadline.
        attempt_timeout_s: longest attempt (``RETRY_ATTEMPT_TIMEOUT_S`` if ``None``).
        metrics: record every attempt.
        on_retry: hook before a retry.
        on_state_change: hook when the breaker moves.
        on_reject: hook for a refused request.
        fallback: called with the exception when load control or the breaker
            refuses a request, or retries of a failing request run out; what it
            returns (awaited if need be) is the answer.
    """

    def __init__(
        self,
        connector: str,
        *,
        send: SyncSend[S, C, R] | None = None,
        asend: AsyncSend[S, C, R] | None = None,
        direct: bool = False,
        can_retry: Callable[[S], str | None],
        discard: Callable[[R], object],
        adiscard: Callable[[R], object] | None = None,
        client_deadline_s: Callable[[S], float | None] | None = None,
        retry_statuses: Collection[int],
        retry_methods: Collection[str],
        idempotency_header: str,
        add_idempotency_key: bool,
        auth_origins: Collection[str] | None,
        policy: Policy | None,
        store: Store | str | None,
        transient: tuple[type[BaseException], ...],
        permanent: tuple[type[BaseException], ...],
        caller_errors: tuple[type[BaseException], ...],
        status_attribute: str | None = None,
        breaker_per_host: bool,
        max_attempts: int | None,
        deadline_s: float | None,
        attempt_timeout_s: float | None,
        metrics: bool,
        on_retry: Callable[[RetryEvent], object] | None,
        on_state_change: Callable[[StateChange], object] | None,
        on_reject: Callable[[CircuitOpenError], object] | None,
        fallback: Callable[[BaseException], Any] | None = None,
    ) -> None:
        if not connector:
            raise ValueError("an HTTP adapter needs a connector name")
        for name, value in (("max_attempts", max_attempts),):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, seconds in (("deadline_s", deadline_s), ("attempt_timeout_s", attempt_timeout_s)):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {seconds}")
        self.connector = connector
        self._send = send
        self._asend = asend
        self._direct = direct
        self._can_retry = can_retry
        self._discard = discard
        self._adiscard = adiscard if adiscard is not None else discard
        self._client_deadline_s = client_deadline_s
        self.rules = rules = HttpRules(
            retry_statuses=retry_statuses,
            retry_methods=retry_methods,
            idempotency_header=idempotency_header,
            add_idempotency_key=add_idempotency_key,
            auth_origins=auth_origins,
        )
        self.breaker_per_host = breaker_per_host
        self.deadline_s = deadline_s
        self.attempt_timeout_s = attempt_timeout_s
        self._policy = policy
        self._store = store
        self._options = EngineOptions(
            retry_on=lambda exc: is_transient_error(exc, transient=transient, permanent=permanent),
            retry_on_result=lambda r: rules.should_retry(status_of(r), r.headers),
            failure_result=lambda r: rules.is_failure(status_of(r), r.headers),
            failure_on=None,
            ignore=caller_errors,
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
        # The client's own status attribute (``status`` on aiohttp, ``status_code``
        # on httpx and requests) read at C speed; any client's otherwise.
        self._status: Callable[[Any], int] = (
            operator.attrgetter(status_attribute) if status_attribute else status_of
        )
        self._engines: dict[tuple[str, str | None], Engine] = {}
        self._routes: dict[tuple[str, str, int | None], _Route] = {}
        self._lock = threading.Lock()

    # Engines and routes ------------------------------------------------------

    def engine(self, method: str, host: str) -> Engine:
        """The engine for requests of ``method`` to ``host``, built on first use (store I/O)."""
        key = (method, host if self.breaker_per_host else None)
        engine = self._engines.get(key)
        if engine is None:
            with self._lock:
                engine = self._engines.get(key)
                if engine is None:
                    engine = build_engine(
                        connector=self.connector,
                        operation=method,
                        policy=self._policy,
                        store=self._store,
                        options=self._options,
                        breaker_name=f"{self.connector}@{host}" if key[1] is not None else None,
                    )
                    self._engines[key] = engine
        return engine

    def _route(self, method: str, host: str, port: int | None) -> _Route:
        """The route of (method, host, port), made on first use (its engine: store I/O)."""
        key = (method, host, port)
        route = self._routes.get(key)
        if route is not None:
            return route
        engine = self.engine(method, host)
        configured = self.attempt_timeout_s
        if configured is None:
            configured = engine.policy.retry.attempt_timeout_s
        own_s = _min_or_none(self.deadline_s, engine.deadline_s)
        bounded = configured is not None or own_s is not None
        keyed = self.rules.wants_idempotency_key(method)
        traced = engine.tracer is not None
        route = _Route(
            engine=engine,
            method=method,
            host=host,
            port=port,
            labels=self.rules.labels(method, host, port, None),
            keyed=keyed,
            traced=traced,
            special=keyed or traced,
            attempt_s=configured,
            own_s=own_s,
            bounded=bounded,
            direct=self._direct and not bounded,
            # OAUTH2_REQUIRED without tokens=: no request goes out without a usable token.
            guards=engine.load.admits or engine.fallback is not None or engine.gate is not None,
        )
        with self._lock:
            if len(self._routes) < _MAX_ROUTES:
                route = self._routes.setdefault(key, route)
        return route

    # The flow, sync and async ------------------------------------------------

    def call_sync(  # noqa: PLR0917 - positional on purpose: every request's hot path
        self,
        method: str,
        host: str,
        port: int | None,
        request: S,
        context: C,
        send: SyncSend[S, C, R] | None = None,
    ) -> R:
        """Send ``request`` with the breaker, retries and metrics (a sync client).

        ``send`` replaces the adapter's own for this request (load control's,
        learning pauses).
        """
        route = self._routes.get((method, host, port))
        if route is None:
            route = self._route(method, host, port)
        if send is None:
            if route.guards:
                return self._guard_sync(route, request, context)
            send = self._send
            assert send is not None, "a sync client needs HttpCalls(send=...)"
            direct = route.direct
        else:
            direct = False
        breaker = route.engine.breaker
        probe = None
        perf = _clock.perf
        # One clock read admits the call and starts its timing (see _clock).
        start = perf()
        if breaker is not None and start >= breaker.admit_until:
            probe = self._admit_sync(route, breaker)
            start = perf()  # the admission may have read the store: not the call's time
        if route.special:
            self._prepare(route, request)
            if route.traced:  # every attempt runs from the plan, in its span
                return self._plan_sync(route, probe, None, start, request, context, send)
        try:
            response: R
            if direct:  # what the adapter's send would do: the client's own call
                response = context(request)  # type: ignore[operator]
            else:
                response = send(request, context, route.timeout_s(start) if route.bounded else None)
        except BaseException as exc:
            return self._plan_sync(
                route, probe, (False, exc, start, perf()), start, request, context, send
            )
        end = perf()
        series = route.settled.get(self._status(response), _UNKNOWN)
        if series is _UNKNOWN:  # a status not seen yet, or one whose headers matter
            series = self._learn(route, response)
            if series is _UNKNOWN:
                return self._plan_sync(
                    route, probe, (True, response, start, end), start, request, context, send
                )
        if route.engine.succeeded_in(series, start, end, probe):
            assert breaker is not None
            breaker.report(probe, "success", duration_ms=(end - start) * 1000.0)
        return response

    async def call_async(  # noqa: PLR0917 - positional on purpose: every request's hot path
        self,
        method: str,
        host: str,
        port: int | None,
        request: S,
        context: C,
        send: AsyncSend[S, C, R] | None = None,
    ) -> R:
        """:meth:`call_sync` for an async client; store I/O never blocks the event loop."""
        route = self._routes.get((method, host, port))
        if route is None:
            # Building an engine opens the store and reads the breaker (network
            # I/O for Redis): the first request of a route does it in a thread.
            route = await asyncio.to_thread(self._route, method, host, port)
        if send is None:
            if route.guards:
                return await self._guard_async(route, request, context)
            send = self._asend
            assert send is not None, "an async client needs HttpCalls(asend=...)"
            direct = route.direct
        else:
            direct = False
        breaker = route.engine.breaker
        probe = None
        perf = _clock.perf
        start = perf()
        if breaker is not None and start >= breaker.admit_until:
            probe = await self._admit_async(route, breaker)
            start = perf()
        if route.special:
            self._prepare(route, request)
            if route.traced:
                return await self._plan_async(route, probe, None, start, request, context, send)
        try:
            response: R
            if direct:
                response = await context(request)  # type: ignore[operator]
            else:
                response = await send(
                    request, context, route.timeout_s(start) if route.bounded else None
                )
        except BaseException as exc:
            return await self._plan_async(
                route, probe, (False, exc, start, perf()), start, request, context, send
            )
        end = perf()
        series = route.settled.get(self._status(response), _UNKNOWN)
        if series is _UNKNOWN:
            series = self._learn(route, response)
            if series is _UNKNOWN:
                return await self._plan_async(
                    route, probe, (True, response, start, end), start, request, context, send
                )
        if route.engine.succeeded_in(series, start, end, probe):
            assert breaker is not None
            await breaker.areport(probe, "success", duration_ms=(end - start) * 1000.0)
        return response

    # What the first attempt needs off its hot path -------------------------------

    def _admit_sync(self, route: _Route, breaker: CircuitBreaker) -> str | None:
        """The breaker's admission (a probe id, or ``None``); a refusal is counted, then raised.

        The refusal is counted with the route's labels. When the breaker's
        cached state has gone stale, the breaker reads the store once: requests
        that come meanwhile wait for that answer (see
        :class:`~connector_resilience.circuit.CircuitBreaker`).
        """
        try:
            return breaker.acquire()
        except CircuitOpenError as exc:
            route.engine.rejected(exc, route.labels)
            raise

    async def _admit_async(self, route: _Route, breaker: CircuitBreaker) -> str | None:
        """:meth:`_admit_sync` without blocking the event loop on store I/O."""
        try:
            return await breaker.aacquire()
        except CircuitOpenError as exc:
            route.engine.rejected(exc, route.labels)
            raise

    def _prepare(self, route: _Route, request: S) -> None:
        """What a request of a special route needs before its first attempt."""
        if route.keyed:
            # Before the first send, so that every attempt carries the same key.
            request.headers.setdefault(self.rules.idempotency_header, str(uuid.uuid4()))

    def _learn(self, route: _Route, response: Any) -> Any:
        """The series of a first answer not kept yet: ``_UNKNOWN`` if it does not settle the call.

        A status that settles a call whatever its headers say (a 2xx, see
        :meth:`HttpRules.plainly_settles`) is kept on the route for the next
        request; a 404 or a plain 403 is judged with its headers every time.
        ``None`` when metrics are off.
        """
        rules = self.rules
        status = self._status(response)
        plain = rules.plainly_settles(status)
        if not (plain or rules.settles(status, response.headers)):
            return _UNKNOWN
        engine = route.engine
        labels = rules.labels(route.method, route.host, route.port, status)
        series = engine.series_for(labels)
        if series is None and engine.options.metrics:  # past the engine's own bound
            series = Series(engine.connector, engine.operation, labels)
        if plain:
            route.settled[status] = series
        return series

    # After the first attempt: the retry plan ------------------------------------

    def _plan_sync(  # noqa: PLR0917 - called as the hot path calls
        self,
        route: _Route,
        probe: str | None,
        first: tuple[bool, Any, float, float] | None,
        began: float,
        request: S,
        context: C,
        send: SyncSend[S, C, R],
    ) -> R:
        """The rest of the call, from the plan (``first``: the first attempt, if it ran)."""
        spec = self._spec(route, request, began)
        attempt = self._attempt(route, send, request, context, began)
        plan = route.engine.plan(probe, first, spec)
        del first  # the plan's alone: an exception raised through here makes no cycle
        result: R = run_sync(
            plan,
            attempt,
            (),
            {},
            route.engine,
            discard=self._discard,
        )
        return result

    async def _plan_async(  # noqa: PLR0917 - called as the hot path calls
        self,
        route: _Route,
        probe: str | None,
        first: tuple[bool, Any, float, float] | None,
        began: float,
        request: S,
        context: C,
        send: AsyncSend[S, C, R],
    ) -> R:
        """:meth:`_plan_sync` for an async client."""
        spec = self._spec(route, request, began)
        attempt = self._attempt(route, send, request, context, began)
        plan = route.engine.plan(probe, first, spec)
        del first  # the plan's alone: an exception raised through here makes no cycle
        result: R = await run_async(
            plan,
            attempt,
            (),
            {},
            route.engine,
            discard=self._adiscard,
        )
        return result

    def _attempt(
        self,
        route: _Route,
        send: Callable[[S, C, float | None], Any],
        request: S,
        context: C,
        began: float,
    ) -> Callable[[], Any]:
        """One more attempt of the call that began at ``began`` (monotonic), bounded per attempt.

        An attempt is bounded by the per-attempt timeout and by what is left of
        our own deadlines; the client's total timeout (aiohttp's) is the
        client's to enforce and only bounds retry waits.
        """
        if not route.bounded:  # the client's own timeouts alone: nothing to compute
            return functools.partial(send, request, context, None)
        own_at = None if route.own_s is None else began + route.own_s
        configured = route.attempt_s
        return lambda: send(request, context, attempt_timeout_s(configured, own_at))

    def _spec(self, route: _Route, request: S, began: float) -> CallSpec:
        rules = self.rules
        engine = route.engine
        client = self._client_deadline_s(request) if self._client_deadline_s is not None else None
        deadline_s = _min_or_none(self.deadline_s, client)
        whole = _min_or_none(deadline_s, engine.deadline_s)
        deadline_at = None if whole is None else began + whole
        method, host, port = route.method, route.host, route.port
        headers = request.headers
        return CallSpec(
            max_attempts=None if rules.retryable_request(method, headers) else 1,
            deadline_s=deadline_s,
            labels=route.labels,
            can_retry=functools.partial(self._can_retry, request),
            wait=_server_aware_wait(engine, deadline_at),
            result_labels=lambda response: rules.labels(method, host, port, status_of(response)),
            headers=headers,
        )

    # Load control around the flow -------------------------------------------------

    def _guard_sync(self, route: _Route, request: S, context: C) -> R:
        """The flow inside load control: admission, a pause learnt from the server, fallback."""
        engine = route.engine
        control = engine.load
        send = self._send
        assert send is not None, "a sync client needs HttpCalls(send=...)"
        if control.limiter is not None:
            plain = send

            def send(request: S, context: C, timeout_s: float | None) -> R:
                response = plain(request, context, timeout_s)
                until = self._pause_asked(response)
                if until is not None:
                    control.pause(until=until)
                return response

        flow = functools.partial(
            self.call_sync, route.method, route.host, route.port, request, context, send
        )
        try:
            if engine.gate is not None:  # raises TokenRequiredError: nothing is sent
                engine.gate()
            if engine.admission is not None and control.admits:
                return engine.admission.call(flow)
            return flow()
        except Exception as exc:
            if not engine.wants_fallback(exc):
                raise
            assert engine.fallback is not None
            engine.refused("FallbackUsed")
            answer: R = engine.fallback(exc)
            return answer

    async def _guard_async(self, route: _Route, request: S, context: C) -> R:
        """:meth:`_guard_sync` for an async client; no store I/O blocks the event loop."""
        engine = route.engine
        control = engine.load
        send = self._asend
        assert send is not None, "an async client needs HttpCalls(asend=...)"
        if control.limiter is not None:
            plain = send

            async def send(request: S, context: C, timeout_s: float | None) -> R:
                response = await plain(request, context, timeout_s)
                until = self._pause_asked(response)
                if until is not None:
                    await control.apause(until=until)
                return response

        flow = functools.partial(
            self.call_async, route.method, route.host, route.port, request, context, send
        )
        try:
            if engine.gate is not None:  # a store read, maybe over the network: in a thread
                await asyncio.to_thread(engine.gate)
            if engine.admission is not None and control.admits:
                return await engine.admission.acall(flow)
            return await flow()
        except Exception as exc:
            if not engine.wants_fallback(exc):
                raise
            assert engine.fallback is not None
            engine.refused("FallbackUsed")
            answer = engine.fallback(exc)
            result: R = await answer if inspect.isawaitable(answer) else answer
            return result

    def _pause_asked(self, response: Any) -> float | None:
        """When a rate-limit answer (a 429, a rate-limit 403) asks the connector to come back."""
        status = self._status(response)
        if status not in {429, 403}:
            return None
        return retry_at(status, response.headers, now=_clock.wall())


@dataclass(slots=True)
class _Route:
    """What requests of one (method, host, port) need, decided once: the hot path only reads it.

    Attributes:
        engine: the engine for requests of the method (and host, per host).
        method: the request method.
        host: the host.
        port: the port, as the adapter gives it.
        labels: metric labels without a status (a refusal's).
        keyed: requests of this method get an idempotency key.
        traced: every attempt runs from the plan, each in its span.
        special: keyed or traced: the first attempt needs more than a send.
        attempt_s: the per-attempt timeout, or ``None``.
        own_s: our own whole-call budget, or ``None``.
        bounded: an attempt has a timeout of ours to compute.
        direct: an attempt is the adapter's context called with the request
            (the adapter said so, and no timeout of ours applies).
        guards: load control wraps the flow (a rate limiter, a bulkhead, a fallback).
        settled: status -> the series a first-attempt success goes to (``None``:
            metrics off), for the statuses that settle a call whatever the
            headers say; filled as they are seen.
    """

    engine: Engine
    method: str
    host: str
    port: int | None
    labels: Mapping[str, str]
    keyed: bool
    traced: bool
    special: bool
    attempt_s: float | None
    own_s: float | None
    bounded: bool
    direct: bool
    guards: bool
    settled: dict[int, Series | None] = field(default_factory=dict)

    def timeout_s(self, began: float) -> float | None:
        """The first attempt's timeout, for a call that began at ``began`` (monotonic)."""
        own_at = None if self.own_s is None else began + self.own_s
        return attempt_timeout_s(self.attempt_s, own_at, now=began)


def _server_aware_wait(
    engine: Engine, deadline_at: float | None
) -> Callable[[int, float | None, Any, float], float | None]:
    """The engine's backoff, unless the response says when to come back.

    A server's wait is honoured exactly (plus a small positive jitter), never
    shortened: one longer than ``RETRY_CAP_MS`` or than the call's remaining
    deadline ends the call at once with that response.
    """
    retry = engine.policy.retry
    cap_s = retry.cap_ms / 1000.0
    jitter_pct = 0.0 if retry.jitter == "none" else retry.jitter_pct

    def wait(
        attempt: int, previous_s: float | None, outcome: Any, elapsed_s: float
    ) -> float | None:
        if not isinstance(outcome, BaseException):
            status = status_of(outcome)
            asked = server_wait_s(status, outcome.headers, cap_s=cap_s, jitter_pct=jitter_pct)
            if asked is not None:
                remaining = None if deadline_at is None else deadline_at - _clock.monotonic()
                if asked == math.inf or (remaining is not None and asked > remaining):
                    logger.warning(
                        "%s.%s: HTTP %d asks to wait longer than %s; not retried",
                        engine.connector,
                        engine.operation,
                        status,
                        f"RETRY_CAP_MS ({retry.cap_ms:g} ms)"
                        if asked == math.inf
                        else f"the call's remaining deadline ({remaining:.3f} s)",
                    )
                    return None
                return asked
        return engine.delay_s(attempt, previous_s, outcome, elapsed_s)

    return wait


def authenticated_sync(
    tokens: SyncTokenSource,
    send: Callable[[], R],
    set_token: Callable[[str], None],
    *,
    rewind: Callable[[], str | None],
    discard: Callable[[R], object],
) -> R:
    """One attempt with a bearer token; on a 401, refresh once and send once more.

    ``rewind`` readies the body for a resend, or says why it cannot be resent
    (then the 401 is the answer).
    """
    token = tokens.get_token()
    set_token(token)
    response = send()
    if status_of(response) != 401 or rewind() is not None:
        return response
    discard(response)
    set_token(tokens.refresh_after_unauthorized(token))
    return send()


async def authenticated_async(
    tokens: AsyncTokenSource,
    send: Callable[[], Awaitable[R]],
    set_token: Callable[[str], None],
    *,
    rewind: Callable[[], str | None],
    discard: Callable[[R], object],
) -> R:
    """:func:`authenticated_sync` for an async client."""
    token = await tokens.aget_token()
    set_token(token)
    response = await send()
    if status_of(response) != 401 or rewind() is not None:
        return response
    closing = discard(response)
    if isinstance(closing, Awaitable):
        await closing
    set_token(await tokens.arefresh_after_unauthorized(token))
    return await send()


def _min_or_none(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
