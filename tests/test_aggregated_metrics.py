"""Aggregated metrics: one row per key per interval, percentiles within 1%, bounded memory.

Everything here runs the real thing: decorated calls, the writer's aggregator,
real stores (memory, JSONL and SQLite files, a real redis-server), real
subprocesses for the import checks. The latency distribution is recorded: drawn
once from a fixed seed (lognormal around 20 ms, plus a 3% slow tail of
0.4-3 s), so every run checks the same 20,000 values.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import math
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from connector_resilience import _clock, resilient, testing
from connector_resilience.backends import (
    AggregateStore,
    CallAggregate,
    CallRecord,
    open_store,
)
from connector_resilience.backends.jsonl import JsonlStore
from connector_resilience.backends.memory import MemoryStore
from connector_resilience.metrics import (
    RELATIVE_ACCURACY,
    LatencyHistogram,
    MetricsBuffer,
    Series,
    add_observer,
    buffer_for,
    flush_metrics,
    percentile,
    remove_observer,
    summarize,
)
from connector_resilience.metrics._window import spans
from connector_resilience.policy import Policy
from tests._threads import fine_thread_switching

T0 = 1_700_000_000.0  # a whole hour since the epoch


def recorded_latencies(n: int = 20_000) -> list[float]:
    """The recorded mixed distribution (ms): lognormal body, slow tail."""
    rng = random.Random(20260516)
    values = []
    for _ in range(n):
        if rng.random() < 0.03:
            values.append(rng.uniform(400.0, 3000.0))
        else:
            values.append(rng.lognormvariate(3.0, 0.6))
    return values


def within(estimate: float, exact: float) -> bool:
    return abs(estimate - exact) <= RELATIVE_ACCURACY * exact


# The histogram ---------------------------------------------------------------------


def test_percentiles_of_the_recorded_distribution_are_within_one_percent() -> None:
    values = recorded_latencies()
    histogram = LatencyHistogram()
    histogram.add_many(values)
    exact = sorted(values)
    for q in (50, 95, 99):
        estimate = histogram.quantile(q / 100)
        assert within(estimate, percentile(exact, q)), (q, estimate, percentile(exact, q))
    assert histogram.total == len(values)
    assert RELATIVE_ACCURACY == 0.01


def test_histograms_merge_to_the_histogram_of_all_values() -> None:
    values = recorded_latencies(6000)
    whole = LatencyHistogram()
    whole.add_many(values)
    merged = LatencyHistogram()
    for part in range(6):  # six writers, say
        piece = LatencyHistogram()
        piece.add_many(values[part::6])
        merged.add_runs(piece.to_runs())  # through the stored form
    assert merged.counts == whole.counts
    assert merged.quantiles((0.5, 0.95, 0.99)) == whole.quantiles((0.5, 0.95, 0.99))


def test_zero_and_tiny_durations_count_as_zero() -> None:
    histogram = LatencyHistogram()
    histogram.add_many([0.0, 0.0, 5e-7, 10.0])
    assert histogram.quantile(0.5) == 0.0
    assert within(histogram.quantile(1.0), 10.0)


def test_stored_runs_skip_long_gaps_and_keep_short_ones() -> None:
    histogram = LatencyHistogram()
    histogram.add_many([1.0, 1.03, 2000.0])
    runs = histogram.to_runs()
    assert len(runs) == 2  # the slow value starts a run of its own
    assert LatencyHistogram.from_runs(runs).counts == histogram.counts


# Decorated calls, aggregated -------------------------------------------------------


def _policy(**store: object) -> Policy:
    return testing.memory_policy(
        store={"flush_interval_s": 3600, **store},
        retry={"max_attempts": 2, "base_ms": 0, "jitter_pct": 0.0},
        circuit={"failures_to_open": 1000},
    )


def _run_scenario(policy: Policy) -> None:
    """200 calls: some fail once then succeed, some fail for good, most succeed."""
    attempts = {"n": 0}

    @resilient("api", policy=policy)
    def fetch(i: int) -> int:
        attempts["n"] += 1
        if i % 10 == 0:
            raise ConnectionError("down")
        if i % 7 == 0 and attempts["n"] % 2:
            raise TimeoutError("slow")
        return i

    for i in range(200):
        with contextlib.suppress(ConnectionError):
            fetch(i)


def test_aggregated_and_raw_summaries_count_the_same() -> None:
    aggregated, raw = _policy(), _policy(metrics_mode="raw")
    _run_scenario(aggregated)
    _run_scenario(raw)
    a, r = summarize("api", policy=aggregated), summarize("api", policy=raw)
    fields = ("total_calls", "errors", "attempts", "attempt_errors", "retries", "rejected")
    assert [getattr(a, f) for f in fields] == [getattr(r, f) for f in fields]
    assert a.errors_by_type == r.errors_by_type
    assert a.total_calls == 200
    assert a.errors == 20


#: Load control's refusals, and the notes counted apart (backends CALL_NOTES).
_REFUSALS = {
    "CircuitOpenError": 3,
    "RateLimitExceededError": 2,
    "BulkheadFullError": 1,
    "RetryBudgetExhausted": 4,
    "FallbackUsed": 5,
}
_HTTP_LABELS = {"method": "GET", "host": "api.example", "port": "443", "status_code": "200"}


def _refusal_scenario(policy: Policy) -> MetricsBuffer:
    """A call saved by its retry (HTTP labels), and every kind of refusal, buffered."""
    buffer = buffer_for(open_store(str(policy.store.url)), policy)
    now = _clock.wall()
    buffer.rows.append((now, "api", "get", 5.0, "error", "TimeoutError", 1, False, _HTTP_LABELS))
    buffer.rows.append((now, "api", "get", 7.0, "ok", None, 2, True, _HTTP_LABELS))
    for kind, n in _REFUSALS.items():
        for _ in range(n):
            buffer.rejections.append(("api", "get", None, kind))
    assert flush_metrics()
    return buffer


def test_aggregated_rows_keep_refusals_by_kind_the_retried_split_and_http_labels() -> None:
    aggregated, raw = _policy(), _policy(metrics_mode="raw")
    _refusal_scenario(aggregated)
    _refusal_scenario(raw)
    store = open_store(str(aggregated.store.url))
    assert isinstance(store, AggregateStore)
    rows = {r.status: r for r in store.read_aggregates(resolution=1, since=0)}
    assert (rows["ok"].finals, rows["ok"].retried, rows["ok"].labels) == (1, 1, _HTTP_LABELS)
    assert (rows["error"].errors, rows["error"].finals) == ({"TimeoutError": 1}, 0)
    assert rows["rejected"].errors == _REFUSALS
    a, r = summarize("api", policy=aggregated), summarize("api", policy=raw)
    assert a.refusals == r.refusals == _REFUSALS
    assert a.rejected == r.rejected == 6  # the notes are calls that ran, not refused ones
    fields = ("total_calls", "errors", "attempts", "retries", "errors_by_type")
    assert [getattr(a, f) for f in fields] == [getattr(r, f) for f in fields]


def test_an_aggregated_row_no_store_can_encode_is_left_out_and_counted(tmp_path: Path) -> None:
    store = JsonlStore.from_url(f"jsonl://{tmp_path / 'state'}")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1000)
    start = _clock.perf()
    buffer.record_success(Series("api", "get"), 0.001, start + 0.001)
    buffer.record_success(Series("api", "get", {"host": "bad\udc80"}), 0.001, start + 0.001)
    assert buffer.flush()
    assert buffer.unwritable == 1
    (row,) = store.read_aggregates(resolution=1, since=0)
    assert (row.attempts, row.labels) == (1, None)


def test_hostile_aggregate_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    store = JsonlStore.from_url(f"jsonl://{folder}")
    good = CallAggregate(T0, 1.0, "api", "get", "ok", 2, 2, T0 + 0.5, ((0, 2),))
    store.append_aggregates([good])
    tier = folder / "metrics.1s.jsonl"
    row = good.to_json()
    with tier.open("ab") as out:
        out.write(b'{"pad": "' + b"x" * (2 << 20) + b'"}\n')  # past the 1 MiB line bound
        out.write(json.dumps({**row, "attempts": True}).encode() + b"\n")
        out.write(json.dumps({**row, "finals": 3}).encode() + b"\n")  # more finals than attempts
        out.write(json.dumps({**row, "h": [[0, -1]]}).encode() + b"\n")
        out.write(json.dumps({**row, "ts": T0 + 1}).encode() + b"\n")
    rows = store.read_aggregates(resolution=1, since=0)
    assert [r.ts for r in rows] == [T0, T0 + 1]
    assert store.stats.skipped_lines == 4


def test_many_calls_make_one_row_per_key_per_interval() -> None:
    policy = _policy()

    @resilient("api", policy=policy)
    def fetch() -> int:
        return 1

    for _ in range(5000):
        fetch()
    flush_metrics()
    store = open_store(str(policy.store.url))
    assert store.read_calls(since=0) == []  # no per-attempt records
    assert isinstance(store, AggregateStore)
    rows = store.read_aggregates(resolution=1, since=0)
    assert 1 <= len(rows) <= 3  # the calls spanned an interval boundary or two at most
    assert sum(r.attempts for r in rows) == 5000
    assert summarize("api", policy=policy).total_calls == 5000


def test_record_call_stays_one_record_per_call() -> None:
    policy = _policy()
    from connector_resilience.metrics import record_call

    record_call("api", "get", 12.5, "ok", policy=policy)
    store = open_store(str(policy.store.url))
    (record,) = store.read_calls(since=0)
    assert record.duration_ms == 12.5


def test_percentiles_through_decorated_calls_are_within_one_percent() -> None:
    """The recorded durations, fed through the writer's aggregator and a store."""
    store = MemoryStore("memory://percentiles")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1000)
    series = Series("api", "get")
    values = recorded_latencies()
    start = _clock.perf() - 1.0
    for v in values:
        buffer.record_success(series, v / 1000.0, start + v / 1000.0)
    buffer.flush()
    summary = summarize("api", store=store, policy=_policy())
    exact = sorted(values)
    for q, got in ((50, summary.p50_ms), (95, summary.p95_ms), (99, summary.p99_ms)):
        # Durations went through the perf counter: a few ns of float noise each.
        assert within(got, percentile(exact, q)), (q, got, percentile(exact, q))
    assert summary.attempts == len(values)


