"""``@resilient``: retries inside a circuit breaker, with every attempt measured.

One core decides, thin drivers act. The first attempt runs inline in the
wrapper (a success costs a clock read, a flag check and a buffered metric); on
the first failure, a generator (:meth:`_Engine.plan`) decides attempt by
attempt whether to sleep, call again, or give up, and yields what it needs
done. The sync driver (:func:`_run_sync`) and the async one (:func:`_run_async`)
only carry out those steps: call, sleep, report to the breaker.

Order: the breaker guards each logical call (one admission, one reported
outcome); retries happen inside it; a rejected call raises
:class:`CircuitOpenError` without calling the function; no retry sleep ends
past the deadline; when retries run out the function's own exception is raised.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

import tenacity

from connector_resilience import _clock, _waits
from connector_resilience._auth import TokenSource, aauthenticated, authenticated
from connector_resilience.backends import CallStatus, Store, open_store, store_for_policy
from connector_resilience.circuit import CircuitBreaker, Outcome, StateChange, breaker_for
from connector_resilience.errors import CircuitOpenError, ConfigurationError, _FastCircuitOpenError
from connector_resilience.metrics import buffer_for
from connector_resilience.policy import Policy, current_policy
from connector_resilience.retry import exception_predicate, wait_backoff

__all__ = ["CallSpec", "RetryEvent", "resilient"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("connector_resilience")

_CALL: Final = 0
_SLEEP: Final = 1
_REPORT: Final = 2

#: Interruptions, not failures of the connector: never retried, never recorded,
#: never counted by the breaker (a probe slot they held is given back).
_INTERRUPTIONS: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
)

ExceptionMatcher = (
    type[BaseException]
    | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool]
    | tenacity.retry_base
)


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """An attempt failed and another one is coming.

    Attributes:
        connector: connector name.
        operation: operation name.
        attempt: the attempt that failed (1 for the first).
        delay_s: the wait before the next attempt.
        error: the exception, or ``None`` when a result asked for the retry.
        result: the result that asked for the retry, else ``None``.
    """

    connector: str
    operation: str
    attempt: int
    delay_s: float
    error: BaseException | None
    result: Any = None


@dataclass(frozen=True, slots=True)
class CallSpec:
    """Per-call adjustments of an engine's rules (the HTTP middleware's needs).

    Attributes:
        max_attempts: attempts for this call (1: not retryable, e.g. a POST).
        deadline_s: this call's own budget, on top of the policy's.
        labels: extra metric labels for this call (method, host).
        can_retry: returns why this call cannot be repeated (a consumed
            request body), or ``None`` when it can.
    """

    max_attempts: int | None = None
    deadline_s: float | None = None
    labels: Mapping[str, str] | None = None
    can_retry: Callable[[], str | None] | None = None


_NO_SPEC = CallSpec()


def _with_status(labels: Mapping[str, str] | None, value: Any) -> Mapping[str, str] | None:
    """Labels plus the status code of an HTTP-like result."""
    status = getattr(value, "status", None)
    if not isinstance(status, int):
        return labels
    return {**(labels or {}), "status_code": str(status)}


# One step of the retry plan, answered by a driver:
#   (_CALL, superseded result or None) -> (ok, value or exception, start, end)
#   (_SLEEP, seconds)                   -> None
#   (_REPORT, probe, outcome, duration) -> None
_Plan = Generator[tuple[Any, ...], Any, Any]


class _Engine:
    """Everything one decorated function needs for one connector, resolved once."""

    def __init__(
        self,
        *,
        connector: str,
        operation: str,
        policy: Policy,
        store: Store,
        options: _Options,
        breaker_name: str | None = None,
    ) -> None:
        view = policy.for_connector(connector)
        self.connector = connector
        self.operation = operation
        self.policy = view
        self.store = store
        self.options = options
        self.max_attempts = (
            options.max_attempts if options.max_attempts is not None else view.retry.max_attempts
        )
        deadline = options.deadline_s if options.deadline_s is not None else view.retry.deadline_s
        self.deadline_s = deadline
        self.wait = options.wait if options.wait is not None else wait_backoff(policy=view)
        self.stop = options.stop
        self.should_retry = exception_predicate(options.retry_on)
        self.retry_result = options.retry_on_result
        self.failure_result = options.failure_result
        self.failure_on = (
            exception_predicate(options.failure_on) if options.failure_on is not None else None
        )
        self.ignore = options.ignore
        self.labels = dict(options.labels) if options.labels else None
        buffer = buffer_for(store, view) if options.metrics else None
        self.rows = buffer.rows if buffer is not None else None
        self.rejections = buffer.rejections if buffer is not None else None
        # OAUTH2_REQUIRED without tokens=: refuse to call out with no usable token.
        self.gate: Callable[[], object] | None = None
        if view.oauth.required and options.tokens is None:
            from connector_resilience.oauth2 import TokenManager

            self.gate = TokenManager(connector, policy=view, store=store).get_token
        self.breaker: CircuitBreaker | None = None
        if options.breaker and view.circuit.enabled:
            self.breaker = breaker_for(breaker_name or connector, policy=view, store=store)
            if options.on_state_change is not None:
                self.breaker.add_listener(options.on_state_change)

    # Bookkeeping ----------------------------------------------------------

    def row(
        self,
        duration_ms: float,
        status: CallStatus,
        error: str | None,
        attempt: int,
        final: bool,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if self.rows is not None:
            self.rows.append(
                (
                    _clock.wall(),
                    self.connector,
                    self.operation,
                    duration_ms,
                    status,
                    error,
                    attempt,
                    final,
                    labels,
                )
            )

    def succeeded(
        self,
        start: float,
        end: float,
        probe: str | None,
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Record a first-attempt success; True if the breaker must hear of it."""
        duration_ms = (end - start) * 1000.0
        rows = self.rows
        if rows is not None:
            rows.append(
                (
                    _clock.wall(),
                    self.connector,
                    self.operation,
                    duration_ms,
                    "ok",
                    None,
                    1,
                    True,
                    labels or self.labels,
                )
            )
        breaker = self.breaker
        return breaker is not None and (probe is not None or not breaker._success_trivial)

    def rejected(self, exc: CircuitOpenError, labels: Mapping[str, str] | None = None) -> None:
        # The hot path of an open circuit: one append; the buffer counts them and
        # writes one record per (operation, labels) per flush.
        if self.rejections is not None:
            self.rejections.append((self.connector, self.operation, labels or self.labels))
        hook = self.options.on_reject
        if hook is not None:
            _safely(hook, exc, "on_reject")

    def classify(self, exc: BaseException) -> Outcome:
        """What a raised exception means to the breaker."""
        if self.ignore and isinstance(exc, self.ignore):
            return "ignore"
        if self.failure_on is not None and not self.failure_on(exc):
            return "success"
        return "failure"

    def delay_s(
        self, attempt: int, previous_s: float | None, outcome: Any, elapsed_s: float
    ) -> float:
        wait = self.wait
        if isinstance(wait, wait_backoff):
            return (
                wait.delay_ms(
                    attempt - 1,
                    previous_ms=None if previous_s is None else previous_s * 1000.0,
                    outcome=outcome,
                )
                / 1000.0
            )
        return float(wait(_tenacity_state(attempt, outcome, previous_s, elapsed_s)))

    # The plan ----------------------------------------------------------------

    def plan(
        self,
        probe: str | None,
        first: tuple[bool, Any, float, float] | None = None,
        spec: CallSpec | None = None,
    ) -> _Plan:
        """Decide attempt by attempt; ``first`` is the first attempt's outcome if it ran."""
        spec = spec or _NO_SPEC
        max_attempts = spec.max_attempts if spec.max_attempts is not None else self.max_attempts
        labels = self.labels if spec.labels is None else {**(self.labels or {}), **spec.labels}
        if first is None:
            first = yield (_CALL,)
        ok, value, start, end = first
        attempt = 1
        began = _clock.monotonic() - (end - start)
        deadlines = [d for d in (self.deadline_s, spec.deadline_s) if d is not None]
        deadline = began + min(deadlines) if deadlines else None
        previous: float | None = None
        while True:
            duration_ms = (end - start) * 1000.0
            error_name: str | None
            attempt_labels = _with_status(labels, value) if ok else labels
            if ok:
                retry = self.retry_result is not None and bool(self.retry_result(value))
                failed = retry or (self.failure_result is not None and self.failure_result(value))
                if not retry:
                    status: CallStatus = "error" if failed else "ok"
                    self.row(
                        duration_ms,
                        status,
                        _result_name(value) if failed else None,
                        attempt,
                        True,
                        labels=attempt_labels,
                    )
                    yield (_REPORT, probe, "failure" if failed else "success", duration_ms)
                    return value
                error_name = _result_name(value)
                outcome: Outcome = "failure"
            else:
                if isinstance(value, _INTERRUPTIONS):
                    yield (_REPORT, probe, "ignore", duration_ms)
                    raise value
                retry = self.should_retry(value)
                outcome, error_name = self.classify(value), type(value).__name__
            delay: float | None = None
            if retry and attempt < max_attempts:
                elapsed = _clock.monotonic() - began
                delay = max(0.0, self.delay_s(attempt, previous, value, elapsed))
                past_deadline = deadline is not None and _clock.monotonic() + delay > deadline
                stopped = self.stop is not None and self.stop(
                    _tenacity_state(attempt, value, previous, elapsed, ok=ok)
                )
                refusal = spec.can_retry() if spec.can_retry is not None else None
                if refusal is not None:
                    logger.warning(
                        "%s.%s: not retried: %s", self.connector, self.operation, refusal
                    )
                if past_deadline or stopped or refusal is not None:
                    delay = None
            final = delay is None
            self.row(duration_ms, "error", error_name, attempt, final, labels=attempt_labels)
            if final:
                yield (_REPORT, probe, outcome, duration_ms)
                if ok:
                    return value
                raise value
            assert delay is not None
            self._announce_retry(attempt, delay, None if ok else value, value if ok else None)
            if delay > 0:
                yield (_SLEEP, delay)
            attempt += 1
            previous = delay
            ok, value, start, end = yield (_CALL, value if ok else None)

    def _announce_retry(
        self, attempt: int, delay: float, error: BaseException | None, result: Any
    ) -> None:
        logger.info(
            "%s.%s attempt %d failed (%s); retrying in %.3fs",
            self.connector,
            self.operation,
            attempt,
            type(error).__name__ if error is not None else "result",
            delay,
        )
        hook = self.options.on_retry
        if hook is not None:
            _safely(
                hook,
                RetryEvent(self.connector, self.operation, attempt, delay, error, result),
                "on_retry",
            )


