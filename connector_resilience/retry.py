"""Backoff schedules, Retry-After, and which failures may be retried.

``compute_backoff_ms`` is the original framework's formula,
``min(base_ms * 2**attempt +/- jitter, cap_ms)`` with ``attempt`` counted from 0.
:class:`wait_backoff` is the same schedule as a tenacity wait strategy, so code
that already uses tenacity gets it too::

    @tenacity.retry(wait=wait_backoff(), stop=tenacity.stop_after_attempt(3))
    def fetch(): ...
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import email.utils
import functools
import math
import random
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import tenacity
from tenacity.wait import wait_base

from connector_resilience import _clock
from connector_resilience.errors import BulkheadFullError, CircuitOpenError, RateLimitExceededError

if TYPE_CHECKING:
    from connector_resilience.policy import Policy, RetryPolicy

__all__ = [
    "NEVER_RETRY",
    "JitterKind",
    "compute_backoff_ms",
    "exception_predicate",
    "parse_retry_after",
    "retry_after_from",
    "wait_backoff",
]

JitterKind = Literal["proportional", "full", "equal", "decorrelated", "none"]

#: Never retried, whatever a predicate says: the caller asked to stop, or the
#: breaker (or load control: a rate limiter, a bulkhead) already refused the call.
NEVER_RETRY: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    CircuitOpenError,
    RateLimitExceededError,
    BulkheadFullError,
)

_JITTER_KINDS = frozenset(("proportional", "full", "equal", "decorrelated", "none"))
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")

# 2**1024 overflows a float; any attempt past this is capped anyway.
_MAX_EXPONENT = 1000


def _retry_settings(policy: Policy | None) -> RetryPolicy:
    if policy is None:
        from connector_resilience.policy import current_policy

        policy = current_policy()
    return policy.retry


def compute_backoff_ms(
    attempt: int,
    *,
    base_ms: float | None = None,
    cap_ms: float | None = None,
    jitter_pct: float | None = None,
    jitter: JitterKind | None = None,
    previous_ms: float | None = None,
    policy: Policy | None = None,
    rng: random.Random | None = None,
) -> float:
    """The delay before retry number ``attempt + 1``, in milliseconds.

    Args:
        attempt: retries so far, counted from 0 (0 gives about ``base_ms``).
        base_ms: first delay; ``None`` takes ``RETRY_BASE_MS`` from the policy.
        cap_ms: longest delay; ``None`` takes ``RETRY_CAP_MS``.
        jitter_pct: proportional jitter share in 0..1; ``None`` takes ``RETRY_JITTER_PCT``.
        jitter: jitter kind: ``"proportional"`` (default, +/- ``jitter_pct``),
            ``"full"`` (uniform 0..delay), ``"equal"`` (half fixed, half random),
            ``"decorrelated"`` (uniform base..3x the previous delay) or ``"none"``.
        previous_ms: the previous delay, for decorrelated jitter.
        policy: where ``None`` values come from (the environment's policy if ``None``).
        rng: random source, for reproducible schedules.

    Returns:
        ``min(base_ms * 2**attempt +/- jitter, cap_ms)``, never negative.

    Raises:
        ValueError: a negative attempt or base, a cap below the base, or a
            jitter share outside 0..1.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base_ms is None or cap_ms is None or jitter_pct is None or jitter is None:
        settings = _retry_settings(policy)
        base_ms = settings.base_ms if base_ms is None else base_ms
        cap_ms = settings.cap_ms if cap_ms is None else cap_ms
        jitter_pct = settings.jitter_pct if jitter_pct is None else jitter_pct
        jitter = settings.jitter if jitter is None else jitter
    _check_schedule(base_ms, cap_ms, jitter_pct)
    if jitter not in _JITTER_KINDS:
        raise ValueError(f"unknown jitter kind {jitter!r}")
    return _schedule(attempt, base_ms, cap_ms, jitter_pct, jitter, previous_ms, rng or random)


def _schedule(  # noqa: PLR0917 - positional on purpose: a retry's hot path
    attempt: int,
    base_ms: float,
    cap_ms: float,
    jitter_pct: float,
    jitter: str,
    previous_ms: float | None,
    rand: random.Random | Any,
) -> float:
    """The schedule itself, for arguments already checked (a retry's hot path)."""
    exponential = base_ms * 2.0 ** min(attempt, _MAX_EXPONENT) if base_ms else 0.0
    if math.isinf(exponential):
        exponential = cap_ms
    if jitter == "proportional":
        delay = (
            exponential * (1 + rand.uniform(-jitter_pct, jitter_pct))
            if jitter_pct and exponential
            else exponential
        )
    elif jitter == "full":
        delay = rand.uniform(0, min(cap_ms, exponential))
    elif jitter == "equal":
        half = min(cap_ms, exponential) / 2
        delay = half + rand.uniform(0, half)
    elif jitter == "decorrelated":
        previous = base_ms if previous_ms is None else max(previous_ms, base_ms)
        delay = rand.uniform(base_ms, previous * 3)
    else:  # "none"
        delay = exponential
    return max(0.0, min(delay, cap_ms))


def _check_schedule(base_ms: float, cap_ms: float, jitter_pct: float) -> None:
    """Refuse a schedule that cannot mean anything (NaN compares false, so test it first)."""
    if not (math.isfinite(base_ms) and base_ms >= 0):
        raise ValueError(f"base_ms must be a finite number >= 0, got {base_ms}")
    if math.isnan(cap_ms) or cap_ms < base_ms:
        raise ValueError(f"cap_ms ({cap_ms}) must be >= base_ms ({base_ms})")
    if not 0 <= jitter_pct <= 1:
        raise ValueError(f"jitter_pct must be within 0..1, got {jitter_pct}")


def parse_retry_after(value: str | float | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date).

    Args:
        value: the header value, or a number of seconds.
        now: wall-clock time to measure an HTTP-date against (now if ``None``).

    Returns:
        Seconds, 0 for a date in the past, or ``None`` for a missing or
        malformed value (the computed backoff applies then).
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 and math.isfinite(value) else None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        # HTTP's delta-seconds is ASCII digits; servers and exceptions also send "1.5".
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    reference = _clock.wall() if now is None else now
    return max(0.0, when.timestamp() - reference)


def retry_after_from(outcome: object) -> float | None:
    """A server-requested delay carried by an exception or a response, in seconds.

    Looks for a ``retry_after`` attribute (seconds or a header value), then a
    ``Retry-After`` header on ``.headers`` or ``.response.headers`` (aiohttp's
    ``ClientResponseError``, httpx's and requests' errors and responses).
    """
    kind: Any = type(outcome)  # a class is hashable (typeshed says type[object] may not be)
    if _is_bare(kind) and not getattr(outcome, "__dict__", None):
        return None  # a plain exception (ConnectionError...): no attribute to look up
    direct = getattr(outcome, "retry_after", None)
    if direct is not None:
        return parse_retry_after(direct)
    for holder in (outcome, getattr(outcome, "response", None)):
        headers = getattr(holder, "headers", None)
        if headers is None:
            continue  # most exceptions: skip the (slow) ABC check below
        if isinstance(headers, Mapping) or hasattr(headers, "get"):
            try:
                value = headers.get("Retry-After")
            except (AttributeError, TypeError):
                value = None
            if isinstance(value, str):
                return parse_retry_after(value)
    return None


@functools.lru_cache(maxsize=1024)  # bounded: classes may be made on the fly
def _is_bare(cls: type) -> bool:
    """Whether ``cls`` has no class-level ``retry_after``, ``headers`` or ``response``.

    An instance of such a type with nothing in its ``__dict__`` carries no
    Retry-After, found without looking the three up (each one missing is an
    AttributeError raised and cleared: most of what a retry's wait cost).
    """
    return not any(hasattr(cls, name) for name in ("retry_after", "headers", "response"))


class wait_backoff(wait_base):  # noqa: N801 - tenacity's naming for wait strategies
    """The policy's backoff schedule as a tenacity wait strategy.

    Honours a server's ``Retry-After`` carried by the failure, capped at
    ``cap_ms``. Arguments left ``None`` come from the policy.

    Args:
        policy: settings source (the environment's policy if ``None``).
        base_ms: first delay in milliseconds.
        cap_ms: longest delay in milliseconds (also caps Retry-After).
        jitter_pct: proportional jitter share.
        jitter: jitter kind (see :func:`compute_backoff_ms`).
        honour_retry_after: use a server-given delay when the failure has one.
        rng: random source.
    """

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        base_ms: float | None = None,
        cap_ms: float | None = None,
        jitter_pct: float | None = None,
        jitter: JitterKind | None = None,
        honour_retry_after: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        settings = _retry_settings(policy)
        self.base_ms = settings.base_ms if base_ms is None else base_ms
        self.cap_ms = settings.cap_ms if cap_ms is None else cap_ms
        self.jitter_pct = settings.jitter_pct if jitter_pct is None else jitter_pct
        self.jitter: JitterKind = settings.jitter if jitter is None else jitter
        self.honour_retry_after = honour_retry_after
        self.rng = rng
        # Validate up front with compute_backoff_ms's rules, without drawing from rng.
        _check_schedule(self.base_ms, self.cap_ms, self.jitter_pct)
        if self.jitter not in _JITTER_KINDS:
            raise ValueError(f"unknown jitter kind {self.jitter!r}; known: {sorted(_JITTER_KINDS)}")

    def __repr__(self) -> str:
        return (
            f"wait_backoff(base_ms={self.base_ms:g}, cap_ms={self.cap_ms:g}, "
            f"jitter={self.jitter!r}, jitter_pct={self.jitter_pct:g})"
        )

    def delay_ms(
        self, attempt: int, *, previous_ms: float | None = None, outcome: object = None
    ) -> float:
        """Milliseconds before retry ``attempt + 1``; a server's Retry-After wins, capped."""
        if self.honour_retry_after and outcome is not None:
            server = retry_after_from(outcome)
            if server is not None:
                return min(server * 1000.0, self.cap_ms)
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        # Checked once, when built: the schedule alone on each retry.
        return _schedule(
            attempt,
            self.base_ms,
            self.cap_ms,
            self.jitter_pct,
            self.jitter,
            previous_ms,
            self.rng or random,
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """Seconds to wait after ``retry_state``'s attempt (tenacity's interface)."""
        outcome: object = None
        if retry_state.outcome is not None and retry_state.outcome.failed:
            outcome = retry_state.outcome.exception()
        previous = retry_state.upcoming_sleep * 1000.0 if retry_state.upcoming_sleep else None
        return (
            self.delay_ms(retry_state.attempt_number - 1, previous_ms=previous, outcome=outcome)
            / 1000.0
        )


def exception_predicate(
    retry_on: type[BaseException]
    | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool]
    | tenacity.retry_base,
) -> Callable[[BaseException], bool]:
    """Normalise ``retry_on`` into ``exc -> bool``, never true for :data:`NEVER_RETRY`.

    Accepts an exception type, a tuple of types, a predicate, or a tenacity
    retry strategy that judges exceptions: ``retry_if_exception_type``,
    ``retry_if_exception_cause_type``, combinations with ``|`` and ``&``,
    ``retry_any``, ``retry_all``...
    """
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        types: tuple[type[BaseException], ...] = (retry_on,)
        return lambda exc: isinstance(exc, types) and not isinstance(exc, NEVER_RETRY)
    if isinstance(retry_on, tuple):
        for item in retry_on:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise TypeError(f"retry_on entries must be exception types, got {item!r}")
        types = retry_on
        return lambda exc: isinstance(exc, types) and not isinstance(exc, NEVER_RETRY)
    if isinstance(retry_on, type):
        raise TypeError(
            f"retry_on must be exception types or a predicate, got the class {retry_on!r}"
        )
    if isinstance(retry_on, tenacity.retry_base):
        # retry_if_result and retry_if_not_result judge results, not exceptions.
        if isinstance(retry_on, tenacity.retry_if_result | tenacity.retry_if_not_result):
            raise TypeError(
                f"{retry_on!r} does not judge exceptions; pass retry_if_exception_type(...) "
                "or a predicate (and retry_on_result= for results)"
            )
        inner = getattr(retry_on, "predicate", None)
        # retry_if_exception and its kin: their predicate, with no state to build.
        predicate: Callable[[BaseException], Any] = (
            inner if callable(inner) else _strategy_predicate(retry_on)
        )
    elif callable(retry_on):
        predicate = retry_on
    else:
        raise TypeError(f"retry_on must be exception types or a predicate, got {retry_on!r}")
    return lambda exc: not isinstance(exc, NEVER_RETRY) and bool(predicate(exc))


def _strategy_predicate(strategy: tenacity.retry_base) -> Callable[[BaseException], bool]:
    """A tenacity retry strategy asked about one exception, as tenacity would ask it."""
    retrying = tenacity.Retrying()

    def predicate(exc: BaseException) -> bool:
        state = tenacity.RetryCallState(retrying, None, (), {})
        state.set_exception((type(exc), exc, exc.__traceback__))
        return bool(strategy(state))

    return predicate