def test_observers_still_see_every_attempt_before_aggregation() -> None:
    policy = _policy()
    seen: list[CallRecord] = []

    def observe(batch: Sequence[CallRecord]) -> None:
        seen.extend(batch)

    add_observer(observe)
    try:
        _run_scenario(policy)
        flush_metrics()
    finally:
        remove_observer(observe)
    mine = [r for r in seen if r.connector == "api"]
    assert len(mine) == summarize("api", policy=policy).attempts
    assert {r.status for r in mine} == {"ok", "error"}
    assert all(r.duration_ms >= 0 for r in mine)


def test_a_closed_interval_is_written_without_waiting_for_the_flush_timer() -> None:
    store = MemoryStore("memory://closed-interval")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1000, interval_s=0.5)
    series = Series("api", "get")
    with testing.FakeClock(start=T0 + 0.1) as clock:
        start = _clock.perf()
        buffer.record_success(series, 0.001, start + 0.001)
        buffer.tick()  # the interval is open: nothing to write, and the timer is far off
        assert store.read_aggregates(resolution=1, since=0) == []
        clock.advance(0.5)
        buffer.tick()  # it ended: written now, not an hour later
    (row,) = store.read_aggregates(resolution=1, since=0)
    assert (row.ts, row.resolution, row.attempts) == (T0, 0.5, 1)


