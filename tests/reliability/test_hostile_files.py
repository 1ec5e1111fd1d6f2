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
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector_resilience import summarize
from connector_resilience.backends import CallRecord, CircuitRecord, open_store
from connector_resilience.backends import sqlite as sqlite_backend
from connector_resilience.backends.jsonl import JsonlStore
from connector_resilience.backends.sqlite import SqliteStore
from connector_resilience.circuit import CircuitBreaker
from connector_resilience.cli._common import EXIT_ERROR
from connector_resilience.errors import StoreError
from connector_resilience.oauth2 import OAuth2Token, load_token, token_statuses
from connector_resilience.policy import Policy
from tests._ops import run_cli

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
#: A final line whose writer was killed: no newline in it (one would end the line).
torn_tails = st.none() | st.binary(min_size=1, max_size=50).map(lambda b: b.replace(b"\n", b"x"))
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
    field = draw(
        st.sampled_from(
            ["ts", "duration_ms", "status", "connector", "operation", "final", "attempt", "error"]
        )
    )
    value: Any
    if field in ("connector", "operation"):
        value = draw(wrong.filter(lambda v: not isinstance(v, str)))
    elif field == "status":
        value = draw(wrong | st.sampled_from(["OK", "fine", ""]))
    elif field == "final":  # only true or false: "no" is not false, 1 is not true
        value = draw(st.sampled_from(["no", "false", 0, 1, None, [], float("nan")]))
    elif field == "attempt":
        value = draw(st.sampled_from([True, False, -1, 1.5, "2", None]))
    elif field == "error":
        value = draw(st.sampled_from([5, ["E"], {"type": "E"}, True]))
    else:
        value = draw(wrong | st.sampled_from([float("inf"), -float("inf"), "12", True, -1]))
        if field == "ts" and value == -1:
            value = True  # a negative time is odd, but finite: not refused
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
                ("opened_at", float("-inf")),
                ("reopen_at", {"at": 1}),
                ("reopen_at", float("nan")),  # the breaker would never half-open
                ("reopen_at", float("inf")),
                ("changed_at", float("nan")),
                ("version", True),  # not the integer 1
                ("version", -1),
                ("failures", True),
                ("failures", -3),
                ("reason", 5),
                ("probes", [["p", float("inf")]]),  # a slot held for ever
                ("probes", [["p", float("nan")]]),
                ("probes", [[7, 1.0]]),
                ("probes", [["p", 1.0, "extra"]]),
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
@given(st.lists(metric_lines(), max_size=30), torn_tails)
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
@given(st.lists(circuit_lines(), max_size=30), torn_tails)
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
@given(st.lists(token_lines(), max_size=30), torn_tails)
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


VALID_CIRCUIT = json.dumps(CircuitRecord(version=1, failures=2).to_json())
VALID_TOKEN = json.dumps({"access_token": "at-valid", "token_type": "Bearer"})


def _json_object(value: Any) -> bool:
    """Whether a SQLite value is the text of a JSON object (what a token row must hold)."""
    if not isinstance(value, str | bytes):
        return False
    try:
        return isinstance(json.loads(value), dict)
    except (ValueError, RecursionError):
        return False


