"""The contract every store backend must keep, run against each of them.

A new backend joins by adding its URL to the ``store_url`` fixture. Here the
suite also runs on a Redis Cluster and through a Sentinel.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connector_resilience.backends import (
    CallRecord,
    CircuitRecord,
    LeaseGrant,
    LimitStore,
    Store,
    close_all_stores,
    open_store,
)
from tests import _workers
from tests.conftest import LOCAL_BACKENDS, REDIS_DEPLOYMENTS, SHARED_BACKENDS, backend_url


# Private names, so that a module importing the suite (``from ... import *``,
# as docs/stores.md shows) keeps its own ``store_url``.
@pytest.fixture(name="store_url", params=LOCAL_BACKENDS + REDIS_DEPLOYMENTS)
def _every_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every backend, and Redis as deployed in production."""
    return backend_url(request, request.param, tmp_path)


@pytest.fixture(name="shared_store_url", params=SHARED_BACKENDS + REDIS_DEPLOYMENTS)
def _every_shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every backend several processes can share, and Redis as deployed in production."""
    return backend_url(request, request.param, tmp_path)


def _record(ts: float, connector: str = "api", **kw: object) -> CallRecord:
    fields: dict[str, object] = {
        "ts": ts,
        "connector": connector,
        "operation": "get",
        "duration_ms": 5.0,
        "status": "ok",
    }
    fields.update(kw)
    return CallRecord(**fields)  # type: ignore[arg-type]


def test_open_same_url_twice_returns_same_store(store_url: str) -> None:
    assert open_store(store_url) is open_store(store_url)
    assert isinstance(open_store(store_url), Store)


# Circuits ---------------------------------------------------------------


def test_circuit_absent_then_round_trip(store_url: str) -> None:
    store = open_store(store_url)
    assert store.get_circuit("api") is None
    record = CircuitRecord(
        version=1,
        state="open",
        failures=5,
        opened_at=10.0,
        reopen_at=70.0,
        probes=(("p1", 99.5),),
        reason="5 consecutive failures",
        changed_at=10.0,
    )
    assert store.compare_and_set_circuit("api", 0, record)
    assert store.get_circuit("api") == record
    assert store.list_circuits() == {"api": record}


def test_circuit_last_write_wins(store_url: str) -> None:
    store = open_store(store_url)
    for version in range(1, 6):
        assert store.compare_and_set_circuit(
            "api", version - 1, CircuitRecord(version=version, failures=version)
        )
    latest = store.get_circuit("api")
    assert latest is not None
    assert (latest.version, latest.failures) == (5, 5)


def test_circuit_compare_and_set_conflict_writes_nothing(store_url: str) -> None:
    store = open_store(store_url)
    assert store.compare_and_set_circuit("api", 0, CircuitRecord(version=1, failures=1))
    # A writer that read version 0 lost the race.
    assert not store.compare_and_set_circuit("api", 0, CircuitRecord(version=1, failures=99))
    # A writer ahead of the store is refused too.
    assert not store.compare_and_set_circuit("api", 5, CircuitRecord(version=6, failures=99))
    current = store.get_circuit("api")
    assert current is not None
    assert current.failures == 1


def test_circuit_version_must_advance_by_one(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(ValueError, match="expected_version"):
        store.compare_and_set_circuit("api", 0, CircuitRecord(version=3))


def test_circuits_are_per_connector(store_url: str) -> None:
    store = open_store(store_url)
    store.compare_and_set_circuit("a", 0, CircuitRecord(version=1, state="open"))
    store.compare_and_set_circuit("b", 0, CircuitRecord(version=1, failures=2))
    circuits = store.list_circuits()
    assert circuits["a"].state == "open"
    assert circuits["b"].failures == 2


def test_circuit_compare_and_set_from_threads_never_loses_an_update(store_url: str) -> None:
    threads = [
        threading.Thread(target=_workers.bump_circuit, args=(store_url, "api", 50))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    current = open_store(store_url).get_circuit("api")
    assert current is not None
    assert (current.version, current.failures) == (400, 400)


# Tokens -----------------------------------------------------------------


def test_token_round_trip_and_last_wins(store_url: str) -> None:
    store = open_store(store_url)
    assert store.load_token("api") is None
    store.save_token("api", {"access_token": "a1", "expires_at": 100.0})
    store.save_token("api", {"access_token": "a2", "expires_at": 200.0})
    store.save_token("other", {"access_token": "o1"})
    assert store.load_token("api") == {"access_token": "a2", "expires_at": 200.0}
    assert store.list_tokens() == {
        "api": {"access_token": "a2", "expires_at": 200.0},
        "other": {"access_token": "o1"},
    }


def test_loaded_token_is_a_copy(store_url: str) -> None:
    store = open_store(store_url)
    store.save_token("api", {"access_token": "a1"})
    token = store.load_token("api")
    assert token is not None
    token["access_token"] = "changed"
    assert store.load_token("api") == {"access_token": "a1"}


def test_token_lock_excludes_other_holders(store_url: str) -> None:
    store = open_store(store_url)
    inside = 0
    most = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, most
        for _ in range(5):
            with store.token_lock("api", timeout_s=10):
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.001)  # hold the lock while others try to take it
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1


def test_token_lock_times_out(store_url: str) -> None:
    store = open_store(store_url)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with store.token_lock("api", timeout_s=5):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    try:
        with pytest.raises(TimeoutError, match="api"), store.token_lock("api", timeout_s=0.05):
            pass
        # Another connector's lock is independent.
        with store.token_lock("other", timeout_s=1):
            pass
    finally:
        release.set()
        thread.join()


# Metrics ----------------------------------------------------------------


def test_metrics_window_and_filters(store_url: str) -> None:
    store = open_store(store_url)
    now = time.time()
    store.append_calls([_record(now - 7200 + i, "api") for i in range(10)])  # old
    store.append_calls([_record(now - 10 + i, "api", operation=f"op{i}") for i in range(5)])
    store.append_calls(
        [
            _record(
                now - 5,
                "other",
                status="error",
                error="Boom",
                attempt=2,
                final=False,
                labels={"method": "GET"},
            )
        ]
    )
    window = store.read_calls(since=now - 3600)
    assert len(window) == 6
    assert [r.ts for r in window] == sorted(r.ts for r in window)
    only_api = store.read_calls(since=now - 3600, connector="api")
    assert [r.operation for r in only_api] == [f"op{i}" for i in range(5)]
    (other,) = store.read_calls(since=now - 3600, connector="other")
    assert (other.status, other.error, other.attempt, other.final) == ("error", "Boom", 2, False)
    assert other.labels == {"method": "GET"}
    assert len(store.read_calls(since=now - 10, until=now - 7)) == 3
    assert store.read_calls(since=now + 10) == []


def test_metrics_from_threads_are_all_kept(store_url: str) -> None:
    threads = [
        threading.Thread(target=_workers.write_metrics, args=(store_url, w, 250)) for w in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = open_store(store_url).read_calls(since=0)
    assert len(records) == 2000
    assert len({(r.connector, r.operation) for r in records}) == 2000


def test_connectors_lists_every_kind_of_state(store_url: str) -> None:
    store = open_store(store_url)
    store.append_calls([_record(time.time(), "metrics-only")])
    store.compare_and_set_circuit("circuit-only", 0, CircuitRecord(version=1))
    store.save_token("token-only", {"access_token": "x"})
    assert store.connectors() == ["circuit-only", "metrics-only", "token-only"]


def test_compact_keeps_latest_state_and_recent_metrics(store_url: str) -> None:
    store = open_store(store_url)
    now = time.time()
    store.append_calls([_record(now - 10 * 86400), _record(now - 5), _record(now - 1)])
    for version in range(1, 4):
        store.compare_and_set_circuit("api", version - 1, CircuitRecord(version=version))
    store.save_token("api", {"access_token": "old"})
    store.save_token("api", {"access_token": "new"})
    counts = store.compact(metrics_retention_s=86400)
    assert counts["metrics_dropped"] == 1
    assert counts["metrics_kept"] == 2
    assert len(store.read_calls(since=0)) == 2
    current = store.get_circuit("api")
    assert current is not None
    assert current.version == 3
    assert store.load_token("api") == {"access_token": "new"}
    # Writing goes on normally after a compaction.
    assert store.compare_and_set_circuit("api", 3, CircuitRecord(version=4))
    store.append_calls([_record(now)])
    assert len(store.read_calls(since=0)) == 3


# Processes --------------------------------------------------------------


def _spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def _run_all(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for p in processes:
        p.start()
    for p in processes:
        p.join(90)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"


def test_metrics_from_four_processes_are_exact(shared_store_url: str) -> None:
    ctx = _spawn()
    _run_all(
        [
            ctx.Process(target=_workers.write_metrics, args=(shared_store_url, w, 2000))
            for w in range(4)
        ]
    )
    records = open_store(shared_store_url).read_calls(since=0)
    assert len(records) == 8000
    assert len({(r.connector, r.operation) for r in records}) == 8000
    assert not getattr(open_store(shared_store_url), "stats", None) or (
        open_store(shared_store_url).stats.skipped_lines == 0  # type: ignore[attr-defined]
    )


def test_circuit_compare_and_set_across_processes(shared_store_url: str) -> None:
    ctx = _spawn()
    _run_all(
        [
            ctx.Process(target=_workers.bump_circuit, args=(shared_store_url, "api", 100))
            for _ in range(4)
        ]
    )
    current = open_store(shared_store_url).get_circuit("api")
    assert current is not None
    assert (current.version, current.failures) == (400, 400)


def test_sigkill_mid_write_loses_nothing_acknowledged(shared_store_url: str) -> None:
    rng = random.Random(7)
    acked: list[str] = []
    saved: list[tuple[int, int]] = []
    for run in range(3):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests._workers", shared_store_url, str(run)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        assert child.stdout is not None
        output: list[bytes] = []
        # The random moment counts from the first acknowledged write, not from
        # the start: a loaded machine may take longer than that to import.
        lifetime = rng.uniform(0.3, 0.8)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith(b"A") and deadline - time.monotonic() > lifetime:
                deadline = time.monotonic() + lifetime
        child.send_signal(signal.SIGKILL)
        output.append(child.stdout.read())
        child.wait()
        for raw in b"".join(output).splitlines():
            text = raw.decode(errors="replace").strip()
            if text[1:].isdigit() and text[0] == "A":
                acked.append(f"{run}-{text[1:]}")
            elif text[1:].isdigit() and text[0] == "S":
                saved.append((run, int(text[1:])))
    # A fresh opener (as after a restart) sees everything acknowledged.
    close_all_stores()
    store = open_store(shared_store_url)
    seen = {r.operation for r in store.read_calls(since=0, connector="crash")}
    assert acked, "the writer never got going"
    missing = [op for op in acked if op not in seen]
    assert not missing, f"{len(missing)} acknowledged records lost"
    token = store.load_token("crash")
    circuit = store.get_circuit("crash")
    assert token is not None
    assert circuit is not None
    # Token state is one complete write, at least as new as the last acknowledged one.
    assert token["access_token"] == f"token-{token['run']}-{token['seq']}"
    assert (token["run"], token["seq"]) >= max(saved)


def test_a_rejected_record_may_stand_for_many_calls(store_url: str) -> None:
    store = open_store(store_url)
    now = time.time()
    store.append_calls(
        [
            _record(
                now,
                status="rejected",
                error="CircuitOpenError",
                attempt=0,
                duration_ms=0.0,
                calls=25,
            )
        ]
    )
    (record,) = store.read_calls(since=now - 1)
    assert (record.status, record.calls) == ("rejected", 25)


# Load control (LimitStore) ---------------------------------------------------


def test_every_backend_can_share_load_control(store_url: str) -> None:
    assert isinstance(open_store(store_url), LimitStore)


def test_retry_budget_allows_the_ratio_of_calls_plus_the_floor(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)
    rule = {"ratio": 0.2, "min_per_s": 0.5, "window_s": 60.0}
    assert store.spend_retry_budget("api", calls=100, retry=False, **rule)
    granted = [store.spend_retry_budget("api", calls=0, retry=True, **rule) for _ in range(60)]
    # 0.2 x 100 calls + 0.5/s x 60 s = 50 retries, then refusals.
    assert granted == [True] * 50 + [False] * 10
    # More calls earn more retries; another connector has its own budget.
    assert store.spend_retry_budget("api", calls=10, retry=True, **rule)
    assert store.spend_retry_budget("other", calls=0, retry=True, **rule)


def test_retry_budget_ratio_zero_allows_no_retry(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)
    rule = {"ratio": 0.0, "min_per_s": 10.0, "window_s": 10.0}
    assert not store.spend_retry_budget("api", calls=1000, retry=True, **rule)


def test_retry_budget_forgets_calls_and_retries_past_the_window(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)
    rule = {"ratio": 0.5, "min_per_s": 0.0, "window_s": 0.5}
    assert store.spend_retry_budget("api", calls=2, retry=True, **rule)
    assert not store.spend_retry_budget("api", calls=0, retry=True, **rule)
    # Once the window has passed (by the store's clock), old calls no longer pay ...
    start = store.now()
    while store.now() < start + 1.0:
        time.sleep(0.05)
    assert not store.spend_retry_budget("api", calls=0, retry=True, **rule)
    # ... and the old retries no longer count against new calls.
    assert store.spend_retry_budget("api", calls=2, retry=True, **rule)


def test_token_bucket_burst_then_refusal_with_the_time_a_token_is_due(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)
    bucket = {"rate_per_s": 2.0, "burst": 3.0}
    grants = [store.take_token("api", max_wait_s=0.0, **bucket) for _ in range(4)]
    assert [g.granted for g in grants] == [True, True, True, False]
    assert all(g.wait_s == 0.0 for g in grants[:3])
    assert 0.3 < grants[3].wait_s <= 0.5  # one token every 0.5 s
    assert store.take_token("other", max_wait_s=0.0, **bucket).granted


def test_token_reservations_queue_each_waiter_at_its_own_time(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)
    bucket = {"rate_per_s": 10.0, "burst": 1.0}
    waits = [store.take_token("api", max_wait_s=1.0, **bucket).wait_s for _ in range(4)]
    assert waits[0] == 0.0
    for earlier, later in itertools.pairwise(waits):
        assert 0.08 < later - earlier < 0.12  # one interval apart, not all at once
    # Past the longest wait: refused, and the refusal reserves nothing.
    refused = store.take_token("api", max_wait_s=0.05, **bucket)
    assert not refused.granted
    assert refused.wait_s > 0.25


def test_pause_stops_tokens_until_it_ends(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)
    bucket = {"rate_per_s": 100.0, "burst": 50.0}
    store.pause_tokens("api", seconds=30.0, **bucket)
    refused = store.take_token("api", max_wait_s=1.0, **bucket)
    assert not refused.granted
    assert 29.0 < refused.wait_s <= 30.0
    # A shorter pause never shortens a longer one.
    store.pause_tokens("api", seconds=1.0, **bucket)
    assert store.take_token("api", max_wait_s=1.0, **bucket).wait_s > 29.0


def test_leases_cap_holders_and_free_a_slot_on_release(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)

    def take(holder: str, key: str = "api") -> LeaseGrant:
        return store.acquire_lease(key, holder=holder, limit=2, lease_s=30.0)

    assert take("a").granted
    assert take("b").granted
    full = take("c")
    assert not full.granted
    assert full.free_in_s is not None
    assert 29.0 < full.free_in_s <= 30.0
    assert take("a").granted  # a holder renews
    store.release_lease("api", holder="a")
    assert take("c").granted
    assert take("a", "other").granted


def test_a_lease_whose_holder_never_returns_ends_by_itself(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)
    assert store.acquire_lease("api", holder="dead", limit=1, lease_s=0.2).granted
    assert not store.acquire_lease("api", holder="alive", limit=1, lease_s=0.2).granted
    deadline = time.monotonic() + 5
    while not store.acquire_lease("api", holder="alive", limit=1, lease_s=0.2).granted:
        assert time.monotonic() < deadline, "the dead holder's lease never ended"
        time.sleep(0.02)


def test_tokens_taken_from_threads_never_exceed_the_bucket(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, LimitStore)
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            grant = store.take_token("api", rate_per_s=0.001, burst=30.0, max_wait_s=0.0)
            with lock:
                granted.append(grant.granted)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 30


def test_load_control_is_atomic_across_processes(shared_store_url: str, tmp_path: Path) -> None:
    store = open_store(shared_store_url)
    assert isinstance(store, LimitStore)
    store.spend_retry_budget("fleet", calls=100, retry=False, ratio=0.2, min_per_s=0, window_s=60)
    out = tmp_path / "outcomes"
    ctx = _spawn()
    _run_all(
        [
            ctx.Process(target=_workers.take_limits, args=(shared_store_url, 25, str(out)))
            for _ in range(4)
        ]
    )
    outcomes = out.read_text().split()
    # 100 tokens asked of a bucket of 40: exactly 40 went out.
    assert outcomes.count("token") == 40
    # 100 retries asked of a budget of 0.2 x 100 calls: exactly 20 granted.
    assert outcomes.count("retry") == 20
    # 100 leases asked of 3 slots held to the end: exactly 3.
    assert outcomes.count("lease") == 3
