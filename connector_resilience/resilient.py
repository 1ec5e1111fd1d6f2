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
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar, cast, overload

import tenacity

from connector_resilience import _clock
from connector_resilience._engine import (
    CallSpec,
    CallStats,
    EngineOptions,
    ExceptionMatcher,
    RetryEvent,
    new_stats,
    run_async,
    run_sync,
    within,
)
from connector_resilience._engines import (
    FIRST_ATTEMPT,
    NEVER_CALLED,
    REJECTED,
    SUCCEEDED,
    EngineCache,
    RetryStatistics,
    forget_engines,
    refused_stats,
)
from connector_resilience._names import check_name
from connector_resilience.backends import Store
from connector_resilience.circuit import StateChange
from connector_resilience.errors import (
    BulkheadFullError,
    CircuitOpenError,
    RateLimitExceededError,
    fast_circuit_open_error,
)
from connector_resilience.policy import Policy
from connector_resilience.retry import exception_predicate

if TYPE_CHECKING:
    from connector_resilience.oauth2 import TokenSource

__all__ = [
    "CallSpec",
    "RetryEvent",
    "RetryStatistics",
    "engine_options",
    "forget_engines",
    "resilient",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

Hook = Callable[[tenacity.RetryCallState], object]


class _Decorator(Protocol):
    """What ``@resilient(...)`` returns: it keeps static and class methods what they are."""

    @overload
    def __call__(self, fn: staticmethod[P, R], /) -> staticmethod[P, R]: ...
    @overload
    def __call__(self, fn: classmethod[T, P, R], /) -> classmethod[T, P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


# The decorator -----------------------------------------------------------------


def engine_options(
    *,
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
    before: Hook | None = None,
    after: Hook | None = None,
    fallback: Callable[[BaseException], Any] | None = None,
    attempt_timeout_s: float | None = None,
) -> EngineOptions:
    """``@resilient``'s options checked and gathered (``retrying`` takes the same ones).

    Raises:
        ValueError: an attempt count below 1, or a deadline or attempt timeout
            that is not > 0.
        TypeError: ``ignore`` is not a tuple, ``retry_on`` is neither exception
            types nor a predicate, or a hook is not callable.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    if attempt_timeout_s is not None and not attempt_timeout_s > 0:
        raise ValueError(f"attempt_timeout_s must be > 0, got {attempt_timeout_s}")
    if not isinstance(ignore, tuple):
        raise TypeError("ignore must be a tuple of exception types")
    exception_predicate(retry_on)  # validate now, not at the first failure
    for name, hook in (
        ("retry_on_result", retry_on_result),
        ("wait", wait),
        ("stop", stop),
        ("on_retry", on_retry),
        ("on_state_change", on_state_change),
        ("on_reject", on_reject),
        ("before", before),
        ("after", after),
        ("fallback", fallback),
    ):
        if hook is not None and not callable(hook):
            raise TypeError(f"{name}= must be callable, got {hook!r}")
    return EngineOptions(
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
        before=before,
        after=after,
        fallback=fallback,
        attempt_timeout_s=attempt_timeout_s,
    )


#: Most functions are decorated with the defaults: they share these options.
_DEFAULT_OPTIONS: Final = engine_options()


@overload
def resilient(connector: staticmethod[P, R], /) -> staticmethod[P, R]: ...


@overload
def resilient(connector: classmethod[T, P, R], /) -> classmethod[T, P, R]: ...


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
    before: Hook | None = None,
    after: Hook | None = None,
    fallback: Callable[[BaseException], Any] | None = None,
    attempt_timeout_s: float | None = None,
) -> _Decorator: ...


def resilient(
    connector: str
    | Callable[..., Any]
    | staticmethod[..., Any]
    | classmethod[Any, ..., Any]
    | None = None,
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
    before: Hook | None = None,
    after: Hook | None = None,
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
        before: called with a tenacity ``RetryCallState`` before each attempt
            (``tenacity.before_log(...)`` works).
        after: called with a tenacity ``RetryCallState`` after each failed
            attempt (``tenacity.after_log(...)`` works).
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
        The decorated function keeps its signature and has these attributes:
        ``statistics`` (a :class:`RetryStatistics`, read live),
        ``retry_with(**options)`` (the same function with some options
        changed, sharing the breaker and metrics), ``disable_retries()`` and
        ``enable_retries()`` (one attempt per call while disabled; the
        breaker and metrics stay on). On a ``staticmethod`` or ``classmethod``
        either order works.

    Raises:
        TypeError: ``connector`` is neither a name nor ``None``, or the target
            is a class, a generator, or not callable.
        ConfigurationError: ``connector`` or ``operation`` is an empty name or
            one that cannot be stored.

    Example:
        >>> @resilient("billing", store="memory://doc-resilient")
        ... def charge(amount: int) -> str:
        ...     return f"charged {amount}"
        >>> charge(5)
        'charged 5'
    """
    if callable(connector) or isinstance(connector, staticmethod | classmethod):
        return resilient()(connector)
    if connector is not None and not isinstance(connector, str):
        raise TypeError(
            f"@resilient's first argument is the connector's name (a str) or None, "
            f"got {connector!r}"
        )
    if connector is not None:
        check_name(connector, what="@resilient connector name")
    if operation is not None:
        check_name(operation, what="@resilient operation name")
    # The options given (not left at their defaults), so that retry_with() can
    # change a few of them; only those are kept: a connector pays for what it set.
    given = locals()
    settings = {
        name: value
        for name, value in given.items()
        if name in _DEFAULTS and value is not _DEFAULTS[name]
    } or _NO_SETTINGS
    built = engine_options(
        retry_on=retry_on,
        retry_on_result=retry_on_result,
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
        before=before,
        after=after,
        fallback=fallback,
        attempt_timeout_s=attempt_timeout_s,
    )
    options = _DEFAULT_OPTIONS if built == _DEFAULT_OPTIONS else built

    def decorate(fn: Any) -> Any:
        # A static or class method: decorate the function inside, keep the wrapper.
        if isinstance(fn, staticmethod):
            return staticmethod(decorate(fn.__func__))
        if isinstance(fn, classmethod):
            return classmethod(decorate(fn.__func__))
        _check_target(fn)
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
        engines = EngineCache(
            connector=connector,
            operation=operation or str(getattr(fn, "__name__", type(fn).__name__)),
            policy=policy,
            store=store,
            options=options,
            function=fn,
        )
        if is_async:
            wrapper: Any = _async_wrapper(call, engines)
            if fallback is not None:
                wrapper = _async_fallback(wrapper, engines, fallback)
        else:
            wrapper = _sync_wrapper(call, engines)
            if fallback is not None:
                wrapper = _sync_fallback(wrapper, engines)
        # tenacity keeps these too: introspection (and mocks) see the real defaults.
        wrapper.__defaults__ = getattr(fn, "__defaults__", None)
        wrapper.__kwdefaults__ = getattr(fn, "__kwdefaults__", None)
        wrapper.retry_with = _RetryWith(fn, connector, settings)
        wrapper.disable_retries = engines.disable_retries
        wrapper.enable_retries = engines.enable_retries
        return wrapper

    return decorate


def _check_target(fn: object) -> None:
    """Refuse at decoration time what could only fail (or silently misbehave) at call time."""
    if isinstance(fn, type):
        raise TypeError(
            f"@resilient decorates functions and methods, not the class {fn.__qualname__}: "
            "put it on the methods that call the outside service"
        )
    if not callable(fn):
        raise TypeError(f"@resilient decorates functions and methods, not {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"@resilient cannot retry the generator {getattr(fn, '__qualname__', fn)}()"
        )


#: ``@resilient``'s keyword options and their defaults.
_DEFAULTS: Final[dict[str, Any]] = resilient.__kwdefaults__ or {}
#: What a function decorated with the defaults changed: nothing (shared, never mutated).
_NO_SETTINGS: Final[dict[str, Any]] = {}


class _RetryWith:
    """``fn.retry_with(**changes)``: ``fn`` decorated again with some options changed."""

    __slots__ = ("connector", "fn", "settings")

    def __init__(self, fn: Callable[..., Any], connector: str | None, settings: dict[str, Any]):
        self.fn = fn
        self.connector = connector
        self.settings = settings

    def __call__(self, **changes: Any) -> Any:
        return resilient(self.connector, **{**self.settings, **changes})(self.fn)


def _sync_wrapper(fn: Callable[P, R], engines: EngineCache) -> Callable[P, R]:
    # What the latest call did: a closure cell, the cheapest store there is
    # (fn.statistics).
    last: CallStats = NEVER_CALLED

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        nonlocal last
        engine = engines.fixed or engines(args)
        # One clock read admits the call (rate limiter, breaker) and starts its
        # timing (see _clock); a wait, or a store read, reads it again.
        perf = _clock.perf
        start = perf()
        # Admission (rate limiter, bulkhead) holds the whole call, retries included.
        # Admitted in this frame: a token, then a slot (see limits.Admission).
        admission = engine.admission
        bulkhead = slot = None
        if admission is not None:
            try:
                ahead = admission.ahead  # a local rate limiter's tokens taken ahead
                if ahead is not None:
                    try:
                        ahead.pop()  # no baton, no arithmetic
                    except IndexError:  # none left: the limiter decides (see Admission.token)
                        start = admission.token(start)
                bulkhead = admission.bulkhead
                if bulkhead is not None:
                    try:
                        admission.free.pop()  # atomic: unless another thread took the last
                        slot = ""
                    except IndexError:  # waits for a slot, or leases one in the store
                        slot = admission.slot()
                        start = perf()
            except _ADMISSION_REFUSALS as exc:
                last = refused_stats(exc)
                raise
        try:
            if engine.gate is not None:
                engine.gate()
                start = perf()
            breaker = engine.breaker
            probe = None
            if breaker is not None and start >= breaker.admit_until:
                if start < breaker.refuse_until:
                    last = REJECTED
                    # Raised without a local name: a local holding the exception
                    # would tie this frame and its traceback in a cycle that only
                    # the garbage collector frees, a cost on every refused call.
                    raise engine.rejected(fast_circuit_open_error(*breaker.rejection_args))
                try:
                    probe = breaker.acquire()
                except CircuitOpenError as exc:
                    last = REJECTED
                    engine.rejected(exc)
                    raise
                start = perf()  # the admission may have read the store: not the call's time
            if engine.plans_every_attempt:  # traced, or hooks: every attempt from the plan
                last = stats = new_stats()
                target = (engines.function, args, kwargs)
                plan = engine.plan(probe, None, engines.spec, stats, target)
                return cast(R, run_sync(plan, fn, args, kwargs, engine))
            last = FIRST_ATTEMPT
            try:
                # Without keywords, no ``**kwargs``: that spelling copies the dict.
                result = fn(*args, **kwargs) if kwargs else fn(*args)  # type: ignore[call-arg]
            except BaseException as exc:
                last = stats = [1, 0.0, "running", None]  # new_stats(), inline: a call less
                plan = engine.plan(
                    probe,
                    (False, exc, start, perf()),
                    engines.spec,
                    stats,
                    (engines.function, args, kwargs),
                )
                return cast(R, run_sync(plan, fn, args, kwargs, engine))
            end = perf()
            if engine.retry_result is not None and engine.retry_result(result):
                last = stats = [1, 0.0, "running", None]  # new_stats(), inline: a call less
                plan = engine.plan(
                    probe,
                    (True, result, start, end),
                    engines.spec,
                    stats,
                    (engines.function, args, kwargs),
                )
                return cast(R, run_sync(plan, fn, args, kwargs, engine))
            last = SUCCEEDED
            # Engine.succeeded_in, inline (a call less on every success): count the
            # call for the retry budget, buffer the duration in the series.
            engine.budget.calls += 1
            series = engine.series
            if series is not None:
                series.pending.append(end - start)
                if end >= series.keep_up_at:  # now and then, or the writer stopped looking
                    engine.keep_up(end)
            elif engine.buffer is not None:  # raw metrics: a record with its own time
                engine.row((end - start) * 1000.0, "ok", None, 1, True, labels=engine.labels)
            if breaker is not None and (probe is not None or not breaker.success_is_trivial):
                breaker.report(probe, "success", duration_ms=(end - start) * 1000.0)
            return result
        finally:
            if bulkhead is not None and slot is not None:
                if slot:  # a lease in the store
                    bulkhead.release(slot)
                else:
                    bulkhead.free.append(None)
                    if bulkhead.waiting:
                        bulkhead.wake()

    outer: Any = wrapper
    outer.statistics = RetryStatistics.of_closure(wrapper, "last")
    return cast(Callable[P, R], outer)


def _async_wrapper(
    fn: Callable[P, Awaitable[R]], engines: EngineCache
) -> Callable[P, Awaitable[R]]:
    # What the latest call did: a closure cell, the cheapest store there is
    # (fn.statistics).
    last: CallStats = NEVER_CALLED
    timed = _timed(fn, engines)

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        nonlocal last
        # Building an engine opens the store and reads the breaker (network I/O
        # for Redis): the first call of a connector does it in a worker thread.
        engine = engines.fixed or engines.built(args)
        if engine is None:
            engine = await asyncio.to_thread(engines, args)
        # Admission (rate limiter, bulkhead) holds the whole call, retries included;
        # a coroutine is awaited only when it must wait or ask the store.
        # One clock read admits the call (rate limiter, breaker) and starts its
        # timing (see _clock); a wait, or a store read, reads it again.
        perf = _clock.perf
        start = perf()
        # Admission (rate limiter, bulkhead) holds the whole call, retries included.
        # Admitted in this frame: a token, then a slot (see limits.Admission); a
        # wait, or a store call, never blocks the event loop.
        admission = engine.admission
        bulkhead = slot = None
        if admission is not None:
            try:
                ahead = admission.ahead  # a local rate limiter's tokens taken ahead
                if ahead is not None:
                    try:
                        ahead.pop()  # no baton, no arithmetic
                    except IndexError:  # none left: the limiter decides (see Admission.token)
                        start = await admission.atoken(start)
                bulkhead = admission.bulkhead
                if bulkhead is not None:
                    try:
                        admission.free.pop()  # atomic: unless another thread took the last
                        slot = ""
                    except IndexError:  # waits for a slot, or leases one in the store
                        slot = await admission.aslot()
                        start = perf()
            except _ADMISSION_REFUSALS as exc:
                last = refused_stats(exc)
                raise
        # Each attempt cut short by the engine's timeout, if it has one.
        call: Callable[..., Awaitable[R]] = fn if engine.attempt_timeout_s is None else timed
        try:
            if engine.gate is not None:
                await asyncio.to_thread(engine.gate)  # a store read, maybe over the network
                start = perf()
            breaker = engine.breaker
            probe = None
            if breaker is not None and start >= breaker.admit_until:
                if start < breaker.refuse_until:
                    last = REJECTED
                    # Raised without a local name: a local holding the exception
                    # would tie this frame and its traceback in a cycle that only
                    # the garbage collector frees, a cost on every refused call.
                    raise engine.rejected(fast_circuit_open_error(*breaker.rejection_args))
                try:
                    probe = await breaker.aacquire()
                except CircuitOpenError as exc:
                    last = REJECTED
                    engine.rejected(exc)
                    raise
                start = perf()  # the admission may have read the store: not the call's time
            if engine.plans_every_attempt:  # traced, or hooks: every attempt from the plan
                last = stats = new_stats()
                target = (engines.function, args, kwargs)
                plan = engine.plan(probe, None, engines.spec, stats, target)
                return cast(R, await run_async(plan, call, args, kwargs, engine))
            last = FIRST_ATTEMPT
            try:
                # Without keywords, no ``**kwargs``: that spelling copies the dict.
                result = await (call(*args, **kwargs) if kwargs else call(*args))
            except BaseException as exc:
                last = stats = [1, 0.0, "running", None]  # new_stats(), inline: a call less
                plan = engine.plan(
                    probe,
                    (False, exc, start, perf()),
                    engines.spec,
                    stats,
                    (engines.function, args, kwargs),
                )
                return cast(R, await run_async(plan, call, args, kwargs, engine))
            end = perf()
            if engine.retry_result is not None and engine.retry_result(result):
                last = stats = [1, 0.0, "running", None]  # new_stats(), inline: a call less
                plan = engine.plan(
                    probe,
                    (True, result, start, end),
                    engines.spec,
                    stats,
                    (engines.function, args, kwargs),
                )
                return cast(R, await run_async(plan, call, args, kwargs, engine))
            last = SUCCEEDED
            # Engine.succeeded_in, inline, as in the sync wrapper.
            engine.budget.calls += 1
            series = engine.series
            if series is not None:
                series.pending.append(end - start)
                if end >= series.keep_up_at:  # now and then, or the writer stopped looking
                    engine.keep_up(end)
            elif engine.buffer is not None:  # raw metrics: a record with its own time
                engine.row((end - start) * 1000.0, "ok", None, 1, True, labels=engine.labels)
            if breaker is not None and (probe is not None or not breaker.success_is_trivial):
                await breaker.areport(probe, "success", duration_ms=(end - start) * 1000.0)
            return result
        finally:
            if bulkhead is not None and slot is not None:
                if slot:  # a lease in the store: given back without blocking the loop
                    await bulkhead.arelease(slot)
                else:
                    bulkhead.free.append(None)
                    if bulkhead.waiting:
                        bulkhead.wake()

    outer: Any = wrapper
    outer.statistics = RetryStatistics.of_closure(wrapper, "last")
    return cast(Callable[P, Awaitable[R]], outer)


#: What admission refuses before a call starts (the breaker's refusal is counted apart).
_ADMISSION_REFUSALS = (RateLimitExceededError, BulkheadFullError)


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


def _sync_fallback(wrapper: Callable[P, R], engines: EngineCache) -> Callable[P, R]:
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
    engines: EngineCache,
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


def _timed(fn: Callable[P, Awaitable[R]], engines: EngineCache) -> Callable[P, Awaitable[R]]:
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
