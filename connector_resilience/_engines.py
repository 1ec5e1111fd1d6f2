"""The engines of one decorated function or retried block, per connector, and its statistics.

:class:`EngineCache` builds an :class:`~connector_resilience._engine.Engine` per
connector name on first use and remembers what the last call did;
:class:`RetryStatistics` is the read-only view of that, ``fn.statistics``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Final

from connector_resilience._engine import (
    ATTEMPTS,
    ERROR,
    OUTCOME,
    WAITED_S,
    CallSpec,
    CallStats,
    Engine,
    EngineOptions,
    build_engine,
)
from connector_resilience.backends import Store
from connector_resilience.errors import ConfigurationError
from connector_resilience.policy import Policy

__all__ = [
    "FIRST_ATTEMPT",
    "NEVER_CALLED",
    "ONE_ATTEMPT",
    "REJECTED",
    "SUCCEEDED",
    "EngineCache",
    "RetryStatistics",
    "forget_engines",
    "refused_stats",
]

# Shared, never mutated: what a call that never reached the retry plan did.
#: The first attempt is running (no failure yet).
FIRST_ATTEMPT: Final = (1, 0.0, "running", None)
#: The first attempt succeeded.
SUCCEEDED: Final = (1, 0.0, "success", None)
#: The breaker refused the call.
REJECTED: Final = (0, 0.0, "rejected", "CircuitOpenError")
#: Nothing called yet.
NEVER_CALLED: Final = (0, 0.0, "none", None)


def refused_stats(error: BaseException) -> CallStats:
    """What a call refused before it started did: the breaker, rate limiter or bulkhead."""
    return (0, 0.0, "rejected", type(error).__name__)


#: The adjustment that turns retries off for one function.
ONE_ATTEMPT: Final = CallSpec(max_attempts=1)


class EngineCache:
    """Resolves the engine for a call: one per connector name, built on first use.

    Attributes:
        operation: the operation name metrics use.
        function: the user's function (what tenacity strategies and hooks see).
        last: what the latest call did (see :class:`RetryStatistics`).
        spec: per-function adjustments of the plan (``ONE_ATTEMPT`` with
            retries turned off), else ``None``.
    """

    # Slots: the success path stores ``last`` twice per call, and a slot store is cheapest.
    __slots__ = (
        "__weakref__",
        "by_name",
        "connector",
        "fixed",
        "function",
        "last",
        "operation",
        "options",
        "policy",
        "spec",
        "store",
    )

    def __init__(
        self,
        *,
        connector: str | None,
        operation: str,
        policy: Policy | None,
        store: Store | str | None,
        options: EngineOptions,
        function: Callable[..., Any] | None = None,
    ) -> None:
        self.connector = connector
        self.function = function
        self.operation = operation
        self.policy = policy
        self.store = store
        self.options = options
        self.fixed: Engine | None = None
        # Engines per instance's connector name (methods without a fixed connector).
        self.by_name: dict[str, Engine] | None = None
        self.last: CallStats = NEVER_CALLED
        self.spec: CallSpec | None = None
        _register(self)

    def disable_retries(self) -> None:
        """One attempt per call from now on (``fn.disable_retries()``)."""
        self.spec = ONE_ATTEMPT

    def enable_retries(self) -> None:
        """Retries as configured again (``fn.enable_retries()``)."""
        self.spec = None

    def forget(self) -> None:
        """Resolve policy, store and breaker again at the next call."""
        self.fixed = None
        self.by_name = None

    def built(self, args: tuple[Any, ...]) -> Engine | None:
        """The engine for a call if it is built already (a lookup, no I/O), else ``None``."""
        if self.fixed is not None or self.connector is not None:
            return self.fixed
        name = getattr(args[0], "connector_name", None) if args else None
        by_name = self.by_name
        return by_name.get(name) if by_name is not None and isinstance(name, str) else None

    def __call__(self, args: tuple[Any, ...]) -> Engine:
        # No lock (one each would cost every decorated function 88 bytes): threads
        # making a first call at once may each build an engine, which is harmless,
        # since the registries under build_engine give them the same breaker, load
        # control and metrics; the first one published is kept. An engine built
        # across a forget_engines() is used for that call only, never kept.
        fixed = self.fixed
        if fixed is not None:
            return fixed
        generation = _generation[0]
        if self.connector is not None:
            engine = self._build(self.connector)
            if generation != _generation[0]:
                return engine
            fixed = self.fixed
            if fixed is None:
                self.fixed = fixed = engine
            return fixed
        name = getattr(args[0], "connector_name", None) if args else None
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"@resilient on {self.operation!r} has no connector name: pass "
                "@resilient('name'), or call it as a method of an object with a "
                "non-empty `connector_name` attribute"
            )
        by_name = self.by_name
        found = by_name.get(name) if by_name is not None else None
        if found is not None:
            return found
        engine = self._build(name)
        if generation != _generation[0]:
            return engine
        by_name = self.by_name
        if by_name is None:
            self.by_name = by_name = {}
        return by_name.setdefault(name, engine)

    def _build(self, connector: str) -> Engine:
        return build_engine(
            connector=connector,
            operation=self.operation,
            policy=self.policy,
            store=self.store,
            options=self.options,
        )


# Every cache, for forget_engines(): plain weak references in a list, pruned of
# the dead ones whenever it doubles (a WeakSet's entry, a reference with a
# callback, costs every decorated function twice as much).
_all_engines: list[weakref.ref[EngineCache]] = []
_prune_at = [64]


def _register(engines: EngineCache) -> None:
    _all_engines.append(weakref.ref(engines))
    if len(_all_engines) >= _prune_at[0]:
        _all_engines[:] = [ref for ref in _all_engines if ref() is not None]
        _prune_at[0] = max(64, 2 * len(_all_engines))


#: Counts :func:`forget_engines` calls: an engine built across one is not kept.
_generation: list[int] = [0]


def forget_engines() -> None:
    """Make every decorated function resolve its policy, store and breaker again."""
    _generation[0] += 1
    for ref in _all_engines.copy():  # a copy: first calls elsewhere may prune it
        engines = ref()
        if engines is not None:
            engines.forget()


class RetryStatistics:
    """What the latest call of a decorated function (or retried block) did, read live.

    "Latest" is the call that started last, in any thread or task: in
    concurrent code, read the attempt number from a :class:`RetryEvent`
    (``on_retry=``) or a block's ``attempt.number`` instead. Costs the call
    nothing until a retry happens.

    Attributes:
        attempts: attempts made, the running one included (0: never called,
            or refused by the breaker).
        waited_s: seconds slept between those attempts.
        outcome: ``"running"``, ``"success"``, ``"failure"``, ``"rejected"``,
            or ``None`` before the first call.
        error: the last failed attempt's error (exception type name, or
            ``HTTP 503`` for a retried result), else ``None``.
    """

    __slots__ = ("_name", "_source")

    def __init__(self, source: object, name: str) -> None:
        """Read the stats from ``source``'s attribute ``name`` at every access."""
        self._source = source
        self._name = name

    @classmethod
    def of_closure(cls, function: Callable[..., Any], variable: str) -> RetryStatistics:
        """The stats a function keeps in its closure variable ``variable``.

        Read straight from the closure cell: no reader function per decorated
        function (a lambda each cost every connector 200 bytes).
        """
        cell = function.__closure__[function.__code__.co_freevars.index(variable)]  # type: ignore[index]
        return cls(cell, "cell_contents")

    def _read(self) -> CallStats:
        stats: CallStats = getattr(self._source, self._name)
        return stats

    @property
    def attempts(self) -> int:
        """Attempts the latest call made, the running one included."""
        attempts: int = self._read()[ATTEMPTS]
        return attempts

    @property
    def waited_s(self) -> float:
        """Seconds the latest call slept between attempts (to the microsecond)."""
        waited: float = self._read()[WAITED_S]
        return round(waited, 6)

    @property
    def outcome(self) -> str | None:
        """``running``, ``success``, ``failure``, ``rejected``, or ``None`` if never called."""
        outcome: str = self._read()[OUTCOME]
        return None if outcome == "none" else outcome

    @property
    def error(self) -> str | None:
        """The latest call's last error name (``None`` when its attempts all succeeded)."""
        error: str | None = self._read()[ERROR]
        return error

    def as_dict(self) -> dict[str, Any]:
        """The four figures as a dict (one consistent read)."""
        attempts, waited_s, outcome, error = self._read()
        return {
            "attempts": attempts,
            "waited_s": round(waited_s, 6),
            "outcome": None if outcome == "none" else outcome,
            "error": error,
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"RetryStatistics({fields})"