@SETTINGS
@given(
    st.lists(
        st.tuples(names, sqlite_nonnull | st.sampled_from([VALID_CIRCUIT, VALID_TOKEN])),
        max_size=6,
    )
)
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
    final = dict(rows)  # INSERT OR REPLACE: the last value per connector stays
    for name in CONNECTORS:
        circuit = store.get_circuit(name)
        assert circuit == (
            CircuitRecord(version=1, failures=2) if final.get(name) == VALID_CIRCUIT else None
        )
        token = load_token(name, store=store, policy=POLICY)
        if final.get(name) == VALID_TOKEN:
            assert token is not None
            assert token.access_token.get_secret_value() == "at-valid"
        else:
            assert token is None
    assert set(store.list_circuits()) == {n for n, v in final.items() if v == VALID_CIRCUIT}
    store.list_tokens()
    token_statuses(store, policy=POLICY)
    # Each read of an unreadable row counts once: a circuit row twice (get_circuit,
    # list_circuits), a token row that is not a JSON object three times (load_token,
    # list_tokens, token_statuses). A JSON object that is not a token is the token
    # layer's to refuse (it reads as absent, above), not the store's to count.
    bad_circuits = sum(v != VALID_CIRCUIT for v in final.values())
    bad_tokens = sum(not _json_object(v) for v in final.values())
    assert store.stats.skipped_lines == 2 * bad_circuits + 3 * bad_tokens


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
    # Five poisoned items, each read once: five skipped.
    assert store.get_circuit("deep") is None
    assert store.get_circuit("huge") is None
    assert store.load_token("deep") is None
    records = store.read_calls(since=0)
    assert records == []
    assert store.stats.skipped_lines == 5
    # Listing reads the three poisoned circuit and token rows again.
    assert set(store.list_circuits()) == {"good"}
    assert set(store.list_tokens()) == {"good"}
    assert store.stats.skipped_lines == 8
    assert all(math.isfinite(r.duration_ms) for r in records)


# Issue 21, item 4: one huge line -----------------------------------------------

#: The documented bound on a line (``backends._lines.MAX_LINE_BYTES``).
MAX_LINE_BYTES = 1 << 20
#: Far longer than the bound, and than the memory a read may take.
HUGE_LINE_BYTES = 24 << 20
#: A read of the files below never holds more than this (blocks, not lines).
READ_MEMORY_BOUND = 8 << 20


def _exactly(length: int, data: dict[str, Any]) -> bytes:
    """``data`` as one JSON line of exactly ``length`` bytes (padded in an unknown field)."""
    bare = json.dumps({**data, "x_pad": ""}, separators=(",", ":")).encode()
    line = json.dumps({**data, "x_pad": "a" * (length - len(bare))}, separators=(",", ":"))
    assert len(line) == length
    return line.encode()


def _peak_bytes(read: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = read()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_line_past_the_bound_is_skipped_and_never_read_whole(tmp_path: Path) -> None:
    """summarize(), CircuitBreaker.allow() and load_token() in bounded memory, lines counted."""
    from connector_resilience.backends import _lines

    assert _lines.MAX_LINE_BYTES == MAX_LINE_BYTES
    folder = tmp_path / "state"
    store = JsonlStore.from_url(f"jsonl://{folder}")
    now = time.time()
    call = {"ts": now, "connector": "api", "operation": "op", "duration_ms": 5.0, "status": "ok"}
    circuit = {"connector": "api", **CircuitRecord(version=1, failures=1).to_json()}
    token = {"connector": "api", "access_token": "at-1", "token_type": "Bearer"}
    huge = b'{"connector":"api","x":"' + b"a" * HUGE_LINE_BYTES + b'"}'
    for kind, data in (("metrics", call), ("circuits", circuit), ("tokens", token)):
        lines = [
            _exactly(MAX_LINE_BYTES, data),  # at the bound: read
            huge,  # far past it: skipped, and never held whole
            _exactly(MAX_LINE_BYTES + 1, data),  # one byte past: skipped
            json.dumps(data).encode(),
        ]
        _write(store.paths[kind], lines, torn_tail=None)
    policy = Policy(store={"url": f"jsonl://{folder}"})

    fresh = JsonlStore.from_url(f"jsonl://{folder}")
    summary, peak = _peak_bytes(lambda: summarize("api", store=fresh, policy=policy, window_s=60))
    assert summary.total_calls == 2
    assert fresh.stats.skipped_lines == 2
    assert peak < READ_MEMORY_BOUND, f"summarize() held {peak / 2**20:.0f} MiB"

    fresh = JsonlStore.from_url(f"jsonl://{folder}")
    allowed, peak = _peak_bytes(lambda: CircuitBreaker("api", policy=policy, store=fresh).allow())
    assert allowed
    assert fresh.get_circuit("api") == CircuitRecord(version=1, failures=1)
    assert fresh.stats.skipped_lines == 2
    assert peak < READ_MEMORY_BOUND, f"the breaker held {peak / 2**20:.0f} MiB"

    fresh = JsonlStore.from_url(f"jsonl://{folder}")
    loaded, peak = _peak_bytes(lambda: load_token("api", store=fresh, policy=policy))
    assert loaded is not None
    assert loaded.access_token.get_secret_value() == "at-1"
    assert fresh.stats.skipped_lines == 2
    assert peak < READ_MEMORY_BOUND, f"load_token() held {peak / 2**20:.0f} MiB"

    # Compaction streams too, and keeps exactly the readable records.
    counts, peak = _peak_bytes(lambda: fresh.compact(metrics_retention_s=3600))
    assert counts == {"metrics_kept": 2, "metrics_dropped": 2, "circuits": 1, "tokens": 1}
    assert peak < READ_MEMORY_BOUND, f"compact() held {peak / 2**20:.0f} MiB"


def test_a_record_past_the_line_bound_is_refused_at_write(tmp_path: Path) -> None:
    """What a reader would skip is never written: the writer refuses it, clearly."""
    store = JsonlStore.from_url(f"jsonl://{tmp_path}")
    with pytest.raises(ValueError, match="longer than"):
        store.save_token("api", {"access_token": "at-" + "a" * MAX_LINE_BYTES})
    assert store.load_token("api") is None


# Issue 21, item 5: a hostile SQLite schema ----------------------------------------

#: A view over a recursive query that never ends: every read of it runs for ever.
ENDLESS = (
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
    "SELECT {columns} FROM r WHERE n < 0"
)
#: The documented bound on a breaker read or write, and slack for a loaded machine.
BREAKER_BOUND_S = 1.0
SLACK_S = 0.5


def _endless_view(path: Path, table: str, columns: str) -> None:
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"CREATE VIEW {table} AS " + ENDLESS.format(columns=columns))


