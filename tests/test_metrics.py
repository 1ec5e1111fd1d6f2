"""record_call and summarize against real stores, and the default JSONL store of the seed.

Health verdicts are in test_health.py; the buffer in front of a failing store is in
test_metrics_buffer.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connector_resilience import HealthStatus, Summary, testing
from connector_resilience import record_call as public_record_call
from connector_resilience import summarize as public_summarize
from connector_resilience.backends import CallRecord, Store, open_store
from connector_resilience.backends.jsonl import JsonlStore
from connector_resilience.backends.memory import MemoryStore
from connector_resilience.backends.redis import RedisStore
from connector_resilience.backends.sqlite import SqliteStore
from connector_resilience.metrics import (
    health_status,
    percentile,
    record_call,
    summarize,
    summarize_records,
)
from connector_resilience.policy import Policy

T0 = 1_700_000_000.0


def policy_for(url: str, **overrides: object) -> Policy:
    """A policy on ``url`` whose background writer stays asleep (record_call writes inline)."""
    store: dict[str, object] = {"url": url, "flush_interval_s": 3600}
    store.update(overrides)
    return Policy(store=store)


@contextlib.contextmanager
def fresh_reader(url: str) -> Iterator[Store]:
    """A second store object on the same data, so a read goes back to the files.

    ``memory://`` lives in this process only: the registered store is the only reader.
    """
    if url.startswith("memory://"):
        yield open_store(url)
        return
    store: Store
    if url.startswith("jsonl://"):
        store = JsonlStore.from_url(url)
    elif url.startswith("sqlite://"):
        store = SqliteStore.from_url(url)
    else:
        store = RedisStore.from_url(url)
    try:
        yield store
    finally:
        store.close()


def seed(store: Store, durations: Sequence[float], *, start: float = T0, **kw: object) -> None:
    """Append one ok, final record per duration, a millisecond apart."""
    records = []
    for i, duration in enumerate(durations):
        fields: dict[str, object] = {
            "ts": start + i * 0.001,
            "connector": "api",
            "operation": "get",
            "duration_ms": float(duration),
            "status": "ok",
        }
        fields.update(kw)
        records.append(CallRecord(**fields))  # type: ignore[arg-type]
    store.append_calls(records)


def test_public_names() -> None:
    assert public_record_call is record_call
    assert public_summarize is summarize


# record_call ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "get", 1.0, "ok"), "non-empty"),
        (("api", "", 1.0, "ok"), "non-empty"),
        (("api", "get", 1.0, "OK"), "status"),
        (("api", "get", 1.0, "rejected"), "status"),
        (("api", "get", 1.0, "failed"), "status"),
        (("api", "get", -0.1, "ok"), "duration_ms"),
        (("api", "get", math.nan, "ok"), "duration_ms"),
        (("api", "get", math.inf, "ok"), "duration_ms"),
    ],
)
def test_record_call_validates(args: tuple[str, str, float, str], message: str) -> None:
    policy = testing.memory_policy()
    with pytest.raises(ValueError, match=message):
        record_call(*args, policy=policy)
    assert summarize(policy=policy).attempts == 0


def test_record_call_validates_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        record_call("api", "get", 1.0, "ok", attempt=0, policy=testing.memory_policy())


def test_record_call_zero_duration_is_fine() -> None:
    policy = testing.memory_policy()
    record_call("api", "get", 0, "ok", policy=policy)
    assert summarize("api", policy=policy).total_calls == 1


def test_record_call_is_written_before_it_returns(store_url: str) -> None:
    policy = policy_for(store_url)
    with testing.FakeClock(start=T0):
        record_call("api", "list", 12.5, "ok", policy=policy)
        record_call("api", "create", 80.0, "error", TimeoutError("slow"), policy=policy)
    with fresh_reader(store_url) as reader:
        records = reader.read_calls(since=0)
    assert records == [
        CallRecord(T0, "api", "list", 12.5, "ok", None, 1, True, None),
        CallRecord(T0, "api", "create", 80.0, "error", "TimeoutError", 1, True, None),
    ]


def test_record_call_keeps_attempt_final_and_labels(store_url: str) -> None:
    policy = policy_for(store_url)
    with testing.FakeClock(start=T0):
        record_call(
            "api",
            "get",
            5,
            "error",
            "HTTPError",
            attempt=2,
            final=False,
            labels={"method": "GET", "status_code": "503"},
            policy=policy,
        )
    with fresh_reader(store_url) as reader:
        (record,) = reader.read_calls(since=0)
    assert (record.attempt, record.final, record.error) == (2, False, "HTTPError")
    assert record.labels == {"method": "GET", "status_code": "503"}
    assert record.duration_ms == 5.0
    assert isinstance(record.duration_ms, float)


class CustomFailureError(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        (TimeoutError("boom"), "TimeoutError"),
        (CustomFailureError("x"), "CustomFailureError"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        ("RateLimited", "RateLimited"),
        (None, None),
    ],
)
def test_record_call_stores_the_exception_type_name(
    error: BaseException | str | None, stored: str | None
) -> None:
    policy = testing.memory_policy()
    record_call("api", "get", 1.0, "error", error, policy=policy)
    (record,) = open_store(policy.store.url or "").read_calls(since=0)
    assert record.error == stored
    # The message is not stored: it could hold anything, secrets included.
    assert "boom" not in json.dumps(record.to_json())


def test_record_call_takes_a_store_object_or_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by-url.db'}"
    record_call("api", "get", 1.0, "ok", store=url)
    store = MemoryStore("memory://by-object")
    record_call("api", "get", 1.0, "ok", store=store)
    with fresh_reader(url) as reader:
        assert len(reader.read_calls(since=0)) == 1
    assert len(store.read_calls(since=0)) == 1


def test_record_call_stamps_the_library_clock() -> None:
    policy = testing.memory_policy()
    with testing.FakeClock(start=T0) as clock:
        record_call("api", "get", 1.0, "ok", policy=policy)
        clock.advance(2.5)
        record_call("api", "get", 1.0, "ok", policy=policy)
    stamps = [r.ts for r in open_store(policy.store.url or "").read_calls(since=0)]
    assert stamps == [T0, T0 + 2.5]


# The default store: the seed framework's JSONL files, chosen by the environment -------


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_default_store_is_logs_connectors_metrics_jsonl(tmp_path: Path) -> None:
    with testing.FakeClock(start=T0):
        record_call("github", "list_repos", 42.0, "ok")
        record_call("github", "list_repos", 7.0, "error", ConnectionError())
    path = tmp_path / "logs" / "connectors" / "metrics.jsonl"
    lines = read_jsonl(path)
    assert len(lines) == 2
    assert lines[0]["connector"] == "github"
    assert lines[0]["operation"] == "list_repos"
    assert lines[0]["duration_ms"] == 42.0
    assert lines[0]["status"] == "ok"
    assert lines[0]["ts"] == T0
    assert lines[1]["status"] == "error"
    assert lines[1]["error"] == "ConnectionError"
    with testing.FakeClock(start=T0 + 1):
        summary = summarize("github")
        assert (summary.total_calls, summary.errors) == (2, 1)
        assert health_status("github") is HealthStatus.DEGRADED  # 50% errors


def test_metrics_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_METRICS_PATH", "var/metrics/calls.jsonl")
    record_call("github", "get", 1.0, "ok")
    assert len(read_jsonl(tmp_path / "var" / "metrics" / "calls.jsonl")) == 1
    assert not (tmp_path / "logs" / "connectors" / "metrics.jsonl").exists()
    assert summarize("github").total_calls == 1


def test_metrics_path_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "abs" / "m.jsonl"
    monkeypatch.setenv("CONNECTOR_METRICS_PATH", str(target))
    record_call("github", "get", 1.0, "ok")
    assert len(read_jsonl(target)) == 1


def test_changing_the_metrics_path_moves_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_METRICS_PATH", "a.jsonl")
    record_call("github", "get", 1.0, "ok")
    monkeypatch.setenv("CONNECTOR_METRICS_PATH", "b.jsonl")
    record_call("github", "get", 1.0, "ok")
    record_call("github", "get", 1.0, "ok")
    assert len(read_jsonl(tmp_path / "a.jsonl")) == 1
    assert len(read_jsonl(tmp_path / "b.jsonl")) == 2
    assert summarize("github").total_calls == 2


def test_store_url_from_the_environment_moves_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("CONNECTOR_STORE_URL", url)
    record_call("github", "get", 3.0, "ok")
    assert not (tmp_path / "logs").exists()
    with fresh_reader(url) as reader:
        assert [r.duration_ms for r in reader.read_calls(since=0)] == [3.0]
    assert summarize("github").total_calls == 1


def test_environment_thresholds_apply_to_the_default_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONNECTOR_HEALTH_P95_MS", "100")
    record_call("github", "get", 150.0, "ok")
    assert health_status("github") is HealthStatus.DEGRADED
    monkeypatch.setenv("CONNECTOR_HEALTH_P95_MS", "200")
    assert health_status("github") is HealthStatus.HEALTHY


# summarize: counts --------------------------------------------------------------


def test_summary_of_nothing() -> None:
    summary = summarize("api", policy=testing.memory_policy())
    assert summary == Summary(connector="api", window_s=3600)
    assert (summary.total_calls, summary.errors, summary.error_rate) == (0, 0, 0.0)
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (0.0, 0.0, 0.0)
    assert summary.last_call_at is None


def test_summary_counts_logical_calls_and_attempts(store_url: str) -> None:
    policy = policy_for(store_url)
    with testing.FakeClock(start=T0):
        # Call 1: failed twice, then succeeded.
        record_call(
            "api", "get", 10, "error", TimeoutError(), attempt=1, final=False, policy=policy
        )
        record_call(
            "api", "get", 20, "error", TimeoutError(), attempt=2, final=False, policy=policy
        )
        record_call("api", "get", 30, "ok", attempt=3, final=True, policy=policy)
        # Call 2: failed once, then failed for good.
        record_call("api", "get", 40, "error", OSError(), attempt=1, final=False, policy=policy)
        record_call("api", "get", 50, "error", KeyError(), attempt=2, final=True, policy=policy)
        # Call 3: fine first time.
        record_call("api", "get", 60, "ok", policy=policy)
        summary = summarize("api", policy=policy)
    assert summary.total_calls == 3
    assert summary.errors == 1
    assert summary.error_rate == pytest.approx(1 / 3)
    assert summary.attempts == 6
    assert summary.attempt_errors == 4
    assert summary.attempt_error_rate == pytest.approx(4 / 6)
    assert summary.retries == 3
    assert summary.errors_by_type == {"TimeoutError": 2, "OSError": 1, "KeyError": 1}
    assert summary.p50_ms == 35.0  # attempt latencies 10..60
    assert summary.last_call_at == T0


def test_error_without_a_type_is_counted_as_error() -> None:
    policy = testing.memory_policy()
    record_call("api", "get", 1.0, "error", policy=policy)
    assert summarize("api", policy=policy).errors_by_type == {"error": 1}


def test_rejected_calls_are_counted_apart(store_url: str) -> None:
    policy = policy_for(store_url)
    store = open_store(store_url)
    with testing.FakeClock(start=T0):
        record_call("api", "get", 10, "ok", policy=policy)
        record_call("api", "get", 20, "error", OSError(), policy=policy)
        store.append_calls(
            [
                CallRecord(T0 + 1, "api", "get", 0.0, "rejected", "CircuitOpenError"),
                CallRecord(T0 + 2, "api", "get", 99_999.0, "rejected", "CircuitOpenError"),
            ]
        )
        summary = summarize("api", policy=policy, now=T0 + 3)
    assert summary.rejected == 2
    assert (summary.total_calls, summary.attempts, summary.errors) == (2, 2, 1)
    assert summary.error_rate == 0.5
    assert summary.p99_ms <= 20  # the rejected 99999 ms is not a latency
    assert "CircuitOpenError" not in summary.errors_by_type
    assert summary.last_call_at == T0 + 2


def test_only_rejected_calls() -> None:
    store = MemoryStore("memory://only-rejected")
    store.append_calls([CallRecord(T0, "api", "get", 0.0, "rejected", "CircuitOpenError")])
    summary = summarize("api", store=store, now=T0)
    assert (summary.rejected, summary.total_calls, summary.attempts) == (1, 0, 0)
    assert (summary.error_rate, summary.attempt_error_rate, summary.p95_ms) == (0.0, 0.0, 0.0)


def test_summary_per_connector_and_for_all(store_url: str) -> None:
    policy = policy_for(store_url)
    with testing.FakeClock(start=T0):
        for _ in range(3):
            record_call("github", "get", 10, "ok", policy=policy)
        record_call("slack", "post", 30, "error", OSError(), policy=policy)
        everything = summarize(policy=policy)
        github = summarize("github", policy=policy)
        slack = summarize("slack", policy=policy)
        nobody = summarize("jira", policy=policy)
    assert (everything.connector, everything.total_calls, everything.errors) == (None, 4, 1)
    assert (github.connector, github.total_calls, github.errors) == ("github", 3, 0)
    assert (slack.total_calls, slack.errors, slack.p50_ms) == (1, 1, 30.0)
    assert nobody.total_calls == 0


def test_connector_names_are_exact_in_metrics() -> None:
    policy = testing.memory_policy()
    record_call("GitHub", "get", 1.0, "ok", policy=policy)
    assert summarize("GitHub", policy=policy).total_calls == 1
    assert summarize("github", policy=policy).total_calls == 0


# summarize: percentiles -------------------------------------------------------------


def test_percentiles_of_one_to_a_hundred(store_url: str) -> None:
    store = open_store(store_url)
    seed(store, list(range(1, 101)))
    summary = summarize("api", store=store, now=T0 + 1)
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p95_ms == pytest.approx(95.05)
    assert summary.p99_ms == pytest.approx(99.01)


def test_percentiles_do_not_depend_on_arrival_order() -> None:
    store = MemoryStore("memory://order")
    seed(store, [5, 1, 4, 2, 3])
    summary = summarize("api", store=store, now=T0 + 1)
    assert summary.p50_ms == 3.0
    assert summary.p95_ms == pytest.approx(4.8)


def test_percentiles_of_one_call() -> None:
    store = MemoryStore("memory://one")
    seed(store, [42.0])
    summary = summarize("api", store=store, now=T0 + 1)
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (42.0, 42.0, 42.0)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, 0.0),
        ([7.0], 99, 7.0),
        ([1.0, 2.0], 0, 1.0),
        ([1.0, 2.0], 100, 2.0),
        ([1.0, 2.0], 50, 1.5),
        ([10.0, 20.0, 30.0, 40.0], 95, 38.5),
    ],
)
def test_percentile_function(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


durations = st.lists(
    st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False),
    min_size=2,
    max_size=300,
)


@settings(max_examples=75, deadline=None)
@given(durations)
@example([0.0, 0.0])
@example([1.0, 1e7])
@example([3.0, 1.0, 2.0])
def test_property_percentiles_match_statistics_quantiles(values: list[float]) -> None:
    store = MemoryStore("memory://hypothesis")
    seed(store, values)
    summary = summarize("api", store=store, now=T0 + 1, policy=Policy())
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for got, want in (
        (summary.p50_ms, cuts[49]),
        (summary.p95_ms, cuts[94]),
        (summary.p99_ms, cuts[98]),
    ):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6), (got, want)
    assert min(values) <= summary.p50_ms <= summary.p95_ms <= summary.p99_ms <= max(values)


records = st.lists(
    st.tuples(
        st.sampled_from(["ok", "error", "rejected"]),
        st.booleans(),
        st.floats(min_value=0, max_value=1e5, allow_nan=False),
        st.sampled_from(["TimeoutError", "OSError", None]),
    ),
    max_size=80,
)


@given(records)
def test_property_summary_counts(rows: list[tuple[str, bool, float, str | None]]) -> None:
    batch = [
        CallRecord(T0 + i, "api", "get", d, s, e if s == "error" else None, 1, final)  # type: ignore[arg-type]
        for i, (s, final, d, e) in enumerate(rows)
    ]
    summary = summarize_records(batch, connector="api", window_s=60)
    counted = [r for r in batch if r.status != "rejected"]
    assert summary.rejected == len(batch) - len(counted)
    assert summary.attempts == len(counted)
    assert summary.total_calls == sum(r.final for r in counted)
    assert summary.errors == sum(r.final and r.status == "error" for r in counted)
    assert summary.attempt_errors == sum(r.status == "error" for r in counted)
    assert summary.retries == summary.attempts - summary.total_calls
    assert sum(summary.errors_by_type.values()) == summary.attempt_errors
    assert 0 <= summary.error_rate <= 1
    assert 0 <= summary.attempt_error_rate <= 1
    assert summary.p50_ms <= summary.p95_ms <= summary.p99_ms
    assert summary.last_call_at == (batch[-1].ts if batch else None)


# summarize: windows ------------------------------------------------------------------


def test_window_by_now_and_window_s(store_url: str) -> None:
    policy = policy_for(store_url)
    with testing.FakeClock(start=T0) as clock:
        record_call("api", "get", 1, "ok", policy=policy)  # T0
        clock.advance(40)
        record_call("api", "get", 2, "ok", policy=policy)  # T0 + 40
        clock.advance(20)
        record_call("api", "get", 3, "ok", policy=policy)  # T0 + 60

        def count(window_s: float = 3600, now: float | None = None) -> int:
            return summarize("api", policy=policy, window_s=window_s, now=now).total_calls

        assert count(window_s=60, now=T0 + 60) == 3  # the start of the window is inside it
        assert count(window_s=59.5, now=T0 + 60) == 2
        assert count(window_s=60, now=T0 + 40) == 2  # later records are not in the past
        assert count(window_s=60, now=T0 + 59.9) == 2
        assert count(window_s=10, now=T0 + 1000) == 0
        assert count(window_s=30) == 2  # now defaults to the clock: T0 + 60
        assert count() == 3  # window_s defaults to an hour
        clock.advance(3600)
        assert count() == 1  # an hour after the last record, only it is in the window


def test_window_default_is_an_hour() -> None:
    assert summarize(policy=testing.memory_policy()).window_s == 3600


@pytest.mark.parametrize("window", [0, -1, math.nan])
def test_window_must_be_positive(window: float) -> None:
    with pytest.raises(ValueError, match="window_s"):
        summarize(window_s=window, policy=testing.memory_policy())


def test_summary_as_dict_is_json() -> None:
    policy = testing.memory_policy()
    record_call("api", "get", 5, "error", OSError(), policy=policy)
    data = summarize("api", policy=policy).as_dict()
    assert json.loads(json.dumps(data)) == data
    assert {"total_calls", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms"} <= set(data)
    assert data["errors_by_type"] == {"OSError": 1}