def test_a_tick_per_fine_interval_keeps_each_success_in_its_own_interval() -> None:
    # A success buffers its duration; a tick stamps what it takes with the time
    # it took it. The writer ticks at least once per fine interval, so each of
    # these lands in the interval it was made in.
    store = MemoryStore("memory://stamped-per-tick")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1000, interval_s=0.5)
    series = buffer.series("api", "get", None)
    with testing.FakeClock(start=T0 + 0.1) as clock:
        for made in range(1, 5):  # 1, 2, 3 and 4 successes in four intervals
            for _ in range(made):
                buffer.record_success(series, 0.001, _clock.perf())
            buffer.tick()
            clock.advance(0.5)
        buffer.flush()
    rows = sorted(store.read_aggregates(resolution=0.5, since=0), key=lambda r: r.ts)
    assert [(r.ts - T0, r.attempts) for r in rows] == [(0.0, 1), (0.5, 2), (1.0, 3), (1.5, 4)]


def test_successes_wait_at_most_one_tick_late() -> None:
    # Without a tick between them, two successes either side of an interval's end
    # are both stamped when the next tick takes them: the earlier is counted one
    # interval late (the bound docs/metrics-and-health.md states), never lost.
    store = MemoryStore("memory://stamped-late")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1000, interval_s=0.5)
    series = buffer.series("api", "get", None)
    with testing.FakeClock(start=T0 + 0.4) as clock:
        buffer.record_success(series, 0.001, _clock.perf())
        clock.advance(0.2)  # this buffer is no process buffer: nothing drains it
        buffer.record_success(series, 0.001, _clock.perf())
        buffer.flush()
    (row,) = store.read_aggregates(resolution=0.5, since=0)
    assert (row.ts - T0, row.attempts) == (0.5, 2)


