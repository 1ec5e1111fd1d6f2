"""The circuit breaker's state machine, its trip models, and sharing through a store."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from connector_resilience import testing
from connector_resilience.backends import CircuitRecord, open_store
from connector_resilience.backends.memory import MemoryStore
from connector_resilience.circuit import CircuitBreaker, Outcome, StateChange
from connector_resilience.errors import CircuitOpenError, StoreError
from connector_resilience.policy import Policy
from tests import _workers


class ScriptedRandom(random.Random):
    """A random source that returns the given numbers in turn (then 0.0)."""

    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self._values = list(values)

    def random(self) -> float:
        return self._values.pop(0) if self._values else 0.0


def _policy(**circuit: Any) -> Policy:
    settings = {"failures_to_open": 3, "cooldown_s": 10, "half_open_prob": 1.0, **circuit}
    return testing.memory_policy(circuit=settings)


@pytest.fixture
def clock() -> Iterator[testing.FakeClock]:
    with testing.FakeClock(start=1_000_000.0) as fake:
        yield fake


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


def test_starts_closed_and_allows() -> None:
    breaker = CircuitBreaker("api", policy=_policy())
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"


def test_opens_after_consecutive_failures_only(clock: testing.FakeClock) -> None:
    breaker = CircuitBreaker("api", policy=_policy())
    _fail(breaker, 2)
    assert breaker.allow()
    breaker.record_success()  # resets the run of failures
    _fail(breaker, 2)
    assert breaker.state == "closed"
    _fail(breaker, 1)
    assert breaker.state == "open"
    assert not breaker.allow()


def test_open_rejection_names_connector_and_reopen_time(clock: testing.FakeClock) -> None:
    breaker = CircuitBreaker("billing", policy=_policy())
    _fail(breaker, 3)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire()
    assert caught.value.connector == "billing"
    assert caught.value.retry_at == pytest.approx(1_000_000.0 + 10)
    assert "billing" in str(caught.value)
    assert "3 consecutive failures" in str(caught.value)


def test_half_open_after_cooldown_probe_success_closes(clock: testing.FakeClock) -> None:
    breaker = CircuitBreaker("api", policy=_policy())
    _fail(breaker, 3)
    clock.advance(9.9)
    assert breaker.state == "open"
    clock.advance(0.2)
    assert breaker.state == "half_open"
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.record.failures == 0


def test_half_open_probe_failure_reopens_for_a_new_cooldown(clock: testing.FakeClock) -> None:
    breaker = CircuitBreaker("api", policy=_policy())
    _fail(breaker, 3)
    clock.advance(10)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(9)
    assert breaker.state == "open"
    clock.advance(1)
    assert breaker.state == "half_open"


def test_half_open_admits_with_probability(clock: testing.FakeClock) -> None:
    policy = _policy(half_open_prob=0.2, half_open_max_probes=5)
    breaker = CircuitBreaker("api", policy=policy, rng=ScriptedRandom([0.5, 0.25, 0.19]))
    _fail(breaker, 3)
    clock.advance(10)
    with pytest.raises(CircuitOpenError, match="not picked as a probe"):
        breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    assert breaker.acquire() is not None  # 0.19 < 0.2: a probe


def test_probe_cap_holds_across_breakers_sharing_a_store(clock: testing.FakeClock) -> None:
    policy = _policy(half_open_max_probes=2)
    first = CircuitBreaker("api", policy=policy)
    second = CircuitBreaker(
        "api",
        policy=policy.model_copy(
            update={"circuit": policy.circuit.model_copy(update={"sync_interval_s": 0})}
        ),
    )
    _fail(first, 3)
    clock.advance(10)
    probes = [first.acquire(), second.acquire()]
    assert all(probes)
    with pytest.raises(CircuitOpenError, match="every probe slot is taken"):
        second.acquire()
    first.report(probes[0], "ignore")  # gives its slot back, decides nothing
    assert second.acquire() is not None
    assert first.state == "half_open"


def test_lost_probe_frees_its_slot_when_the_lease_ends(clock: testing.FakeClock) -> None:
    policy = _policy(half_open_max_probes=1, probe_lease_s=5)
    breaker = CircuitBreaker("api", policy=policy)
    _fail(breaker, 3)
    clock.advance(10)
    lost = breaker.acquire()
    assert lost is not None
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # the slot is held ...
    clock.advance(5.01)
    fresh = breaker.acquire()  # ... until the lease ends; new attempts never extend it
    assert fresh is not None
    breaker.report(lost, "success")  # too late: its lease is gone, it decides nothing
    assert breaker.state == "half_open"
    breaker.report(fresh, "success")
    assert breaker.state == "closed"


def test_late_outcome_of_a_call_admitted_before_opening_is_ignored(
    clock: testing.FakeClock,
) -> None:
    breaker = CircuitBreaker("api", policy=_policy())
    assert breaker.acquire() is None
    _fail(breaker, 3)
    breaker.report(None, "success")
    assert breaker.state == "open"


def test_count_window_trips_on_failure_rate_after_min_calls(clock: testing.FakeClock) -> None:
    policy = _policy(model="count", window_size=10, min_calls=6, failure_rate=0.5)
    breaker = CircuitBreaker("api", policy=policy)
    for _ in range(3):
        breaker.report(None, "failure")
    breaker.report(None, "success")
    breaker.report(None, "success")
    assert breaker.state == "closed"  # 5 calls: below min_calls
    breaker.report(None, "failure")  # 4 of 6 failed
    assert breaker.state == "open"
    assert "failure rate 67%" in (breaker.record.reason or "")


def test_count_window_forgets_the_oldest_calls(clock: testing.FakeClock) -> None:
    policy = _policy(model="count", window_size=4, min_calls=4, failure_rate=0.75)
    breaker = CircuitBreaker("api", policy=policy)
    outcomes: list[Outcome] = [
        "failure",
        "failure",
        "success",
        "success",
        "success",
        "failure",
        "failure",
    ]
    for outcome in outcomes:
        breaker.report(None, outcome)
    assert breaker.state == "closed"  # last 4: success, success... only 2 of 4 failed


def test_time_window_drops_old_outcomes(clock: testing.FakeClock) -> None:
    policy = _policy(model="time", window_size=60, min_calls=3, failure_rate=0.6)
    breaker = CircuitBreaker("api", policy=policy)
    breaker.report(None, "failure")
    breaker.report(None, "failure")
    clock.advance(61)
    breaker.report(None, "failure")
    breaker.report(None, "success")
    assert breaker.state == "closed"  # the first two fell out of the window
    breaker.report(None, "failure")
    assert breaker.state == "open"  # 2 of 3 within 60 s


def test_slow_call_rate_trips_a_window_model(clock: testing.FakeClock) -> None:
    policy = _policy(
        model="count", window_size=5, min_calls=5, slow_call_ms=100, slow_call_rate=0.6
    )
    breaker = CircuitBreaker("api", policy=policy)
    for duration in (150, 20, 150, 20):
        breaker.report(None, "success", duration_ms=duration)
    assert breaker.state == "closed"
    breaker.report(None, "success", duration_ms=500)
    assert breaker.state == "open"
    assert "slow-call rate 60%" in (breaker.record.reason or "")


def test_slow_call_counts_as_failure_in_consecutive_model(clock: testing.FakeClock) -> None:
    breaker = CircuitBreaker("api", policy=_policy(slow_call_ms=100))
    for _ in range(3):
        breaker.report(None, "success", duration_ms=250)
    assert breaker.state == "open"


def test_ignored_outcomes_count_for_nothing(clock: testing.FakeClock) -> None:
    breaker = CircuitBreaker("api", policy=_policy())
    _fail(breaker, 2)
    for _ in range(10):
        breaker.report(None, "ignore")
    assert breaker.record.failures == 2
    assert breaker.state == "closed"


def test_forced_open_disabled_and_reset_are_seen_by_other_breakers(
    clock: testing.FakeClock,
) -> None:
    policy = _policy(sync_interval_s=0)
    operator = CircuitBreaker("api", policy=policy)
    worker = CircuitBreaker("api", policy=policy)
    operator.force_open(reason="maintenance")
    with pytest.raises(CircuitOpenError) as caught:
        worker.acquire()
    assert caught.value.retry_at is None
    assert "until an operator closes it" in str(caught.value)
    clock.advance(3600)
    assert worker.state == "open"  # no cooldown ends a forced open
    operator.disable()
    _fail(worker, 10)
    assert worker.state == "closed"  # disabled: nothing counts
    operator.reset()
    _fail(worker, 3)
    assert worker.state == "open"
    operator.reset()
    assert worker.state == "closed"


def test_state_changes_reach_listeners(clock: testing.FakeClock) -> None:
    breaker = CircuitBreaker("api", policy=_policy())
    seen: list[StateChange] = []
    breaker.add_listener(seen.append)
    _fail(breaker, 3)
    clock.advance(10)
    probe = breaker.acquire()
    breaker.report(probe, "success")
    assert [(c.old, c.new) for c in seen] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert seen[0].reason == "3 consecutive failures"
    assert seen[1].reason == "cooldown over: probing"


def test_a_cached_view_is_refreshed_after_the_sync_interval(clock: testing.FakeClock) -> None:
    policy = _policy(sync_interval_s=1.0)
    writer = CircuitBreaker("api", policy=policy)
    reader = CircuitBreaker("api", policy=policy)
    assert reader.acquire() is None  # caches "closed"
    _fail(writer, 3)
    assert reader.acquire() is None  # still within its sync interval
    clock.advance(1.0)
    with pytest.raises(CircuitOpenError):
        reader.acquire()


class CountingStore(MemoryStore):
    """A memory store that counts circuit reads and notes the thread of each."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.read_in: list[threading.Thread] = []

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        self.read_in.append(threading.current_thread())
        return super().get_circuit(connector)


