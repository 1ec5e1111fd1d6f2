"""What an operator sees: every connector's verdict, numbers and breaker, from one store read.

The CLI, the dashboard and the store-view Prometheus collector all start from
:func:`read_view`. It reads the window's metrics once for every connector and
judges each one with :func:`~connector_resilience.metrics.judge_health`, so
the verdict rule lives in one place (``metrics``) and a store with many
connectors is not re-read once per connector.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connector_resilience.backends import (
    CallAggregate,
    CallRecord,
    CircuitRecord,
    Store,
    redact_url,
)
from connector_resilience.circuit import effective_state
from connector_resilience.metrics import (
    HealthReport,
    HealthStatus,
    Summary,
    flush_metrics,
    judge_health,
    read_window,
    summarize_rows,
)
from connector_resilience.policy import Policy

__all__ = [
    "ConnectorView",
    "ErrorTypeCount",
    "StoreView",
    "circuit_since",
    "describe_store",
    "error_types",
    "operation_summaries",
    "read_view",
    "worst_status",
]

_HOUR_S = 3600.0
_SEVERITY = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.DOWN: 2}


def worst_status(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """The most severe verdict (healthy when there is none)."""
    return max(statuses, key=_SEVERITY.__getitem__, default=HealthStatus.HEALTHY)


def circuit_since(record: CircuitRecord | None, now: float) -> float | None:
    """When the breaker entered the state it is in at ``now`` (store clock), if known.

    Args:
        record: the connector's persisted breaker record (``None``: never written).
        now: the store's current time.

    Returns:
        The time of the last transition into the current state, or ``None``
        for a breaker that never changed.
    """
    if record is None:
        return None
    state = effective_state(record, now)
    if record.override is None and state == "half_open" and record.state == "open":
        # Half-open by the clock alone: it became so when the cooldown ended.
        return record.reopen_at
    if record.override is None and state == "open" and record.opened_at is not None:
        return record.opened_at
    return record.changed_at or None


def describe_store(store: Store) -> str:
    """A name for ``store`` that is safe to print (no password, readable paths)."""
    paths = getattr(store, "paths", None)
    if store.url.startswith("jsonl-files:") and isinstance(paths, Mapping):
        folders = {str(p.parent) for p in paths.values()}
        if len(folders) == 1:
            return f"JSONL files in {folders.pop()}"
        return "JSONL files " + ", ".join(str(p) for p in paths.values())
    return redact_url(store.url)


@dataclass(frozen=True, slots=True)
class ConnectorView:
    """One connector as the operator sees it.

    Attributes:
        report: verdict, reasons, window summary and effective breaker state.
        circuit: the persisted breaker record, ``None`` if never written.
        circuit_since: when the breaker entered its current state, if known.
    """

    report: HealthReport
    circuit: CircuitRecord | None
    circuit_since: float | None

    @property
    def connector(self) -> str:
        """The connector's name."""
        return self.report.connector

    @property
    def status(self) -> HealthStatus:
        """The health verdict."""
        return self.report.status

    @property
    def summary(self) -> Summary:
        """The window's numbers."""
        return self.report.summary

    @property
    def override(self) -> str | None:
        """``"forced_open"`` or ``"disabled"`` when an operator forced the breaker."""
        return self.circuit.override if self.circuit is not None else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping: the health report plus breaker details."""
        out = self.report.as_dict()
        out["circuit_since"] = self.circuit_since
        out["circuit_override"] = self.override
        out["circuit_reason"] = self.circuit.reason if self.circuit is not None else None
        return out


@dataclass(frozen=True, slots=True)
class StoreView:
    """Every connector of a store over one window, read at one moment.

    Attributes:
        store: the store's printable name (see :func:`describe_store`).
        window_s: the window's length.
        generated_at: the end of the window (store clock).
        connectors: one view per connector, sorted by name.
        records: the window's raw call records (``record_call``, raw mode, older
            files), oldest first, for drill-downs and charts.
        aggregates: the window's aggregated rows, oldest first: hour rows for
            the whole hours in it, minute and fine rows at its edges.
    """

    store: str
    window_s: float
    generated_at: float
    connectors: tuple[ConnectorView, ...]
    records: Sequence[CallRecord]
    aggregates: Sequence[CallAggregate] = ()

    @property
    def status(self) -> HealthStatus:
        """The worst verdict of any connector."""
        return worst_status(c.status for c in self.connectors)

    @property
    def last_call_at(self) -> float | None:
        """Time of the newest record in the window, if any."""
        return max((c.summary.last_call_at or 0.0 for c in self.connectors), default=0.0) or None

    def get(self, connector: str) -> ConnectorView | None:
        """The view of one connector, or ``None`` if the store does not know it."""
        for view in self.connectors:
            if view.connector == connector:
                return view
        return None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (without the raw records)."""
        return {
            "store": self.store,
            "window_s": self.window_s,
            "generated_at": self.generated_at,
            "status": self.status.value,
            "last_call_at": self.last_call_at,
            "connectors": [c.as_dict() for c in self.connectors],
        }


