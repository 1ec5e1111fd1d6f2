"""The request flow the HTTP adapters share: engines, breaker admission, first attempt, retries.

An adapter hands :class:`HttpCalls` its request as plain values and a
``send(timeout_s)`` that makes one attempt with its client; the rules come
from :mod:`connector_resilience._http`, the retry plan and its drivers from
:mod:`connector_resilience._engine`. The first attempt runs inline, as under
``@resilient``: the plan is only built once an attempt fails or answers with
a status worth retrying.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import operator
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

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

if TYPE_CHECKING:
    from connector_resilience.backends import Store
    from connector_resilience.circuit import StateChange
    from connector_resilience.policy import Policy

__all__ = ["HttpCalls", "authenticated_async", "authenticated_sync"]

logger = logging.getLogger("connector_resilience.http")


class _Response(Protocol):
    """What the flow reads of any client's response (and ``status`` or ``status_code``)."""

    @property
    def headers(self) -> Any:
        """The response headers, case-insensitive."""
        ...


R = TypeVar("R", bound=_Response)
S = TypeVar("S")  # the client's request object, handed back to the adapter's rules


class HttpCalls:
    """One adapter's engines (per method, and per host if asked) and its request flow.

    Args:
        connector: the connector's name.
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
        self._routes: dict[tuple[str, str | None], _Route] = {}
        self._lock = threading.Lock()

    # Engines ---------------------------------------------------------------

    def built(self, method: str, host: str) -> Engine | None:
        """The engine for requests of ``method`` to ``host``, if already built."""
        route = self._routes.get((method, host if self.breaker_per_host else None))
        return None if route is None else route.engine

    def engine(self, method: str, host: str) -> Engine:
        """The engine for requests of ``method`` to ``host``, built on first use (store I/O)."""
        return self._route(method, host).engine

    def _route(self, method: str, host: str) -> _Route:
        key = (method, host if self.breaker_per_host else None)
        route = self._routes.get(key)
        if route is None:
            with self._lock:
                route = self._routes.get(key)
                if route is None:
                    engine = build_engine(
                        connector=self.connector,
                        operation=method,
                        policy=self._policy,
                        store=self._store,
                        options=self._options,
                        breaker_name=f"{self.connector}@{host}" if key[1] is not None else None,
                    )
                    configured = self.attempt_timeout_s
                    if configured is None:
                        configured = engine.policy.retry.attempt_timeout_s
                    route = _Route(
                        engine=engine,
                        keyed=self.rules.wants_idempotency_key(method),
                        attempt_s=configured,
                        own_s=_min_or_none(self.deadline_s, engine.deadline_s),
                        guards=engine.load.admits or engine.fallback is not None,
                    )
                    self._routes[key] = route
        return route

    # The flow, sync and async ------------------------------------------------

    def call_sync(
        self,
        method: str,
        host: str,
        port: int | None,
        headers: MutableMapping[str, Any],
        send: Callable[[float | None], R],
        *,
        subject: S,
        can_retry: Callable[[S], str | None],
        discard: Callable[[Any], object],
        client_deadline_s: Callable[[S], float | None] | None = None,
        _guarded: bool = False,
    ) -> R:
        """Send a request with the breaker, retries and metrics (a sync client)."""
        route = self._routes.get((method, host if self.breaker_per_host else None))
        if route is None:
            route = self._route(method, host)
        engine = route.engine
        if route.guards and not _guarded:
            return self._guard_sync(
                engine,
                lambda learning_send: self.call_sync(
                    method,
                    host,
                    port,
                    headers,
                    learning_send,
                    subject=subject,
                    can_retry=can_retry,
                    discard=discard,
                    client_deadline_s=client_deadline_s,
                    _guarded=True,
                ),
                send,
            )
        breaker = engine.breaker
        probe = None
        if breaker is not None and (now := _clock.monotonic()) >= breaker.admit_until:
            labels = self.rules.labels(method, host, port, None)
            if now < breaker.refuse_until:
                rejection = breaker.rejection()
                engine.rejected(rejection, labels)
                raise rejection
            try:
                probe = breaker.acquire()
            except CircuitOpenError as exc:
                engine.rejected(exc, labels)
                raise
        if route.keyed:
            # Before the first send, so that every attempt carries the same key.
            headers.setdefault(self.rules.idempotency_header, str(uuid.uuid4()))
        attempt: Callable[..., Any]
        arg: tuple[float | None, ...]
        if route.bounded:
            began, attempt, arg = self._bounded(route, send)
        else:  # the client's own timeouts alone: nothing to compute
            began, attempt, arg = None, send, _NO_TIMEOUT
        if engine.tracer is not None:  # traced: every attempt runs from the plan, in its span
            deadline_s = self._deadline_s(client_deadline_s, subject)
            began = _clock.monotonic() if began is None else began
            spec = self._spec(
                method, host, port, headers, lambda: can_retry(subject), deadline_s, began, engine
            )
            traced: R = run_sync(
                engine.plan(probe, None, spec), attempt, arg, {}, engine, discard=discard
            )
            return traced
        start = time.perf_counter()
        try:
            response: R = attempt(*arg)
        except BaseException as exc:
            first: tuple[bool, Any, float, float] = (False, exc, start, time.perf_counter())
        else:
            end = time.perf_counter()
            status = self._status(response)
            if self.rules.plainly_settles(status) or self.rules.settles(status, response.headers):
                if engine.succeeded(
                    start, end, probe, self.rules.labels(method, host, port, status)
                ):
                    assert breaker is not None
                    breaker.report(probe, "success", duration_ms=(end - start) * 1000.0)
                return response
            first = (True, response, start, end)
        if began is None:  # when the first attempt started, on the clock the plan uses
            began = _clock.monotonic() - (first[3] - first[2])
        deadline_s = self._deadline_s(client_deadline_s, subject)
        spec = self._spec(
            method, host, port, headers, lambda: can_retry(subject), deadline_s, began, engine
        )
        result: R = run_sync(
            engine.plan(probe, first, spec), attempt, arg, {}, engine, discard=discard
        )
        return result

    async def call_async(
        self,
        method: str,
        host: str,
        port: int | None,
        headers: MutableMapping[str, Any],
        send: Callable[[float | None], Awaitable[R]],
        *,
        subject: S,
        can_retry: Callable[[S], str | None],
        discard: Callable[[Any], object],
        client_deadline_s: Callable[[S], float | None] | None = None,
        _guarded: bool = False,
    ) -> R:
        """:meth:`call_sync` for an async client; store I/O never blocks the event loop."""
        route = self._routes.get((method, host if self.breaker_per_host else None))
        if route is None:
            # Building an engine opens the store and reads the breaker (network
            # I/O for Redis): the first request of a kind does it in a thread.
            route = await asyncio.to_thread(self._route, method, host)
        engine = route.engine
        if route.guards and not _guarded:
            return await self._guard_async(
                engine,
                lambda learning_send: self.call_async(
                    method,
                    host,
                    port,
                    headers,
                    learning_send,
                    subject=subject,
                    can_retry=can_retry,
                    discard=discard,
                    client_deadline_s=client_deadline_s,
                    _guarded=True,
                ),
                send,
            )
        breaker = engine.breaker
        probe = None
        if breaker is not None and (now := _clock.monotonic()) >= breaker.admit_until:
            labels = self.rules.labels(method, host, port, None)
            if now < breaker.refuse_until:
                rejection = breaker.rejection()
                engine.rejected(rejection, labels)
                raise rejection
            try:
                probe = await breaker.aacquire()
            except CircuitOpenError as exc:
                engine.rejected(exc, labels)
                raise
        if route.keyed:
            # Before the first send, so that every attempt carries the same key.
            headers.setdefault(self.rules.idempotency_header, str(uuid.uuid4()))
        attempt: Callable[..., Any]
        arg: tuple[float | None, ...]
        if route.bounded:
            began, attempt, arg = self._bounded(route, send)
        else:  # the client's own timeouts alone: nothing to compute
            began, attempt, arg = None, send, _NO_TIMEOUT
        if engine.tracer is not None:  # traced: every attempt runs from the plan, in its span
            deadline_s = self._deadline_s(client_deadline_s, subject)
            began = _clock.monotonic() if began is None else began
            spec = self._spec(
                method, host, port, headers, lambda: can_retry(subject), deadline_s, began, engine
            )
            traced: R = await run_async(
                engine.plan(probe, None, spec), attempt, arg, {}, engine, discard=discard
            )
            return traced
        start = time.perf_counter()
        try:
            response: R = await attempt(*arg)
        except BaseException as exc:
            first: tuple[bool, Any, float, float] = (False, exc, start, time.perf_counter())
        else:
            end = time.perf_counter()
            status = self._status(response)
            if self.rules.plainly_settles(status) or self.rules.settles(status, response.headers):
                if engine.succeeded(
                    start, end, probe, self.rules.labels(method, host, port, status)
                ):
                    assert breaker is not None
                    await breaker.areport(probe, "success", duration_ms=(end - start) * 1000.0)
                return response
            first = (True, response, start, end)
        if began is None:  # when the first attempt started, on the clock the plan uses
            began = _clock.monotonic() - (first[3] - first[2])
        deadline_s = self._deadline_s(client_deadline_s, subject)
        spec = self._spec(
            method, host, port, headers, lambda: can_retry(subject), deadline_s, began, engine
        )
        result: R = await run_async(
            engine.plan(probe, first, spec), attempt, arg, {}, engine, discard=discard
        )
        return result

    # Load control around the flow -------------------------------------------------

    def _guard_sync(
        self,
        engine: Engine,
        flow: Callable[[Callable[[float | None], R]], R],
        send: Callable[[float | None], R],
    ) -> R:
        """The flow inside load control: admission, a pause learnt from the server, fallback."""
        control = engine.load
        if control.limiter is not None:
            plain = send

            def send(timeout_s: float | None) -> R:
                response = plain(timeout_s)
                until = self._pause_asked(response)
                if until is not None:
                    control.pause(until=until)
                return response

        try:
            if engine.admission is not None and control.admits:
                return engine.admission.call(flow, send)
            return flow(send)
        except Exception as exc:
            if not engine.wants_fallback(exc):
                raise
            assert engine.fallback is not None
            engine.refused("FallbackUsed")
            answer: R = engine.fallback(exc)
            return answer

    async def _guard_async(
        self,
        engine: Engine,
        flow: Callable[[Callable[[float | None], Awaitable[R]]], Awaitable[R]],
        send: Callable[[float | None], Awaitable[R]],
    ) -> R:
        """:meth:`_guard_sync` for an async client; no store I/O blocks the event loop."""
        control = engine.load
        if control.limiter is not None:
            plain = send

            async def send(timeout_s: float | None) -> R:
                response = await plain(timeout_s)
                until = self._pause_asked(response)
                if until is not None:
                    await control.apause(until=until)
                return response

        try:
            if engine.admission is not None and control.admits:
                return await engine.admission.acall(flow, send)
            return await flow(send)
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

    # What both flows share ------------------------------------------------------

    def _deadline_s(
        self, client_deadline_s: Callable[[S], float | None] | None, subject: S
    ) -> float | None:
        """This request's own budget: ours, or the client's total timeout if shorter."""
        client = client_deadline_s(subject) if client_deadline_s is not None else None
        return _min_or_none(self.deadline_s, client)

    def _bounded(
        self, route: _Route, send: Callable[[float | None], Any]
    ) -> tuple[float, Callable[..., Any], tuple[float | None, ...]]:
        """The call's start (monotonic) and its attempt, bounded per attempt.

        An attempt is bounded by the per-attempt timeout and by what is left of
        our own deadlines; the client's total timeout (aiohttp's) is the
        client's to enforce and only bounds retry waits.
        """
        began = _clock.monotonic()
        configured = route.attempt_s
        own_at = None if route.own_s is None else began + route.own_s
        return began, lambda: send(attempt_timeout_s(configured, own_at)), ()

    def _spec(  # noqa: PLR0917 - the slow path's one call site
        self,
        method: str,
        host: str,
        port: int | None,
        headers: MutableMapping[str, Any],
        can_retry: Callable[[], str | None],
        deadline_s: float | None,
        began: float,
        engine: Engine,
    ) -> CallSpec:
        rules = self.rules
        whole = _min_or_none(deadline_s, engine.deadline_s)
        deadline_at = None if whole is None else began + whole
        return CallSpec(
            max_attempts=None if rules.retryable_request(method, headers) else 1,
            deadline_s=deadline_s,
            labels=rules.labels(method, host, port, None),
            can_retry=can_retry,
            wait=_server_aware_wait(engine, deadline_at),
            result_labels=lambda response: rules.labels(method, host, port, status_of(response)),
            headers=headers,
        )


_NO_TIMEOUT: tuple[None] = (None,)


@dataclass(frozen=True, slots=True)
class _Route:
    """One engine and what its requests need, decided once: the hot path only reads it.

    Attributes:
        engine: the engine for requests of one method (and host, per host).
        keyed: requests of this method get an idempotency key.
        attempt_s: the per-attempt timeout, or ``None``.
        own_s: our own whole-call budget, or ``None``.
        guards: load control wraps the flow (a rate limiter, a bulkhead, a fallback).
    """

    engine: Engine
    keyed: bool
    attempt_s: float | None
    own_s: float | None
    guards: bool

    @property
    def bounded(self) -> bool:
        """Whether an attempt has a timeout of ours to compute."""
        return self.attempt_s is not None or self.own_s is not None


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
