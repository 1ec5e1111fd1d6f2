"""Stores: where breaker state, tokens and call metrics live.

A store is chosen by URL, like ``limits``' ``storage_from_string``::

    memory://                      this process only
    jsonl://logs/connectors        a folder of JSONL files (the default layout)
    sqlite:///relative.db          one SQLite file (four slashes for an absolute path)
    redis://localhost:6379/0       many processes on many hosts

Every store implements three small protocols, :class:`CircuitStore`,
:class:`TokenStore` and :class:`MetricsStore`; :func:`register_backend` adds a
scheme of your own. Opening the same URL twice in one process returns the same
store object, so ``memory://`` is shared process-wide.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

from connector_resilience.errors import ConfigurationError

if TYPE_CHECKING:
    from connector_resilience.policy import Policy

__all__ = [
    "DEFAULT_LOCK_LEASE_S",
    "PARSE_ERRORS",
    "CallRecord",
    "CircuitRecord",
    "CircuitStore",
    "MetricsStore",
    "Store",
    "StoreFactory",
    "TokenStore",
    "close_all_stores",
    "known_schemes",
    "open_store",
    "redact_url",
    "register_backend",
    "scheme_of",
    "store_for_policy",
]

CallStatus = Literal["ok", "error", "rejected"]

#: What parsing one stored record can raise. A bad record is skipped and
#: counted, never raised to the reader: a line nested too deep raises
#: RecursionError, a number too big for a float OverflowError.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
)


class CallRecord(NamedTuple):
    """One attempt of a call to a connector, or one call refused by an open circuit.

    A named tuple: decorated calls buffer plain tuples of these fields, and
    the background writer turns them into records at C speed.

    Attributes:
        ts: wall-clock end of the attempt, seconds since the epoch.
        connector: connector name.
        operation: operation name (the function name by default).
        duration_ms: how long the attempt took.
        status: ``"ok"``, ``"error"`` or ``"rejected"`` (refused by the breaker).
        error: the exception's type name for an error, else ``None``.
        attempt: 1 for the first attempt of a call, 2 for its first retry, ...;
            0 for a call the breaker refused (it made no attempt).
        final: True on the last attempt of a logical call, so that summing
            final records counts calls and summing all records counts attempts.
        labels: low-cardinality extras such as HTTP method, host and status code.
        calls: how many calls the record stands for: 1, except for ``rejected``
            records, which count the rejections of one flush interval at once.
    """

    ts: float
    connector: str
    operation: str
    duration_ms: float
    status: CallStatus
    error: str | None = None
    attempt: int = 1
    final: bool = True
    labels: Mapping[str, str] | None = None
    calls: int = 1

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping (the JSONL line format)."""
        out: dict[str, Any] = {
            "ts": self.ts,
            "connector": self.connector,
            "operation": self.operation,
            "duration_ms": self.duration_ms,
            "status": self.status,
            "error": self.error,
            "attempt": self.attempt,
            "final": self.final,
        }
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.calls != 1:
            out["calls"] = self.calls
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallRecord:
        """Parse one record; raise ``ValueError``/``TypeError``/``KeyError`` on a bad one."""
        status = data["status"]
        if status not in ("ok", "error", "rejected"):
            raise ValueError(f"bad status {status!r}")
        error = data.get("error")
        labels = data.get("labels")
        if labels is not None and not (
            isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        ):
            raise ValueError("bad labels")
        ts = data["ts"]
        duration = data["duration_ms"]
        attempt = data.get("attempt", 1)
        if not isinstance(ts, int | float) or not isinstance(duration, int | float):
            raise TypeError("ts and duration_ms must be numbers")
        if not (math.isfinite(ts) and math.isfinite(duration)):
            raise ValueError("ts and duration_ms must be finite")
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            raise TypeError("attempt must be an integer")
        connector, operation = data["connector"], data["operation"]
        if not isinstance(connector, str) or not isinstance(operation, str):
            raise TypeError("connector and operation must be strings")
        calls = data.get("calls", 1)
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
            raise ValueError("calls must be an integer >= 1")
        if calls != 1 and status != "rejected":
            raise ValueError("only rejected records stand for more than one call")
        return cls(
            ts=float(ts),
            connector=connector,
            operation=operation,
            duration_ms=float(duration),
            status=status,
            error=error if isinstance(error, str) else None,
            attempt=attempt,
            final=bool(data.get("final", True)),
            labels=labels,
            calls=calls,
        )