def test_successes_of_a_collected_series_are_still_written() -> None:
    # A decorated function (its engine, its series) collected before the writer
    # took its successes: they go to the buffer's orphans and are written.
    store = MemoryStore("memory://orphans")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1000)
    series = buffer.series("api", "gone", None)
    for _ in range(3):
        buffer.record_success(series, 0.002, _clock.perf())
    del series
    gc.collect()
    assert buffer.pending() == 3
    assert buffer.flush()
    (row,) = store.read_aggregates(resolution=1, since=0)
    assert (row.operation, row.attempts) == ("gone", 3)


def test_an_idle_series_is_left_out_of_ticks_until_its_next_success() -> None:
    # Ticks walk only the series calls appended to lately, so that idle
    # connectors cost a tick nothing; a success of a rested series is taken by
    # the next tick all the same (no flush needed).
    store = MemoryStore("memory://idle-series")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1000)
    busy, idle = buffer.series("api", "busy", None), buffer.series("api", "idle", None)
    buffer.record_success(idle, 0.001, _clock.perf())
    buffer.tick()  # takes idle's success
    buffer.tick()  # finds idle empty: rests it
    assert idle.keep_up_at == -math.inf  # resting: its next success tells the buffer
    for _ in range(3):
        buffer.record_success(busy, 0.001, _clock.perf())
        buffer.tick()
    buffer.record_success(idle, 0.002, _clock.perf())
    assert idle.keep_up_at > 0.0
    buffer.tick()
    assert (idle.pending, busy.pending) == ([], [])
    assert buffer.pending() == 5  # taken by ticks, counted in the open interval
    assert buffer.flush()
    counts = {row.operation: row.attempts for row in store.read_aggregates(resolution=1, since=0)}
    assert counts == {"busy": 3, "idle": 2}


class _FilledOnceLookedAt(list[float]):
    """A series' pending list that gets a success the moment a tick finds it empty.

    The interleaving threads only sometimes hit (a call appends between the
    tick's look at the series and the tick resting it), made certain.
    """

    def __init__(self) -> None:
        super().__init__()
        self.filled = False

    def __len__(self) -> int:
        n = super().__len__()
        if not n and not self.filled:
            self.filled = True
            self.append(0.001)  # the racing call; it saw keep_up_at in the future
        return n


def test_a_success_landing_as_a_tick_rests_its_series_keeps_the_series_walked() -> None:
    store = MemoryStore("memory://idle-landing")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1000)
    series = buffer.series("api", "get", None)
    buffer.record_success(series, 0.001, _clock.perf())  # keep_up_at is now in the future
    buffer.tick()
    series.pending = _FilledOnceLookedAt()
    buffer.tick()  # finds it empty, and the racing success lands
    assert series.pending == [0.001]
    buffer.tick()  # no further success came: the series was still walked
    assert series.pending == []
    assert buffer.pending() == 2


