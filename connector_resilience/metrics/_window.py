"""Which aggregated rows cover a window: hour rows inside, minute and fine rows at its edges."""

from __future__ import annotations

import math
from collections.abc import Sequence

from connector_resilience.backends import (
    AggregateStore,
    CallAggregate,
    CallRecord,
    MetricsStore,
)
from connector_resilience.metrics._aggregate import HOUR_S, MINUTE_S

__all__ = ["FINE", "SETTLED_S", "read_window", "spans"]

#: The tier of every row finer than a minute, whatever each writer's interval.
FINE = 1.0
#: A minute or hour row is trusted only once its interval ended this long
#: before the window does: writers write a closed interval within a tick or
#: two (or a store retry) of its end. Until then the finer rows answer.
SETTLED_S = 10.0

_TIERS = (HOUR_S, MINUTE_S, FINE)


def spans(
    since: float, until: float, *, coarsest: float = HOUR_S
) -> list[tuple[float, float, float]]:
    """``(resolution, start, end)`` spans that cover ``[since, until)`` once, coarsest possible.

    A span of resolution ``r`` takes the rows of that tier whose interval
    starts in ``[start, end)``; coarse spans hold whole, settled intervals only.
    No span is coarser than ``coarsest`` (a chart needs rows as fine as its buckets).
    """
    settled = until - SETTLED_S
    out: list[tuple[float, float, float]] = []

    def cover(start: float, end: float, tiers: Sequence[float]) -> None:
        if start >= end:
            return
        resolution, finer = tiers[0], tiers[1:]
        if not finer:
            out.append((resolution, start, end))
            return
        low = math.ceil(start / resolution) * resolution
        high = math.floor(min(end, settled) / resolution) * resolution
        if low >= high:
            cover(start, end, finer)
            return
        cover(start, low, finer)
        out.append((resolution, low, high))
        cover(high, end, finer)

    cover(since, until, [t for t in _TIERS if t <= coarsest] or [FINE])
    return out


def read_window(
    store: MetricsStore,
    *,
    since: float,
    until: float,
    connector: str | None,
    coarsest: float = HOUR_S,
) -> tuple[list[CallRecord], list[CallAggregate]]:
    """The raw records and the aggregated rows of ``[since, until)`` (see :func:`spans`)."""
    records = store.read_calls(since=since, until=until, connector=connector)
    aggregates: list[CallAggregate] = []
    if isinstance(store, AggregateStore):
        for resolution, start, end in spans(since, until, coarsest=coarsest):
            aggregates.extend(
                store.read_aggregates(
                    resolution=resolution, since=start, until=end, connector=connector
                )
            )
    return records, aggregates
