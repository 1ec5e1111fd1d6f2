"""The buffer in front of a store that fails: calls never see it, one warning per burst.

The failing store is a real memory store whose writes can be switched off (fault
injection); nothing else is faked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest

from connector_resilience import flush_metrics as public_flush_metrics
from connector_resilience import testing
from connector_resilience.backends import CallAggregate, CallRecord
from connector_resilience.backends.memory import MemoryStore
from connector_resilience.metrics import (
    MetricsBuffer,
    buffer_for,
    flush_metrics,
    record_call,
    summarize,
)
from connector_resilience.policy import Policy

T0 = 1_700_000_000.0


class SwitchableStore(MemoryStore):
    """A memory store whose ``append_calls`` raises while ``down`` is set."""

    def __init__(self, url: str = "memory://switchable") -> None:
        super().__init__(url)
        self.down = False
        self.append_attempts = 0
        self.appended_batches: list[int] = []

    def append_calls(self, records: Sequence[CallRecord]) -> None:
        self.append_attempts += 1
        if self.down:
            raise ConnectionError("store unreachable")
        self.appended_batches.append(len(records))
        super().append_calls(records)

    def append_aggregates(self, rows: Sequence[CallAggregate]) -> None:
        self.append_attempts += 1
        if self.down:
            raise ConnectionError("store unreachable")
        self.appended_batches.append(len(rows))
        super().append_aggregates(rows)

    def operations(self) -> list[str]:
        """Operations written, raw and aggregated (one per attempt), oldest first."""
        found = [(r.ts, r.operation) for r in self.read_calls(since=0)]
        for row in self.read_aggregates(resolution=1, since=0):
            found += [(row.last_ts, row.operation)] * row.attempts
        return [operation for _, operation in sorted(found)]


def quiet_policy(buffer_max: int = 50_000) -> Policy:
    """A policy whose background writer sleeps for an hour, so only the test flushes."""
    return Policy(
        store={"url": "memory://unused", "flush_interval_s": 3600, "buffer_max": buffer_max}
    )


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def store() -> SwitchableStore:
    return SwitchableStore()


def test_flush_metrics_is_exported() -> None:
    assert public_flush_metrics is flush_metrics


def test_calls_never_see_a_store_fault(store: SwitchableStore) -> None:
    policy = quiet_policy()
    store.down = True
    for i in range(25):
        record_call("api", f"op-{i}", 1.0, "ok", store=store, policy=policy)  # no exception
    assert store.append_attempts == 25  # each call tried to write...
    assert store.operations() == []  # ...and nothing reached the store
    assert buffer_for(store, policy).dropped == 0


def test_one_warning_per_burst_not_per_call(
    store: SwitchableStore, caplog: pytest.LogCaptureFixture
) -> None:
    policy = quiet_policy()
    caplog.set_level(logging.WARNING, logger="connector_resilience")
    store.down = True
    for i in range(30):
        record_call("api", f"op-{i}", 1.0, "ok", store=store, policy=policy)
    messages = warnings_in(caplog)
    assert len(messages) == 1
    assert "memory://switchable" in messages[0]
    assert "ConnectionError" in messages[0]
    caplog.clear()

    store.down = False
    record_call("api", "after", 1.0, "ok", store=store, policy=policy)
    record_call("api", "after-2", 1.0, "ok", store=store, policy=policy)
    messages = warnings_in(caplog)
    assert len(messages) == 1  # the recovery, once
    assert "works again" in messages[0]
    caplog.clear()

    # A second outage is a new burst: one warning again.
    store.down = True
    for _ in range(10):
        record_call("api", "again", 1.0, "ok", store=store, policy=policy)
    assert len(warnings_in(caplog)) == 1


def test_recovery_writes_the_kept_rows_exactly_once_in_order(store: SwitchableStore) -> None:
    policy = quiet_policy()
    store.down = True
    for i in range(5):
        record_call("api", f"op-{i}", float(i), "ok", store=store, policy=policy)
    store.down = False
    record_call("api", "op-5", 5.0, "ok", store=store, policy=policy)
    assert store.operations() == [f"op-{i}" for i in range(6)]
    assert store.appended_batches == [6]  # one write carried the backlog
    # Nothing more is written by later flushes, summaries or calls.
    assert flush_metrics() is True
    summarize("api", store=store, policy=policy)
    record_call("api", "op-6", 6.0, "ok", store=store, policy=policy)
    assert store.operations() == [f"op-{i}" for i in range(7)]
    assert buffer_for(store, policy).written == 7


def test_summarize_flushes_what_was_kept_first(store: SwitchableStore) -> None:
    policy = quiet_policy()
    store.down = True
    for _ in range(4):
        record_call("api", "get", 1.0, "ok", store=store, policy=policy)
    assert summarize("api", store=store, policy=policy).total_calls == 0  # still down
    store.down = False
    assert summarize("api", store=store, policy=policy).total_calls == 4


def test_rows_beyond_max_pending_drop_the_oldest_and_are_counted(store: SwitchableStore) -> None:
    policy = quiet_policy(buffer_max=3)
    store.down = True
    for i in range(8):
        record_call("api", f"op-{i}", 1.0, "ok", store=store, policy=policy)
    buffer = buffer_for(store, policy)
    assert buffer.dropped == 5
    store.down = False
    assert flush_metrics() is True
    assert store.operations() == ["op-5", "op-6", "op-7"]
    assert buffer.written == 3
    assert buffer.dropped == 5  # a total, not reset by the recovery


def test_exactly_max_pending_rows_are_all_kept(store: SwitchableStore) -> None:
    policy = quiet_policy(buffer_max=4)
    store.down = True
    for i in range(4):
        record_call("api", f"op-{i}", 1.0, "ok", store=store, policy=policy)
    store.down = False
    flush_metrics()
    assert store.operations() == ["op-0", "op-1", "op-2", "op-3"]
    assert buffer_for(store, policy).dropped == 0


def test_drops_are_warned_once_per_burst(
    store: SwitchableStore, caplog: pytest.LogCaptureFixture
) -> None:
    policy = quiet_policy(buffer_max=3)
    caplog.set_level(logging.WARNING, logger="connector_resilience")
    store.down = True
    for i in range(20):
        record_call("api", f"op-{i}", 1.0, "ok", store=store, policy=policy)
    # The fault, and at most one notice about dropping.
    assert len(warnings_in(caplog)) <= 2


def test_flush_metrics_reports_whether_every_store_took_its_rows() -> None:
    assert flush_metrics() is True  # nothing buffered anywhere
    good, bad = SwitchableStore("memory://good"), SwitchableStore("memory://bad")
    policy = quiet_policy()
    bad.down = True
    record_call("api", "get", 1.0, "ok", store=good, policy=policy)
    record_call("api", "get", 1.0, "ok", store=bad, policy=policy)
    assert flush_metrics() is False
    bad.down = False
    assert flush_metrics() is True
    assert bad.operations() == ["get"]
    assert good.operations() == ["get"]


def test_flush_metrics_flushes_every_buffer_even_after_a_failure() -> None:
    policy = quiet_policy()
    first, second = SwitchableStore("memory://first"), SwitchableStore("memory://second")
    first.down = second.down = True
    record_call("api", "a", 1.0, "ok", store=first, policy=policy)
    record_call("api", "b", 1.0, "ok", store=second, policy=policy)
    second.down = False
    assert flush_metrics() is False
    assert second.operations() == ["b"]


def row(operation: str) -> tuple[float, str, str, float, str, None, int, bool, None]:
    return (T0, "api", operation, 1.0, "ok", None, 1, True, None)


def test_buffer_flush_and_counters(store: SwitchableStore) -> None:
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=10)
    assert buffer.flush() is True  # empty: nothing to write, no store call
    assert store.append_attempts == 0
    buffer.rows.append(row("a"))  # type: ignore[arg-type]
    buffer.rows.append(row("b"))  # type: ignore[arg-type]
    assert buffer.flush() is True
    assert (buffer.written, buffer.dropped, len(buffer.rows)) == (2, 0, 0)
    assert store.operations() == ["a", "b"]


def test_buffer_stop_writes_what_is_pending(store: SwitchableStore) -> None:
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=10)
    buffer.start()
    buffer.rows.append(row("pending"))  # type: ignore[arg-type]
    buffer.stop()
    assert store.operations() == ["pending"]
    assert buffer._thread is not None
    assert not buffer._thread.is_alive()


def test_buffer_start_is_idempotent(store: SwitchableStore) -> None:
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=10)
    buffer.start()
    thread = buffer._thread
    buffer.start()
    assert buffer._thread is thread
    buffer.stop()


def test_background_writer_flushes_without_being_asked(store: SwitchableStore) -> None:
    buffer = MetricsBuffer(store, flush_interval_s=0.01, max_pending=10)
    buffer.start()
    try:
        buffer.rows.append(row("background"))  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while not store.operations() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert store.operations() == ["background"]
    finally:
        buffer.stop()


def test_background_writer_retries_after_an_outage(store: SwitchableStore) -> None:
    store.down = True
    buffer = MetricsBuffer(store, flush_interval_s=0.01, max_pending=10)
    buffer.rows.append(row("kept"))  # type: ignore[arg-type]
    assert buffer.flush() is False
    buffer.start()
    try:
        store.down = False
        deadline = time.monotonic() + 5
        while not store.operations() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert store.operations() == ["kept"]
    finally:
        buffer.stop()
    assert store.operations() == ["kept"]  # stop() did not write it a second time


def test_concurrent_record_calls_lose_and_duplicate_nothing(store: SwitchableStore) -> None:
    policy = quiet_policy()

    def work(worker: int) -> None:
        for i in range(50):
            record_call("api", f"w{worker}-{i}", 1.0, "ok", store=store, policy=policy)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    operations = store.operations()
    assert len(operations) == 300
    assert len(set(operations)) == 300


def test_concurrent_calls_during_an_outage_then_recovery(store: SwitchableStore) -> None:
    policy = quiet_policy()
    store.down = True

    def work(worker: int) -> None:
        for i in range(40):
            record_call("api", f"w{worker}-{i}", 1.0, "ok", store=store, policy=policy)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.down = False
    assert flush_metrics() is True
    assert sorted(store.operations()) == sorted(f"w{w}-{i}" for w in range(4) for i in range(40))


def test_reset_writes_buffered_rows(store: SwitchableStore) -> None:
    policy = quiet_policy()
    store.down = True
    record_call("api", "kept", 1.0, "ok", store=store, policy=policy)
    store.down = False
    testing.reset()
    assert store.operations() == ["kept"]