def test_an_unchanged_closed_record_is_read_once_per_interval_and_still_trips(
    clock: testing.FakeClock,
) -> None:
    # memory:// hands out the record the breaker already holds: the cache is
    # called fresh again without adopting it, and nothing else changes.
    store = CountingStore("memory://renewed")
    breaker = CircuitBreaker("api", policy=_policy(sync_interval_s=1.0), store=store)
    _fail(breaker, 1)  # a record of its own in the store
    seen: list[StateChange] = []
    breaker.add_listener(seen.append)
    reads = len(store.read_in)
    for _ in range(3):
        clock.advance(1.0)
        for _ in range(5):
            assert breaker.acquire() is None
    assert len(store.read_in) - reads == 3  # once per interval, not per call
    assert seen == []
    _fail(breaker, 2)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    assert [(c.old, c.new, c.reason) for c in seen] == [
        ("closed", "open", "3 consecutive failures")
    ]


def test_an_async_breaker_reads_a_memory_store_on_the_loop_s_thread(
    clock: testing.FakeClock,
) -> None:
    store = CountingStore("memory://async-read")
    breaker = CircuitBreaker("api", policy=_policy(sync_interval_s=1.0), store=store)

    async def calls() -> None:
        for _ in range(3):
            clock.advance(1.0)
            assert await breaker.aacquire() is None

    store.read_in.clear()
    asyncio.run(calls())
    assert len(store.read_in) == 3  # once per interval
    assert set(store.read_in) == {threading.current_thread()}


