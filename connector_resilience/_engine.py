"""The retry engine under ``@resilient`` and the HTTP adapters: one plan, two drivers.

One core decides, thin drivers act. On the first failure, a generator
(:meth:`Engine.plan`) decides attempt by attempt whether to sleep, call again,
or give up, and yields what it needs done. The sync driver (:func:`run_sync`)
and the async one (:func:`run_async`) only carry out those steps: call, sleep,
report to the breaker. :func:`build_engine` resolves everything one decorated
function or HTTP client needs for one connector, once.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import tenacity

from connector_resilience import _clock, _waits, tracing
from connector_resilience._names import check_name
from connector_resilience.backends import CallStatus, Store, open_store, store_for_policy
from connector_resilience.circuit import CircuitBreaker, Outcome, StateChange, breaker_for
from connector_resilience.errors import BulkheadFullError, CircuitOpenError, RateLimitExceededError
from connector_resilience.limits import Admission, Refusal, load_control_for
from connector_resilience.metrics import Series, buffer_for
from connector_resilience.policy import Policy, current_policy
from connector_resilience.retry import exception_predicate, wait_backoff

if TYPE_CHECKING:
    from connector_resilience.oauth2 import TokenSource

__all__ = [
    "ATTEMPTS",
    "ERROR",
    "OUTCOME",
    "WAITED_S",
    "CallSpec",
    "CallStats",
    "Engine",
    "EngineOptions",
    "ExceptionMatcher",
    "RetryEvent",
    "Target",
    "aact",
    "aadmit",
    "act",
    "admit",
    "build_engine",
    "is_call",
    "new_stats",
    "run_async",
    "run_sync",
]

logger = logging.getLogger("connector_resilience")

_CALL: Final = 0
_SLEEP: Final = 1
_REPORT: Final = 2
_SPEND: Final = 3

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
        headers: the outgoing request's headers: a traced call puts each
            attempt's trace context (``traceparent``) there.
        wait: this call's wait rule, instead of the engine's backoff:
            ``(attempt, previous_s, outcome, elapsed_s)`` to seconds, or to
            ``None`` or ``math.inf`` to stop (a server asked for longer than
            the policy allows).
        result_labels: the labels of an attempt that returned ``result``
            (an HTTP response's status code), instead of ``labels``.
    """

    max_attempts: int | None = None
    deadline_s: float | None = None
    labels: Mapping[str, str] | None = None
    can_retry: Callable[[], str | None] | None = None
    headers: MutableMapping[str, str] | None = None
    wait: Callable[[int, float | None, Any, float], float | None] | None = None
    result_labels: Callable[[Any], Mapping[str, str]] | None = None


_NO_SPEC = CallSpec()
#: Series an engine keeps for the labels of its successes (HTTP method, host,
#: port, status): a handful in practice.
_MAX_LABELLED_SERIES = 64

#: What a call runs: the user's function and its arguments (tenacity's
#: ``RetryCallState.fn``, ``args`` and ``kwargs``).
Target = tuple[Callable[..., Any] | None, tuple[Any, ...], dict[str, Any]]


#: One call's progress as the plan sees it, for a decorated function's
#: ``statistics``: ``[attempts, waited_s, outcome, error]`` (attempts so far,
#: the running one included; seconds slept between them; ``"running"``,
#: ``"success"``, ``"failure"`` or ``"rejected"``; the last failed attempt's
#: error name). A list, not a class: one is made on every retried call, and a
#: list literal costs a tenth of an instance. Shared records are tuples.
CallStats = Sequence[Any]
ATTEMPTS, WAITED_S, OUTCOME, ERROR = 0, 1, 2, 3


def new_stats() -> list[Any]:
    """A fresh record: the first attempt ran."""
    return [1, 0.0, "running", None]


#: Results that cannot carry a ``status`` (no attribute can be set on them): no
#: lookup, which would raise and clear an AttributeError, for the common results.
_NO_STATUS: Final = frozenset({type(None), bool, int, float, str, bytes, dict, list, tuple})


