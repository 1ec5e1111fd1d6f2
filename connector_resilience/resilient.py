"""``@resilient``: retries inside a circuit breaker, with every attempt measured.

One core decides, thin drivers act. The first attempt runs inline in the
wrapper (a success costs a clock read, a flag check and a buffered metric); on
the first failure, the engine's plan (``connector_resilience._engine``) decides
attempt by attempt whether to sleep, call again, or give up, and the sync or
async driver carries out its steps: call, sleep, report to the breaker.

Order: the breaker guards each logical call (one admission, one reported
outcome); retries happen inside it; a rejected call raises
:class:`CircuitOpenError` without calling the function; no retry sleep ends
past the deadline; when retries run out the function's own exception is raised.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

import tenacity

from connector_resilience import _clock
from connector_resilience._engine import (
    CallSpec,
    Engine,
    EngineOptions,
    ExceptionMatcher,
    RetryEvent,
    build_engine,
    run_async,
    run_sync,
    within,
)
from connector_resilience._names import check_name
from connector_resilience.backends import Store
from connector_resilience.circuit import StateChange
from connector_resilience.errors import (
    CircuitOpenError,
    ConfigurationError,
    fast_circuit_open_error,
)
from connector_resilience.policy import Policy
from connector_resilience.retry import exception_predicate

if TYPE_CHECKING:
    from connector_resilience.oauth2 import TokenSource

__all__ = ["CallSpec", "RetryEvent", "resilient"]

P = ParamSpec("P")
R = TypeVar("R")

# The decorator -----------------------------------------------------------------


class _Engines:
    """Resolves the engine for a call: one per connector name, built on first use."""

    def __init__(
        self,
        *,
        connector: str | None,
        operation: str,
        policy: Policy | None,
        store: Store | str | None,
        options: EngineOptions,
    ) -> None:
        self.connector = connector
        self.operation = operation
        self.policy = policy
        self.store = store
        self.options = options
        self.fixed: Engine | None = None
        self.by_name: dict[str, Engine] = {}
        self._lock = threading.Lock()
        _all_engines.add(self)

    def forget(self) -> None:
        """Resolve policy, store and breaker again at the next call."""
        with self._lock:
            self.fixed = None
            self.by_name = {}

    def built(self, args: tuple[Any, ...]) -> Engine | None:
        """The engine for a call if it is built already (a lookup, no I/O), else ``None``."""
        if self.fixed is not None or self.connector is not None:
            return self.fixed
        name = getattr(args[0], "connector_name", None) if args else None
        return self.by_name.get(name) if isinstance(name, str) else None

    def __call__(self, args: tuple[Any, ...]) -> Engine:
        fixed = self.fixed
        if fixed is not None:
            return fixed
        if self.connector is not None:
            with self._lock:
                if self.fixed is None:
                    self.fixed = self._build(self.connector)
                return self.fixed
        name = getattr(args[0], "connector_name", None) if args else None
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"@resilient on {self.operation!r} has no connector name: pass "
                "@resilient('name'), or call it as a method of an object with a "
                "non-empty `connector_name` attribute"
            )
        engine = self.by_name.get(name)
        if engine is None:
            with self._lock:
                engine = self.by_name.get(name) or self._build(name)
                self.by_name[name] = engine
        return engine

    def _build(self, connector: str) -> Engine:
        return build_engine(
            connector=connector,
            operation=self.operation,
            policy=self.policy,
            store=self.store,
            options=self.options,
        )


_all_engines: weakref.WeakSet[_Engines] = weakref.WeakSet()


def forget_engines() -> None:
    """Make every decorated function resolve its policy, store and breaker again."""
    for engines in list(_all_engines):
        engines.forget()


@overload
def resilient(connector: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def resilient(
    connector: str | None = None,
    *,
    operation: str | None = None,
    policy: Policy | None = None,
    store: Store | str | None = None,
    retry_on: ExceptionMatcher = Exception,
    retry_on_result: Callable[[Any], bool] | None = None,
    failure_on: ExceptionMatcher | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    max_attempts: int | None = None,
    deadline_s: float | None = None,
    wait: Callable[[tenacity.RetryCallState], float] | None = None,
    stop: Callable[[tenacity.RetryCallState], bool] | None = None,
    breaker: bool = True,
    metrics: bool = True,
    labels: Mapping[str, str] | None = None,
    on_retry: Callable[[RetryEvent], object] | None = None,
    on_state_change: Callable[[StateChange], object] | None = None,
    on_reject: Callable[[CircuitOpenError], object] | None = None,
    tokens: TokenSource | None = None,
    fallback: Callable[[BaseException], Any] | None = None,
    attempt_timeout_s: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def resilient(
    connector: str | Callable[..., Any] | None = None,
    *,
    operation: str | None = None,
    policy: Policy | None = None,
    store: Store | str | None = None,
    retry_on: ExceptionMatcher = Exception,
    retry_on_result: Callable[[Any], bool] | None = None,
    failure_on: ExceptionMatcher | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    max_attempts: int | None = None,
    deadline_s: float | None = None,
    wait: Callable[[tenacity.RetryCallState], float] | None = None,
    stop: Callable[[tenacity.RetryCallState], bool] | None = None,
    breaker: bool = True,
    metrics: bool = True,
    labels: Mapping[str, str] | None = None,
    on_retry: Callable[[RetryEvent], object] | None = None,
    on_state_change: Callable[[StateChange], object] | None = None,
    on_reject: Callable[[CircuitOpenError], object] | None = None,
    tokens: TokenSource | None = None,
    fallback: Callable[[BaseException], Any] | None = None,
    attempt_timeout_s: float | None = None,
) -> Any:
    """Make a function's calls to a connector resilient and measured.

    Works on functions, methods, async functions and async methods; the
    wrapped signature is kept for type checkers.

    Args:
        connector: the connector's name. ``None`` on a method: the instance's
            ``connector_name`` attribute names it at call time.
        operation: the operation's name in metrics (the function's name by default).
        policy: settings (the environment's policy, read at the first call, if ``None``).
        store: a store or store URL (the policy's store if ``None``).
        retry_on: which exceptions are retried: types, a predicate, or a tenacity
            ``retry_if_exception*``. Cancellation, KeyboardInterrupt, SystemExit
            and CircuitOpenError never are.
        retry_on_result: retry when this returns True for a result (the last
            result is returned when retries run out).
        failure_on: which exceptions count as failures for the breaker (all by
            default); others count as successes.
        ignore: exceptions that count as neither success nor failure for the breaker.
        max_attempts: attempts per call (``RETRY_MAX_ATTEMPTS`` if ``None``).
        deadline_s: whole-call budget; no retry sleep may end past it
            (``RETRY_DEADLINE_S`` if ``None``).
        wait: a tenacity wait strategy instead of the policy's backoff.
        stop: a tenacity stop strategy, checked in addition to ``max_attempts``.
        breaker: guard calls with the connector's circuit breaker.
        metrics: record every attempt.
        labels: extra low-cardinality labels for metrics.
        on_retry: called with a :class:`RetryEvent` before each retry.
        on_state_change: called with a :class:`StateChange` when the breaker moves.
        on_reject: called with the :class:`CircuitOpenError` of a refused call.
        tokens: an OAuth2 token manager: each attempt runs with a valid token
            (read it with :func:`current_token`); a 401 (an exception or a result
            with that status) refreshes it once and runs the attempt once more.
        fallback: called with the exception when the circuit is open, the rate
            limiter, bulkhead or retry budget refuses, or retries run out (an
            exception ``retry_on`` matches); what it returns is the call's
            result. An async function may have an async fallback. Other
            exceptions are raised as they are.
        attempt_timeout_s: async functions only: cancel an attempt that runs
            longer, with ``TimeoutError`` (retried if ``retry_on`` matches and
            the budget and deadline allow). ``RETRY_ATTEMPT_TIMEOUT_S`` if
            ``None``. A sync function cannot be cut short from outside (Python
            can stop neither a thread nor a blocking call): give its client a
            timeout of its own.

    Returns:
        A decorator, or the decorated function when used bare (``@resilient``).

    Example:
        >>> @resilient("billing", store="memory://doc-resilient")
        ... def charge(amount: int) -> str:
        ...     return f"charged {amount}"
        >>> charge(5)
        'charged 5'
    """
    if callable(connector):
        return resilient()(connector)
    if connector is not None:
        check_name(connector, what="@resilient connector name")
    if operation is not None:
        check_name(operation, what="@resilient operation name")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    if attempt_timeout_s is not None and not attempt_timeout_s > 0:
        raise ValueError(f"attempt_timeout_s must be > 0, got {attempt_timeout_s}")
    if not isinstance(ignore, tuple):
        raise TypeError("ignore must be a tuple of exception types")
    exception_predicate(retry_on)  # validate now, not at the first failure
    options = EngineOptions(
        retry_on=retry_on,
        retry_on_result=retry_on_result,
        failure_result=None,
        failure_on=failure_on,
        ignore=ignore,
        max_attempts=max_attempts,
        deadline_s=deadline_s,
        wait=wait,
        stop=stop,
        breaker=breaker,
        metrics=metrics,
        labels=labels,
        on_retry=on_retry,
        on_state_change=on_state_change,
        on_reject=on_reject,
        tokens=tokens,
        fallback=fallback,
        attempt_timeout_s=attempt_timeout_s,
    )

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"@resilient cannot retry the generator {fn.__qualname__}()")
        is_async = inspect.iscoroutinefunction(fn)
        _check_async_options(fn, is_async, fallback, attempt_timeout_s)
        call: Callable[..., Any] = fn
        if tokens is not None:
            from connector_resilience.oauth2 import aauthenticated, authenticated

            call = (
                aauthenticated(cast(Callable[..., Awaitable[Any]], fn), tokens)
                if is_async
                else authenticated(fn, tokens)
            )
        engines = _Engines(
            connector=connector,
            operation=operation or str(getattr(fn, "__name__", type(fn).__name__)),
            policy=policy,
            store=store,
            options=options,
        )
        if is_async:
            wrapped = _async_wrapper(call, engines)
            if fallback is not None:
                wrapped = _async_fallback(wrapped, engines, fallback)
            return cast(Callable[P, R], wrapped)
        plain = _sync_wrapper(call, engines)
        return cast(Callable[P, R], _sync_fallback(plain, engines) if fallback else plain)

    return decorate


def _sync_wrapper(fn: Callable[P, R], engines: _Engines, *, admit: bool = True) -> Callable[P, R]:
    clock = _clock
    # Admission (rate limiter, bulkhead) wraps the whole call, retries included:
    # an admitted call runs this same wrapper with admission left out, made on
    # first use (most functions never admit, and a wrapper is most of a kilobyte).
    admitted: list[Callable[P, R]] = []

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        engine = engines.fixed or engines(args)
        direct = engine.direct
        if not direct:
            if engine.admission is not None and admit:
                if not admitted:
                    admitted.append(_sync_wrapper(fn, engines, admit=False))
                return engine.admission.call(admitted[0], *args, **kwargs)
            if engine.gate is not None:
                engine.gate()
        breaker = engine.breaker
        probe = None
        # One clock read admits the call and starts its timing (see _clock).
        perf = clock.perf
        start = perf()
        if breaker is not None and start >= breaker.admit_until:
            if start < breaker.refuse_until:
                rejection = fast_circuit_open_error(*breaker.rejection_args)
                engine.rejected(rejection)
                raise rejection
            try:
                probe = breaker.acquire()
            except CircuitOpenError as exc:
                engine.rejected(exc)
                raise
            start = perf()  # the admission may have read the store: not the call's time
        if not direct and engine.tracer is not None:  # traced: each attempt in its span
            return cast(R, run_sync(engine.plan(probe), fn, args, kwargs, engine))
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            plan = engine.plan(probe, (False, exc, start, perf()))
            return cast(R, run_sync(plan, fn, args, kwargs, engine))
        end = perf()
        if engine.retry_result is not None and engine.retry_result(result):
            plan = engine.plan(probe, (True, result, start, end))
            return cast(R, run_sync(plan, fn, args, kwargs, engine))
        # Engine.succeeded, inlined: the hot path of every call.
        engine.budget.calls += 1
        record = engine.record_success
        if record is not None:
            record((start, end, engine.series))
        if breaker is not None and (probe is not None or not breaker.success_is_trivial):
            breaker.report(probe, "success", duration_ms=(end - start) * 1000.0)
        return result

    return wrapper


def _async_wrapper(
    fn: Callable[P, Awaitable[R]], engines: _Engines, *, admit: bool = True
) -> Callable[P, Awaitable[R]]:
    clock = _clock
    # Admitted calls (and calls with a per-attempt timeout) run this wrapper again,
    # each attempt cut short by the engine's timeout: the hot path pays for neither.
    # That wrapper is made on first use (most functions never need it).
    admitted: list[Callable[P, Awaitable[R]]] = []

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # Building an engine opens the store and reads the breaker (network I/O
        # for Redis): the first call of a connector does it in a worker thread.
        engine = engines.fixed or engines.built(args)
        if engine is None:
            engine = await asyncio.to_thread(engines, args)
        direct = engine.direct
        if not direct:
            if engine.admission is not None and admit:
                if not admitted:
                    admitted.append(_async_wrapper(_timed(fn, engines), engines, admit=False))
                return await engine.admission.acall(admitted[0], *args, **kwargs)
            if engine.gate is not None:
                await asyncio.to_thread(engine.gate)  # a store read, maybe over the network
        breaker = engine.breaker
        probe = None
        # One clock read admits the call and starts its timing (see _clock).
        perf = clock.perf
        start = perf()
        if breaker is not None and start >= breaker.admit_until:
            if start < breaker.refuse_until:
                rejection = fast_circuit_open_error(*breaker.rejection_args)
                engine.rejected(rejection)
                raise rejection
            try:
                probe = await breaker.aacquire()
            except CircuitOpenError as exc:
                engine.rejected(exc)
                raise
            start = perf()  # the admission may have read the store: not the call's time
        if not direct and engine.tracer is not None:  # traced: each attempt in its span
            return cast(R, await run_async(engine.plan(probe), fn, args, kwargs, engine))
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            plan = engine.plan(probe, (False, exc, start, perf()))
            return cast(R, await run_async(plan, fn, args, kwargs, engine))
        end = perf()
        if engine.retry_result is not None and engine.retry_result(result):
            plan = engine.plan(probe, (True, result, start, end))
            return cast(R, await run_async(plan, fn, args, kwargs, engine))
        # Engine.succeeded, inlined: the hot path of every call.
        engine.budget.calls += 1
        record = engine.record_success
        if record is not None:
            record((start, end, engine.series))
        if breaker is not None and (probe is not None or not breaker.success_is_trivial):
            await breaker.areport(probe, "success", duration_ms=(end - start) * 1000.0)
        return result

    return wrapper


# Fallbacks ------------------------------------------------------------------------


def _check_async_options(
    fn: Callable[..., Any],
    is_async: bool,
    fallback: Callable[[BaseException], Any] | None,
    attempt_timeout_s: float | None,
) -> None:
    if is_async:
        return
    name = getattr(fn, "__qualname__", repr(fn))
    if attempt_timeout_s is not None:
        raise TypeError(
            f"attempt_timeout_s needs an async function; {name}() is sync and Python cannot "
            "cut a running sync call short: give its client a timeout instead"
        )
    if fallback is not None and inspect.iscoroutinefunction(fallback):
        raise TypeError(f"the fallback of the sync function {name}() must not be async")


def _sync_fallback(wrapper: Callable[P, R], engines: _Engines) -> Callable[P, R]:
    @functools.wraps(wrapper)
    def with_fallback(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return wrapper(*args, **kwargs)
        except Exception as exc:
            engine = engines.built(args)
            if engine is None or engine.fallback is None or not engine.wants_fallback(exc):
                raise
            engine.refused("FallbackUsed")
            return cast(R, engine.fallback(exc))

    return with_fallback


def _async_fallback(
    wrapper: Callable[P, Awaitable[R]],
    engines: _Engines,
    fallback: Callable[[BaseException], Any],
) -> Callable[P, Awaitable[R]]:
    is_async = inspect.iscoroutinefunction(fallback)

    @functools.wraps(wrapper)
    async def with_fallback(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await wrapper(*args, **kwargs)
        except Exception as exc:
            engine = engines.built(args)
            if engine is None or not engine.wants_fallback(exc):
                raise
            engine.refused("FallbackUsed")
            value = fallback(exc)
            return cast(R, await value if is_async else value)

    return with_fallback


def _timed(fn: Callable[P, Awaitable[R]], engines: _Engines) -> Callable[P, Awaitable[R]]:
    """``fn``, each call cancelled after its engine's ``attempt_timeout_s`` (if any)."""

    @functools.wraps(fn)
    async def attempt(*args: P.args, **kwargs: P.kwargs) -> R:
        engine = engines.fixed or engines.built(args)
        timeout = engine.attempt_timeout_s if engine is not None else None
        if timeout is None:
            return await fn(*args, **kwargs)
        result: R = await within(timeout, fn(*args, **kwargs))
        return result

    return attempt
