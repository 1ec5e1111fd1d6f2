"""health_status / health_report: the rule in metrics.py's docstring, at its boundaries.

* down: the circuit is not closed, or >= CONNECTOR_HEALTH_MIN_CALLS attempts and an
  attempt error rate >= CONNECTOR_HEALTH_DOWN_ERROR_RATE;
* degraded: p95 > CONNECTOR_HEALTH_P95_MS or attempt error rate > CONNECTOR_HEALTH_ERROR_RATE;
* healthy otherwise, including no calls.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from connector_resilience import CircuitBreaker, HealthStatus, testing
from connector_resilience import health_status as public_health_status
from connector_resilience.backends import CallRecord, CircuitRecord, open_store
from connector_resilience.backends.memory import MemoryStore
from connector_resilience.metrics import health_report, health_status, record_call
from connector_resilience.policy import Policy

T0 = 1_700_000_000.0


def calls(
    policy: Policy,
    *,
    ok: int = 0,
    errors: int = 0,
    ms: float = 10.0,
    connector: str = "api",
    final: bool = True,
) -> None:
    """Append ``ok`` successes and ``errors`` failures of ``ms`` each at T0."""
    store = open_store(policy.store.url or "")
    store.append_calls(
        [CallRecord(T0, connector, "get", ms, "ok", None, 1, final) for _ in range(ok)]
        + [
            CallRecord(T0, connector, "get", ms, "error", "OSError", 1, final)
            for _ in range(errors)
        ]
    )


def status(policy: Policy, connector: str = "api") -> HealthStatus:
    return health_status(connector, policy=policy, now=T0 + 1)


@pytest.fixture
def policy() -> Policy:
    return testing.memory_policy()


def test_public_name() -> None:
    assert public_health_status is health_status


def test_health_status_is_a_str_enum() -> None:
    assert [s.value for s in HealthStatus] == ["healthy", "degraded", "down"]
    down: str = HealthStatus.DOWN
    assert down == "down"
    assert str(HealthStatus.DEGRADED) == "degraded"
    assert f"{HealthStatus.HEALTHY}" == "healthy"
    assert HealthStatus("down") is HealthStatus.DOWN


def test_no_calls_is_healthy(policy: Policy) -> None:
    report = health_report("api", policy=policy, now=T0)
    assert report.status is HealthStatus.HEALTHY
    assert report.reasons == ()
    assert report.circuit_state == "closed"


def test_fast_successful_calls_are_healthy(policy: Policy) -> None:
    calls(policy, ok=50, ms=100)
    assert status(policy) is HealthStatus.HEALTHY


# Latency -------------------------------------------------------------------------


def test_p95_exactly_at_the_threshold_is_healthy(policy: Policy) -> None:
    calls(policy, ok=20, ms=2000)  # CONNECTOR_HEALTH_P95_MS defaults to 2000
    assert status(policy) is HealthStatus.HEALTHY


def test_p95_above_the_threshold_is_degraded(policy: Policy) -> None:
    calls(policy, ok=20, ms=2000.5)
    report = health_report("api", policy=policy, now=T0 + 1)
    assert report.status is HealthStatus.DEGRADED
    assert len(report.reasons) == 1
    assert "p95" in report.reasons[0]


def test_a_few_slow_calls_under_the_95th_percentile_stay_healthy(policy: Policy) -> None:
    calls(policy, ok=99, ms=10)
    calls(policy, ok=1, ms=60_000)
    assert status(policy) is HealthStatus.HEALTHY


def test_p95_threshold_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_HEALTH_P95_MS", "100")
    policy = testing.memory_policy()
    calls(policy, ok=10, ms=150)
    assert status(policy) is HealthStatus.DEGRADED
    assert status(testing.memory_policy(health={"p95_ms": 150})) is HealthStatus.HEALTHY


# Error rate ----------------------------------------------------------------------


def test_error_rate_exactly_at_the_threshold_is_healthy(policy: Policy) -> None:
    calls(policy, ok=9, errors=1)  # 0.10 == CONNECTOR_HEALTH_ERROR_RATE
    assert status(policy) is HealthStatus.HEALTHY


def test_error_rate_above_the_threshold_is_degraded(policy: Policy) -> None:
    calls(policy, ok=8, errors=1)  # 0.111
    report = health_report("api", policy=policy, now=T0 + 1)
    assert report.status is HealthStatus.DEGRADED
    assert len(report.reasons) == 1
    assert "error rate" in report.reasons[0]


def test_error_rate_threshold_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_HEALTH_ERROR_RATE", "0.5")
    policy = testing.memory_policy()
    calls(policy, ok=5, errors=5)
    assert status(policy) is HealthStatus.HEALTHY
    calls(policy, errors=1)
    assert status(policy) is HealthStatus.DEGRADED


def test_both_degraded_reasons_are_given(policy: Policy) -> None:
    calls(policy, ok=2, errors=1, ms=5000)
    report = health_report("api", policy=policy, now=T0 + 1)
    assert report.status is HealthStatus.DEGRADED
    assert len(report.reasons) == 2


def test_retried_failures_count_against_health(policy: Policy) -> None:
    """A call that succeeded on its third attempt hid two failures from its caller."""
    store = open_store(policy.store.url or "")
    store.append_calls(
        [
            CallRecord(T0, "api", "get", 10, "error", "OSError", 1, False),
            CallRecord(T0, "api", "get", 10, "error", "OSError", 2, False),
            CallRecord(T0, "api", "get", 10, "ok", None, 3, True),
        ]
    )
    report = health_report("api", policy=policy, now=T0 + 1)
    assert report.summary.error_rate == 0  # the caller saw no error...
    assert report.status is HealthStatus.DEGRADED  # ...but the dependency failed 2 of 3 times


def test_rejected_calls_do_not_make_it_degraded(policy: Policy) -> None:
    calls(policy, ok=10)
    open_store(policy.store.url or "").append_calls(
        [CallRecord(T0, "api", "get", 0.0, "rejected", "CircuitOpenError") for _ in range(50)]
    )
    assert status(policy) is HealthStatus.HEALTHY


# Down by error rate ------------------------------------------------------------


def test_down_error_rate_exactly_is_down(policy: Policy) -> None:
    calls(policy, ok=1, errors=9)  # 0.9 == CONNECTOR_HEALTH_DOWN_ERROR_RATE
    report = health_report("api", policy=policy, now=T0 + 1)
    assert report.status is HealthStatus.DOWN
    assert len(report.reasons) == 1  # down does not also list the degraded reasons
    assert "error rate" in report.reasons[0]


def test_just_under_the_down_rate_is_degraded(policy: Policy) -> None:
    calls(policy, ok=1, errors=8)  # 0.889
    assert status(policy) is HealthStatus.DEGRADED


def test_down_needs_min_calls_attempts(policy: Policy) -> None:
    calls(policy, errors=4)  # CONNECTOR_HEALTH_MIN_CALLS defaults to 5
    assert status(policy) is HealthStatus.DEGRADED
    calls(policy, errors=1)
    assert status(policy) is HealthStatus.DOWN


def test_min_calls_counts_attempts_not_logical_calls(policy: Policy) -> None:
    calls(policy, errors=4, final=False)
    calls(policy, errors=1, final=True)  # one logical call of five failed attempts
    assert status(policy) is HealthStatus.DOWN


def test_down_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_HEALTH_DOWN_ERROR_RATE", "0.5")
    monkeypatch.setenv("CONNECTOR_HEALTH_MIN_CALLS", "2")
    policy = testing.memory_policy()
    calls(policy, ok=1, errors=1)
    assert status(policy) is HealthStatus.DOWN


# Down by circuit ---------------------------------------------------------------


def trip(breaker: CircuitBreaker, failures: int = 5) -> None:
    for _ in range(failures):
        assert breaker.allow()
        breaker.record_failure()


def test_open_circuit_is_down_even_with_good_metrics(store_url: str) -> None:
    policy = Policy(store={"url": store_url, "flush_interval_s": 3600})
    with testing.FakeClock(start=T0):
        breaker = CircuitBreaker("api", policy=policy)
        trip(breaker)
        assert breaker.state == "open"
        open_store(store_url).append_calls(
            [CallRecord(T0, "api", "get", 5.0, "ok") for _ in range(20)]
        )
        report = health_report("api", policy=policy)
    assert report.status is HealthStatus.DOWN
    assert report.circuit_state == "open"
    assert report.reasons == ("circuit open",)


def test_open_circuit_without_calls_is_down(store_url: str) -> None:
    policy = Policy(store={"url": store_url, "flush_interval_s": 3600})
    with testing.FakeClock(start=T0):
        trip(CircuitBreaker("api", policy=policy))
        assert health_status("api", policy=policy) is HealthStatus.DOWN
        assert health_status("other", policy=policy) is HealthStatus.HEALTHY


def test_half_open_circuit_is_down_and_a_closed_one_is_not(fake_clock_store_url: str) -> None:
    policy = Policy(
        store={"url": fake_clock_store_url, "flush_interval_s": 3600},
        circuit={"half_open_prob": 1},
    )
    with testing.FakeClock(start=T0) as clock:
        breaker = CircuitBreaker("api", policy=policy)
        trip(breaker)
        clock.advance(60)  # CB_COOLDOWN_S
        report = health_report("api", policy=policy)
        assert (report.status, report.circuit_state) == (HealthStatus.DOWN, "half_open")
        assert breaker.allow()  # the probe
        breaker.record_success()
        assert breaker.state == "closed"
        assert health_status("api", policy=policy) is HealthStatus.HEALTHY


def test_forced_open_is_down_and_disabled_is_not(policy: Policy) -> None:
    breaker = CircuitBreaker("api", policy=policy)
    breaker.force_open()
    assert health_report("api", policy=policy).circuit_state == "open"
    assert health_status("api", policy=policy) is HealthStatus.DOWN
    breaker.disable()
    assert health_status("api", policy=policy) is HealthStatus.HEALTHY
    breaker.reset()
    assert health_status("api", policy=policy) is HealthStatus.HEALTHY


def test_open_circuit_and_error_rate_give_both_reasons(policy: Policy) -> None:
    store = open_store(policy.store.url or "")
    store.compare_and_set_circuit(
        "api", 0, CircuitRecord(version=1, state="open", opened_at=T0, reopen_at=T0 + 60)
    )
    calls(policy, errors=10)
    with testing.FakeClock(start=T0 + 1):
        report = health_report("api", policy=policy, now=T0 + 1)
    assert report.status is HealthStatus.DOWN
    assert report.reasons[0] == "circuit open"
    assert "error rate" in report.reasons[1]


def test_circuit_state_from_the_default_jsonl_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CIRCUIT_STATE_PATH", "state/circuits.jsonl")
    with testing.FakeClock(start=T0):
        trip(CircuitBreaker("github"))
        assert health_status("github") is HealthStatus.DOWN
    assert (tmp_path / "state" / "circuits.jsonl").exists()


class CircuitUnreadable(MemoryStore):
    """A memory store whose circuit reads fail (fault injection)."""

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        raise OSError("circuit table is gone")


def test_unreadable_circuit_falls_back_to_metrics(caplog: pytest.LogCaptureFixture) -> None:
    store = CircuitUnreadable("memory://no-circuits")
    store.append_calls([CallRecord(T0, "api", "get", 5000.0, "ok")])
    with caplog.at_level(logging.WARNING, logger="connector_resilience"):
        report = health_report("api", store=store, now=T0 + 1)
    assert report.status is HealthStatus.DEGRADED
    assert report.circuit_state == "closed"
    assert any("circuit" in r.getMessage() for r in caplog.records)


# Windows ---------------------------------------------------------------------


def test_health_window_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_HEALTH_WINDOW_S", "600")
    policy = testing.memory_policy()
    calls(policy, errors=10)  # at T0
    assert health_status("api", policy=policy, now=T0 + 599) is HealthStatus.DOWN
    assert health_status("api", policy=policy, now=T0 + 601) is HealthStatus.HEALTHY
    report = health_report("api", policy=policy, now=T0 + 1)
    assert report.summary.window_s == 600


def test_health_window_default_is_an_hour(policy: Policy) -> None:
    calls(policy, errors=10)
    assert health_status("api", policy=policy, now=T0 + 3599) is HealthStatus.DOWN
    assert health_status("api", policy=policy, now=T0 + 3601) is HealthStatus.HEALTHY


def test_explicit_window_beats_the_policy(policy: Policy) -> None:
    calls(policy, errors=10)
    assert health_status("api", policy=policy, now=T0 + 100, window_s=50) is HealthStatus.HEALTHY


def test_health_follows_the_library_clock(policy: Policy) -> None:
    calls(policy, errors=10)
    with testing.FakeClock(start=T0 + 10) as clock:
        assert health_status("api", policy=policy) is HealthStatus.DOWN
        clock.advance(3600)
        assert health_status("api", policy=policy) is HealthStatus.HEALTHY


# Per-connector thresholds ------------------------------------------------------


def test_per_connector_p95_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__SLOW__CONNECTOR_HEALTH_P95_MS", "5000")
    policy = testing.memory_policy()
    calls(policy, ok=10, ms=3000, connector="slow")
    calls(policy, ok=10, ms=3000, connector="fast")
    assert status(policy, "slow") is HealthStatus.HEALTHY
    assert status(policy, "SLOW") is HealthStatus.HEALTHY  # no metrics under that name
    assert status(policy, "fast") is HealthStatus.DEGRADED


def test_per_connector_error_thresholds_from_keywords() -> None:
    policy = testing.memory_policy(
        connectors={
            "flaky": {"health": {"error_rate": 0.5, "down_error_rate": 1.0}},
            "strict": {"CONNECTOR_HEALTH_MIN_CALLS": 1, "CONNECTOR_HEALTH_DOWN_ERROR_RATE": 0.2},
        }
    )
    for name in ("flaky", "strict", "plain"):
        calls(policy, ok=7, errors=3, connector=name)
    assert status(policy, "flaky") is HealthStatus.HEALTHY  # 0.3 <= 0.5
    assert status(policy, "strict") is HealthStatus.DOWN  # 0.3 >= 0.2
    assert status(policy, "plain") is HealthStatus.DEGRADED  # 0.3 > 0.1


def test_per_connector_window_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text("[connectors.batch.health]\nwindow_s = 30\n")
    policy = Policy.from_toml(toml, store={"url": "memory://toml-window"})
    calls(policy, errors=10, connector="batch")
    calls(policy, errors=10, connector="api")
    assert health_status("batch", policy=policy, now=T0 + 60) is HealthStatus.HEALTHY
    assert health_status("api", policy=policy, now=T0 + 60) is HealthStatus.DOWN


# Reports -----------------------------------------------------------------------


def test_report_as_dict(policy: Policy) -> None:
    calls(policy, ok=8, errors=2)
    report = health_report("api", policy=policy, now=T0 + 1)
    data = report.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["connector"] == "api"
    assert data["status"] == "degraded"
    assert data["circuit_state"] == "closed"
    assert data["total_calls"] == 10
    assert data["error_rate"] == 0.2
    assert isinstance(data["reasons"], list)


@pytest.mark.parametrize(
    ("ok", "errors", "ms", "expected"),
    [
        (10, 0, 10, HealthStatus.HEALTHY),
        (10, 0, 3000, HealthStatus.DEGRADED),
        (5, 5, 10, HealthStatus.DEGRADED),
        (0, 10, 10, HealthStatus.DOWN),
        (0, 10, 3000, HealthStatus.DOWN),
    ],
)
def test_verdicts_on_every_backend(
    store_url: str, ok: int, errors: int, ms: float, expected: HealthStatus
) -> None:
    policy = Policy(store={"url": store_url, "flush_interval_s": 3600})
    calls(policy, ok=ok, errors=errors, ms=ms)
    assert health_status("api", policy=policy, now=T0 + 1) is expected


def test_health_reads_the_connectors_own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__GH__CONNECTOR_STORE_URL", "memory://gh-own")
    with testing.FakeClock(start=T0):
        breaker = CircuitBreaker("gh")
        trip(breaker)
        assert breaker.store is open_store("memory://gh-own")
        assert health_status("gh") is HealthStatus.DOWN


def test_record_call_writes_to_the_connectors_own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__GH__CONNECTOR_STORE_URL", "memory://gh-own")
    record_call("gh", "get", 1.0, "ok")
    assert len(open_store("memory://gh-own").read_calls(since=0)) == 1
