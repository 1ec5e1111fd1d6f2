"""SQLite stores written by an older version are upgraded in place, keeping their data."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from connector_resilience.backends import CallRecord
from connector_resilience.backends.sqlite import SCHEMA_VERSION, SqliteStore

_V1_METRICS = """
CREATE TABLE metrics (
    ts REAL NOT NULL, connector TEXT NOT NULL, operation TEXT NOT NULL,
    duration_ms REAL NOT NULL, status TEXT NOT NULL, error TEXT,
    attempt INTEGER NOT NULL DEFAULT 1, final INTEGER NOT NULL DEFAULT 1, labels TEXT
);
CREATE TABLE circuits (connector TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE tokens (connector TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
"""


def test_a_version_1_store_is_migrated_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_V1_METRICS)
    conn.execute("INSERT INTO metrics VALUES (1000.0, 'api', 'get', 5.0, 'ok', NULL, 1, 1, NULL)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    store = SqliteStore(path)
    (old,) = store.read_calls(since=0)
    assert (old.connector, old.status, old.calls) == ("api", "ok", 1)
    assert store.connectors() == ["api"]  # the connectors index was built from the history
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    check.close()


def test_opening_the_store_again_keeps_the_locks_of_live_connections(tmp_path: Path) -> None:
    """A second store object on the file must not drop this process's locks on it.

    Every connection in WAL mode holds a shared lock on the database file, so
    that a process closing its last connection knows others still use the
    write-ahead log. Closing any descriptor of the file releases all of this
    process's locks on it: a store that opened and closed the file to check it
    let another process's close take the file for unused and delete the log
    under live connections (a "malformed" database followed).
    """
    path = tmp_path / "state.db"
    first = SqliteStore(path)
    first.append_calls([CallRecord(time.time(), "api", "get", 1.0, "ok")])  # a live connection
    second = SqliteStore(path)  # its own first use checks the files
    assert second.connectors() == ["api"]
    closer = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('SELECT COUNT(*) FROM metrics').fetchall(); c.close()"
    )
    subprocess.run([sys.executable, "-c", closer, str(path)], check=True, timeout=60)
    assert path.with_name("state.db-wal").exists()  # this process still uses the log
    first.append_calls([CallRecord(time.time(), "api", "get", 2.0, "ok")])
    assert len(second.read_calls(since=0)) == 2
    first.close()
    second.close()
