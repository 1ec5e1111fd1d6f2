"""Issue 9, point 4: threads and processes hammering one breaker, on every shared store.

Every successful breaker write in every process is recorded (``LoggingStore``)
and so is every ``StateChange`` each process reports. The union of the writes
must be versions 1..N, each once, each a legal move with the half-open probe
cap respected; on the healthy path the metric counts are exact.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from typing import Any

import pytest

from connector_resilience import CircuitOpenError, Policy, resilient, summarize
from connector_resilience.backends import CircuitRecord, open_store
from connector_resilience.backends.memory import MemoryStore
from connector_resilience.circuit import CircuitBreaker, StateChange
from tests.reliability import _children
from tests.reliability._support import check_changes, check_history

pytestmark = pytest.mark.slow

PROCESSES = 3
THREADS = 4


def _hammer(url: str, *, calls: int, healthy: bool, hold_s: float = 0.0) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_children.hammer, args=(url, w, THREADS, calls, 9, healthy, results, hold_s)
        )
        for w in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=90) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    return reports


def test_breaker_history_is_a_legal_walk_under_contention(shared_store_url: str) -> None:
    # Each call takes 3 ms, so probes overlap and contend for the two slots.
    reports = _hammer(shared_store_url, calls=120, healthy=False, hold_s=0.003)
    written = [CircuitRecord.from_json(r) for report in reports for r in report["written"]]
    last = check_history(written, max_probes=2, threshold=3)
    most_live = max(len([p for p in r.probes if p[1] > r.changed_at]) for r in written)
    assert most_live == 2, "no record ever held two live probes: the cap was not put to the test"
    stored = open_store(shared_store_url).get_circuit("hammered")
    assert stored is not None
    assert stored.version == last
    assert last > 10, "the hammer never moved the breaker"
    states = {r.state for r in written}
    assert states == {"closed", "open", "half_open"}, states
    assert all(report["flushed"] for report in reports)
    # Each process's listeners saw a chain of real changes.
    assert any(report["changes"] for report in reports)
    for report in reports:
        check_changes([tuple(change) for change in report["changes"]])


def test_healthy_path_metrics_are_exact(shared_store_url: str) -> None:
    calls = 150
    reports = _hammer(shared_store_url, calls=calls, healthy=True)
    assert all(report["flushed"] for report in reports)
    summary = summarize("hammered", store=shared_store_url, window_s=3600)
    expected = PROCESSES * THREADS * calls
    assert (summary.total_calls, summary.attempts) == (expected, expected)
    assert (summary.errors, summary.retries, summary.rejected) == (0, 0, 0)
    assert all(report["written"] == [] for report in reports)  # nothing to write when healthy


class _GatedStore(MemoryStore):
    """A memory store whose next circuit read pauses after reading, until released."""

    def __init__(self) -> None:
        super().__init__("memory://gated")
        self.hold_next_read = False
        self.read_done = threading.Event()
        self.release = threading.Event()

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        record = super().get_circuit(connector)
        if self.hold_next_read and threading.current_thread().name == "slow-reader":
            self.hold_next_read = False
            self.read_done.set()
            self.release.wait(10)
        return record


def test_a_slow_stale_read_never_rolls_the_breaker_back() -> None:
    store = _GatedStore()
    policy = Policy(
        store={"url": "memory://gated"},
        circuit={"failures_to_open": 2, "sync_interval_s": 0, "cooldown_s": 3600},
    )
    breaker = CircuitBreaker("api", policy=policy, store=store)
    changes: list[StateChange] = []
    breaker.add_listener(changes.append)

    # A thread starts a refresh and is paused just after reading "closed"...
    store.hold_next_read = True
    reader = threading.Thread(target=lambda: breaker.state, name="slow-reader")
    reader.start()
    assert store.read_done.wait(10)
    # ...meanwhile this thread opens the breaker...
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open"
    # ...then the stale read lands.
    store.release.set()
    reader.join(10)
    assert [(c.old, c.new) for c in changes] == [("closed", "open")]
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        breaker.acquire()


def test_probe_cap_holds_for_threads_in_one_process() -> None:
    """8 threads rush a half-open breaker with a cap of 2: exactly 2 get in, 6 are refused.

    Admitted probes stay in flight (no outcome, so the slots stay taken) until
    every other thread has been refused; a broken cap lets a third one in.
    """
    cap = 2
    workers = 8
    policy = Policy(
        store={"url": "memory://probes"},
        circuit={
            "failures_to_open": 1,
            "cooldown_s": 0.001,
            "half_open_prob": 1.0,
            "half_open_max_probes": cap,
            "sync_interval_s": 0,
        },
        retry={"max_attempts": 1},
    )
    release = threading.Event()
    changed = threading.Condition()
    inside = 0
    most = 0
    refused: set[int] = set()

    @resilient("probed", policy=policy, retry_on=())
    def call() -> None:
        nonlocal inside, most
        with changed:
            inside += 1
            most = max(most, inside)
            changed.notify_all()
        release.wait(10)  # in flight, holding its slot, until every other thread is refused
        with changed:
            inside -= 1
        raise RuntimeError("still down")

    release.set()
    with contextlib.suppress(RuntimeError):
        call()  # the breaker opens: from here on an admitted call is a probe
    release.clear()
    with changed:
        most = 0
    gate = threading.Barrier(workers)

    def run(index: int) -> None:
        gate.wait(10)
        while not release.is_set():
            try:
                call()
            except RuntimeError:
                return  # it was a probe
            except CircuitOpenError:
                with changed:
                    refused.add(index)
                    changed.notify_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    with changed:
        changed.wait_for(lambda: len(refused) >= workers - cap and inside >= cap, timeout=10)
        admitted, seen_most = inside, most
    release.set()
    for thread in threads:
        thread.join(10)
    assert seen_most <= cap, f"{seen_most} probes in flight at once, the cap is {cap}"
    assert (admitted, len(refused)) == (cap, workers - cap)
    assert most == cap
    record = open_store("memory://probes").get_circuit("probed")
    assert record is not None
    assert len(record.probes) <= cap