def test_successes_racing_a_tick_that_rests_their_series_are_taken_by_later_ticks() -> None:
    # A tick rests a series it found empty while calls append to it from other
    # threads: every success is still taken by the ticks that follow, none is
    # left waiting in a series the ticks no longer walk.
    store = MemoryStore("memory://idle-race")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=10**6)
    many = [buffer.series("api", f"op{i}", None) for i in range(20)]
    per_thread = 3000

    def calls(offset: int) -> None:
        for i in range(per_thread):
            series = many[(i * 7 + offset) % len(many)]
            buffer.record_success(series, 0.001, _clock.perf())

    with fine_thread_switching():
        threads = [threading.Thread(target=calls, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            buffer.tick()
        for thread in threads:
            thread.join(timeout=30)
    buffer.tick()
    assert [series.pending for series in many] == [[]] * len(many)
    assert buffer.pending() == 4 * per_thread


def test_a_series_another_buffer_takes_is_recorded_as_a_row() -> None:
    first = MetricsBuffer(MemoryStore("memory://owner-a"), flush_interval_s=3600, max_pending=10)
    second_store = MemoryStore("memory://owner-b")
    second = MetricsBuffer(second_store, flush_interval_s=3600, max_pending=10)
    series = first.series("api", "get", None)
    second.record_success(series, 0.001, _clock.perf())
    assert (len(series.pending), len(second.rows)) == (0, 1)
    assert second.flush()
    (row,) = second_store.read_aggregates(resolution=1, since=0)
    assert row.attempts == 1


def test_buffered_successes_are_written_at_interpreter_exit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/exit.db"
    script = (
        "from connector_resilience import Policy, resilient\n"
        f"policy = Policy(store={{'url': {url!r}, 'flush_interval_s': 3600}})\n"
        "fn = resilient('exit', policy=policy)(lambda: 1)\n"
        "for _ in range(250): fn()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    summary = summarize("exit", policy=Policy(store={"url": url}))
    assert summary.total_calls == 250


# Bounded memory --------------------------------------------------------------------


def test_past_the_pending_bound_the_oldest_calls_are_dropped_counted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = _policy(metrics_pending_max=100)
    store = open_store(str(policy.store.url))
    buffer = buffer_for(store, policy)
    buffer.drain()  # the writer is not running a tick during the flood: drain by hand
    series = Series("api", "get")
    start = _clock.perf()
    caplog.set_level(logging.WARNING)
    for _ in range(150):  # the deque's hard cap is 2 x 100: all of these are still there
        buffer.record_success(series, 0.001, start + 0.001)
    assert flush_metrics()
    summary = summarize("api", policy=policy)
    assert (summary.attempts, summary.dropped) == (100, 50)
    assert buffer.dropped == 50
    assert any("dropping metrics" in r.getMessage() for r in caplog.records)


def test_calls_from_many_threads_at_full_speed_are_all_counted_none_dropped() -> None:
    # A small bound: past it the writer thread alone could never keep up with
    # four threads calling flat out, and the deque's hard cap (2 x 200) would lose calls.
    policy = _policy(metrics_pending_max=200)

    @resilient("api", policy=policy)
    def fetch() -> int:
        return 1

    fetch()
    per_thread = 20_000

    def caller() -> None:
        for _ in range(per_thread):
            fetch()

    with fine_thread_switching():
        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.dropped) == (1 + 4 * per_thread, 0)


def test_the_writer_drops_the_excess_while_calls_append_and_counts_every_one() -> None:
    # The writer thread takes a series' durations, and drops the oldest past the
    # bound, while calls keep appending to it: each one ends up aggregated or
    # counted as dropped, none is lost or taken twice, and the writer does not
    # fail (it once iterated the deque it took from as it changed).
    store = open_store("memory://agg-excess-while-appending")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=10**6, pending_max=100)
    series = buffer.series("api", "get", None)
    appended = 0
    done = threading.Event()

    def calls() -> None:
        nonlocal appended
        start = _clock.perf()
        deadline = time.monotonic() + 20
        while appended < 30_000 and time.monotonic() < deadline:
            if len(series.pending) < 400:  # as calls' own keep_up would bound it
                buffer.record_success(series, 0.001, start + 0.001)
                appended += 1
        done.set()

    with fine_thread_switching():
        thread = threading.Thread(target=calls)
        thread.start()
        while not done.is_set():
            if len(series.pending) > 150:  # past the bound of 100: the excess path
                buffer.drain()
        thread.join(timeout=30)
    assert buffer.flush()
    summary = summarize("api", store=store, policy=_policy())
    assert appended == 30_000
    assert summary.attempts + summary.dropped == appended
    assert summary.dropped == buffer.dropped > 0  # the bound was passed, and counted


def test_past_the_key_bound_the_oldest_key_is_written_early_not_lost() -> None:
    policy = _policy(metrics_max_keys=2)
    fns = [resilient("api", operation=name, policy=policy)(lambda: 1) for name in "abcde"]
    for _ in range(3):
        for fn in fns:
            fn()
    store = open_store(str(policy.store.url))
    buffer = buffer_for(store, policy)
    flush_metrics()
    assert summarize("api", policy=policy).total_calls == 15
    assert buffer.aggregator is not None
    assert buffer.aggregator.evicted > 0
    assert len(buffer.aggregator) <= 2 * 3  # at most 2 keys in each of the three tiers


def test_a_store_down_too_long_drops_rows_and_reports_them_when_back() -> None:
    class Switchable(MemoryStore):
        down = True

        def append_aggregates(self, rows: Sequence[CallAggregate]) -> None:
            if self.down:
                raise ConnectionError("store unreachable")
            super().append_aggregates(rows)

    store = Switchable("memory://switchable-agg")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=1)
    start = _clock.perf()
    for operation in ("a", "b", "c"):  # three keys: three rows, one may wait
        buffer.record_success(Series("api", operation), 0.001, start + 0.001)
    assert buffer.flush() is False
    store.down = False
    assert buffer.flush() is True
    summary = summarize("api", store=store, policy=_policy())
    assert summary.attempts + summary.dropped == 3
    assert summary.dropped == 2


