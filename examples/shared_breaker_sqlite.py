"""Two processes, one circuit breaker: a SQLite store shares it.

The payments service is down: nothing listens on its port, so every connection
is refused. Process A (a child process) calls it until its breaker opens.
Process B (this one) then calls the same connector and is refused at once,
with CircuitOpenError, without touching the network: it learned from the
store that the breaker is open.

State is in ``state/connectors.db`` under the working directory.

Run: python examples/shared_breaker_sqlite.py   (about 1 second)
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import time

from connector_resilience import CircuitBreaker, CircuitOpenError, Policy, resilient
from connector_resilience import health_status as health

STORE_URL = "sqlite:///state/connectors.db"
POLICY = Policy(
    retry={"max_attempts": 2, "base_ms": 20, "cap_ms": 100},
    circuit={"failures_to_open": 3, "cooldown_s": 30},
    store={"url": STORE_URL},
)


def unused_port() -> int:
    """A local port with nothing listening on it: a service that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class PaymentsClient:
    connector_name = "payments"

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections_tried = 0

    @resilient(policy=POLICY, retry_on=ConnectionError)
    def charge(self, cents: int) -> str:
        self.connections_tried += 1
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
            conn.sendall(f"CHARGE {cents}\n".encode())
            return conn.recv(64).decode()


def process_a(port: int) -> None:
    """Call the dead service until the shared breaker opens."""
    client = PaymentsClient(port)
    for n in range(1, 10):
        try:
            client.charge(1999)
        except ConnectionRefusedError:
            print(
                f"  [A pid {os.getpid()}] charge {n}: connection refused (2 attempts)", flush=True
            )
        except CircuitOpenError as exc:
            print(f"  [A pid {os.getpid()}] charge {n}: refused by the breaker: {exc}", flush=True)
            return
    sys.exit("the breaker never opened")


def main() -> int:
    port = unused_port()
    breaker = CircuitBreaker("payments", policy=POLICY)
    breaker.reset()  # start closed, whatever an earlier run left in the store
    print(f"store {STORE_URL}; payments service down on port {port}")

    print("process A calls the payments service:")
    child = multiprocessing.get_context("spawn").Process(target=process_a, args=(port,))
    child.start()
    child.join(30)
    if child.exitcode != 0:
        print(f"process A failed with exit code {child.exitcode}")
        return 1

    print(f"process B (pid {os.getpid()}) calls it too:")
    client = PaymentsClient(port)
    try:
        client.charge(500)
    except CircuitOpenError as exc:
        print(f"  [B] refused without a connection attempt: {exc}")
        wait_s = (exc.retry_at or time.time()) - time.time()
        print(f"  [B] connector={exc.connector!r}, may probe again in {wait_s:.0f} s")
    else:
        print("  [B] unexpectedly got through")
        return 1
    assert client.connections_tried == 0
    print(f"breaker state seen by B: {breaker.state}; health: {health('payments', policy=POLICY)}")
    breaker.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