class HeldReadStore(MemoryStore):
    """A memory store whose circuit reads wait for ``release``, counting who entered."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.reads = 0
        self.holding = False

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        if self.holding:
            self.reads += 1
            self.entered.release()
            assert self.release.wait(10)
        return super().get_circuit(connector)

    async def aget_circuit(self, connector: str) -> CircuitRecord | None:
        if self.holding:
            self.reads += 1
            while not self.release.is_set():
                await asyncio.sleep(0)
        return super().get_circuit(connector)


def test_threads_calling_while_the_store_is_read_wait_for_that_one_read(
    clock: testing.FakeClock,
) -> None:
    store = HeldReadStore("memory://one-look")
    breaker = CircuitBreaker("api", policy=_policy(sync_interval_s=1.0), store=store)
    assert breaker.acquire() is None
    clock.advance(1.0)  # stale: the next call reads the store
    store.holding = True
    admitted: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: admitted.append(breaker.acquire())) for _ in range(8)
    ]
    threads[0].start()
    assert store.entered.acquire(timeout=10)  # the first thread is reading
    for thread in threads[1:]:
        thread.start()
    # Each other thread would enter a read of its own within this bound if it made one.
    extra, until = 0, time.monotonic() + 0.5
    while extra < 7 and store.entered.acquire(timeout=max(0.0, until - time.monotonic())):
        extra += 1
    store.release.set()
    for thread in threads:
        thread.join(10)
    assert (extra, store.reads) == (0, 1)
    assert admitted == [None] * 8


def test_tasks_calling_while_the_store_is_read_wait_for_that_one_read(
    clock: testing.FakeClock,
) -> None:
    store = HeldReadStore("memory://one-alook")
    breaker = CircuitBreaker("api", policy=_policy(sync_interval_s=1.0), store=store)

    async def calls() -> list[str | None]:
        assert await breaker.aacquire() is None
        clock.advance(1.0)  # stale: the next call reads the store
        store.holding = True
        tasks = [asyncio.ensure_future(breaker.aacquire()) for _ in range(8)]
        for _ in range(5):  # every task runs up to its first wait
            await asyncio.sleep(0)
        store.release.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(calls()) == [None] * 8
    assert store.reads == 1


class FailingCircuitStore(MemoryStore):
    """A memory store whose circuit operations fail while ``down`` is set."""

    down = True

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        if self.down:
            raise StoreError("circuit store unreachable")
        return super().get_circuit(connector)

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        if self.down:
            raise StoreError("circuit store unreachable")
        return super().compare_and_set_circuit(connector, expected_version, record)


def test_store_fault_falls_back_to_local_state_and_logs_once(
    clock: testing.FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FailingCircuitStore("memory://failing")
    caplog.set_level(logging.WARNING, logger="connector_resilience.store")
    breaker = CircuitBreaker("api", policy=_policy(), store=store)
    _fail(breaker, 3)
    assert breaker.state == "open"  # decided locally
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1
    store.down = False
    clock.advance(10)
    probe = breaker.acquire()
    breaker.report(probe, "success")
    assert breaker.state == "closed"
    # Recovery is told by the first update that works (a read alone does not prove it).
    _fail(breaker, 1)
    assert breaker.state == "closed"
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_store_outage_is_one_burst_for_every_breaker_on_the_store(
    clock: testing.FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The fault log belongs to the store: ten connectors failing on it are one
    # outage, logged once, and one recovery.
    store = FailingCircuitStore("memory://failing-many")
    caplog.set_level(logging.WARNING, logger="connector_resilience.store")
    breakers = [CircuitBreaker(f"api-{i}", policy=_policy(), store=store) for i in range(10)]
    for breaker in breakers:
        _fail(breaker, 1)
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 1
    assert "memory://failing-many" in failed[0].getMessage()
    store.down = False
    for breaker in breakers:
        _fail(breaker, 1)
    recovered = [r for r in caplog.records if "works again" in r.getMessage()]
    assert len(recovered) == 1


class ReorderingStore(MemoryStore):
    """A memory store where one read runs before a write yet answers after it.

    As two threads' connections to a server can: the read reads, then waits
    until the write has run and been answered.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.write_entered = threading.Event()
        self.write_may_run = threading.Event()
        self.read_done = threading.Event()
        self.read_may_answer = threading.Event()
        self.reorder = False
        self.slow_reader: threading.Thread | None = None

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        found = super().get_circuit(connector)
        if threading.current_thread() is self.slow_reader:
            self.read_done.set()
            assert self.read_may_answer.wait(5)
        return found

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        if self.reorder:
            self.write_entered.set()
            assert self.write_may_run.wait(5)
        return super().compare_and_set_circuit(connector, expected_version, record)