def _with_status(labels: Mapping[str, str] | None, value: Any) -> Mapping[str, str] | None:
    """Labels plus the status code of an HTTP-like result."""
    if type(value) in _NO_STATUS:
        return labels
    status = getattr(value, "status", None)
    if not isinstance(status, int):
        return labels
    return {**(labels or {}), "status_code": str(status)}


# One step of the retry plan, answered by a driver:
#   (_CALL, superseded result or None) -> (ok, value or exception, start, end)
#   (_SLEEP, seconds)                   -> None
#   (_REPORT, probe, outcome, duration, failure) -> None  (failure: exception or result name)
_Plan = Generator[tuple[Any, ...], Any, Any]


#: Engines with the same ``retry_on`` (nearly all: the default) share one predicate
#: instead of a closure each.
_cached_predicate = functools.lru_cache(maxsize=256)(exception_predicate)


def _shared_predicate(retry_on: Any) -> Callable[[BaseException], bool]:
    try:
        return _cached_predicate(retry_on)
    except TypeError:  # unhashable: a predicate of its own
        return exception_predicate(retry_on)


class Engine:
    """Everything one decorated function needs for one connector, resolved once."""

    # Slots: the hot path reads these on every call (a slot read stays fast however
    # many there are, where a dict of more than 30 keys loses the fast path), and
    # an engine per connector stays small.
    __slots__ = (
        "_by_labels",
        "_rejection",
        "admission",
        "attempt_timeout_s",
        "breaker",
        "budget",
        "buffer",
        "connector",
        "deadline_s",
        "failure_on",
        "fallback",
        "gate",
        "labels",
        "load",
        "max_attempts",
        "operation",
        "options",
        "plans_every_attempt",
        "policy",
        "retry_result",
        "series",
        "should_retry",
        "store",
        "tracer",
        "wait",
    )

    def __init__(
        self,
        *,
        connector: str,
        operation: str,
        policy: Policy,
        store: Store,
        options: EngineOptions,
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
        self.wait = options.wait if options.wait is not None else _backoff_for(view)
        self.should_retry = _shared_predicate(options.retry_on)
        self.retry_result = options.retry_on_result
        self.failure_on = (
            _shared_predicate(options.failure_on) if options.failure_on is not None else None
        )
        self.labels = dict(options.labels) if options.labels else None
        buffer = buffer_for(store, view) if options.metrics else None
        self.buffer = buffer
        # An open circuit's hot path appends this one tuple (nothing to build),
        # made at the first rejection: most connectors never see one.
        self._rejection: tuple[str, str, Mapping[str, str] | None, str] | None = None
        #: The hot path of a first-attempt success: ``series.pending.append(end - start)``
        #: (perf-counter times). ``None`` with metrics off, and with raw metrics
        #: (``CONNECTOR_METRICS_MODE=raw``: a record per call, each with its own time).
        self.series = (
            buffer.series(connector, operation, self.labels)
            if buffer is not None and buffer.mode == "aggregated"
            else None
        )
        self._by_labels: dict[int, tuple[Mapping[str, str], Series]] | None = None
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
        # None unless OpenTelemetry tracing is on: then callers run every attempt
        # through the plan, each in its own span.
        self.tracer = tracing.call_tracer(connector, operation, breaker=self.breaker)
        # No inline first attempt either when before/after hooks must see it.
        self.plans_every_attempt = (
            self.tracer is not None or options.before is not None or options.after is not None
        )
        # Load control (limits.py): the budget counts logical calls (``budget.calls``),
        # admission runs before the breaker, and each retry asks ``load`` first.
        self.load = load_control_for(connector, policy=view, store=store)
        self.budget = self.load.budget
        self.fallback = options.fallback
        self.attempt_timeout_s = (
            options.attempt_timeout_s
            if options.attempt_timeout_s is not None
            else view.retry.attempt_timeout_s
        )
        # A call with something to admit (a rate limiter, a bulkhead) is admitted first.
        self.admission = (
            Admission(self.load, deadline_s=deadline, refused=self.refused)
            if self.load.admits
            else None
        )

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
        buffer = self.buffer
        if buffer is not None:
            rows = buffer.rows
            rows.append(
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
            if len(rows) >= buffer.fold_at:
                buffer.keep_up()

    def succeeded(
        self,
        start: float,
        end: float,
        probe: str | None,
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Record a first-attempt success; True if the breaker must hear of it.

        ``start`` and ``end`` are ``_clock.perf`` times: the writer thread
        stamps buffered durations, so a success reads no clock here (raw
        metrics excepted: a record of its own, with its own time).
        """
        series = self.series if labels is None else self._labelled_series(labels)
        if series is None and self.buffer is not None:
            # Raw metrics, or labels made per call past the bound: a full row.
            self.budget.calls += 1
            self.row((end - start) * 1000.0, "ok", None, 1, True, labels=labels or self.labels)
            breaker = self.breaker
            return breaker is not None and (probe is not None or not breaker.success_is_trivial)
        return self.succeeded_in(series, start, end, probe)

    def series_for(self, labels: Mapping[str, str]) -> Series | None:
        """The series successes with ``labels`` go to, for a caller that keeps it.

        ``None`` when successes are not recorded as series (metrics off, or
        past the bound): :meth:`succeeded` with the labels records those.
        """
        return self._labelled_series(labels)

    def succeeded_in(
        self, series: Series | None, start: float, end: float, probe: str | None
    ) -> bool:
        """:meth:`succeeded` into a series the caller keeps (see :meth:`series_for`).

        ``series`` is ``None`` when metrics are off. The HTTP adapters keep one
        per route and status, so that a success is one append. (``@resilient``'s
        wrappers do the same inline, see :mod:`connector_resilience.resilient`.)
        """
        self.budget.calls += 1
        buffer = self.buffer
        if series is not None and buffer is not None:
            # The engine has a series of its own unless metrics are raw.
            if self.series is not None and (series.owner is buffer or buffer.adopt(series)):
                series.pending.append(end - start)
                if end >= series.keep_up_at:  # now and then, or the writer stopped looking
                    buffer.look(series, end)
            else:  # raw metrics, or a series another store's buffer takes: a full row
                self.row((end - start) * 1000.0, "ok", None, 1, True, labels=series.labels)
        breaker = self.breaker
        return breaker is not None and (probe is not None or not breaker.success_is_trivial)

    def keep_up(self, now: float) -> None:
        """A success of :attr:`series` at ``now`` passed its ``keep_up_at``: tell the buffer.

        (``MetricsBuffer.look``: the writer looks at the series again, and the
        call folds what is buffered if the writer fell behind.)
        """
        buffer, series = self.buffer, self.series
        if buffer is not None and series is not None:
            buffer.look(series, now)

    def _labelled_series(self, labels: Mapping[str, str]) -> Series | None:
        """The series of a labels mapping the caller keeps (the HTTP rules cache theirs).

        Known by identity: the entry holds the mapping, so its id is not reused
        while the entry lives. ``None`` past a bound (labels made per call):
        such successes go as full rows.
        """
        known = self._by_labels
        if known is None:
            known = self._by_labels = {}  # only engines of labelled calls pay for it
        entry = known.get(id(labels))
        if entry is not None and entry[0] is labels:
            return entry[1]
        if self.series is None or self.buffer is None or len(known) >= _MAX_LABELLED_SERIES:
            return None
        series = self.buffer.series(self.connector, self.operation, labels)
        known[id(labels)] = (labels, series)
        return series

    def rejected(
        self, exc: CircuitOpenError, labels: Mapping[str, str] | None = None
    ) -> CircuitOpenError:
        # The hot path of an open circuit: one append; the buffer counts them and
        # writes one record per (operation, labels) per flush.
        buffer = self.buffer
        if buffer is not None:
            rejections = buffer.rejections
            if labels:
                rejections.append((self.connector, self.operation, labels, "CircuitOpenError"))
            else:
                rejection = self._rejection
                if rejection is None:
                    rejection = (self.connector, self.operation, self.labels, "CircuitOpenError")
                    self._rejection = rejection
                rejections.append(rejection)
            if len(rejections) >= buffer.fold_at:
                buffer.keep_up()
        if self.tracer is not None:
            self.tracer.rejected(exc, labels or self.labels)
        hook = self.options.on_reject
        if hook is not None:
            _safely(hook, exc, "on_reject")
        return exc  # for ``raise engine.rejected(...)``

    def refused(self, kind: Refusal, labels: Mapping[str, str] | None = None) -> None:
        """Count a load-control refusal (or a fallback used) in the metrics."""
        buffer = self.buffer
        if buffer is not None:
            buffer.rejections.append((self.connector, self.operation, labels or self.labels, kind))
            if len(buffer.rejections) >= buffer.fold_at:
                buffer.keep_up()

    def wants_fallback(self, exc: BaseException) -> bool:
        """Whether ``exc`` ends the call in the fallback: a refusal, or retries that ran out."""
        if self.fallback is None:
            return False
        return isinstance(exc, _REFUSALS) or self.should_retry(exc)

    def classify(self, exc: BaseException) -> Outcome:
        """What a raised exception means to the breaker."""
        ignore = self.options.ignore  # options' own fields: a slot each would cost memory
        if ignore and isinstance(exc, ignore):
            return "ignore"
        if self.failure_on is not None and not self.failure_on(exc):
            return "success"
        return "failure"

    def delay_s(  # noqa: PLR0917 - positional on purpose: a retry's hot path
        self,
        attempt: int,
        previous_s: float | None,
        outcome: Any,
        elapsed_s: float,
        idle_s: float = 0.0,
        target: Target | None = None,
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
        state = _tenacity_state(
            attempt, outcome, previous_s, elapsed_s, idle_s=idle_s, target=target
        )
        return float(wait(state))

    # The plan ----------------------------------------------------------------

    def plan(
        self,
        probe: str | None,
        first: tuple[bool, Any, float, float] | None = None,
        spec: CallSpec | None = None,
        stats: list[Any] | None = None,
        target: Target | None = None,
    ) -> _Plan:
        """Decide attempt by attempt; ``first`` is the first attempt's outcome if it ran.

        ``stats`` is kept up to date as attempts go; ``target`` is what tenacity
        strategies and hooks see as the call's function and arguments. A traced
        engine's callers pass no ``first``: every attempt then runs from the
        plan, in its own span.
        """
        spec = spec or _NO_SPEC
        steps = self._steps(probe, first, spec, stats, target)
        if self.tracer is None:
            return steps
        return self.tracer.trace_plan(
            steps,
            probe=probe,
            labels=self.labels if spec.labels is None else {**(self.labels or {}), **spec.labels},
            headers=spec.headers,
            result_name=_result_name,
        )

    def _steps(
        self,
        probe: str | None,
        first: tuple[bool, Any, float, float] | None,
        spec: CallSpec,
        stats: list[Any] | None,
        target: Target | None,
    ) -> _Plan:
        max_attempts = spec.max_attempts if spec.max_attempts is not None else self.max_attempts
        if _waits.attempts_cap is not None:  # testing.set_testing
            max_attempts = _waits.attempts_cap(max_attempts)
        labels = self.labels if spec.labels is None else {**(self.labels or {}), **spec.labels}
        before, after = self.options.before, self.options.after
        if first is None:
            if before is not None:
                _safely(before, _tenacity_state(1, _NO_OUTCOME, None, 0.0, target=target), "before")
            first = yield (_CALL,)
        self.budget.calls += 1
        ok, value, start, end = first
        attempt = 1
        waited = 0.0
        began = _clock.monotonic() - (end - start)
        deadline = None
        if self.deadline_s is not None or spec.deadline_s is not None:
            deadline = began + min(d for d in (self.deadline_s, spec.deadline_s) if d is not None)
        previous: float | None = None
        while True:
            duration_ms = (end - start) * 1000.0
            error_name: str | None
            attempt_labels: Mapping[str, str] | None
            if not ok:
                attempt_labels = labels
            elif spec.result_labels is not None:
                attempt_labels = spec.result_labels(value)
            else:
                attempt_labels = _with_status(labels, value)
            if ok:
                retry = self.retry_result is not None and bool(self.retry_result(value))
                failure_result = self.options.failure_result
                failed = retry or (failure_result is not None and failure_result(value))
                if not retry:
                    if stats is not None:
                        stats[OUTCOME] = "failure" if failed else "success"
                    status: CallStatus = "error" if failed else "ok"
                    self.row(
                        duration_ms,
                        status,
                        _result_name(value) if failed else None,
                        attempt,
                        True,
                        labels=attempt_labels,
                    )
                    breaker = self.breaker
                    # A plain success the breaker need not hear of is not reported,
                    # as on the inline path (a traced plan ends its attempt's span on it).
                    if (
                        failed
                        or probe is not None
                        or self.tracer is not None
                        or (breaker is not None and not breaker.success_is_trivial)
                    ):
                        yield (
                            _REPORT,
                            probe,
                            "failure" if failed else "success",
                            duration_ms,
                            _result_name(value) if failed else None,
                        )
                    return value
                error_name = _result_name(value)
                outcome: Outcome = "failure"
            else:
                if isinstance(value, _INTERRUPTIONS):
                    if stats is not None:
                        stats[OUTCOME], stats[ERROR] = "failure", type(value).__name__
                    yield (_REPORT, probe, "ignore", duration_ms, None)
                    try:
                        raise value
                    finally:
                        # The traceback keeps this frame: without these names, the
                        # frame and the exception make no cycle for the collector.
                        first = value = None
                retry = self.should_retry(value)
                outcome, error_name = self.classify(value), type(value).__name__
            if after is not None:
                elapsed = _clock.monotonic() - began
                state = _tenacity_state(
                    attempt, value, previous, elapsed, ok=ok, idle_s=waited, target=target
                )
                _safely(after, state, "after")
            delay: float | None = None
            if retry and attempt < max_attempts:
                elapsed = _clock.monotonic() - began
                if spec.wait is not None:
                    asked = spec.wait(attempt, previous, value, elapsed)
                else:
                    asked = self.delay_s(attempt, previous, value, elapsed, waited, target)
                # A wait of None or infinity: the wait rule gives up with this outcome.
                delay = None if asked is None or asked == math.inf else max(0.0, asked)
                if delay is not None:
                    past_deadline = deadline is not None and _clock.monotonic() + delay > deadline
                    stop = self.options.stop
                    stopped = stop is not None and stop(
                        _tenacity_state(
                            attempt, value, previous, elapsed, ok=ok, idle_s=waited, target=target
                        )
                    )
                    refusal = spec.can_retry() if spec.can_retry is not None else None
                    if refusal is not None:
                        logger.warning(
                            "%s.%s: not retried: %s", self.connector, self.operation, refusal
                        )
                    if past_deadline or stopped or refusal is not None:
                        delay = None
            if delay is not None and self.load.gates_retries:
                left = None if deadline is None else deadline - _clock.monotonic()
                verdict = yield (_SPEND, delay, left)
                if isinstance(verdict, str):
                    self.refused(cast(Refusal, verdict), attempt_labels)
                    delay = None
                else:
                    delay = verdict
            final = delay is None
            self.row(duration_ms, "error", error_name, attempt, final, labels=attempt_labels)
            if stats is not None:
                stats[ERROR] = error_name
            if final:
                if stats is not None:
                    stats[OUTCOME] = "failure"
                yield (_REPORT, probe, outcome, duration_ms, error_name if ok else value)
                if ok:
                    return value
                try:
                    raise value
                finally:
                    first = value = None  # no cycle, as above
            assert delay is not None
            self._announce_retry(attempt, delay, None if ok else value, value if ok else None)
            if delay > 0:
                yield (_SLEEP, delay)
            attempt += 1
            previous = delay
            waited += delay
            if stats is not None:
                stats[ATTEMPTS], stats[WAITED_S] = attempt, waited
            if before is not None:
                elapsed = _clock.monotonic() - began
                state = _tenacity_state(
                    attempt, _NO_OUTCOME, previous, elapsed, idle_s=waited, target=target
                )
                _safely(before, state, "before")
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
    if not isinstance(status, int):
        status = getattr(value, "status_code", None)  # httpx's and requests' responses
    if isinstance(status, int):
        return f"HTTP {status}"
    return "RetryableResult"


def _safely(hook: Callable[[Any], object], event: Any, name: str) -> None:
    try:
        hook(event)
    except Exception:
        logger.exception("%s hook raised; ignored", name)


_DUMMY_RETRYING = tenacity.Retrying()
#: The outcome of an attempt that has not run yet (a ``before`` hook's state).
_NO_OUTCOME: Final = object()


def _tenacity_state(
    attempt: int,
    outcome: Any,
    previous_s: float | None,
    elapsed_s: float,
    *,
    ok: bool = False,
    idle_s: float = 0.0,
    target: Target | None = None,
) -> tenacity.RetryCallState:
    """A tenacity RetryCallState, so user-supplied tenacity strategies and hooks work."""
    fn, args, kwargs = target if target is not None else (None, (), {})
    state = tenacity.RetryCallState(_DUMMY_RETRYING, fn, args, kwargs)
    state.attempt_number = attempt
    now = time.monotonic()
    state.start_time = now - elapsed_s
    if outcome is not _NO_OUTCOME:
        if ok or not isinstance(outcome, BaseException):
            state.set_result(outcome)
        else:
            state.set_exception((type(outcome), outcome, outcome.__traceback__))
        state.outcome_timestamp = now
    state.upcoming_sleep = previous_s or 0.0
    state.idle_for = idle_s
    return state


# Drivers ------------------------------------------------------------------------


def admit(engine: Engine) -> str | None:
    """The breaker's admission for one call (a probe id, or ``None``); raises if refused."""
    if engine.gate is not None:
        engine.gate()
    breaker = engine.breaker
    if breaker is None:
        return None
    try:
        return breaker.acquire()
    except CircuitOpenError as exc:
        engine.rejected(exc)
        raise


async def aadmit(engine: Engine) -> str | None:
    """:func:`admit` without blocking the event loop on store I/O."""
    if engine.gate is not None:
        await asyncio.to_thread(engine.gate)  # a store read, maybe over the network
    breaker = engine.breaker
    if breaker is None:
        return None
    try:
        return await breaker.aacquire()
    except CircuitOpenError as exc:
        engine.rejected(exc)
        raise


def act(step: tuple[Any, ...], engine: Engine) -> Any:
    """Carry out a plan step other than a call; returns what the plan is sent back.

    A sleep, a report to the breaker, or a retry's verdict from load control
    (its delay, or why it may not go).
    """
    kind = step[0]
    if kind == _SLEEP:
        _waits.sleep(step[1])
    elif kind == _SPEND:
        return engine.load.retry_verdict(step[1], step[2])
    elif engine.breaker is not None:
        engine.breaker.report(step[1], step[2], duration_ms=step[3], error=step[4])
    return None


async def aact(step: tuple[Any, ...], engine: Engine) -> Any:
    """:func:`act` for the event loop."""
    kind = step[0]
    if kind == _SLEEP:
        await _waits.asleep(step[1])
    elif kind == _SPEND:
        return await engine.load.aretry_verdict(step[1], step[2])
    elif engine.breaker is not None:
        await engine.breaker.areport(step[1], step[2], duration_ms=step[3], error=step[4])
    return None


def is_call(step: tuple[Any, ...]) -> bool:
    """Whether a plan step asks for an attempt."""
    return bool(step[0] == _CALL)


def run_sync(
    plan: _Plan,
    fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
    engine: Engine,
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
                    answer = (True, fn(*args, **kwargs), start, perf())
                except BaseException as exc:
                    answer = (False, exc, start, perf())
            elif kind == _SLEEP:
                _waits.sleep(step[1])
                answer = None
            elif kind == _SPEND:
                answer = engine.load.retry_verdict(step[1], step[2])
            else:
                # Inline, not act(): a call less on every retry (the block driver uses act).
                if engine.breaker is not None:
                    engine.breaker.report(step[1], step[2], duration_ms=step[3], error=step[4])
                answer = None
    except StopIteration as done:
        return done.value
    finally:
        answer, step = None, ()  # an exception raised through here: no cycle (see _steps)


async def run_async(
    plan: _Plan,
    fn: Callable[..., Awaitable[Any]],
    args: Any,
    kwargs: Any,
    engine: Engine,
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
                    # A result superseded by a retry (an HTTP response); closing
                    # an httpx async response is a coroutine.
                    closing = discard(step[1])
                    if inspect.isawaitable(closing):
                        await closing
                start = perf()
                try:
                    answer = (True, await fn(*args, **kwargs), start, perf())
                except BaseException as exc:
                    answer = (False, exc, start, perf())
            elif kind == _SLEEP:
                await _waits.asleep(step[1])
                answer = None
            elif kind == _SPEND:
                answer = await engine.load.aretry_verdict(step[1], step[2])
            else:
                if engine.breaker is not None:
                    await engine.breaker.areport(
                        step[1], step[2], duration_ms=step[3], error=step[4]
                    )
                answer = None
    except StopIteration as done:
        return done.value
    finally:
        answer, step = None, ()  # an exception raised through here: no cycle (see _steps)


async def within(timeout_s: float, awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable``, cancelling it with ``TimeoutError`` after ``timeout_s`` seconds."""
    async with asyncio.timeout(timeout_s):
        return await awaitable


#: Load control's own refusals: the fallback takes them, no retry repeats them.
_REFUSALS: tuple[type[BaseException], ...] = (
    CircuitOpenError,
    RateLimitExceededError,
    BulkheadFullError,
)


#: One backoff strategy per schedule: connectors with the same retry settings share it.
_backoffs: dict[tuple[float, float, float, str], wait_backoff] = {}


def _backoff_for(policy: Policy) -> wait_backoff:
    """The policy's backoff schedule, shared by every engine that has the same one."""
    retry = policy.retry
    key = (retry.base_ms, retry.cap_ms, retry.jitter_pct, retry.jitter)
    found = _backoffs.get(key)
    if found is None:
        found = _backoffs.setdefault(key, wait_backoff(policy=policy))
    return found


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """What ``@resilient`` or an HTTP adapter was configured with, before the policy applies."""

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
    before: Callable[[tenacity.RetryCallState], object] | None = None
    after: Callable[[tenacity.RetryCallState], object] | None = None
    fallback: Callable[[BaseException], Any] | None = None
    attempt_timeout_s: float | None = None


def build_engine(
    *,
    connector: str,
    operation: str,
    policy: Policy | None,
    store: Store | str | None,
    options: EngineOptions,
    breaker_name: str | None = None,
) -> Engine:
    """An engine with ``None`` policy and store resolved (environment, then policy's store)."""
    check_name(connector, what="connector name")
    check_name(operation, what="operation name")
    policy = policy or current_policy()
    if store is None:
        store = store_for_policy(policy.for_connector(connector))
    elif isinstance(store, str):
        store = open_store(store)
    return Engine(
        connector=connector,
        operation=operation,
        policy=policy,
        store=store,
        options=options,
        breaker_name=breaker_name,
    )