CircuitState = Literal["closed", "open", "half_open"]
CircuitOverride = Literal["forced_open", "disabled"]


@dataclass(frozen=True, slots=True)
class CircuitRecord:
    """The persisted state of one connector's breaker.

    Every change writes a new record with ``version`` one higher, through the
    store's compare-and-set, so two processes can never both move the breaker.

    Attributes:
        version: 0 for a breaker never written; +1 per change.
        state: ``"closed"``, ``"open"`` or ``"half_open"``. An open breaker whose
            cooldown has passed is half-open without a write.
        failures: consecutive failures counted while closed.
        opened_at: when the breaker last opened (store clock), else ``None``.
        reopen_at: when an open breaker starts admitting probes.
        probes: half-open probe slots in use, as ``(probe id, lease end)``.
        override: ``"forced_open"`` or ``"disabled"`` when an operator set one.
        reason: why it last opened.
        changed_at: when this record was written (store clock).
    """

    version: int = 0
    state: CircuitState = "closed"
    failures: int = 0
    opened_at: float | None = None
    reopen_at: float | None = None
    probes: tuple[tuple[str, float], ...] = ()
    override: CircuitOverride | None = None
    reason: str | None = None
    changed_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping."""
        return {
            "version": self.version,
            "state": self.state,
            "failures": self.failures,
            "opened_at": self.opened_at,
            "reopen_at": self.reopen_at,
            "probes": [list(p) for p in self.probes],
            "override": self.override,
            "reason": self.reason,
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CircuitRecord:
        """Parse a record; raise ``ValueError``/``TypeError``/``KeyError`` on a bad one."""
        state = data["state"]
        if state not in ("closed", "open", "half_open"):
            raise ValueError(f"bad circuit state {state!r}")
        override = data.get("override")
        if override not in (None, "forced_open", "disabled"):
            raise ValueError(f"bad override {override!r}")
        version = data["version"]
        failures = data.get("failures", 0)
        if not isinstance(version, int) or not isinstance(failures, int):
            raise TypeError("version and failures must be integers")
        probes = tuple((str(p[0]), float(p[1])) for p in data.get("probes") or ())
        return cls(
            version=version,
            state=state,
            failures=failures,
            opened_at=_opt_float(data.get("opened_at")),
            reopen_at=_opt_float(data.get("reopen_at")),
            probes=probes,
            override=override,
            reason=data.get("reason") if isinstance(data.get("reason"), str) else None,
            changed_at=float(data.get("changed_at") or 0.0),
        )


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError("expected a number")
    return float(value)


@dataclass(slots=True)
class StoreStats:
    """Counters a store keeps about what it could not read."""

    skipped_lines: int = 0
    torn_lines: int = 0
    notes: list[str] = field(default_factory=list)


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


#: How long a token lock is held at most when the caller does not say: longer
#: than any refresh with its retries, short enough that a dead holder is not fatal.
DEFAULT_LOCK_LEASE_S = 60.0

StoreFactory = Callable[[str], Store]

_factories: dict[str, StoreFactory] = {}
_open: dict[str, Store] = {}
_lock = threading.Lock()


def register_backend(scheme: str, factory: StoreFactory, *, replace: bool = False) -> None:
    """Make ``open_store`` understand URLs that start with ``scheme://``.

    Args:
        scheme: the URL scheme, such as ``"postgres"``.
        factory: called with the full URL; returns an object implementing :class:`Store`.
        replace: allow replacing an existing scheme (built-in ones included).

    Raises:
        ConfigurationError: the scheme is taken and ``replace`` is false.
    """
    scheme = scheme.lower()
    if not scheme.isidentifier() and not scheme.replace("+", "").isalnum():
        raise ConfigurationError(f"backend scheme {scheme!r} is not a valid URL scheme")
    with _lock:
        if scheme in _factories and not replace:
            raise ConfigurationError(f"a backend for {scheme}:// is already registered")
        _factories[scheme] = factory


def scheme_of(url: str) -> str:
    """The scheme of a store URL, lower-cased (``""`` when it has none)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def known_schemes() -> frozenset[str]:
    """Schemes ``open_store`` accepts."""
    _register_builtins()
    return frozenset(_factories)