def test_a_read_issued_during_a_write_but_run_before_it_does_not_roll_back() -> None:
    store = ReorderingStore("memory://reordering")
    breaker = CircuitBreaker("api", policy=_policy(sync_interval_s=0), store=store)
    _fail(breaker, 2)
    changes: list[tuple[str, str]] = []
    breaker.add_listener(lambda change: changes.append((change.old, change.new)))
    store.reorder = True
    writer = threading.Thread(target=_fail, args=(breaker, 1))  # the third failure opens
    writer.start()
    assert store.write_entered.wait(5)
    reader = threading.Thread(target=breaker.allow)
    store.slow_reader = reader
    reader.start()  # issued while the write is under way, reads the store before it
    assert store.read_done.wait(5)
    store.write_may_run.set()
    writer.join(5)
    store.read_may_answer.set()
    reader.join(5)
    assert changes == [("closed", "open")]
    assert breaker.state == "open"


def test_breaker_needs_a_name() -> None:
    with pytest.raises(ValueError, match="connector name"):
        CircuitBreaker("", policy=_policy())


# Between processes ------------------------------------------------------------


def _spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def test_breaker_opened_by_one_process_rejects_in_another(shared_store_url: str) -> None:
    ctx = _spawn()
    opener = ctx.Process(target=_workers.open_breaker, args=(shared_store_url, "shared", 3))
    opener.start()
    opener.join(60)
    assert opener.exitcode == 0
    policy = Policy(store={"url": shared_store_url}, circuit={"failures_to_open": 3})
    breaker = CircuitBreaker("shared", policy=policy)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire()
    assert "3 consecutive failures" in str(caught.value)


def test_half_open_probes_stay_within_the_cap_across_processes(shared_store_url: str) -> None:
    store = open_store(shared_store_url)
    now = store.now()
    # Open, with the cooldown already over: the next admissions are probes.
    store.compare_and_set_circuit(
        "shared",
        0,
        CircuitRecord(version=1, state="open", opened_at=now - 60, reopen_at=now - 1),
    )
    ctx = _spawn()
    start = ctx.Event()
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_workers.try_probe, args=(shared_store_url, "shared", start, results))
        for _ in range(6)
    ]
    for w in workers:
        w.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert outcomes.count("probe") == 2
    assert outcomes.count("rejected") == 4
