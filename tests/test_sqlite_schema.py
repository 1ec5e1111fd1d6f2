"""SQLite stores written by an older version are upgraded in place, keeping their data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