def test_a_hostile_sqlite_schema_never_hangs_the_breaker_or_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).list_circuits()  # a real schema first
    _endless_view(path, "circuits", "'api' AS connector, 1 AS version, '{}' AS data")
    policy = Policy(store={"url": f"sqlite:///{path}"}, circuit={"sync_interval_s": 0})

    started = time.monotonic()
    breaker = CircuitBreaker("api", policy=policy)
    built_s = time.monotonic() - started
    started = time.monotonic()
    assert breaker.allow()  # the store is unreadable: the breaker runs on local state
    allow_s = time.monotonic() - started
    assert built_s < BREAKER_BOUND_S + SLACK_S, f"CircuitBreaker() took {built_s:.1f}s"
    assert allow_s < BREAKER_BOUND_S + SLACK_S, f"allow() took {allow_s:.1f}s"
    assert breaker.state == "closed"

    proc = run_cli("--store", f"sqlite:///{path}", "health")  # it used to never end
    assert proc.returncode == EXIT_ERROR, proc.stderr
    assert "ran past its 1s limit" in proc.stderr


def test_every_sqlite_statement_ends_within_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metrics and tokens too (their budget, 20 s, is shortened here to keep the test short)."""
    monkeypatch.setattr(sqlite_backend, "_STATEMENT_BUDGET_S", 0.3)
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.list_circuits()
    _endless_view(path, "tokens", "'api' AS connector, '{}' AS data, 0 AS updated_at")
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute(
            "CREATE TRIGGER endless AFTER INSERT ON metrics BEGIN SELECT count(*) FROM ("
            + ENDLESS.format(columns="n")
            + "); END"
        )
    record = CallRecord(ts=1.0, connector="api", operation="op", duration_ms=1.0, status="ok")
    operations: list[Callable[[], object]] = [
        lambda: store.load_token("api"),
        lambda: store.append_calls([record]),
    ]
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"ran past its 0\.3s limit"):
            operation()
        took = time.monotonic() - started
        assert took < 0.3 + SLACK_S, f"a statement ran {took:.1f}s"
    assert store.read_calls(since=0) == []  # the interrupted insert left nothing half-done


# Issue 21, item 7: stored values no writer produces --------------------------------

BAD_CIRCUITS: list[dict[str, Any]] = [
    {"reopen_at": float("nan")},
    {"reopen_at": float("inf")},
    {"opened_at": float("-inf")},
    {"changed_at": float("nan")},
    {"probes": [["p", float("inf")]]},
    {"probes": [["p", float("nan")]]},
    {"probes": [[7, 1.0]]},
    {"version": True},
    {"failures": True},
    {"version": -1},
    {"reason": 5},
]


def test_circuit_values_no_writer_produces_are_skipped(shared_store_url: str) -> None:
    """NaN or infinite times and leases, booleans for integers: refused on every store."""
    store = open_store(shared_store_url)
    base = CircuitRecord(version=1, state="open", opened_at=1.0, reopen_at=2.0, changed_at=1.0)
    good = base.to_json()
    assert store.list_circuits() == {}  # (creates SQLite's schema)
    for index, change in enumerate(BAD_CIRCUITS):
        _plant_circuit(shared_store_url, store, f"c{index}", json.dumps({**good, **change}))
    _plant_circuit(shared_store_url, store, "ok", json.dumps(good))
    assert store.list_circuits() == {"ok": base}
    skipped = store.stats.skipped_lines  # type: ignore[attr-defined]
    assert skipped == len(BAD_CIRCUITS)
    for index in range(len(BAD_CIRCUITS)):
        assert store.get_circuit(f"c{index}") is None


def _plant_circuit(url: str, store: Any, connector: str, data: str) -> None:
    """Write ``data`` as ``connector``'s circuit record, behind the store's back."""
    if url.startswith("jsonl://"):
        payload = json.loads(data)
        line = json.dumps({"connector": connector, **payload}, allow_nan=True).encode()
        store.paths["circuits"].parent.mkdir(mode=0o700, exist_ok=True)
        with store.paths["circuits"].open("ab") as handle:
            handle.write(line + b"\n")
    elif url.startswith("sqlite://"):
        with sqlite3.connect(store.path, isolation_level=None) as conn:
            conn.execute("INSERT INTO circuits VALUES (?, 1, ?)", (connector, data))
    else:
        import redis

        client = redis.Redis.from_url(url.partition("?")[0])
        client.hset(store.keys.circuit(connector), mapping={"version": 1, "record": data})
        client.sadd(store.keys.circuit_index, connector)


def test_metric_values_no_writer_produces_are_skipped(tmp_path: Path) -> None:
    """``final`` only true or false (not "no", not 1), counts never booleans: JSONL, SQLite."""
    good = CallRecord(ts=5.0, connector="m", operation="op", duration_ms=1.0, status="ok")
    bad: list[dict[str, Any]] = [
        {"final": "no"},
        {"final": 1},
        {"attempt": True},
        {"ts": True},
        {"duration_ms": -1.0},
        {"error": 5},
    ]
    jsonl = JsonlStore.from_url(f"jsonl://{tmp_path / 'j'}")
    _write(
        jsonl.paths["metrics"],
        [_line({**good.to_json(), **change}) for change in bad] + [_line(good.to_json())],
        torn_tail=None,
    )
    assert jsonl.read_calls(since=0) == [good]
    assert jsonl.stats.skipped_lines == len(bad)

    sqlite_store = SqliteStore(tmp_path / "state.db")
    sqlite_store.list_circuits()
    with _raw(sqlite_store) as conn:
        insert = (
            "INSERT INTO metrics (ts, connector, operation, duration_ms, status, attempt, final) "
            "VALUES (5.0, 'm', 'op', 1.0, 'ok', ?, ?)"
        )
        conn.executemany(insert, [(1, "no"), (1, 2), (1, 0.5), (-1, 1), (1, 1)])
    assert sqlite_store.read_calls(since=0) == [good]
    assert sqlite_store.stats.skipped_lines == 4
