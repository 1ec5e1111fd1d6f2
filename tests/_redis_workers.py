"""Code the Redis tests run in other processes (importable, so spawn can start it).

Run as ``python -m tests._redis_workers COMMAND URL``:

* ``cas-on-command``: bumps the circuit of "api" by compare-and-set each time
  a line arrives on stdin, printing ``ready`` once connected and ``done N``
  after each change.
* ``hold-token-lock``: takes the token lock of "api" (lease from argv[3]),
  prints ``held`` and waits to be killed.
* ``watch-breaker``: keeps a breaker on "api", printing ``ready`` once it
  watches the store, then ``STATE MONOTONIC_TIME`` for each state it sees,
  until stdin closes.
"""

from __future__ import annotations

import multiprocessing.synchronize
import sys
import time
from typing import Any

import redis

from connector_resilience.backends import CircuitRecord, open_store


def cas_on_command(url: str) -> None:
    """One circuit change per line read from stdin."""
    store = open_store(url)
    # Connect and load the script before timing starts.
    store.compare_and_set_circuit("warm-up", 0, CircuitRecord(version=1))
    print("ready", flush=True)
    for _line in sys.stdin:
        current = store.get_circuit("api") or CircuitRecord()
        new = CircuitRecord(version=current.version + 1, state="open", failures=current.version)
        if not store.compare_and_set_circuit("api", current.version, new):
            raise SystemExit("lost a compare-and-set nobody else competes for")
        print(f"done {new.version}", flush=True)


def hold_token_lock(url: str, lease_s: float) -> None:
    """Take the lock and never release it: the test kills this process."""
    store = open_store(url)
    with store.token_lock("api", timeout_s=lease_s, lease_s=lease_s):
        print("held", flush=True)
        while True:
            time.sleep(1)  # killed by the test; never returns


def race_for_probe_slot(
    url: str,
    rounds: int,
    barrier: multiprocessing.synchronize.Barrier,
    results: Any,
    worker: int,
) -> None:
    """Each round, try once to take the only half-open probe slot of a fresh connector.

    Read, check the slot is free, then compare-and-set: the write succeeds for
    at most one process per round however the reads interleave.
    """
    store = open_store(url)
    store.get_circuit("warm-up")
    won: list[int] = []
    saw_free: list[int] = []
    for round_ in range(rounds):
        connector = f"probe-{round_}"
        barrier.wait(30)
        current = store.get_circuit(connector) or CircuitRecord(state="half_open")
        if not current.probes:
            saw_free.append(round_)
            record = CircuitRecord(
                version=current.version + 1,
                state="half_open",
                probes=((f"worker-{worker}", store.now() + 30),),
            )
            if store.compare_and_set_circuit(connector, current.version, record):
                won.append(round_)
    results.put((worker, won, saw_free))


def count_under_token_lock(url: str, counter_key: str, times: int) -> None:
    """Increment a plain Redis counter by GET then SET: exact only if the lock excludes."""
    store = open_store(url)
    raw = redis.Redis.from_url(url.split("?", maxsplit=1)[0], decode_responses=True)
    for _ in range(times):
        with store.token_lock("api", timeout_s=10):
            value = int(raw.get(counter_key) or 0)
            raw.set(counter_key, value + 1)
    raw.close()


def watch_breaker(url: str) -> None:
    """Report every state the breaker of "api" takes, timed by the system-wide monotonic clock."""
    from connector_resilience.circuit import CircuitBreaker, StateChange

    breaker = CircuitBreaker("api", store=open_store(url))

    def report(change: StateChange) -> None:
        print(f"{change.new} {time.monotonic():.6f}", flush=True)

    breaker.add_listener(report)
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    command, url = sys.argv[1], sys.argv[2]
    if command == "cas-on-command":
        cas_on_command(url)
    elif command == "watch-breaker":
        watch_breaker(url)
    elif command == "hold-token-lock":
        hold_token_lock(url, float(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {command!r}")
