"""``memory://``: state in this process only, thread-safe, gone at exit.

For tests and single-process services that do not need history across restarts.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from connector_resilience import _clock
from connector_resilience.backends import (
    CallAggregate,
    CallRecord,
    CircuitRecord,
    aggregate_tier,
    filter_window,
)
from connector_resilience.backends import _limit_state as limit_state

__all__ = ["MemoryStore"]

T = TypeVar("T")


class MemoryStore(limit_state.LimitSteps):
    """A store held in dictionaries behind one lock.

    Args:
        url: the URL it was opened with (``memory://`` or ``memory://name``:
            different names are different stores).
        max_records: metrics beyond this many are dropped, oldest first.
    """

    def __init__(self, url: str = "memory://", *, max_records: int = 1_000_000) -> None:
        self.url = url
        self._max_records = max_records
        self._lock = threading.Lock()
        self._circuits: dict[str, CircuitRecord] = {}
        self._tokens: dict[str, dict[str, Any]] = {}
        self._token_locks: dict[str, threading.Lock] = {}
        # Kept sorted by ts so a window read is a bisect, not a scan.
        self._ts: list[float] = []
        self._calls: list[CallRecord] = []
        # Aggregated rows per tier, sorted by ts like the calls.
        self._aggregates: dict[float, tuple[list[float], list[CallAggregate]]] = {}
        # The connectors index: every name metrics were written for.
        self._metric_names: set[str] = set()
        self._limits: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r})"

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        return _clock.wall()

    # Circuits -----------------------------------------------------------

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        """The latest record, or ``None``."""
        return self._circuits.get(connector)

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        """Store ``record`` if the current version is ``expected_version``."""
        if record.version != expected_version + 1:
            raise ValueError("record.version must be expected_version + 1")
        with self._lock:
            current = self._circuits.get(connector)
            if (current.version if current else 0) != expected_version:
                return False
            self._circuits[connector] = record
            return True

    async def aget_circuit(self, connector: str) -> CircuitRecord | None:
        """:meth:`get_circuit` for coroutines: a dictionary read, no worker thread needed."""
        return self.get_circuit(connector)

    async def acompare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        """:meth:`compare_and_set_circuit` for coroutines (the lock is held for a dict write)."""
        return self.compare_and_set_circuit(connector, expected_version, record)

    def list_circuits(self) -> dict[str, CircuitRecord]:
        """Every connector's record."""
        with self._lock:
            return dict(self._circuits)

    # Tokens -------------------------------------------------------------

    def load_token(self, connector: str) -> dict[str, Any] | None:
        """A copy of the latest token mapping."""
        with self._lock:
            token = self._tokens.get(connector)
            return copy.deepcopy(token) if token is not None else None

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        """Replace the connector's token."""
        with self._lock:
            self._tokens[connector] = copy.deepcopy(dict(token))

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        """Copies of every token mapping."""
        with self._lock:
            return copy.deepcopy(self._tokens)

    @contextlib.contextmanager
    def token_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> Iterator[None]:
        """A per-connector lock (this process is the only one sharing the store).

        ``lease_s`` does not apply: the lock cannot outlive its holder's process.
        """
        with self._lock:
            lock = self._token_locks.setdefault(connector, threading.Lock())
        if not lock.acquire(timeout=timeout_s):
            raise TimeoutError(f"token lock for {connector!r} not acquired in {timeout_s:g}s")
        try:
            yield
        finally:
            lock.release()

    # Metrics ------------------------------------------------------------

    def append_calls(self, records: Sequence[CallRecord]) -> None:
        """Insert records in timestamp order."""
        with self._lock:
            _insert_sorted(self._ts, self._calls, records)
            self._metric_names.update(r.connector for r in records)
            excess = len(self._calls) - self._max_records
            if excess > 0:
                del self._ts[:excess]
                del self._calls[:excess]

    def append_aggregates(self, rows: Sequence[CallAggregate]) -> None:
        """Insert aggregated rows in timestamp order, per tier."""
        with self._lock:
            for row in rows:
                tier = self._aggregates.setdefault(aggregate_tier(row.resolution), ([], []))
                _insert_sorted(tier[0], tier[1], (row,))
            self._metric_names.update(r.connector for r in rows)
            for stamps, kept in self._aggregates.values():
                excess = len(kept) - self._max_records
                if excess > 0:
                    del stamps[:excess]
                    del kept[:excess]

    def read_aggregates(
        self,
        *,
        resolution: float,
        since: float,
        until: float | None = None,
        connector: str | None = None,
    ) -> list[CallAggregate]:
        """Rows of the tier of ``resolution`` starting in ``[since, until)``, by bisection."""
        with self._lock:
            tier = self._aggregates.get(aggregate_tier(resolution))
            if tier is None:
                return []
            stamps, kept = tier
            start = bisect.bisect_left(stamps, since)
            end = len(stamps) if until is None else bisect.bisect_left(stamps, until)
            window = kept[start:end]
        if connector is None:
            return window
        return [r for r in window if r.connector == connector]

    def read_calls(
        self, *, since: float, until: float | None = None, connector: str | None = None
    ) -> list[CallRecord]:
        """Records in ``[since, until)``, found by bisection."""
        with self._lock:
            start = bisect.bisect_left(self._ts, since)
            end = len(self._ts) if until is None else bisect.bisect_left(self._ts, until)
            window = self._calls[start:end]
        if connector is None:
            return window
        return filter_window(window, since=since, until=until, connector=connector)

    def connectors(self) -> list[str]:
        """Connectors seen in metrics, circuits or tokens."""
        with self._lock:
            names = set(self._metric_names)
            names.update(self._circuits, self._tokens)
        return sorted(names)

    # Maintenance --------------------------------------------------------

    def compact(self, *, metrics_retention_s: float) -> dict[str, int]:
        """Drop metrics older than the retention."""
        cutoff = _clock.wall() - metrics_retention_s
        with self._lock:
            index = bisect.bisect_left(self._ts, cutoff)
            del self._ts[:index]
            del self._calls[:index]
            kept = len(self._calls)
            for stamps, rows in self._aggregates.values():
                old = bisect.bisect_left(stamps, cutoff)
                del stamps[:old]
                del rows[:old]
                index += old
                kept += len(rows)
            self._metric_names = {r.connector for r in self._calls}
            for _, rows in self._aggregates.values():
                self._metric_names.update(r.connector for r in rows)
        return {
            "metrics_kept": kept,
            "metrics_dropped": index,
            "circuits": len(self._circuits),
            "tokens": len(self._tokens),
        }

    def close(self) -> None:
        """Nothing to release."""

    # Load control -------------------------------------------------------

    def _limit_step(self, key: str, step: limit_state.Step[T]) -> T:
        """Run one load-control step on ``key`` under the store's lock."""
        with self._lock:
            state, answer = step(self._limits.get(key), _clock.wall())
            self._limits[key] = state
        return answer


def _insert_sorted(stamps: list[float], kept: list[Any], items: Sequence[Any]) -> None:
    """Insert ``items`` keeping ``stamps`` (their ``ts``) sorted; appending is the usual case."""
    for item in items:
        if not stamps or item.ts >= stamps[-1]:
            stamps.append(item.ts)
            kept.append(item)
        else:
            index = bisect.bisect_right(stamps, item.ts)
            stamps.insert(index, item.ts)
            kept.insert(index, item)
