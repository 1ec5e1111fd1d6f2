"""What the recovery rules persist and report: record fields, settings, and CircuitOpenError.

Records written before these fields existed read as before; records written
now stay readable by the old reader (it ignores keys it does not know); a bad
value in a new field is refused as strictly as the rest of the record.
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connector_resilience import CircuitOpenError, Policy, resilient, testing
from connector_resilience._failures import describe_failure, mask_secrets
from connector_resilience.backends import CircuitRecord, open_store
from connector_resilience.errors import CircuitTransitionError, fast_circuit_open_error

#: A record exactly as the breaker wrote it before the recovery fields (cccbefe).
OLD_RECORD: dict[str, Any] = {
    "version": 7,
    "state": "open",
    "failures": 0,
    "opened_at": 1_000_000.0,
    "reopen_at": 1_000_060.0,
    "probes": [],
    "override": None,
    "reason": "5 consecutive failures",
    "changed_at": 1_000_000.0,
}
OLD_KEYS = set(OLD_RECORD)

FULL = CircuitRecord(
    version=9,
    state="half_open",
    opened_at=1.0,
    reopen_at=2.0,
    probes=(("p1", 3.0),),
    reason="why",
    changed_at=2.5,
    opens=3,
    probe_successes=2,
    probe_failures=1,
    ramp_from=None,
    ramp_until=None,
    reporters=(("web-1:42:1:abcdef", 2.0), ("web-2:7:1:012345", 2.4)),
    last_failure=("ConnectionError", "refused"),
)


def test_a_record_written_before_the_recovery_fields_reads_as_before() -> None:
    record = CircuitRecord.from_json(OLD_RECORD)
    assert (record.opens, record.probe_successes, record.probe_failures) == (0, 0, 0)
    assert (record.ramp_from, record.ramp_until, record.reporters) == (None, None, ())
    assert record.last_failure is None
    assert record.to_json() == OLD_RECORD  # and is written back unchanged


def test_new_fields_round_trip_and_leave_the_old_keys_as_they_were() -> None:
    ramping = CircuitRecord(version=2, ramp_from=10.0, ramp_until=40.0)
    for record in (FULL, ramping):
        data = record.to_json()
        assert CircuitRecord.from_json(data) == record
        # The old reader takes these keys (and ignores the rest): same names, same types.
        assert set(data) >= OLD_KEYS
        assert isinstance(data["version"], int)
        assert data["state"] in ("closed", "open", "half_open")


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("opens", -1, ValueError),
        ("opens", True, TypeError),
        ("probe_successes", 1.5, TypeError),
        ("probe_failures", "2", TypeError),
        ("ramp_from", math.inf, ValueError),
        ("ramp_until", "soon", TypeError),
        ("reporters", [["a", 1.0]] * 65, ValueError),
        ("reporters", [["a"]], ValueError),
        ("reporters", [["", 1.0]], ValueError),
        ("reporters", [["a", math.nan]], ValueError),
        ("reporters", {"a": 1.0}, ValueError),
        ("last_failure", "ConnectionError", TypeError),
        ("last_failure", {"type": "X"}, TypeError),
        ("last_failure", {"type": "", "message": ""}, ValueError),
        ("last_failure", {"type": "X", "message": "m" * 501}, ValueError),
    ],
)
def test_a_bad_recovery_field_is_refused(field: str, value: Any, error: type[Exception]) -> None:
    data = {**OLD_RECORD, "ramp_from": 1.0, "ramp_until": 2.0, field: value}
    with pytest.raises(error):
        CircuitRecord.from_json(data)


def test_a_ramp_must_end_after_it_starts_and_come_whole() -> None:
    with pytest.raises(ValueError, match="ramp_until"):
        CircuitRecord.from_json({**OLD_RECORD, "ramp_from": 5.0, "ramp_until": 4.0})
    with pytest.raises(TypeError, match="ramp_until"):
        CircuitRecord.from_json({**OLD_RECORD, "ramp_from": 5.0})


def test_every_backend_keeps_the_new_fields(store_url: str) -> None:
    store = open_store(store_url)
    assert store.compare_and_set_circuit(
        "api", 0, FULL.__class__(**{**_fields(FULL), "version": 1})
    )
    read = store.get_circuit("api")
    assert read is not None
    assert _fields(read) == {**_fields(FULL), "version": 1}


def _fields(record: CircuitRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


# Settings ---------------------------------------------------------------------------


def test_the_recovery_settings_are_read_from_their_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "CB_HALF_OPEN_SUCCESSES": "3",
        "CB_COOLDOWN_MULTIPLIER": "2.5",
        "CB_COOLDOWN_MAX_S": "900",
        "CB_SLOW_START_S": "45",
        "CB_QUORUM": "2",
        "CB_LOCAL_OPEN": "false",
    }.items():
        monkeypatch.setenv(name, value)
    circuit = Policy().circuit
    assert (circuit.half_open_successes, circuit.cooldown_multiplier) == (3, 2.5)
    assert (circuit.cooldown_max_s, circuit.slow_start_s) == (900, 45)
    assert (circuit.quorum, circuit.local_open) == (2, False)


def test_the_defaults_are_todays_behaviour() -> None:
    circuit = Policy().circuit
    assert circuit.half_open_successes == 1
    assert circuit.cooldown_multiplier == 1
    assert circuit.slow_start_s == 0
    assert circuit.quorum == 1


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # The value as given and what is accepted (issue 19's settings errors).
        (
            "CB_COOLDOWN_S",
            "inf",
            "CB_COOLDOWN_S='inf' is not accepted: expected a finite number > 0",
        ),
        (
            "CB_COOLDOWN_S",
            "nan",
            "CB_COOLDOWN_S='nan' is not accepted: expected a finite number > 0",
        ),
        ("CB_COOLDOWN_MAX_S", "inf", "'inf' is not accepted: expected a finite number > 0"),
        (
            "CB_COOLDOWN_MULTIPLIER",
            "0.5",
            "'0.5' is not accepted: expected a finite number from 1 to 100",
        ),
        ("CB_SLOW_START_S", "-1", "'-1' is not accepted: expected a finite number from 0 to 86400"),
        ("CB_QUORUM", "0", "'0' is not accepted: expected an integer from 1 to 64"),
        ("CB_QUORUM", "65", "'65' is not accepted: expected an integer from 1 to 64"),
        ("CB_HALF_OPEN_SUCCESSES", "0", "'0' is not accepted: expected an integer from 1 to 1000"),
    ],
)
def test_a_bad_recovery_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable) as caught:
        Policy()
    assert message in str(caught.value)


def test_the_growth_cap_may_not_be_below_the_cooldown() -> None:
    with pytest.raises(
        ValidationError, match=r"CB_COOLDOWN_MAX_S \(600\) must be >= CB_COOLDOWN_S"
    ):
        Policy(circuit={"cooldown_s": 1200, "cooldown_multiplier": 2})
    assert Policy(circuit={"cooldown_s": 1200}).circuit.cooldown_s == 1200  # no growth: no cap


# CircuitOpenError -------------------------------------------------------------------


@pytest.mark.parametrize("ahead_s", [1e12, 1e300, math.inf, -math.inf, math.nan, -1e20])
def test_the_error_text_works_for_any_retry_time(ahead_s: float) -> None:
    error = CircuitOpenError("api", retry_at=time.time() + ahead_s, reason="3 consecutive failures")
    text = str(error)
    assert text.startswith("circuit for connector 'api' is open ")
    assert text.endswith("(3 consecutive failures)")
    fast = fast_circuit_open_error("api", time.time() + ahead_s, "3 consecutive failures", None)
    assert str(fast) == text


def test_a_far_retry_time_reads_as_a_duration() -> None:
    error = CircuitOpenError("api", retry_at=time.time() + 1e12)
    assert "for about 31,688 more years" in str(error)
    assert "with no end set" in str(CircuitOpenError("api", retry_at=math.inf))


def test_the_error_keeps_the_last_failure_through_pickling() -> None:
    error = CircuitOpenError("api", 1e9, "why", ("TimeoutError", "read timed out"))
    fast = fast_circuit_open_error("api", 1e9, "why", ("TimeoutError", "read timed out"))
    for original in (error, fast):
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is CircuitOpenError
        assert (copy.failure_type, copy.failure_message) == ("TimeoutError", "read timed out")
        assert str(copy) == str(error)
    assert "last failure: TimeoutError: read timed out" in str(error)
    bare = CircuitOpenError("api")
    assert (bare.failure_type, bare.failure_message) == (None, None)


def test_transition_errors_pickle_and_say_what_to_do() -> None:
    error = CircuitTransitionError("api", action="half_open", state="disabled", hint="reset it")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "cannot half-open the circuit of 'api': it is disabled; reset it"
    assert (copy.connector, copy.action, copy.state) == ("api", "half_open", "disabled")


# Secrets in failure messages ----------------------------------------------------------

SECRET = "s3cr3t-Zq8v41kPx0"
LONG_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        (f"GET https://bob:{SECRET}@api.example.com/v1/items failed", "api.example.com/v1/items"),
        (f"url: https://api.example.com/v1?api_key={SECRET}&page=2", "https://api.example.com/v1?"),
        (f"401 for Authorization: Bearer {SECRET}", "401 for Authorization"),
        (f"password={SECRET} user=bob", "user=bob"),
        (f'{{"access_token": "{SECRET}", "ok": false}}', '"ok": false'),
        (f"client_secret: {SECRET}; retry", "retry"),
        (f"key {LONG_KEY} was refused", "was refused"),
        (f"token={SECRET}", "token="),
    ],
)
def test_secrets_are_masked_and_the_rest_is_kept(message: str, kept: str) -> None:
    masked = mask_secrets(message)
    assert SECRET not in masked
    assert LONG_KEY not in masked
    assert "***" in masked
    assert kept in masked


def test_plain_messages_are_kept_whole_and_long_ones_cut() -> None:
    assert mask_secrets("[Errno 111] Connection refused") == "[Errno 111] Connection refused"
    assert len(mask_secrets("x " * 1000)) == 300


def test_describing_a_failure_never_raises() -> None:
    class UnprintableError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    described = describe_failure(UnprintableError())
    assert described is not None
    assert described[0].endswith("UnprintableError")
    assert described[1] == ""
    assert describe_failure("HTTP 503") == ("HTTP 503", "")
    assert describe_failure(ConnectionError("x")) == ("ConnectionError", "x")


def test_a_secret_in_the_exception_reaches_neither_the_store_nor_the_rejection(
    tmp_path: Path,
) -> None:
    url = f"jsonl://{tmp_path / 'state'}"
    policy = Policy(
        store={"url": url},
        circuit={"failures_to_open": 2},
        retry={"max_attempts": 1},
    )

    @resilient("vault", policy=policy)
    def fetch() -> None:
        raise ConnectionError(f"https://admin:{SECRET}@vault.internal/v1?token={SECRET}")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch()
    with pytest.raises(CircuitOpenError) as refused:
        fetch()
    assert refused.value.failure_type == "ConnectionError"
    assert refused.value.failure_message == "https://***@vault.internal/v1?***"
    assert SECRET not in str(refused.value)
    testing.reset()
    stored = (tmp_path / "state" / "circuit_state.jsonl").read_text(encoding="utf-8")
    assert "vault.internal" in stored
    assert SECRET not in stored