def read_view(
    *,
    store: Store,
    policy: Policy,
    window_s: float,
    now: float | None = None,
    resolution_s: float | None = None,
) -> StoreView:
    """Read every connector of ``store`` over the last ``window_s`` seconds.

    Args:
        store: the store to read.
        policy: settings, for each connector's health thresholds.
        window_s: window length in seconds (> 0).
        now: the end of the window (the store's clock if ``None``).
        resolution_s: the coarsest aggregated rows wanted (a chart's bucket
            width); ``None`` reads the fewest rows (hour rows where they fit).

    Returns:
        A :class:`StoreView`.

    Raises:
        StoreError: the store cannot be read.
        ValueError: ``window_s`` is not positive.
    """
    if not window_s > 0:
        raise ValueError(f"the window must be > 0 seconds, not {window_s!r}")
    flush_metrics()  # what this process just did is in the view
    end = store.now() if now is None else now
    records, aggregates = read_window(
        store,
        since=end - window_s,
        until=end + 1e-6,
        connector=None,
        coarsest=_HOUR_S if resolution_s is None else resolution_s,
    )
    records.sort(key=lambda r: r.ts)
    aggregates.sort(key=lambda a: a.ts)
    circuits = store.list_circuits()
    names = set(store.connectors())
    by_connector: dict[str, list[CallRecord]] = collections.defaultdict(list)
    for r in records:
        by_connector[r.connector].append(r)
    rows: dict[str, list[CallAggregate]] = collections.defaultdict(list)
    for a in aggregates:
        rows[a.connector].append(a)
    names.update(by_connector, rows)
    store_now = store.now()
    views = []
    for name in sorted(names):
        summary = summarize_rows(
            by_connector.get(name, ()), rows.get(name, ()), connector=name, window_s=window_s
        )
        record = circuits.get(name)
        report = judge_health(summary, circuit=record, now=store_now, policy=policy)
        views.append(ConnectorView(report, record, circuit_since(record, end)))
    return StoreView(
        store=describe_store(store),
        window_s=window_s,
        generated_at=end,
        connectors=tuple(views),
        records=records,
        aggregates=aggregates,
    )


def operation_summaries(
    records: Iterable[CallRecord],
    *,
    connector: str,
    window_s: float,
    aggregates: Iterable[CallAggregate] = (),
) -> dict[str, Summary]:
    """One summary per operation of ``connector``, by operation name."""
    by_operation: dict[str, list[CallRecord]] = collections.defaultdict(list)
    rows: dict[str, list[CallAggregate]] = collections.defaultdict(list)
    for record in records:
        if record.connector == connector:
            by_operation[record.operation].append(record)
    for row in aggregates:
        if row.connector == connector and (row.attempts or row.dropped):
            rows[row.operation].append(row)
    return {
        operation: summarize_rows(
            by_operation.get(operation, ()),
            rows.get(operation, ()),
            connector=connector,
            window_s=window_s,
        )
        for operation in sorted({*by_operation, *rows})
    }


@dataclass(frozen=True, slots=True)
class ErrorTypeCount:
    """Failed attempts of one exception type.

    Attributes:
        error: the exception's type name.
        count: failed attempts in the window.
        last_seen: time of the newest one.
        operations: the operations it happened in, sorted.
    """

    error: str
    count: int
    last_seen: float
    operations: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "error": self.error,
            "count": self.count,
            "last_seen": self.last_seen,
            "operations": list(self.operations),
        }


def error_types(
    records: Iterable[CallRecord],
    *,
    connector: str,
    aggregates: Iterable[CallAggregate] = (),
) -> list[ErrorTypeCount]:
    """Failed attempts of ``connector`` grouped by exception type, most recent first."""
    counts: collections.Counter[str] = collections.Counter()
    last: dict[str, float] = {}
    operations: dict[str, set[str]] = collections.defaultdict(set)

    def note(name: str, count: int, ts: float, operation: str) -> None:
        counts[name] += count
        last[name] = max(last.get(name, ts), ts)
        operations[name].add(operation)

    for record in records:
        if record.connector == connector and record.status == "error":
            note(record.error or "error", 1, record.ts, record.operation)
    for row in aggregates:
        if row.connector == connector and row.status == "error":
            for name, count in (row.errors or {"error": row.attempts}).items():
                note(name, count, row.last_ts, row.operation)
    found = [
        ErrorTypeCount(name, counts[name], last[name], tuple(sorted(operations[name])))
        for name in counts
    ]
    found.sort(key=lambda e: (-e.last_seen, e.error))
    return found
