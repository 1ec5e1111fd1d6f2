"""Recovery rules between real processes on JSONL, SQLite and a real redis-server.

Each test drives breakers in spawned processes one step at a time (see
``tests/_breaker_workers.py``) and checks what each process decides from the
shared record: the quorum, the half-open success threshold and the slow start.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector_resilience.backends import CircuitRecord, open_store
from connector_resilience.circuit import CircuitBreaker
from connector_resilience.errors import CircuitOpenError
from connector_resilience.policy import Policy
from tests._breaker_workers import BreakerProcess
from tests.test_circuit_recovery import wait_for


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[BreakerProcess, BreakerProcess]]:
    """Two spawned breaker processes, shared by the tests of this module (each sets them up)."""
    workers = (BreakerProcess(), BreakerProcess())
    yield workers
    for worker in workers:
        worker.stop()


def _ready(worker: BreakerProcess, state: str) -> BreakerProcess:
    seen = worker.view_once(state)
    assert seen["state"] == state, seen
    return worker


def _stored(url: str) -> CircuitRecord:
    record = open_store(url).get_circuit("shared")
    assert record is not None
    return record


def test_one_failing_process_opens_only_its_own_view_until_a_quorum_fails(
    shared_store_url: str, pair: tuple[BreakerProcess, BreakerProcess]
) -> None:
    circuit = {"failures_to_open": 3, "quorum": 2, "sync_interval_s": 0, "cooldown_s": 60}
    sick, other = (worker.setup(shared_store_url, circuit) for worker in pair)
    observer = CircuitBreaker(
        "shared", policy=Policy(store={"url": shared_store_url}, circuit=circuit)
    )

    assert sick.calls(3, "failure")["admitted"] == 3
    seen = sick.view()
    assert (seen["state"], seen["local"]) == ("open", True)
    assert sick.calls(2)["refused"] == 2  # it protects itself ...
    record = _stored(shared_store_url)
    assert (record.state, record.failures) == ("closed", 3)
    assert [r[0] for r in record.reporters] == [seen["reporter"]]
    assert other.view()["state"] == "closed"  # ... without stopping the others
    assert observer.acquire() is None

    assert other.calls(1, "failure")["admitted"] == 1  # a second process fails: quorum
    assert _stored(shared_store_url).state == "open"
    seen = sick.view_once("open")
    assert (seen["state"], seen["local"]) == ("open", False)  # now the fleet's state
    wait_for(lambda: observer.state == "open")
    with pytest.raises(CircuitOpenError) as refused:
        observer.acquire()
    assert refused.value.reason == "4 consecutive failures"
    assert refused.value.failure_type == "ConnectionError"


def test_probes_from_several_processes_add_up_and_the_ramp_is_shared(
    shared_store_url: str, pair: tuple[BreakerProcess, BreakerProcess]
) -> None:
    circuit = {
        "failures_to_open": 1,
        "half_open_successes": 3,
        "half_open_prob": 1.0,
        "slow_start_s": 600,
        "sync_interval_s": 0,
        "cooldown_s": 60,
    }
    first = pair[0].setup(shared_store_url, circuit, seed=1)
    # On Redis the breaker keeps Redis's time: a host whose clock is an hour
    # ahead ramps with the others. (On one host, files share the host's clock.)
    skew = 3600.0 if shared_store_url.startswith("redis") else 0.0
    second = pair[1].setup(shared_store_url, circuit, seed=2, skew_s=skew)
    operator = CircuitBreaker(
        "shared", policy=Policy(store={"url": shared_store_url}, circuit=circuit)
    )
    operator.report(operator.acquire(), "failure")
    operator.half_open()

    # Before each step, the process has seen the last one (a Redis push takes a moment).
    assert _ready(first, "half_open").calls(1)["probes"] == 1
    assert _ready(second, "half_open").calls(1, "failure")["probes"] == 1  # any failure reopens
    record = _stored(shared_store_url)
    assert (record.state, record.probe_successes) == ("open", 0)  # ... and the count restarts
    operator.half_open()
    for worker in (first, second):
        assert _ready(worker, "half_open").calls(1)["probes"] == 1
    record = _stored(shared_store_url)
    assert (record.state, record.probe_successes) == ("half_open", 2)
    assert _ready(first, "half_open").calls(1)["probes"] == 1  # the third success closes it
    record = _stored(shared_store_url)
    assert record.state == "closed"
    assert record.ramp_from is not None
    assert record.ramp_until == record.ramp_from + 600

    # Every process reads the same share from the record and the store's clock.
    now = open_store(shared_store_url).now()
    expected = 0.1 + 0.9 * (now - record.ramp_from) / 600
    for worker in (first, second):
        assert worker.view_once("closed")["share"] == pytest.approx(expected, abs=0.02)
    tally = second.calls(400)
    # 400 draws at p ~ 0.1: the standard deviation is 1.5 points; 4 of them either way.
    assert 0.04 < tally["admitted"] / 400 < 0.17
    assert all(r.startswith("slow start after recovery: admitting 1") for r in tally["reasons"])