# The window: hour rows inside, finer rows at the edges ---------------------------------


def test_spans_cover_the_window_once_with_the_coarsest_rows() -> None:
    since, until = T0 - 86400 + 30.5, T0 + 125.25
    parts = spans(since, until)
    assert parts[0][1] == since
    assert parts[-1][2] == until
    for (_, _, end), (_, start, _) in itertools.pairwise(parts):
        assert end == start  # contiguous, no overlap
    by = {r: sum(b - a for rr, a, b in parts if rr == r) for r, _, _ in parts}
    assert by[3600.0] == 23 * 3600  # every whole hour but the one cut by the start
    assert by[60.0] < 2 * 3600
    assert by[1.0] < 2 * 60


def test_a_day_of_rows_at_three_resolutions_sums_to_every_call(store_url: str) -> None:
    """Rows as a writer makes them, read back through each store: nothing counted twice."""
    store = open_store(store_url)
    rows: list[CallAggregate] = []
    for hour in range(24):
        ts = T0 - 86400 + hour * 3600
        rows.append(
            CallAggregate(ts, 3600.0, "api", "get", "ok", 3600, 3600, ts + 3599, ((0, 3600),))
        )
        for minute in range(60):
            m = ts + minute * 60
            rows.append(CallAggregate(m, 60.0, "api", "get", "ok", 60, 60, m + 59, ((0, 60),)))
    for second in range(3600):  # the fine rows of the last hour only (enough for the edges)
        s = T0 - 3600 + second
        rows.append(CallAggregate(s, 1.0, "api", "get", "ok", 1, 1, s + 0.5, ((0, 1),)))
    assert isinstance(store, AggregateStore)
    store.append_aggregates(rows)
    with testing.FakeClock(start=T0 + 3600):  # every interval long settled
        summary = summarize("api", window_s=3600 - 20.0, store=store, now=T0 - 10.0)
    # Fine rows starting in [now - window, now]: the one starting at now is in.
    assert summary.attempts == 3600 - 20 + 1
    assert store.connectors() == ["api"]


# The connectors index ------------------------------------------------------------------


