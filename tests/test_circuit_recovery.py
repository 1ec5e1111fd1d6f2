"""Breaker recovery on every backend: probe verdicts, growing open time, slow start, quorum.

Time moves with the test kit's ``FakeClock`` on the stores it drives (memory,
JSONL, SQLite). Redis keeps its own clock, so there "ten seconds later" is the
record with every time in it ten seconds earlier, written by compare-and-set
as any process would: what the breaker decides from is (record, store time).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from connector_resilience import testing
from connector_resilience.backends import CircuitRecord, Store, open_store
from connector_resilience.circuit import CircuitBreaker, Outcome, StateChange
from connector_resilience.errors import CircuitOpenError, CircuitTransitionError
from connector_resilience.policy import Policy
from tests.conftest import LOCAL_BACKENDS, url_for


class ScriptedRandom(random.Random):
    """A random source that returns the given numbers in turn (then 0.0)."""

    def __init__(self, values: Sequence[float] = ()) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0) if self.values else 0.0


def _shifted(record: CircuitRecord, seconds: float) -> CircuitRecord:
    """The record as it reads ``seconds`` later: every time in it that much earlier."""

    def back(value: float | None) -> float | None:
        return None if value is None else value - seconds

    return dataclasses.replace(
        record,
        version=record.version + 1,
        opened_at=back(record.opened_at),
        reopen_at=back(record.reopen_at),
        probes=tuple((p, at - seconds) for p, at in record.probes),
        changed_at=record.changed_at - seconds,
        ramp_from=back(record.ramp_from),
        ramp_until=back(record.ramp_until),
        reporters=tuple((r, at - seconds) for r, at in record.reporters),
    )


@dataclasses.dataclass
class Rig:
    """One backend, its clock, and breakers on it."""

    url: str
    fake: testing.FakeClock | None

    @property
    def store(self) -> Store:
        return open_store(self.url)

    def policy(self, **circuit: Any) -> Policy:
        settings = {
            "failures_to_open": 3,
            "cooldown_s": 10,
            "half_open_prob": 1.0,
            "sync_interval_s": 0,
            **circuit,
        }
        return Policy(store={"url": self.url}, circuit=settings)

    def breaker(self, policy: Policy, *, rng: random.Random | None = None) -> CircuitBreaker:
        return CircuitBreaker("api", policy=policy, rng=rng)

    def advance(self, seconds: float, *watching: CircuitBreaker) -> None:
        """Let ``seconds`` pass for the shared record, as ``watching`` breakers see it."""
        if self.fake is not None:
            self.fake.advance(seconds)
            return
        store = self.store
        current = store.get_circuit("api")
        assert current is not None
        # A little more: this process re-anchors its estimate of Redis's clock
        # now and then, which may move it back by a few milliseconds.
        new = _shifted(current, seconds + 0.05)
        assert store.compare_and_set_circuit("api", current.version, new)
        for breaker in watching:
            wait_for(lambda b=breaker: b.record.version >= new.version)  # type: ignore[misc]

    def now(self) -> float:
        return self.store.now()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds: a Redis push reaches other breakers within ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture(params=LOCAL_BACKENDS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    backend: str = request.param
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        yield Rig(f"{server.url}/0?prefix={tmp_path.name}", None)
        return
    with testing.FakeClock(start=1_000_000.0) as fake:
        yield Rig(url_for(backend, tmp_path), fake)


@pytest.fixture(params=[b for b in LOCAL_BACKENDS if b != "redis"])
def fake_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """The backends whose clock FakeClock moves (for rules about elapsed time alone)."""
    with testing.FakeClock(start=1_000_000.0) as fake:
        yield Rig(url_for(request.param, tmp_path), fake)


def _fail(breaker: CircuitBreaker, times: int = 3, error: BaseException | None = None) -> None:
    for _ in range(times):
        breaker.report(breaker.acquire(), "failure", error=error or ConnectionError("refused"))


def _probe(breaker: CircuitBreaker, outcome: str) -> None:
    probe = breaker.acquire()
    assert probe is not None, "expected to be admitted as a probe"
    breaker.report(probe, "success" if outcome == "S" else "failure")


def _cooldown(record: CircuitRecord) -> float:
    assert record.reopen_at is not None
    assert record.opened_at is not None
    return round(record.reopen_at - record.opened_at, 6)


# 1. Half-open verdict from several probes -----------------------------------------


def test_it_takes_the_configured_probe_successes_to_close(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy(half_open_successes=3))
    _fail(breaker)
    rig.advance(10, breaker)
    for done in (1, 2):
        _probe(breaker, "S")
        assert breaker.state == "half_open"
        assert breaker.record.probe_successes == done
    _probe(breaker, "S")
    assert breaker.state == "closed"
    assert breaker.record.probe_successes == 0


def test_any_probe_failure_reopens_and_the_count_starts_over(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy(half_open_successes=3))
    _fail(breaker)
    rig.advance(10, breaker)
    _probe(breaker, "S")
    _probe(breaker, "S")
    _probe(breaker, "F")
    assert breaker.state == "open"
    assert breaker.record.reason == "half-open probe failed"
    rig.advance(10, breaker)
    _probe(breaker, "S")
    _probe(breaker, "S")
    assert breaker.state == "half_open"  # the two earlier successes no longer count
    _probe(breaker, "S")
    assert breaker.state == "closed"


@pytest.mark.parametrize(
    ("outcomes", "final"),
    [
        ("SFSS", "closed"),  # 1 failure in 4: 25% < 50%
        ("FF", "open"),  # 2 of 4 fail whatever comes next: reopened at once
        ("SSS", "closed"),  # at most 1 of 4 can fail now: closed at once
        ("SFSF", "open"),  # 50%
    ],
)
def test_a_rate_model_takes_the_failure_rate_over_the_half_open_probes(
    fake_rig: Rig, outcomes: str, final: str
) -> None:
    policy = fake_rig.policy(
        model="count", window_size=10, min_calls=2, failure_rate=0.5, half_open_successes=4
    )
    breaker = fake_rig.breaker(policy)
    _fail(breaker, 2)
    assert breaker.state == "open"
    fake_rig.advance(10)
    for i, outcome in enumerate(outcomes):
        assert breaker.state == "half_open", f"decided early, before probe {i + 1}"
        _probe(breaker, outcome)
    assert breaker.state == final


def test_a_rate_model_verdict_on_every_backend(rig: Rig) -> None:
    policy = rig.policy(
        model="count", window_size=10, min_calls=2, failure_rate=0.5, half_open_successes=4
    )
    breaker = rig.breaker(policy)
    _fail(breaker, 2)
    rig.advance(10, breaker)
    for outcome in "SFS":
        _probe(breaker, outcome)
    record = breaker.record
    assert (record.probe_successes, record.probe_failures) == (2, 1)
    _probe(breaker, "S")
    assert breaker.state == "closed"


# 2. Growing open time ---------------------------------------------------------------


def test_each_reopen_without_a_close_multiplies_the_open_time_up_to_the_cap(rig: Rig) -> None:
    policy = rig.policy(cooldown_multiplier=2, cooldown_max_s=35)
    breaker = rig.breaker(policy)
    _fail(breaker)
    seen = [_cooldown(breaker.record)]
    for _ in range(3):
        rig.advance(seen[-1], breaker)
        _probe(breaker, "F")
        seen.append(_cooldown(breaker.record))
    assert seen == [10, 20, 35, 35]
    assert breaker.record.opens == 4
    with pytest.raises(CircuitOpenError) as refused:
        breaker.acquire()
    assert refused.value.retry_at == pytest.approx(breaker.record.reopen_at)

    rig.advance(35, breaker)
    _probe(breaker, "S")  # a close resets the growth
    assert breaker.state == "closed"
    _fail(breaker)
    assert _cooldown(breaker.record) == 10
    assert breaker.record.opens == 1


def test_a_close_resets_the_growth_even_while_the_slow_start_runs(rig: Rig) -> None:
    policy = rig.policy(cooldown_multiplier=3, cooldown_max_s=600, slow_start_s=100)
    breaker = rig.breaker(policy, rng=ScriptedRandom())
    _fail(breaker)
    rig.advance(10, breaker)
    _probe(breaker, "F")
    assert _cooldown(breaker.record) == 30
    rig.advance(30, breaker)
    _probe(breaker, "S")  # closed, ramping up
    rig.advance(20, breaker)
    _fail(breaker)  # (the simulation in benchmarks/flapping.py chose this rule)
    assert _cooldown(breaker.record) == 10


def test_the_default_keeps_one_fixed_cooldown_and_writes_the_old_record_shape(
    rig: Rig,
) -> None:
    breaker = rig.breaker(rig.policy())
    _fail(breaker)
    for _ in range(3):
        assert _cooldown(breaker.record) == 10
        rig.advance(10, breaker)
        _probe(breaker, "F")
    rig.advance(10, breaker)
    _probe(breaker, "S")  # one success closes
    assert breaker.state == "closed"
    assert breaker.admitted_share == 1.0
    written = breaker.record.to_json()
    assert set(written) == {
        "version",
        "state",
        "failures",
        "opened_at",
        "reopen_at",
        "probes",
        "override",
        "reason",
        "changed_at",
    }


# 3. Slow start ----------------------------------------------------------------------


def test_slow_start_ramps_admission_from_a_tenth_to_all_calls_by_store_time(rig: Rig) -> None:
    # A long ramp: on Redis real time passes too, and must not move the share visibly.
    draws = ScriptedRandom()
    breaker = rig.breaker(rig.policy(slow_start_s=2000), rng=draws)
    _fail(breaker)
    rig.advance(10, breaker)
    _probe(breaker, "S")
    record = breaker.record
    assert record.ramp_from is not None
    assert record.ramp_from == pytest.approx(rig.now(), abs=2.0)
    assert record.ramp_until == pytest.approx(record.ramp_from + 2000)
    assert breaker.admit_until == 0.0  # no admission without a draw while ramping

    assert breaker.admitted_share == pytest.approx(0.1, abs=0.005)
    draws.values = [0.05, 0.5]
    assert breaker.acquire() is None  # 0.05 < 10%: admitted
    with pytest.raises(CircuitOpenError) as refused:
        breaker.acquire()
    assert "slow start after recovery: admitting 10% of calls" in str(refused.value)
    assert "refused the call" in str(refused.value)
    assert breaker.state == "closed"

    rig.advance(1000, breaker)
    assert breaker.admitted_share == pytest.approx(0.55, abs=0.005)
    draws.values = [0.5, 0.6]
    assert breaker.acquire() is None
    with pytest.raises(CircuitOpenError, match="admitting 55% of calls"):
        breaker.acquire()

    rig.advance(1001, breaker)
    assert breaker.admitted_share == 1.0
    draws.values = [0.999]
    assert breaker.acquire() is None
    assert breaker.admit_until > 0.0  # the fast path is back


def test_slow_start_share_of_many_calls_follows_the_ramp(fake_rig: Rig) -> None:
    breaker = fake_rig.breaker(fake_rig.policy(slow_start_s=60), rng=random.Random(7))
    _fail(breaker)
    fake_rig.advance(10)
    _probe(breaker, "S")
    fake_rig.advance(30)  # halfway: 10% + 90% / 2
    admitted = 0
    for _ in range(2000):
        try:
            breaker.acquire()
        except CircuitOpenError:
            continue
        admitted += 1
    # 2000 draws at p=0.55: the standard deviation is 1.1 points; 5 of them either way.
    assert 0.495 < admitted / 2000 < 0.605


def test_failures_during_the_slow_start_still_trip(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy(slow_start_s=100), rng=ScriptedRandom())
    _fail(breaker)
    rig.advance(10, breaker)
    _probe(breaker, "S")
    _fail(breaker)  # draws of 0.0: admitted
    assert breaker.state == "open"
    assert breaker.record.ramp_from is None


def test_reset_clears_the_growth_and_the_ramp(rig: Rig) -> None:
    policy = rig.policy(cooldown_multiplier=2, slow_start_s=100)
    breaker = rig.breaker(policy)
    _fail(breaker)
    rig.advance(10, breaker)
    _probe(breaker, "S")
    assert breaker.record.ramp_until is not None
    breaker.reset()
    assert breaker.record.ramp_until is None
    assert breaker.admitted_share == 1.0
    assert breaker.record.opens == 0


# 4. Quorum --------------------------------------------------------------------------


def test_a_shared_breaker_opens_for_all_only_when_a_quorum_of_breakers_failed(
    rig: Rig,
) -> None:
    policy = rig.policy(quorum=2)
    sick, healthy = rig.breaker(policy), rig.breaker(policy)
    assert sick.reporter_id != healthy.reporter_id
    changes: list[StateChange] = []
    sick.add_listener(changes.append)

    _fail(sick, 3)
    assert sick.state == "open"  # its own view: it protects itself
    assert sick.local_record is not None
    assert [(c.old, c.new, c.local) for c in changes] == [("closed", "open", True)]
    assert "open for this process only" in (changes[0].reason or "")
    with pytest.raises(CircuitOpenError) as refused:
        sick.acquire()
    assert refused.value.failure_type == "ConnectionError"

    shared = rig.store.get_circuit("api")
    assert shared is not None
    assert (shared.state, shared.failures) == ("closed", 3)
    assert [r[0] for r in shared.reporters] == [sick.reporter_id]
    wait_for(lambda: healthy.record.version == shared.version)
    assert healthy.state == "closed"
    assert healthy.acquire() is None  # the rest of the fleet goes on

    _fail(healthy, 1)  # a second breaker fails too: the quorum is met
    assert healthy.state == "open"
    assert healthy.local_record is None
    wait_for(lambda: sick.record.state == "open")
    assert sick.local_record is None  # the shared breaker decides for everyone now
    assert len(changes) == 1  # open on its own, then open with everyone: still open


def test_a_success_anywhere_ends_the_run_of_failures_and_its_reports(rig: Rig) -> None:
    policy = rig.policy(quorum=2)
    first, second = rig.breaker(policy), rig.breaker(policy)
    _fail(first, 2)
    wait_for(lambda: second.record.failures == 2)
    second.report(second.acquire(), "success")
    record = rig.store.get_circuit("api")
    assert record is not None
    assert (record.failures, record.reporters) == (0, ())


def test_without_local_open_a_process_below_quorum_keeps_calling(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy(quorum=2, local_open=False))
    _fail(breaker, 6)  # every call admitted
    assert breaker.state == "closed"
    assert breaker.local_record is None
    assert breaker.acquire() is None


def test_a_process_open_on_its_own_probes_and_closes_on_its_own(fake_rig: Rig) -> None:
    policy = fake_rig.policy(quorum=2, half_open_successes=2)
    sick, other = fake_rig.breaker(policy), fake_rig.breaker(policy)
    _fail(sick, 3)
    fake_rig.advance(10)
    assert sick.state == "half_open"
    assert other.state == "closed"
    _probe(sick, "S")
    assert sick.state == "half_open"
    _probe(sick, "S")
    assert sick.state == "closed"
    assert sick.local_record is None
    shared = fake_rig.store.get_circuit("api")
    assert shared is not None
    assert (shared.state, shared.failures) == ("closed", 0)  # its successes reached the store


def test_a_local_probe_failure_reopens_with_growth_and_reports_again(fake_rig: Rig) -> None:
    policy = fake_rig.policy(quorum=3, cooldown_multiplier=2)
    sick = fake_rig.breaker(policy)
    _fail(sick, 3)
    fake_rig.advance(10)
    _probe(sick, "F")
    local = sick.local_record
    assert local is not None
    assert _cooldown(local) == 20
    shared = fake_rig.store.get_circuit("api")
    assert shared is not None
    assert shared.failures == 4  # the failed probe counted for the fleet as well


def test_reports_older_than_a_cooldown_do_not_make_a_quorum(fake_rig: Rig) -> None:
    policy = fake_rig.policy(quorum=2)
    first, second = fake_rig.breaker(policy), fake_rig.breaker(policy)
    _fail(first, 3)
    fake_rig.advance(10.5)  # the first breaker's report is older than the cooldown now
    _fail(second, 1)
    assert fake_rig.store.get_circuit("api").state == "closed"  # type: ignore[union-attr]
    assert second.local_record is not None  # the run reached 4, but from one live reporter


def test_quorum_with_a_rate_model_counts_breakers_whose_window_tripped(rig: Rig) -> None:
    policy = rig.policy(quorum=2, model="count", window_size=4, min_calls=4, failure_rate=0.5)
    first, second = rig.breaker(policy), rig.breaker(policy)
    outcomes: tuple[Outcome, ...] = ("failure", "failure", "success", "success")
    for outcome in outcomes:
        first.report(first.acquire(), outcome)
    assert first.local_record is not None
    assert rig.store.get_circuit("api").state == "closed"  # type: ignore[union-attr]
    for outcome in ("failure", "failure", "failure", "success"):
        second.report(second.acquire(), outcome)
    assert second.state == "open"
    assert rig.store.get_circuit("api").state == "open"  # type: ignore[union-attr]


def test_the_record_keeps_at_most_quorum_reporters(fake_rig: Rig) -> None:
    policy = fake_rig.policy(quorum=3, failures_to_open=100)
    breakers = [fake_rig.breaker(policy) for _ in range(6)]
    for breaker in breakers:
        _fail(breaker, 1)
    record = fake_rig.store.get_circuit("api")
    assert record is not None
    assert [r[0] for r in record.reporters] == [b.reporter_id for b in breakers[-3:]]


# 5. Operator moves ------------------------------------------------------------------


def test_half_open_ends_the_cooldown_now_and_close_closes(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy(cooldown_s=3600, slow_start_s=30))
    _fail(breaker)
    breaker.half_open()
    assert breaker.state == "half_open"
    assert breaker.acquire() is not None  # probing at once, not in an hour
    breaker.close()
    assert breaker.state == "closed"
    assert breaker.record.ramp_until is not None  # a close is a recovery: slow start
    assert breaker.record.reason is None


def test_an_operator_may_close_or_probe_a_forced_open_breaker(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy())
    breaker.force_open(reason="maintenance")
    breaker.half_open()
    assert breaker.record.override is None
    assert breaker.state == "half_open"
    breaker.force_open(reason="maintenance")
    breaker.close()
    assert (breaker.state, breaker.record.override) == ("closed", None)


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ("closed", "close", "it is closed; nothing to close"),
        ("closed", "half_open", "it is closed; nothing to probe"),
        ("half_open", "half_open", "it is half-open; it is probing already"),
        ("disabled", "close", "it is disabled; an operator disabled it; reset()"),
        ("disabled", "half_open", "it is disabled"),
    ],
)
def test_moves_that_make_no_sense_are_refused_and_change_nothing(
    rig: Rig, setup: str, action: str, message: str
) -> None:
    breaker = rig.breaker(rig.policy())
    if setup == "half_open":
        _fail(breaker)
        breaker.half_open()
    elif setup == "disabled":
        breaker.disable()
    before = breaker.record
    with pytest.raises(CircuitTransitionError, match=message) as refused:
        getattr(breaker, action)()
    assert refused.value.connector == "api"
    assert refused.value.action == action
    assert breaker.record == before


def test_close_and_half_open_act_on_a_process_own_view(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy(quorum=2))
    _fail(breaker, 3)
    assert breaker.local_record is not None
    breaker.half_open()
    assert breaker.state == "half_open"
    breaker.close()
    assert breaker.state == "closed"
    assert breaker.local_record is None


def test_reset_and_forced_states_drop_a_process_own_view(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy(quorum=2))
    _fail(breaker, 3)
    breaker.disable()
    assert breaker.local_record is None
    assert breaker.acquire() is None


# 6. The failure that opened it ------------------------------------------------------


def test_rejections_carry_the_failure_that_opened_the_circuit(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy())
    _fail(breaker, 2, ConnectionError("first"))
    _fail(breaker, 1, TimeoutError("read timed out"))
    with pytest.raises(CircuitOpenError) as refused:
        breaker.acquire()
    assert (refused.value.failure_type, refused.value.failure_message) == (
        "TimeoutError",
        "read timed out",
    )
    assert "last failure: TimeoutError: read timed out" in str(refused.value)
    other = rig.breaker(rig.policy())  # another process reads it from the store
    with pytest.raises(CircuitOpenError) as seen_elsewhere:
        other.acquire()
    assert seen_elsewhere.value.failure_type == "TimeoutError"
    rig.advance(10, breaker)
    _probe(breaker, "S")
    assert breaker.record.last_failure is None  # closed: nothing to tell


def test_a_reopen_keeps_the_probe_failure_and_forced_open_has_none(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy())
    _fail(breaker)
    rig.advance(10, breaker)
    probe = breaker.acquire()
    breaker.report(probe, "failure", error="HTTP 503")
    assert breaker.record.last_failure == ("HTTP 503", "")
    breaker.force_open(reason="maintenance")
    with pytest.raises(CircuitOpenError) as refused:
        breaker.acquire()
    assert refused.value.failure_type is None
    assert str(refused.value).endswith("(maintenance)")


def test_the_store_holds_the_failure_masked(rig: Rig) -> None:
    breaker = rig.breaker(rig.policy(failures_to_open=1))
    secret = "hunter2-9f8e7d6c5b4a39281706f5e4"
    error = ConnectionError(f"GET https://bob:{secret}@api.example.com/v1?api_key={secret}")
    _fail(breaker, 1, error)
    record = rig.store.get_circuit("api")
    assert record is not None
    assert record.last_failure is not None
    assert secret not in json.dumps(record.to_json())
    assert record.last_failure[1] == "GET https://***@api.example.com/v1?***"