def open_store(url: str) -> Store:
    """Open (or return the already open) store for ``url``.

    Raises:
        ConfigurationError: unknown scheme, malformed URL, or a missing optional
            dependency (the message names the pip extra to install).
    """
    _register_builtins()
    key = url.strip()
    store = _open.get(key)
    if store is not None:
        return store
    scheme = scheme_of(key)
    factory = _factories.get(scheme)
    if factory is None:
        raise ConfigurationError(
            f"unknown store URL scheme {scheme!r} in {redact_url(key)!r}; "
            f"known: {', '.join(sorted(_factories))}"
        )
    with _lock:
        store = _open.get(key)
        if store is None:
            store = factory(key)
            _open[key] = store
    return store


def store_for_policy(policy: Policy) -> Store:
    """The store a policy names: ``store.url``, or the three JSONL paths when unset."""
    url = policy.store.url
    if url:
        return open_store(url)
    from connector_resilience.backends.jsonl import JsonlStore

    key = JsonlStore.key_for_paths(
        metrics=policy.store.metrics_path,
        circuits=policy.store.circuit_state_path,
        tokens=policy.store.token_path,
    )
    store = _open.get(key)
    if store is not None:
        return store
    with _lock:
        store = _open.get(key)
        if store is None:
            store = JsonlStore(
                metrics_path=policy.store.metrics_path,
                circuit_path=policy.store.circuit_state_path,
                token_path=policy.store.token_path,
            )
            _open[key] = store
    return store


def close_all_stores() -> None:
    """Close and forget every open store (tests use this between cases)."""
    with _lock:
        stores = list(_open.values())
        _open.clear()
    for store in stores:
        store.close()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for logs and errors.

    Both places a URL can carry one are covered: the userinfo
    (``redis://:secret@host``) and query options (``?password=secret``,
    ``?ssl_password=secret``), which redis-py reads as connection settings.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, question, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        user, colon, _password = creds.partition(":")
        # redis://secret@host: a lone userinfo is the password in redis URLs.
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    redacted = f"{scheme}{sep}{netloc}{slash}{path}"
    if question:
        redacted += "?" + "&".join(_redact_option(option) for option in query.split("&"))
    return redacted


def _redact_option(option: str) -> str:
    name, equals, _value = option.partition("=")
    if equals and "password" in name.lower():
        return f"{name}=***"
    return option


_builtins_done = False


def _register_builtins() -> None:
    global _builtins_done  # noqa: PLW0603 - one-time lazy registration
    if _builtins_done:
        return
    with _lock:
        if _builtins_done:
            return
        _factories.setdefault("memory", _open_memory)
        _factories.setdefault("jsonl", _open_jsonl)
        _factories.setdefault("sqlite", _open_sqlite)
        _factories.setdefault("redis", _open_redis)
        _factories.setdefault("rediss", _open_redis)
        _builtins_done = True


def _open_memory(url: str) -> Store:
    from connector_resilience.backends.memory import MemoryStore

    return MemoryStore(url)


def _open_jsonl(url: str) -> Store:
    from connector_resilience.backends.jsonl import JsonlStore

    return JsonlStore.from_url(url)


def _open_sqlite(url: str) -> Store:
    from connector_resilience.backends.sqlite import SqliteStore

    return SqliteStore.from_url(url)


def _open_redis(url: str) -> Store:
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "the redis:// store needs redis-py: pip install 'connector-resilience[redis]'"
        ) from None
    from connector_resilience.backends.redis import RedisStore

    return RedisStore.from_url(url)


def filter_window(
    records: Iterable[CallRecord], *, since: float, until: float | None, connector: str | None
) -> list[CallRecord]:
    """Records inside ``[since, until)`` for ``connector`` (all when ``None``)."""
    return [
        r
        for r in records
        if r.ts >= since
        and (until is None or r.ts < until)
        and (connector is None or r.connector == connector)
    ]
