"""Retrying a block of code, not a function: ``for attempt in retrying(...): with attempt:``.

The same engine as ``@resilient`` decides: one admission per block (rate
limiter, bulkhead, breaker), one metric row per attempt, the same waits,
deadline, retry budget, hooks and trace spans. The drivers
here only hand each attempt to the ``for`` (or ``async for``) loop and report
what the ``with`` block did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

import tenacity

from connector_resilience._engine import (
    ATTEMPTS,
    Engine,
    ExceptionMatcher,
    RetryEvent,
    aact,
    aadmit,
    act,
    admit,
    is_call,
    new_stats,
)
from connector_resilience._engines import ONE_ATTEMPT, EngineCache, RetryStatistics, refused_stats
from connector_resilience.backends import Store
from connector_resilience.circuit import StateChange
from connector_resilience.errors import BulkheadFullError, CircuitOpenError, RateLimitExceededError
from connector_resilience.policy import Policy
from connector_resilience.resilient import engine_options

__all__ = ["Attempt", "Retrying", "retrying"]

_Outcome = tuple[bool, Any, float, float]


class Attempt:
    """One attempt of a retried block; ``with attempt:`` runs it and keeps its outcome.

    An exception raised in the block is held, not raised: the loop then either
    starts the next attempt or, when retries are over, raises it from the
    ``for`` statement (tenacity's ``AttemptManager`` does the same).

    Attributes:
        number: this attempt's number, 1 for the first.
    """

    __slots__ = ("_start", "number", "outcome")

    def __init__(self, number: int) -> None:
        self.number = number
        self.outcome: _Outcome | None = None
        self._start = 0.0

    def __enter__(self) -> Attempt:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self.outcome = (exc is None, exc, self._start, time.perf_counter())
        return True  # the loop decides: another attempt, or raise it

    def __repr__(self) -> str:
        return f"<Attempt {self.number}>"


class Retrying:
    """A block retried under a connector's policy, breaker and metrics.

    Iterate it with ``for`` (or ``async for`` in a coroutine) and run each
    attempt in ``with attempt:``; each iteration is one call. Reusable:
    every loop over it is a new call. Build it with :func:`retrying`.

    Attributes:
        statistics: what the latest loop did (attempts, wait, outcome).
    """

    def __init__(self, cache: EngineCache) -> None:
        self._cache = cache
        self.statistics = RetryStatistics(cache, "last")

    def disable_retries(self) -> None:
        """Make each loop one attempt from now on (the breaker and metrics stay on)."""
        self._cache.spec = ONE_ATTEMPT

    def enable_retries(self) -> None:
        """Retry again as configured."""
        self._cache.spec = None

    def __iter__(self) -> Iterator[Attempt]:
        cache = self._cache
        engine = cache(())
        admission = engine.admission
        slot: str | None = None
        try:
            # Load control admits the whole block (its retries too), as it does a call.
            slot = admission.enter() if admission is not None else None
            probe = admit(engine)
        except BaseException as exc:
            if admission is not None:
                admission.leave(slot)
            if isinstance(exc, _REFUSALS):
                cache.last = refused_stats(exc)
            raise
        try:
            cache.last = stats = new_stats()
            plan = engine.plan(probe, None, cache.spec, stats)
            answer: Any = None
            while True:
                try:
                    step = plan.send(answer)
                except StopIteration:
                    return
                if not is_call(step):
                    answer = act(step, engine)
                    continue
                attempt = Attempt(stats[ATTEMPTS])
                try:
                    yield attempt
                except GeneratorExit:  # the loop was left with `break` (or abandoned)
                    _finish(plan, attempt, engine)
                    raise
                answer = _outcome_of(attempt, plan)
        finally:
            if admission is not None:
                admission.leave(slot)

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        # Building the engine may read a remote store: not on the event loop.
        cache = self._cache
        engine = cache.built(())
        if engine is None:
            engine = await asyncio.to_thread(cache, ())
        admission = engine.admission
        slot: str | None = None
        try:
            slot = await admission.aenter() if admission is not None else None
            probe = await aadmit(engine)
        except BaseException as exc:
            if admission is not None:
                await admission.aleave(slot)
            if isinstance(exc, _REFUSALS):
                cache.last = refused_stats(exc)
            raise
        try:
            cache.last = stats = new_stats()
            plan = engine.plan(probe, None, cache.spec, stats)
            answer: Any = None
            while True:
                try:
                    step = plan.send(answer)
                except StopIteration:
                    return
                if not is_call(step):
                    answer = await aact(step, engine)
                    continue
                attempt = Attempt(stats[ATTEMPTS])
                try:
                    yield attempt
                except GeneratorExit:
                    await _afinish(plan, attempt, engine)
                    raise
                answer = _outcome_of(attempt, plan)
        finally:
            if admission is not None:
                await admission.aleave(slot)


#: Refusals before the block runs: the breaker's, then load control's admission.
_REFUSALS = (CircuitOpenError, RateLimitExceededError, BulkheadFullError)


def _outcome_of(attempt: Attempt, plan: Any) -> _Outcome:
    if attempt.outcome is None:
        plan.close()
        raise RuntimeError(
            f"attempt {attempt.number} was not run: write `with attempt:` around the "
            "code to retry inside the loop"
        )
    return attempt.outcome


def _leaving(attempt: Attempt) -> _Outcome:
    """What the plan hears when the loop is left early: the success, or an interruption."""
    if attempt.outcome is not None and attempt.outcome[0]:
        return attempt.outcome
    now = time.perf_counter()
    start = attempt.outcome[2] if attempt.outcome is not None else now
    return (False, GeneratorExit(), start, now)


def _finish(plan: Any, attempt: Attempt, engine: Engine) -> None:
    """Let the plan record and report the last attempt, retrying nothing more."""
    try:
        step = plan.send(_leaving(attempt))
        while not is_call(step):
            step = plan.send(act(step, engine))
        plan.close()
    except (StopIteration, GeneratorExit):
        pass


async def _afinish(plan: Any, attempt: Attempt, engine: Engine) -> None:
    try:
        step = plan.send(_leaving(attempt))
        while not is_call(step):
            step = plan.send(await aact(step, engine))
        plan.close()
    except (StopIteration, GeneratorExit):
        pass


def retrying(
    connector: str,
    *,
    operation: str = "block",
    policy: Policy | None = None,
    store: Store | str | None = None,
    retry_on: ExceptionMatcher = Exception,
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
    before: Callable[[tenacity.RetryCallState], object] | None = None,
    after: Callable[[tenacity.RetryCallState], object] | None = None,
) -> Retrying:
    """Retry a block of code under a connector's policy, breaker and metrics.

    tenacity's ``for attempt in Retrying(...)`` and stamina's ``retry_context``,
    on the engine ``@resilient`` uses: the same retries, breaker and metrics.

    Args:
        connector: the connector's name.
        operation: the operation's name in metrics.
        policy: settings (the environment's policy if ``None``).
        store: a store or store URL (the policy's store if ``None``).
        retry_on: which exceptions are retried (as for :func:`resilient`).
        failure_on: which exceptions count as failures for the breaker.
        ignore: exceptions that count as neither success nor failure.
        max_attempts: attempts per loop (``RETRY_MAX_ATTEMPTS`` if ``None``).
        deadline_s: whole-loop budget (``RETRY_DEADLINE_S`` if ``None``).
        wait: a tenacity wait strategy instead of the policy's backoff.
        stop: a tenacity stop strategy, checked in addition to ``max_attempts``.
        breaker: guard the block with the connector's circuit breaker.
        metrics: record every attempt.
        labels: extra low-cardinality labels for metrics.
        on_retry: called with a :class:`RetryEvent` before each retry.
        on_state_change: called with a :class:`StateChange` when the breaker moves.
        on_reject: called with the :class:`CircuitOpenError` of a refused loop.
        before: called with a tenacity ``RetryCallState`` before each attempt.
        after: called with a tenacity ``RetryCallState`` after each failed attempt.

    Returns:
        A :class:`Retrying` to loop over with ``for`` or ``async for``.

    Raises:
        TypeError: ``connector`` is not a non-empty name, or an option is wrong
            (as for :func:`resilient`).

    Example:
        >>> attempts = []
        >>> for attempt in retrying("inventory", store="memory://doc-blocks", wait=lambda s: 0):
        ...     with attempt:
        ...         attempts.append(attempt.number)
        ...         if attempt.number < 2:
        ...             raise ConnectionError("flaky")
        >>> attempts
        [1, 2]
    """
    if not isinstance(connector, str) or not connector:
        raise TypeError(f"retrying() needs a connector name (a non-empty str), got {connector!r}")
    options = engine_options(
        retry_on=retry_on,
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
        before=before,
        after=after,
    )
    cache = EngineCache(
        connector=connector, operation=operation, policy=policy, store=store, options=options
    )
    return Retrying(cache)
