"""``sqlite:///relative.db`` and ``sqlite:////absolute.db``: one file, many processes.

WAL mode so readers never wait for writers, a busy timeout so writers queue
instead of failing, an index on time for window queries, compare-and-set by
``UPDATE ... WHERE version = ?``, and a lease table for the token refresh lock.
The schema version lives in ``PRAGMA user_version``; an older file is migrated
in place when first opened. Aggregated metrics live in their own table, indexed
by tier and time, and ``metric_connectors`` indexes the connectors metrics
were written for, so listing connectors never reads the history.

Every statement runs against a deadline (a progress handler interrupts it), so
a damaged or hostile schema (a view over an endless recursive query, a trigger
that never ends) costs a reader its budget, never a hang. The database file is
never opened through a symbolic link nor when another user owns it, and tokens
are refused in a folder other users can write to (``_files``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from connector_resilience import _clock
from connector_resilience.backends import (
    DEFAULT_LOCK_LEASE_S,
    PARSE_ERRORS,
    CallAggregate,
    CallRecord,
    CircuitRecord,
    StoreStats,
    aggregate_tier,
)
from connector_resilience.backends import _limit_state as limit_state
from connector_resilience.backends._files import (
    PRIVATE_FILE_MODE,
    check_folder,
    check_store_file,
    ensure_private_dir,
)
from connector_resilience.errors import StoreError

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

logger = logging.getLogger("connector_resilience.store")

SCHEMA_VERSION = 3
_BUSY_TIMEOUT_MS = 10_000
#: Breaker reads and writes happen in the caller's thread: a locked database
#: must not stall a call long before the breaker falls back to local state.
_STATE_BUSY_MS = 1_000
#: Longest run of one statement (or transaction), lock wait included: breaker
#: state is bounded like its lock wait; everything else gets its lock wait and
#: as long again to run.
_STATE_BUDGET_S = _STATE_BUSY_MS / 1000
_STATEMENT_BUDGET_S = 2 * _BUSY_TIMEOUT_MS / 1000
#: SQLite virtual-machine steps between two deadline checks (microseconds of work).
_PROGRESS_STEPS = 1000


class _Deadline:
    """When the statement running on one connection must stop (monotonic seconds)."""

    __slots__ = ("at", "budget_s")

    def __init__(self) -> None:
        self.at = float("inf")
        self.budget_s = 0.0

    def start(self, budget_s: float) -> None:
        self.at, self.budget_s = time.monotonic() + budget_s, budget_s

    def suspend(self) -> None:
        """Let our own statements (a PRAGMA, a ROLLBACK) run to the end."""
        self.at = float("inf")

    def passed(self) -> int:
        """The progress handler: non-zero interrupts the statement."""
        return int(time.monotonic() > self.at)


def _interrupted(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    ts REAL NOT NULL,
    connector TEXT NOT NULL,
    operation TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    final INTEGER NOT NULL DEFAULT 1,
    labels TEXT,
    calls INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS metrics_ts ON metrics (ts);
CREATE INDEX IF NOT EXISTS metrics_connector_ts ON metrics (connector, ts);
CREATE TABLE IF NOT EXISTS aggregates (
    ts REAL NOT NULL,
    tier REAL NOT NULL,
    connector TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS aggregates_tier_ts ON aggregates (tier, ts);
CREATE INDEX IF NOT EXISTS aggregates_connector ON aggregates (connector, tier, ts);
CREATE TABLE IF NOT EXISTS metric_connectors (
    connector TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS circuits (
    connector TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    connector TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

#: Load-control state: a table of its own, made on first use. Older versions
#: ignore a table they do not know, so it needs no schema version of its own.
_LOAD_CONTROL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS load_control (key TEXT PRIMARY KEY, data TEXT NOT NULL)"
)

T = TypeVar("T")

_COLUMNS = "ts, connector, operation, duration_ms, status, error, attempt, final, labels, calls"

#: What each older schema version needs to become the current one.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: a rejected record may stand for several rejections.
    1: ("ALTER TABLE metrics ADD COLUMN calls INTEGER NOT NULL DEFAULT 1",),
    # 2 -> 3: aggregated metrics, and the connectors index built from the history.
    2: (
        "CREATE TABLE IF NOT EXISTS aggregates (ts REAL NOT NULL, tier REAL NOT NULL, "
        "connector TEXT NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS aggregates_tier_ts ON aggregates (tier, ts)",
        "CREATE INDEX IF NOT EXISTS aggregates_connector ON aggregates (connector, tier, ts)",
        "CREATE TABLE IF NOT EXISTS metric_connectors (connector TEXT PRIMARY KEY)",
        "INSERT OR IGNORE INTO metric_connectors SELECT DISTINCT connector FROM metrics",
    ),
}
_INDEX_NAME = "INSERT OR IGNORE INTO metric_connectors (connector) VALUES (?)"


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting out others doing the same.

    Switching the journal mode needs a moment alone with the database; SQLite
    does not apply the busy timeout to it, so several processes opening a new
    store at once would otherwise fail with "database is locked".
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        else:
            return


def _stored_bool(value: Any) -> bool:
    """An INTEGER 0 or 1 column as a bool; anything else is not a value this library wrote."""
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected 0 or 1, got {type(value).__name__}")


class SqliteStore(limit_state.LimitSteps):
    """A store in one SQLite database file.

    Args:
        path: the database file; its folder is created 0700 and the file 0600.
        url: the URL it was opened with, for messages.
    """

    def __init__(self, path: str | os.PathLike[str], *, url: str | None = None) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite:///{self.path}"
        self.stats = StoreStats()
        self._local = threading.local()
        self._init_lock = threading.Lock()
        self._initialised_pid: int | None = None
        self._load_control_ready = False

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``."""
        rest = url.partition("://")[2]
        if not rest.startswith("/") or rest == "/":
            raise StoreError(
                "a sqlite URL is sqlite:///relative.db or sqlite:////absolute.db "
                f"(three slashes, then the path), not {url!r}"
            )
        return cls(rest[1:], url=url)

    def __repr__(self) -> str:
        return f"SqliteStore({self.url!r})"

    # Connections --------------------------------------------------------

    def _connect(self, busy_ms: int = _BUSY_TIMEOUT_MS) -> sqlite3.Connection:
        """This thread's connection (reopened after a fork), waiting ``busy_ms`` on a lock.

        What runs on it next must end within the budget that goes with
        ``busy_ms`` (``_STATE_BUDGET_S`` or ``_STATEMENT_BUDGET_S``).
        """
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == pid:
            deadline: _Deadline = self._local.deadline
            deadline.suspend()
            if self._local.busy_ms != busy_ms:
                conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
                self._local.busy_ms = busy_ms
            deadline.start(_STATE_BUDGET_S if busy_ms <= _STATE_BUSY_MS else _STATEMENT_BUDGET_S)
            return conn
        if self._initialised_pid != pid:
            with self._init_lock:
                if self._initialised_pid != pid:
                    self._initialise()
                    self._initialised_pid = pid
        deadline = _Deadline()
        conn = self._open_connection(deadline)
        self._local.conn, self._local.pid, self._local.busy_ms = conn, pid, _BUSY_TIMEOUT_MS
        self._local.deadline = deadline
        return self._connect(busy_ms)

    def _open_connection(self, deadline: _Deadline) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.set_progress_handler(deadline.passed, _PROGRESS_STEPS)
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        return conn

    def _failure(self, doing: str, exc: sqlite3.Error) -> StoreError:
        """The StoreError for ``exc``, saying so when a statement ran out of time."""
        if _interrupted(exc):
            budget = getattr(getattr(self._local, "deadline", None), "budget_s", 0.0)
            return StoreError(
                f"cannot {doing} {self.path}: a statement ran past its {budget:g}s limit "
                "(is the database damaged, or its schema not this library's?)"
            )
        return StoreError(f"cannot {doing} {self.path}: {exc}")

    def _check_files(self) -> None:
        """Refuse a database that is a link or another user's; judge its folder."""
        check_folder(self._folder, strict=False, what="metrics and circuit states")
        # Judged without opening it: closing a descriptor of the database would
        # release the locks of this process's live connections (check_store_file).
        with contextlib.suppress(FileNotFoundError):
            check_store_file(self.path)

    def _check_token_folder(self) -> None:
        """Tokens are refused in a folder other users can write to."""
        check_folder(self._folder, strict=True, what="tokens")

    @property
    def _folder(self) -> Path:
        return self.path.parent if str(self.path.parent) else Path(".")

    def _initialise(self) -> None:
        try:
            ensure_private_dir(self._folder)
            if not os.path.lexists(self.path):
                # Create the file 0600 before SQLite does, so it is never world-readable.
                with contextlib.suppress(FileExistsError):
                    os.close(
                        os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
                    )
            self._check_files()
        except OSError as exc:  # PermissionError, a file where a folder should be...
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        deadline = _Deadline()
        conn = self._open_connection(deadline)
        deadline.start(_STATEMENT_BUDGET_S)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; this version of "
                    f"connector-resilience reads up to {SCHEMA_VERSION}: upgrade it"
                )
            _switch_to_wal(conn)
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                # Another process may have upgraded it while this one waited.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                statements: list[str] = []
                if version == 0:
                    statements = [x for x in _SCHEMA.split(";") if x.strip()]
                else:
                    for step in range(version, SCHEMA_VERSION):
                        statements.extend(_MIGRATIONS[step])
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._failure("initialise SQLite store", exc) from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def _transaction(self, busy_ms: int = _BUSY_TIMEOUT_MS) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock is taken up front."""
        conn = self._connect(busy_ms)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._failure("write to", exc) from exc
        try:
            yield conn
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise self._failure("write to", exc) from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._failure("write to", exc) from exc

    def _rollback(self, conn: sqlite3.Connection) -> None:
        self._local.deadline.suspend()
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")

    def _query(
        self, sql: str, params: Sequence[Any] = (), *, busy_ms: int = _BUSY_TIMEOUT_MS
    ) -> list[Any]:
        try:
            return self._connect(busy_ms).execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failure("read", exc) from exc

    def now(self) -> float:
        """Wall-clock seconds since the epoch (every process on the host shares it)."""
        return _clock.wall()

    # Circuits -----------------------------------------------------------

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        """The connector's record, or ``None``."""
        rows = self._query(
            "SELECT data FROM circuits WHERE connector = ?", (connector,), busy_ms=_STATE_BUSY_MS
        )
        return self._parse_circuit(connector, rows[0][0]) if rows else None

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        """``UPDATE ... WHERE version = expected`` (or insert when expecting 0)."""
        if record.version != expected_version + 1:
            raise ValueError("record.version must be expected_version + 1")
        data = json.dumps(record.to_json(), separators=(",", ":"))
        with self._transaction(_STATE_BUSY_MS) as conn:
            if expected_version == 0:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO circuits (connector, version, data) VALUES (?, ?, ?)",
                    (connector, record.version, data),
                )
            else:
                cursor = conn.execute(
                    "UPDATE circuits SET version = ?, data = ? WHERE connector = ? AND version = ?",
                    (record.version, data, connector, expected_version),
                )
            return cursor.rowcount == 1

    def list_circuits(self) -> dict[str, CircuitRecord]:
        """Every readable circuit record."""
        out: dict[str, CircuitRecord] = {}
        rows = self._query("SELECT connector, data FROM circuits", busy_ms=_STATE_BUSY_MS)
        for connector, data in rows:
            record = self._parse_circuit(connector, data)
            if record is not None:
                out[connector] = record
        return out

    def _parse_circuit(self, connector: str, data: Any) -> CircuitRecord | None:
        try:
            return CircuitRecord.from_json(json.loads(data))
        except PARSE_ERRORS:
            self.stats.skipped_lines += 1
            logger.warning("unreadable circuit record for %r in %s; ignored", connector, self.path)
            return None

    # Tokens -------------------------------------------------------------

    def load_token(self, connector: str) -> dict[str, Any] | None:
        """The connector's token mapping, or ``None``."""
        self._check_token_folder()
        rows = self._query("SELECT data FROM tokens WHERE connector = ?", (connector,))
        return self._parse_token(connector, rows[0][0]) if rows else None

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        """Replace the connector's token."""
        self._check_token_folder()
        data = json.dumps(dict(token), separators=(",", ":"))
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO tokens (connector, data, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (connector) DO UPDATE SET data = excluded.data, "
                "updated_at = excluded.updated_at",
                (connector, data, time.time()),
            )

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        """Every readable token mapping."""
        self._check_token_folder()
        out: dict[str, dict[str, Any]] = {}
        for connector, data in self._query("SELECT connector, data FROM tokens"):
            token = self._parse_token(connector, data)
            if token is not None:
                out[connector] = token
        return out

    def _parse_token(self, connector: str, data: Any) -> dict[str, Any] | None:
        try:
            token = json.loads(data)
        except PARSE_ERRORS:
            token = None
        if not isinstance(token, dict):
            self.stats.skipped_lines += 1
            logger.warning("unreadable token record for %r in %s; ignored", connector, self.path)
            return None
        return token

    @contextlib.contextmanager
    def token_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> Iterator[None]:
        """A lease row: held until released, or until the lease ends if its holder died."""
        self._check_token_folder()
        lease = DEFAULT_LOCK_LEASE_S if lease_s is None else lease_s
        name = f"token:{connector}"
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            now = time.time()
            with self._transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO locks (name, owner, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                    "expires_at = excluded.expires_at WHERE locks.expires_at < ?",
                    (name, owner, now + lease, now),
                )
                acquired = cursor.rowcount == 1
            if acquired:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"token lock for {connector!r} not acquired in {timeout_s:g}s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            with contextlib.suppress(StoreError), self._transaction() as conn:
                conn.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))

    # Metrics ------------------------------------------------------------

    def append_calls(self, records: Sequence[CallRecord]) -> None:
        """Insert records in one transaction."""
        if not records:
            return
        rows = [
            (
                r.ts,
                r.connector,
                r.operation,
                r.duration_ms,
                r.status,
                r.error,
                r.attempt,
                int(r.final),
                json.dumps(dict(r.labels)) if r.labels else None,
                r.calls,
            )
            for r in records
        ]
        with self._transaction() as conn:
            conn.executemany(
                f"INSERT INTO metrics ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                rows,
            )
            conn.executemany(_INDEX_NAME, [(n,) for n in {r.connector for r in records}])

    def append_aggregates(self, rows: Sequence[CallAggregate]) -> None:
        """Insert aggregated rows in one transaction."""
        if not rows:
            return
        values = [
            (
                r.ts,
                aggregate_tier(r.resolution),
                r.connector,
                json.dumps(r.to_json(), separators=(",", ":")),
            )
            for r in rows
        ]
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO aggregates (ts, tier, connector, data) VALUES (?, ?, ?, ?)", values
            )
            conn.executemany(_INDEX_NAME, [(n,) for n in {r.connector for r in rows}])

    def read_aggregates(
        self,
        *,
        resolution: float,
        since: float,
        until: float | None = None,
        connector: str | None = None,
    ) -> list[CallAggregate]:
        """Rows of the tier of ``resolution`` starting in ``[since, until)``, through its index."""
        sql = "SELECT data FROM aggregates WHERE tier = ? AND ts >= ?"
        params: list[Any] = [aggregate_tier(resolution), since]
        if until is not None:
            sql += " AND ts < ?"
            params.append(until)
        if connector is not None:
            sql += " AND connector = ?"
            params.append(connector)
        out: list[CallAggregate] = []
        bad = 0
        for (data,) in self._query(sql + " ORDER BY ts", params):
            try:
                out.append(CallAggregate.from_json(json.loads(data)))
            except PARSE_ERRORS:
                bad += 1
        if bad:
            self.stats.skipped_lines += bad
            logger.warning("skipped %d unreadable aggregated row(s) in %s", bad, self.path)
        return out

    def read_calls(
        self, *, since: float, until: float | None = None, connector: str | None = None
    ) -> list[CallRecord]:
        """Records in ``[since, until)`` through the time index."""
        sql = f"SELECT {_COLUMNS} FROM metrics WHERE ts >= ?"  # noqa: S608
        params: list[Any] = [since]
        if until is not None:
            sql += " AND ts < ?"
            params.append(until)
        if connector is not None:
            sql += " AND connector = ?"
            params.append(connector)
        sql += " ORDER BY ts"
        out: list[CallRecord] = []
        bad = 0
        for row in self._query(sql, params):
            try:
                labels = json.loads(row[8]) if row[8] else None
                out.append(
                    CallRecord.from_json(
                        {
                            "ts": row[0],
                            "connector": row[1],
                            "operation": row[2],
                            "duration_ms": row[3],
                            "status": row[4],
                            "error": row[5],
                            "attempt": row[6],
                            "final": _stored_bool(row[7]),
                            "labels": labels,
                            "calls": row[9],
                        }
                    )
                )
            except PARSE_ERRORS:
                bad += 1
        if bad:
            self.stats.skipped_lines += bad
            logger.warning("skipped %d unreadable metric row(s) in %s", bad, self.path)
        return out

    def connectors(self) -> list[str]:
        """Connectors named in metrics, circuits or tokens."""
        rows = self._query(
            "SELECT connector FROM metric_connectors "
            "UNION SELECT connector FROM circuits UNION SELECT connector FROM tokens"
        )
        return sorted(str(r[0]) for r in rows if isinstance(r[0], str))

    # Maintenance --------------------------------------------------------

    def compact(self, *, metrics_retention_s: float) -> dict[str, int]:
        """Delete metrics past the retention and expired locks; checkpoint the WAL."""
        cutoff = time.time() - metrics_retention_s
        with self._transaction() as conn:
            dropped = conn.execute("DELETE FROM metrics WHERE ts < ?", (cutoff,)).rowcount
            dropped += conn.execute(
                "DELETE FROM aggregates WHERE ts + tier <= ?", (cutoff,)
            ).rowcount
            # Connectors whose metrics are all gone leave the index.
            conn.execute(
                "DELETE FROM metric_connectors WHERE connector NOT IN "
                "(SELECT connector FROM metrics UNION SELECT connector FROM aggregates)"
            )
            conn.execute("DELETE FROM locks WHERE expires_at < ?", (time.time(),))
        kept = self._query(
            "SELECT (SELECT COUNT(*) FROM metrics) + (SELECT COUNT(*) FROM aggregates)"
        )[0][0]
        with contextlib.suppress(sqlite3.Error, StoreError):
            self._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {
            "metrics_kept": int(kept),
            "metrics_dropped": int(dropped),
            "circuits": len(self.list_circuits()),
            "tokens": len(self.list_tokens()),
        }

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local = threading.local()

    # Load control -------------------------------------------------------

    def _limit_step(self, key: str, step: limit_state.Step[T]) -> T:
        """Run one load-control step on ``key`` in one write transaction."""
        if not self._load_control_ready:
            with self._transaction(_STATE_BUSY_MS) as conn:
                conn.execute(_LOAD_CONTROL_SCHEMA)
            self._load_control_ready = True
        with self._transaction(_STATE_BUSY_MS) as conn:
            try:
                row = conn.execute("SELECT data FROM load_control WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read {self.path}: {exc}") from exc
            try:
                state = json.loads(row[0]) if row else None
            except PARSE_ERRORS:
                state = None  # seconds-old counters: starting afresh is harmless
            new_state, answer = step(
                state if isinstance(state, dict | list) else None, _clock.wall()
            )
            try:
                conn.execute(
                    "INSERT INTO load_control (key, data) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET data = excluded.data",
                    (key, json.dumps(new_state, separators=(",", ":"))),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc
        return answer
