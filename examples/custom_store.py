"""A store backend of your own: the smallest complete one, registered as ``dict://``.

It keeps everything in dictionaries, like ``memory://``; a real backend keeps
the same shape and replaces the dictionaries with your database. It passes the
conformance suite (tests/test_custom_store_conformance.py runs it), and a
decorated function uses it as soon as the URL names it.

Run: python examples/custom_store.py
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from connector_resilience import register_backend, resilient, summarize
from connector_resilience.backends import CallRecord, CircuitRecord


class DictStore:
    """Breaker state, tokens and metrics in dictionaries, behind one lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._circuits: dict[str, CircuitRecord] = {}
        self._tokens: dict[str, dict[str, Any]] = {}
        self._token_locks: dict[str, threading.Lock] = {}
        self._calls: list[CallRecord] = []  # kept sorted by ts

    def __repr__(self) -> str:
        return f"DictStore({self.url!r})"

    # CircuitStore: versioned records, changed only by compare-and-set.

    def now(self) -> float:
        return time.time()

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        with self._lock:
            return self._circuits.get(connector)

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        if record.version != expected_version + 1:
            raise ValueError("record.version must be expected_version + 1")
        with self._lock:  # in a database: UPDATE ... WHERE version = expected_version
            current = self._circuits.get(connector)
            if (current.version if current else 0) != expected_version:
                return False
            self._circuits[connector] = record
            return True

    def list_circuits(self) -> dict[str, CircuitRecord]:
        with self._lock:
            return dict(self._circuits)

    # TokenStore: last write wins, and a lock for single-flight refresh.

    def load_token(self, connector: str) -> dict[str, Any] | None:
        with self._lock:
            token = self._tokens.get(connector)
            return copy.deepcopy(token) if token is not None else None

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        with self._lock:
            self._tokens[connector] = copy.deepcopy(dict(token))

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._tokens)

    @contextlib.contextmanager
    def token_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> Iterator[None]:
        # lease_s bounds how long a holder that died could block the others; a
        # lock that dies with its process, like this one, may ignore it.
        with self._lock:
            lock = self._token_locks.setdefault(connector, threading.Lock())
        if not lock.acquire(timeout=timeout_s):
            raise TimeoutError(f"token lock for {connector!r} not acquired in {timeout_s:g}s")
        try:
            yield
        finally:
            lock.release()

    # MetricsStore: append-only records, read by time window.

    def append_calls(self, records: Sequence[CallRecord]) -> None:
        with self._lock:
            for record in records:
                bisect.insort(self._calls, record, key=lambda r: r.ts)

    def read_calls(
        self, *, since: float, until: float | None = None, connector: str | None = None
    ) -> list[CallRecord]:
        with self._lock:
            window = [r for r in self._calls if r.ts >= since and (until is None or r.ts < until)]
        return [r for r in window if connector is None or r.connector == connector]

    def connectors(self) -> list[str]:
        with self._lock:
            names = {r.connector for r in self._calls} | set(self._circuits) | set(self._tokens)
        return sorted(names)

    # Maintenance.

    def compact(self, *, metrics_retention_s: float) -> dict[str, int]:
        cutoff = time.time() - metrics_retention_s
        with self._lock:
            before = len(self._calls)
            self._calls = [r for r in self._calls if r.ts >= cutoff]
            return {
                "metrics_kept": len(self._calls),
                "metrics_dropped": before - len(self._calls),
                "circuits": len(self._circuits),
                "tokens": len(self._tokens),
            }

    def close(self) -> None:
        pass


# open_store("dict://anything") now builds a DictStore (once per URL).
register_backend("dict", DictStore, replace=True)


def main() -> None:
    @resilient("quotes", store="dict://example", retry_on=ConnectionError)
    def quote(symbol: str) -> float:
        return {"ACME": 12.5, "INITECH": 3.25}[symbol]

    print(quote("ACME"), quote("INITECH"))
    summary = summarize("quotes", store="dict://example")
    print(f"{summary.total_calls} calls recorded in dict://example")


if __name__ == "__main__":
    main()
