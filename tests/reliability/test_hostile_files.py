"""Issue 9, point 2: hostile files and rows never break a read, and what is skipped is counted.

Hypothesis writes JSONL files line by line from categories whose verdict is
known (valid, valid with unknown fields, garbage bytes, truncated, wrong types,
huge, deeply nested) and SQLite rows of any SQLite value; then every read API
must answer without raising, return exactly the valid records, count exactly
the skipped ones, and never hand back a half-parsed OAuth2 token.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector_resilience.backends import CallRecord, CircuitRecord
from connector_resilience.backends.jsonl import JsonlStore
from connector_resilience.backends.sqlite import SqliteStore
from connector_resilience.oauth2 import OAuth2Token, load_token, token_statuses
from connector_resilience.policy import Policy

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # a fixed seed: CI sees the same examples every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
POLICY = Policy(store={"url": "memory://hostile-unused"})
CONNECTORS = ("a", "b", "c")

# Line categories -------------------------------------------------------------

names = st.sampled_from(CONNECTORS)
finite = st.floats(min_value=1.0, max_value=2e9, allow_nan=False)
unknown_fields = st.dictionaries(
    st.text(min_size=1, max_size=8).map(lambda k: f"x_{k}"),
    st.integers() | st.text(max_size=10) | st.none(),
    max_size=3,
)
#: Values of the wrong type for any field: JSON has no way to make them right.
wrong = st.sampled_from(
    [None, "text", [], [1, 2], {}, {"k": "v"}, 10**400, -(10**400), "1e999", float("nan")]
)
#: Bytes that can never parse as a JSON object (they start with a byte JSON forbids there).
garbage = st.binary(max_size=200).map(lambda b: b"\x00" + b.replace(b"\n", b" "))
#: Too deep for any JSON parser's recursion: the classic "huge line" attack.
nested = st.integers(min_value=5_000, max_value=200_000).map(lambda n: b"[" * n + b"]" * n)


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, allow_nan=True).encode()


@st.composite
def metric_lines(draw: st.DrawFn) -> tuple[bytes, CallRecord | None]:
    """One metrics line and the record it must read as (``None``: must be skipped)."""
    record = CallRecord(
        ts=draw(finite),
        connector=draw(names),
        operation=draw(st.text(min_size=1, max_size=20)),
        duration_ms=draw(st.floats(min_value=0, max_value=1e6, allow_nan=False)),
        status=draw(st.sampled_from(["ok", "error", "rejected"])),
        error=draw(st.none() | st.text(min_size=1, max_size=10)),
        attempt=draw(st.integers(min_value=1, max_value=10)),
        final=draw(st.booleans()),
        labels=draw(st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5))) or None,
    )
    valid = record.to_json()
    kind = draw(st.sampled_from(["valid", "unknown", "garbage", "truncated", "wrong", "nested"]))
    if kind == "valid":
        return _line(valid), record
    if kind == "unknown":
        return _line({**valid, **draw(unknown_fields)}), record
    if kind == "garbage":
        return draw(garbage), None
    if kind == "nested":
        return draw(nested), None
    if kind == "truncated":
        full = _line(valid)
        return full[: draw(st.integers(min_value=1, max_value=len(full) - 1))], None
    field = draw(st.sampled_from(["ts", "duration_ms", "status", "connector", "operation"]))
    value: Any
    if field in ("connector", "operation"):
        value = draw(wrong.filter(lambda v: not isinstance(v, str)))
    elif field == "status":
        value = draw(wrong | st.sampled_from(["OK", "fine", ""]))
    else:
        value = draw(wrong | st.sampled_from([float("inf"), -float("inf"), "12"]))
    return _line({**valid, field: value}), None


@st.composite
def circuit_lines(draw: st.DrawFn) -> tuple[bytes, tuple[str, CircuitRecord] | None]:
    state: Literal["closed", "open", "half_open"] = draw(
        st.sampled_from(["closed", "open", "half_open"])
    )
    record = CircuitRecord(
        version=draw(st.integers(min_value=1, max_value=10**6)),
        state=state,
        failures=draw(st.integers(min_value=0, max_value=50)),
        opened_at=draw(st.none() | finite),
        reopen_at=draw(st.none() | finite),
        probes=tuple(draw(st.lists(st.tuples(st.text(max_size=6), finite), max_size=2))),
        reason=draw(st.none() | st.text(max_size=20)),
        changed_at=draw(finite),
    )
    connector = draw(names)
    valid = {"connector": connector, **record.to_json()}
    kind = draw(st.sampled_from(["valid", "unknown", "garbage", "truncated", "wrong", "nested"]))
    if kind == "valid":
        return _line(valid), (connector, record)
    if kind == "unknown":
        return _line({**valid, **draw(unknown_fields)}), (connector, record)
    if kind == "garbage":
        return draw(garbage), None
    if kind == "nested":
        return draw(nested), None
    if kind == "truncated":
        full = _line(valid)
        return full[: draw(st.integers(min_value=1, max_value=len(full) - 1))], None
    field: str
    value: Any
    field, value = draw(
        st.sampled_from(
            [
                ("state", "ajar"),
                ("state", None),
                ("version", "7"),
                ("version", None),
                ("failures", [1]),
                ("opened_at", "yesterday"),
                ("opened_at", 10**400),
                ("reopen_at", {"at": 1}),
                ("changed_at", 10**400),
                ("changed_at", "soon"),
                ("probes", 5),
                ("probes", [[]]),
                ("probes", [["p", 10**400]]),
                ("probes", [["p", "never"]]),
                ("override", "sideways"),
                ("connector", 7),
            ]
        )
    )
    return _line({**valid, field: value}), None


@st.composite
def token_lines(draw: st.DrawFn) -> tuple[bytes, tuple[str, dict[str, Any] | None] | None]:
    """A token line; its verdict is (connector, token fields, or None: must read as absent)."""
    connector = draw(names)
    token: dict[str, Any] = {
        "format": 1,
        "access_token": "at-" + draw(st.text(min_size=1, max_size=20)),
        "token_type": "Bearer",
        "expires_at": draw(st.none() | finite),
        "obtained_at": draw(st.none() | finite),
        "scope": draw(st.none() | st.text(max_size=10)),
    }
    if draw(st.booleans()):
        token["refresh_token"] = "rt-" + draw(st.text(min_size=1, max_size=20))
    line = {**token, "connector": connector}
    kind = draw(st.sampled_from(["valid", "unknown", "garbage", "truncated", "wrong", "nested"]))
    if kind == "valid":
        return _line(line), (connector, token)
    if kind == "unknown":
        return _line({**line, **draw(unknown_fields)}), (connector, token)
    if kind == "garbage":
        return draw(garbage), None
    if kind == "nested":
        return draw(nested), None
    if kind == "truncated":
        full = _line(line)
        return full[: draw(st.integers(min_value=1, max_value=len(full) - 1))], None
    field: str
    value: Any
    field, value = draw(
        st.sampled_from(
            [
                ("access_token", None),
                ("access_token", ""),
                ("access_token", 12345),
                ("access_token", ["at-in-a-list"]),
                ("refresh_token", 7),
                ("refresh_token", {"rt": "x"}),
                ("expires_at", "never"),
                ("expires_at", [1]),
                ("expires_at", float("nan")),
                ("expires_at", 10**400),
                ("obtained_at", {"t": 1}),
                ("extra", {"nested": {"too": "deep"}}),
                ("extra", "not a mapping"),
                ("token_type", 5),
            ]
        )
    )
    # The line is a JSON object the store keeps; the token in it must read as absent.
    return _line({**line, field: value}), (connector, None)


def _write(path: Path, lines: list[bytes], *, torn_tail: bytes | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(line + b"\n" for line in lines)
    if torn_tail:
        data += torn_tail  # a final line without its newline: a writer was killed
    path.write_bytes(data)


def _fresh_jsonl() -> tuple[JsonlStore, Path]:
    folder = Path(tempfile.mkdtemp(prefix="hostile-", dir="."))
    store = JsonlStore.from_url(f"jsonl://{folder}")
    return store, folder


# JSONL ------------------------------------------------------------------------


@SETTINGS
@given(st.lists(metric_lines(), max_size=30), st.none() | st.binary(min_size=1, max_size=50))
def test_jsonl_metrics_reads_keep_exactly_the_valid_records(
    lines: list[tuple[bytes, CallRecord | None]], tail: bytes | None
) -> None:
    store, _folder = _fresh_jsonl()
    _write(store.paths["metrics"], [line for line, _ in lines], torn_tail=tail)
    expected = [record for _, record in lines if record is not None]
    bad = sum(record is None for _, record in lines)
    got = store.read_calls(since=-1e300)
    assert got == expected
    assert store.stats.skipped_lines == bad
    # Every other reader of the file answers too.
    assert set(store.connectors()) <= set(CONNECTORS)
    counts = store.compact(metrics_retention_s=1e12)
    assert counts["metrics_kept"] == len(expected)
    assert store.read_calls(since=-1e300) == expected


@SETTINGS
@given(st.lists(circuit_lines(), max_size=30), st.none() | st.binary(min_size=1, max_size=50))
def test_jsonl_circuit_reads_keep_the_last_valid_record(
    lines: list[tuple[bytes, tuple[str, CircuitRecord] | None]], tail: bytes | None
) -> None:
    store, _ = _fresh_jsonl()
    _write(store.paths["circuits"], [line for line, _ in lines], torn_tail=tail)
    expected: dict[str, CircuitRecord] = {}
    for _, verdict in lines:
        if verdict is not None:
            expected[verdict[0]] = verdict[1]
    for name in CONNECTORS:
        assert store.get_circuit(name) == expected.get(name)
    assert store.list_circuits() == expected
    assert store.stats.skipped_lines == sum(v is None for _, v in lines)


@SETTINGS
@given(st.lists(token_lines(), max_size=30), st.none() | st.binary(min_size=1, max_size=50))
def test_jsonl_tokens_are_whole_or_absent(
    lines: list[tuple[bytes, tuple[str, dict[str, Any] | None] | None]], tail: bytes | None
) -> None:
    store, _ = _fresh_jsonl()
    _write(store.paths["tokens"], [line for line, _ in lines], torn_tail=tail)
    last: dict[str, dict[str, Any] | None] = {}
    for _, verdict in lines:
        if verdict is not None:
            last[verdict[0]] = verdict[1]
    for name in CONNECTORS:
        token = load_token(name, store=store, policy=POLICY)
        fields = last.get(name)
        if fields is None:
            assert token is None
        else:
            assert token == _expected_token(fields)
    assert store.stats.skipped_lines == sum(v is None for _, v in lines)
    statuses = token_statuses(store, policy=POLICY)
    assert {s.connector for s in statuses} == set(last)
    assert all(s.readable == (last[s.connector] is not None) for s in statuses)


def _expected_token(fields: dict[str, Any]) -> OAuth2Token:
    known = {k: v for k, v in fields.items() if k in OAuth2Token.model_fields}
    return OAuth2Token.model_validate(known)


def test_one_poisoned_line_does_not_hide_the_lines_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A line too deep to parse is skipped like any bad line, and later lines still count."""
    store = JsonlStore.from_url(f"jsonl://{tmp_path}")
    store.save_token("api", {"access_token": "at-1"})
    store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    for path in store.paths.values():
        with path.open("ab") as handle:
            handle.write(b"[" * 100_000 + b"\n")
    caplog.set_level(logging.WARNING)
    store.save_token("api", {"access_token": "at-2"})
    assert store.compare_and_set_circuit("api", 1, CircuitRecord(version=2, failures=1))
    token = store.load_token("api")
    assert token == {"access_token": "at-2"}
    circuit = store.get_circuit("api")
    assert circuit is not None
    assert circuit.version == 2
    assert store.read_calls(since=0) == []
    assert store.stats.skipped_lines == 3


