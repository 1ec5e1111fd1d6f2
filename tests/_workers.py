"""Code that tests run in child processes (spawned, so it must be importable)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from connector_resilience.backends import CallRecord, CircuitRecord, open_store


def write_metrics(url: str, worker: int, count: int, batch: int = 1) -> None:
    """Append ``count`` records named by (worker, i), ``batch`` at a time."""
    store = open_store(url)
    pending: list[CallRecord] = []
    for i in range(count):
        pending.append(
            CallRecord(
                ts=time.time(),
                connector=f"worker-{worker}",
                operation=f"op-{i}",
                duration_ms=float(i),
                status="ok",
            )
        )
        if len(pending) >= batch:
            store.append_calls(pending)
            pending = []
    if pending:
        store.append_calls(pending)


def bump_circuit(url: str, connector: str, count: int) -> None:
    """Raise the circuit's failure count ``count`` times by compare-and-set, retrying conflicts."""
    store = open_store(url)
    done = 0
    while done < count:
        current = store.get_circuit(connector) or CircuitRecord()
        new = CircuitRecord(version=current.version + 1, failures=current.failures + 1)
        if store.compare_and_set_circuit(connector, current.version, new):
            done += 1


def write_until_killed(url: str, run: int) -> None:
    """Write records forever, printing each one's id after the store acknowledged it."""
    store = open_store(url)
    i = 0
    while True:
        store.append_calls(
            [
                CallRecord(
                    ts=time.time(),
                    connector="crash",
                    operation=f"{run}-{i}",
                    duration_ms=1.0,
                    status="ok",
                )
            ]
        )
        if i % 7 == 0:
            current = store.get_circuit("crash") or CircuitRecord()
            store.compare_and_set_circuit(
                "crash", current.version, CircuitRecord(version=current.version + 1, failures=i)
            )
            store.save_token("crash", {"access_token": f"token-{run}-{i}", "run": run, "seq": i})
            os.write(1, f"S{i}\n".encode())
        os.write(1, f"A{i}\n".encode())
        i += 1


if __name__ == "__main__":
    write_until_killed(sys.argv[1], int(sys.argv[2]))


def open_breaker(url: str, connector: str, failures: int) -> None:
    """Fail ``failures`` calls through a breaker so that it opens."""
    from connector_resilience.circuit import CircuitBreaker
    from connector_resilience.policy import Policy

    policy = Policy(store={"url": url}, circuit={"failures_to_open": failures})
    breaker = CircuitBreaker(connector, policy=policy)
    for _ in range(failures):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open"


def try_probe(url: str, connector: str, start: Any, results: Any) -> None:
    """Wait for ``start``, then try once to be admitted; report "probe" or "rejected"."""
    from connector_resilience.circuit import CircuitBreaker
    from connector_resilience.errors import CircuitOpenError
    from connector_resilience.policy import Policy

    policy = Policy(
        store={"url": url},
        circuit={"half_open_prob": 1.0, "half_open_max_probes": 2, "sync_interval_s": 0},
    )
    breaker = CircuitBreaker(connector, policy=policy)
    start.wait(30)
    try:
        probe = breaker.acquire()
    except CircuitOpenError:
        results.put("rejected")
        return
    results.put("probe" if probe else "closed")


def open_breaker_and_report(url: str, connector: str, failures: int, done: Any) -> None:
    """Open the breaker, then put the wall-clock time it was opened on ``done``."""
    open_breaker(url, connector, failures)
    done.put(time.time())


def take_limits(url: str, count: int, out: str) -> None:
    """Ask ``count`` tokens, retries and leases of one shared store; append what was granted."""
    from connector_resilience.backends import LimitStore

    store = open_store(url)
    assert isinstance(store, LimitStore)
    granted: list[str] = []
    for i in range(count):
        if store.take_token("fleet", rate_per_s=0.001, burst=40.0, max_wait_s=0.0).granted:
            granted.append("token")
        if store.spend_retry_budget(
            "fleet", calls=0, retry=True, ratio=0.2, min_per_s=0, window_s=60
        ):
            granted.append("retry")
        if store.acquire_lease("fleet", limit=3, lease_s=60.0, holder=f"{os.getpid()}-{i}").granted:
            granted.append("lease")
    # One short O_APPEND write per process: the lines of different processes never mix.
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, "".join(f"{g}\n" for g in granted).encode())
    finally:
        os.close(fd)