def _result_name(value: Any) -> str:
    status = getattr(value, "status", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    return "RetryableResult"


def _safely(hook: Callable[[Any], object], event: Any, name: str) -> None:
    try:
        hook(event)
    except Exception:
        logger.exception("%s hook raised; ignored", name)


_DUMMY_RETRYING = tenacity.Retrying()


def _tenacity_state(
    attempt: int, outcome: Any, previous_s: float | None, elapsed_s: float, *, ok: bool = False
) -> tenacity.RetryCallState:
    """A tenacity RetryCallState, so user-supplied tenacity wait/stop strategies work."""
    state = tenacity.RetryCallState(_DUMMY_RETRYING, None, (), {})
    state.attempt_number = attempt
    if ok or not isinstance(outcome, BaseException):
        state.set_result(outcome)
    else:
        state.set_exception((type(outcome), outcome, outcome.__traceback__))
    state.upcoming_sleep = previous_s or 0.0
    state.start_time = time.monotonic() - elapsed_s
    state.outcome_timestamp = time.monotonic()
    return state


# Drivers ------------------------------------------------------------------------


def _run_sync(plan: _Plan, fn: Callable[..., Any], args: Any, kwargs: Any, engine: _Engine) -> Any:
    perf = time.perf_counter
    answer: Any = None
    try:
        while True:
            step = plan.send(answer)
            kind = step[0]
            if kind == _CALL:
                start = perf()
                try:
                    answer = (True, fn(*args, **kwargs), start, perf())
                except BaseException as exc:
                    answer = (False, exc, start, perf())
            elif kind == _SLEEP:
                _waits.sleep(step[1])
                answer = None
            else:
                if engine.breaker is not None:
                    engine.breaker.report(step[1], step[2], duration_ms=step[3])
                answer = None
    except StopIteration as done:
        return done.value


async def _run_async(
    plan: _Plan,
    fn: Callable[..., Awaitable[Any]],
    args: Any,
    kwargs: Any,
    engine: _Engine,
    *,
    discard: Callable[[Any], object] | None = None,
) -> Any:
    perf = time.perf_counter
    answer: Any = None
    try:
        while True:
            step = plan.send(answer)
            kind = step[0]
            if kind == _CALL:
                if discard is not None and len(step) > 1 and step[1] is not None:
                    discard(step[1])  # a result superseded by a retry (an HTTP response)
                start = perf()
                try:
                    answer = (True, await fn(*args, **kwargs), start, perf())
                except BaseException as exc:
                    answer = (False, exc, start, perf())
            elif kind == _SLEEP:
                await _waits.asleep(step[1])
                answer = None
            else:
                if engine.breaker is not None:
                    await engine.breaker.areport(step[1], step[2], duration_ms=step[3])
                answer = None
    except StopIteration as done:
        return done.value


# The decorator -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    retry_on: ExceptionMatcher
    retry_on_result: Callable[[Any], bool] | None
    failure_result: Callable[[Any], bool] | None
    failure_on: ExceptionMatcher | None
    ignore: tuple[type[BaseException], ...]
    max_attempts: int | None
    deadline_s: float | None
    wait: Callable[[tenacity.RetryCallState], float] | None
    stop: Callable[[tenacity.RetryCallState], bool] | None
    breaker: bool
    metrics: bool
    labels: Mapping[str, str] | None
    on_retry: Callable[[RetryEvent], object] | None
    on_state_change: Callable[[StateChange], object] | None
    on_reject: Callable[[CircuitOpenError], object] | None
    tokens: TokenSource | None = None


class _Engines:
    """Resolves the engine for a call: one per connector name, built on first use."""

    def __init__(
        self,
        *,
        connector: str | None,
        operation: str,
        policy: Policy | None,
        store: Store | str | None,
        options: _Options,
    ) -> None:
        self.connector = connector
        self.operation = operation
        self.policy = policy
        self.store = store
        self.options = options
        self.fixed: _Engine | None = None
        self.by_name: dict[str, _Engine] = {}
        self._lock = threading.Lock()
        _all_engines.add(self)

    def forget(self) -> None:
        """Resolve policy, store and breaker again at the next call."""
        with self._lock:
            self.fixed = None
            self.by_name = {}

    def built(self, args: tuple[Any, ...]) -> _Engine | None:
        """The engine for a call if it is built already (a lookup, no I/O), else ``None``."""
        if self.fixed is not None or self.connector is not None:
            return self.fixed
        name = getattr(args[0], "connector_name", None) if args else None
        return self.by_name.get(name) if isinstance(name, str) else None

    def __call__(self, args: tuple[Any, ...]) -> _Engine:
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

    def _build(self, connector: str) -> _Engine:
        return _build_engine(
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


def _build_engine(
    *,
    connector: str,
    operation: str,
    policy: Policy | None,
    store: Store | str | None,
    options: _Options,
    breaker_name: str | None = None,
) -> _Engine:
    """An engine with ``None`` policy and store resolved (environment, then policy's store)."""
    policy = policy or current_policy()
    if store is None:
        store = store_for_policy(policy.for_connector(connector))
    elif isinstance(store, str):
        store = open_store(store)
    return _Engine(
        connector=connector,
        operation=operation,
        policy=policy,
        store=store,
        options=options,
        breaker_name=breaker_name,
    )


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
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    if not isinstance(ignore, tuple):
        raise TypeError("ignore must be a tuple of exception types")
    exception_predicate(retry_on)  # validate now, not at the first failure
    options = _Options(
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
    )

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"@resilient cannot retry the generator {fn.__qualname__}()")
        is_async = inspect.iscoroutinefunction(fn)
        call: Callable[..., Any] = fn
        if tokens is not None:
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
            return cast(Callable[P, R], _async_wrapper(call, engines))
        return cast(Callable[P, R], _sync_wrapper(call, engines))

    return decorate


def _sync_wrapper(fn: Callable[P, R], engines: _Engines) -> Callable[P, R]:
    perf = time.perf_counter

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        engine = engines.fixed or engines(args)
        if engine.gate is not None:
            engine.gate()
        breaker = engine.breaker
        probe = None
        if breaker is not None and (now := _clock.monotonic()) >= breaker._fast_until:
            if now < breaker._reject_until:
                rejection = _FastCircuitOpenError(*breaker._rejection_args)
                engine.rejected(rejection)
                raise rejection
            try:
                probe = breaker.acquire()
            except CircuitOpenError as exc:
                engine.rejected(exc)
                raise
        start = perf()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            plan = engine.plan(probe, (False, exc, start, perf()))
            return cast(R, _run_sync(plan, fn, args, kwargs, engine))
        end = perf()
        if engine.retry_result is not None and engine.retry_result(result):
            plan = engine.plan(probe, (True, result, start, end))
            return cast(R, _run_sync(plan, fn, args, kwargs, engine))
        if engine.succeeded(start, end, probe):
            assert breaker is not None
            breaker.report(probe, "success", duration_ms=(end - start) * 1000.0)
        return result

    return wrapper


def _async_wrapper(fn: Callable[P, Awaitable[R]], engines: _Engines) -> Callable[P, Awaitable[R]]:
    perf = time.perf_counter

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # Building an engine opens the store and reads the breaker (network I/O
        # for Redis): the first call of a connector does it in a worker thread.
        engine = engines.fixed or engines.built(args)
        if engine is None:
            engine = await asyncio.to_thread(engines, args)
        if engine.gate is not None:
            await asyncio.to_thread(engine.gate)  # a store read, maybe over the network
        breaker = engine.breaker
        probe = None
        if breaker is not None and (now := _clock.monotonic()) >= breaker._fast_until:
            if now < breaker._reject_until:
                rejection = _FastCircuitOpenError(*breaker._rejection_args)
                engine.rejected(rejection)
                raise rejection
            try:
                probe = await breaker.aacquire()
            except CircuitOpenError as exc:
                engine.rejected(exc)
                raise
        start = perf()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            plan = engine.plan(probe, (False, exc, start, perf()))
            return cast(R, await _run_async(plan, fn, args, kwargs, engine))
        end = perf()
        if engine.retry_result is not None and engine.retry_result(result):
            plan = engine.plan(probe, (True, result, start, end))
            return cast(R, await _run_async(plan, fn, args, kwargs, engine))
        if engine.succeeded(start, end, probe):
            assert breaker is not None
            await breaker.areport(probe, "success", duration_ms=(end - start) * 1000.0)
        return result

    return wrapper
