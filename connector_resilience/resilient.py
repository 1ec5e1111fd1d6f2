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
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

import tenacity

from connector_resilience import _clock
from connector_resilience._engine import (
    CallSpec,
    CallStats,
    EngineOptions,
    ExceptionMatcher,
    RetryEvent,
    aadmit,
    admit,
    new_stats,
    run_async,
    run_sync,
)
from connector_resilience._engines import (
    FIRST_ATTEMPT,
    NEVER_CALLED,
    ONE_ATTEMPT,
    REJECTED,
    SUCCEEDED,
    EngineCache,
    RetryStatistics,
    forget_engines,
)
from connector_resilience.backends import Store
from connector_resilience.circuit import StateChange
from connector_resilience.errors import CircuitOpenError, fast_circuit_open_error
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
) -> EngineOptions:
    """``@resilient``'s options checked and gathered (``retrying`` takes the same ones).

    Raises:
        ValueError: an attempt count below 1, or a deadline that is not > 0.
        TypeError: ``ignore`` is not a tuple, ``retry_on`` is neither exception
            types nor a predicate, or a hook is not callable.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
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
    )


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
    # Every argument as given, so that retry_with() can change a few of them.
    settings = dict(locals())
    del settings["connector"]
    options = engine_options(
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
    )

    def decorate(fn: Any) -> Any:
        # A static or class method: decorate the function inside, keep the wrapper.
        if isinstance(fn, staticmethod):
            return staticmethod(decorate(fn.__func__))
        if isinstance(fn, classmethod):
            return classmethod(decorate(fn.__func__))
        _check_target(fn)
        is_async = inspect.iscoroutinefunction(fn)
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
        # Hooks see every attempt, the first included: no inline first attempt then.
        planned = before is not None or after is not None
        if is_async:
            make = _planned_async_wrapper if planned else _async_wrapper
        else:
            make = _planned_sync_wrapper if planned else _sync_wrapper
        wrapper: Any = make(call, engines)
        # tenacity keeps these too: introspection (and mocks) see the real defaults.
        wrapper.__defaults__ = getattr(fn, "__defaults__", None)
        wrapper.__kwdefaults__ = getattr(fn, "__kwdefaults__", None)
        wrapper.retry_with = functools.partial(_retry_with, fn, connector, settings)
        wrapper.disable_retries = functools.partial(setattr, engines, "spec", ONE_ATTEMPT)
        wrapper.enable_retries = functools.partial(setattr, engines, "spec", None)
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


def _retry_with(
    fn: Callable[..., Any], connector: str | None, settings: dict[str, Any], **changes: Any
) -> Any:
    return resilient(connector, **{**settings, **changes})(fn)


def _sync_wrapper(fn: Callable[P, R], engines: EngineCache) -> Callable[P, R]:
    perf = time.perf_counter
    # What the latest call did: a closure cell, the cheapest store there is (fn.statistics).
    last: CallStats = NEVER_CALLED

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        nonlocal last
        engine = engines.fixed or engines(args)
        if engine.gate is not None:
            engine.gate()
        breaker = engine.breaker
        probe = None
        if breaker is not None and (now := _clock.monotonic()) >= breaker.admit_until:
            if now < breaker.refuse_until:
                last = REJECTED
                rejection = fast_circuit_open_error(*breaker.rejection_args)
                engine.rejected(rejection)
                raise rejection
            try:
                probe = breaker.acquire()
            except CircuitOpenError as exc:
                last = REJECTED
                engine.rejected(exc)
                raise
        last = FIRST_ATTEMPT
        start = perf()
        try:
            result = fn(*args, **kwargs)
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
        if engine.succeeded(start, end, probe):
            assert breaker is not None
            breaker.report(probe, "success", duration_ms=(end - start) * 1000.0)
        return result

    wrapper.statistics = RetryStatistics(lambda: last)  # type: ignore[attr-defined]
    return wrapper


def _async_wrapper(
    fn: Callable[P, Awaitable[R]], engines: EngineCache
) -> Callable[P, Awaitable[R]]:
    perf = time.perf_counter
    # What the latest call did: a closure cell, the cheapest store there is (fn.statistics).
    last: CallStats = NEVER_CALLED

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        nonlocal last
        # Building an engine opens the store and reads the breaker (network I/O
        # for Redis): the first call of a connector does it in a worker thread.
        engine = engines.fixed or engines.built(args)
        if engine is None:
            engine = await asyncio.to_thread(engines, args)
        if engine.gate is not None:
            await asyncio.to_thread(engine.gate)  # a store read, maybe over the network
        breaker = engine.breaker
        probe = None
        if breaker is not None and (now := _clock.monotonic()) >= breaker.admit_until:
            if now < breaker.refuse_until:
                last = REJECTED
                rejection = fast_circuit_open_error(*breaker.rejection_args)
                engine.rejected(rejection)
                raise rejection
            try:
                probe = await breaker.aacquire()
            except CircuitOpenError as exc:
                last = REJECTED
                engine.rejected(exc)
                raise
        last = FIRST_ATTEMPT
        start = perf()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            last = stats = [1, 0.0, "running", None]  # new_stats(), inline: a call less
            plan = engine.plan(
                probe,
                (False, exc, start, perf()),
                engines.spec,
                stats,
                (engines.function, args, kwargs),
            )
            return cast(R, await run_async(plan, fn, args, kwargs, engine))
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
            return cast(R, await run_async(plan, fn, args, kwargs, engine))
        last = SUCCEEDED
        if engine.succeeded(start, end, probe):
            assert breaker is not None
            await breaker.areport(probe, "success", duration_ms=(end - start) * 1000.0)
        return result

    wrapper.statistics = RetryStatistics(lambda: last)  # type: ignore[attr-defined]
    return wrapper


def _planned_sync_wrapper(fn: Callable[P, R], engines: EngineCache) -> Callable[P, R]:
    """Every attempt through the plan (``before``/``after`` hooks see the first one too)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        engine = engines.fixed or engines(args)
        try:
            probe = admit(engine)
        except CircuitOpenError:
            engines.last = REJECTED
            raise
        engines.last = stats = new_stats()
        plan = engine.plan(probe, None, engines.spec, stats, (engines.function, args, kwargs))
        return cast(R, run_sync(plan, fn, args, kwargs, engine))

    wrapper.statistics = RetryStatistics(lambda: engines.last)  # type: ignore[attr-defined]
    return wrapper


def _planned_async_wrapper(
    fn: Callable[P, Awaitable[R]], engines: EngineCache
) -> Callable[P, Awaitable[R]]:
    """:func:`_planned_sync_wrapper` for coroutine functions."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        engine = engines.fixed or engines.built(args)
        if engine is None:
            engine = await asyncio.to_thread(engines, args)
        try:
            probe = await aadmit(engine)
        except CircuitOpenError:
            engines.last = REJECTED
            raise
        engines.last = stats = new_stats()
        plan = engine.plan(probe, None, engines.spec, stats, (engines.function, args, kwargs))
        return cast(R, await run_async(plan, fn, args, kwargs, engine))

    wrapper.statistics = RetryStatistics(lambda: engines.last)  # type: ignore[attr-defined]
    return wrapper