def test_jsonl_folder_from_an_older_version_gets_its_index_built_once(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    lines = [
        CallRecord(T0 + i, name, "get", 1.0, "ok").to_json()
        for i, name in enumerate(["a", "b", "a", 'we"ird'])
    ]
    compact = "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines)
    (folder / "metrics.jsonl").write_text(compact)
    store = JsonlStore.from_url(f"jsonl://{folder}")
    assert store.connectors() == ["a", "b", 'we"ird']
    index = folder / "metrics.connectors.jsonl"
    assert json.loads(index.read_text().splitlines()[0]) == {"schema": 2}
    store.append_calls([CallRecord(T0 + 10, "c", "get", 1.0, "ok")])
    store.append_calls([CallRecord(T0 + 11, "c", "get", 1.0, "ok")])  # known: not re-added
    assert store.connectors() == ["a", "b", "c", 'we"ird']
    assert index.read_text().count('"c"') == 1
    # Listing reads the index, not the history: it no longer depends on the metrics file.
    (folder / "metrics.jsonl").write_text("")
    assert JsonlStore.from_url(f"jsonl://{folder}").connectors() == ["a", "b", "c", 'we"ird']


def test_sqlite_version_2_store_is_migrated_to_the_index(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE metrics (ts REAL NOT NULL, connector TEXT NOT NULL, operation TEXT NOT "
        "NULL, duration_ms REAL NOT NULL, status TEXT NOT NULL, error TEXT, attempt INTEGER NOT "
        "NULL DEFAULT 1, final INTEGER NOT NULL DEFAULT 1, labels TEXT, calls INTEGER NOT NULL "
        "DEFAULT 1);"
        "CREATE TABLE circuits (connector TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT);"
        "CREATE TABLE tokens (connector TEXT PRIMARY KEY, data TEXT, updated_at REAL);"
        "CREATE TABLE locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL);"
    )
    conn.execute("INSERT INTO metrics VALUES (1.0, 'old', 'get', 5.0, 'ok', NULL, 1, 1, NULL, 1)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    assert store.connectors() == ["old"]
    assert [r.connector for r in store.read_calls(since=0)] == ["old"]


def test_connectors_come_from_aggregated_rows_too(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, AggregateStore)
    store.append_aggregates([CallAggregate(T0, 1.0, "agg-only", "get", "ok", 1, 1, T0)])
    store.append_calls([CallRecord(T0, "raw-only", "get", 1.0, "ok")])
    assert {"agg-only", "raw-only"} <= set(store.connectors())


# The hot path ----------------------------------------------------------------------------


def test_a_successful_call_reads_the_clock_at_most_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy()

    @resilient("api", policy=policy)
    def fetch() -> int:
        return 1

    fetch()  # builds the engine and the breaker
    reads = {"n": 0}

    def counting(read: object) -> object:
        def clock() -> float:
            reads["n"] += 1
            value: float = read()  # type: ignore[operator]
            return value

        return clock

    for name in ("wall", "monotonic", "perf"):
        monkeypatch.setattr(_clock, name, counting(getattr(_clock, name)))
    monkeypatch.setattr(time, "time", counting(time.time))
    monkeypatch.setattr(time, "perf_counter", counting(time.perf_counter))
    monkeypatch.setattr(time, "monotonic", counting(time.monotonic))
    for _ in range(10):
        fetch()
    assert reads["n"] == 20


# Settings and start-up ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONNECTOR_METRICS_MODE", "sampled"),
        ("CONNECTOR_METRICS_INTERVAL_S", "7"),
        ("CONNECTOR_METRICS_MAX_KEYS", "0"),
        ("CONNECTOR_METRICS_PENDING_MAX", "-1"),
    ],
)
def test_bad_metrics_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):  # pydantic's, naming the variable
        Policy()


def test_importing_the_package_imports_nothing_heavy() -> None:
    code = (
        "import sys, connector_resilience as c; "
        "print(sorted(m for m in ('pydantic', 'pydantic_settings', 'importlib.metadata', "
        "'connector_resilience.oauth2', 'connector_resilience.policy', 'aiohttp') "
        "if m in sys.modules)); print(c.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == "[]"
    import importlib.metadata

    assert out[1] == importlib.metadata.version("connector-resilience")


def test_cli_help_imports_neither_settings_nor_stores() -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['connector-resilience', '--help']\n"
        "try:\n"
        "    runpy.run_module('connector_resilience.cli', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('pydantic', 'connector_resilience.policy', 'connector_resilience.backends')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "exit codes:" in done.stdout
    assert done.stderr.strip() == "[]"


def test_the_cli_still_names_a_bad_setting() -> None:
    from tests._ops import run_cli

    result = run_cli("--store", "memory://", "health", CONNECTOR_METRICS_FLUSH_S="abc")
    assert result.returncode == 3
    assert "CONNECTOR_METRICS_FLUSH_S='abc'" in result.stderr


def test_public_names_still_resolve_and_resilient_is_the_decorator() -> None:
    import connector_resilience

    module = sys.modules["connector_resilience.resilient"]
    assert callable(connector_resilience.resilient)
    assert connector_resilience.resilient is module.resilient
    for name in connector_resilience.__all__:
        assert getattr(connector_resilience, name) is not None
