"""The store contracts: small Protocols every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from connector_resilience.backends._limit_state import LeaseGrant, TokenGrant
from connector_resilience.backends._records import CallRecord, CircuitRecord


@runtime_checkable
class CircuitStore(Protocol):
    """Breaker state per connector, changed only by compare-and-set."""

    def now(self) -> float:
        """The clock breaker timestamps use (seconds since the epoch)."""
        ...

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        """The latest record for ``connector``, or ``None`` if never written."""
        ...

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        """Write ``record`` only if the stored version is still ``expected_version``.

        ``record.version`` must be ``expected_version + 1``. Returns False, writing
        nothing, when another writer got there first.
        """
        ...

    def list_circuits(self) -> dict[str, CircuitRecord]:
        """Every connector's latest record."""
        ...


@runtime_checkable
class TokenStore(Protocol):
    """OAuth2 tokens per connector, last write wins, with a cross-process lock."""

    def load_token(self, connector: str) -> dict[str, Any] | None:
        """The latest token mapping for ``connector``, or ``None``."""
        ...

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        """Persist a token mapping durably; it replaces the previous one."""
        ...

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        """Every connector's latest token mapping."""
        ...

    def token_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> AbstractContextManager[None]:
        """A lock held across every process sharing the store, for single-flight refresh.

        Args:
            connector: whose token.
            timeout_s: how long to wait for the lock.
            lease_s: how long a holder keeps it at most, so that a holder that died
                cannot block the others for ever (``DEFAULT_LOCK_LEASE_S`` if
                ``None``). Stores whose lock dies with its holder's process
                (a file lock) may ignore it.

        Raises:
            TimeoutError: the lock was not acquired within ``timeout_s``.
        """
        ...


@runtime_checkable
class MetricsStore(Protocol):
    """Append-only call metrics with windowed reads."""

    def append_calls(self, records: Sequence[CallRecord]) -> None:
        """Persist records; when this returns they survive the process being killed."""
        ...

    def read_calls(
        self, *, since: float, until: float | None = None, connector: str | None = None
    ) -> list[CallRecord]:
        """Records with ``since <= ts < until``, reading only that window where possible."""
        ...

    def connectors(self) -> list[str]:
        """Every connector this store knows of, from metrics, circuits or tokens."""
        ...


@runtime_checkable
class Store(CircuitStore, TokenStore, MetricsStore, Protocol):
    """A backend: all three protocols plus maintenance."""

    url: str

    def compact(self, *, metrics_retention_s: float) -> dict[str, int]:
        """Drop superseded state and metrics older than the retention; return counts."""
        ...

    def close(self) -> None:
        """Release files, connections and background work."""
        ...


@runtime_checkable
class LimitStore(Protocol):
    """Shared load-control state: retry budgets, token buckets and bulkhead leases.

    Optional: a store without it gives ``*_SCOPE=store`` settings a
    per-process limiter instead (with a warning). Each method is one atomic
    step on the store's own clock, so every process sharing the store sees
    one budget, one bucket and one set of slots per key.
    """

    def spend_retry_budget(
        self,
        key: str,
        *,
        calls: int,
        retry: bool,
        ratio: float,
        min_per_s: float,
        window_s: float,
    ) -> bool:
        """Count ``calls`` logical calls; with ``retry``, take one retry if the budget allows.

        Returns whether the retry was granted (True when ``retry`` is False).
        """
        ...

    def take_token(
        self, key: str, *, rate_per_s: float, burst: float, max_wait_s: float
    ) -> TokenGrant:
        """Reserve the next token of ``key``'s bucket if it is due within ``max_wait_s``."""
        ...

    def pause_tokens(self, key: str, *, seconds: float, rate_per_s: float, burst: float) -> None:
        """Hand out no token of ``key``'s bucket for ``seconds`` (a pause never shortens)."""
        ...

    def acquire_lease(self, key: str, *, limit: int, lease_s: float, holder: str) -> LeaseGrant:
        """Give ``holder`` one of ``limit`` slots for ``lease_s`` seconds, if one is free."""
        ...

    def release_lease(self, key: str, *, holder: str) -> None:
        """Give ``holder``'s slot back."""
        ...


#: How long a token lock is held at most when the caller does not say: longer
#: than any refresh with its retries, short enough that a dead holder is not fatal.
DEFAULT_LOCK_LEASE_S = 60.0

StoreFactory = Callable[[str], Store]