# SQLite -----------------------------------------------------------------------

sqlite_nonnull = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.sampled_from(["ok", "error", "rejected", "[[[[", '{"a":1}', "1e999", "12", "x" * 5000]),
)
sqlite_values = st.none() | sqlite_nonnull


def _sqlite_store() -> SqliteStore:
    folder = Path(tempfile.mkdtemp(prefix="hostile-", dir="."))
    store = SqliteStore(folder / "state.db")
    store.list_circuits()  # creates the schema
    return store


def _raw(store: SqliteStore) -> sqlite3.Connection:
    return sqlite3.connect(store.path, isolation_level=None)


@SETTINGS
@given(
    st.lists(
        st.tuples(
            sqlite_nonnull,  # ts: NOT NULL
            sqlite_nonnull,  # connector
            sqlite_nonnull,  # operation
            sqlite_nonnull,  # duration_ms
            sqlite_nonnull,  # status
            sqlite_values,  # error
            sqlite_nonnull,  # attempt
            sqlite_nonnull,  # final
            sqlite_values,  # labels
        ),
        max_size=15,
    )
)
def test_sqlite_metric_rows_are_returned_or_counted(rows: list[tuple[Any, ...]]) -> None:
    store = _sqlite_store()
    with _raw(store) as conn:
        conn.executemany(
            "INSERT INTO metrics (ts, connector, operation, duration_ms, status, error, "
            "attempt, final, labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    got = store.read_calls(since=-1e300)
    in_window = store._query(  # rows a window read sees: every number, every text, every blob
        "SELECT COUNT(*) FROM metrics WHERE ts >= ?", [-1e300]
    )[0][0]
    assert len(got) + store.stats.skipped_lines == in_window
    for record in got:
        assert isinstance(record, CallRecord)
        assert isinstance(record.ts, float)
        assert isinstance(record.connector, str)
        assert record.status in ("ok", "error", "rejected")
    store.connectors()
    store.compact(metrics_retention_s=1e12)


@SETTINGS
@given(st.lists(st.tuples(names, sqlite_nonnull), max_size=6))
def test_sqlite_circuit_and_token_rows_never_raise_or_half_parse(
    rows: list[tuple[str, Any]],
) -> None:
    store = _sqlite_store()
    with _raw(store) as conn:
        for connector, value in rows:
            conn.execute(
                "INSERT OR REPLACE INTO circuits (connector, version, data) VALUES (?, 1, ?)",
                (connector, value),
            )
            conn.execute(
                "INSERT OR REPLACE INTO tokens (connector, data, updated_at) VALUES (?, ?, 0)",
                (connector, value),
            )
    for name in CONNECTORS:
        circuit = store.get_circuit(name)
        assert circuit is None or isinstance(circuit, CircuitRecord)
        token = load_token(name, store=store, policy=POLICY)
        assert token is None or (
            isinstance(token, OAuth2Token) and token.access_token.get_secret_value()
        )
    store.list_circuits()
    store.list_tokens()
    token_statuses(store, policy=POLICY)
    assert store.stats.skipped_lines >= 0


def test_sqlite_poisoned_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.compare_and_set_circuit("good", 0, CircuitRecord(version=1))
    store.save_token("good", {"access_token": "at-good"})
    poison = "[" * 100_000
    huge = json.dumps({"version": 1, "state": "closed", "changed_at": 10**400})
    with _raw(store) as conn:
        conn.execute("INSERT INTO circuits VALUES ('deep', 1, ?)", (poison,))
        conn.execute("INSERT INTO circuits VALUES ('huge', 1, ?)", (huge,))
        conn.execute("INSERT INTO tokens VALUES ('deep', ?, 0)", (poison,))
        conn.execute(
            "INSERT INTO metrics (ts, connector, operation, duration_ms, status) "
            "VALUES (1.0, 'm', 'op', ?, 'ok')",
            (float("inf"),),
        )
        conn.execute(
            "INSERT INTO metrics (ts, connector, operation, duration_ms, status, labels) "
            "VALUES (1.0, 'm', 'op', 1.0, 'ok', ?)",
            (poison,),
        )
    assert store.get_circuit("deep") is None
    assert store.get_circuit("huge") is None
    assert set(store.list_circuits()) == {"good"}
    assert store.load_token("deep") is None
    assert set(store.list_tokens()) == {"good"}
    records = store.read_calls(since=0)
    assert all(math.isfinite(r.duration_ms) for r in records)
    assert store.stats.skipped_lines >= 4
