"""What a newcomer meets in the first hour (issue 19, items 4 and 6).

A store that cannot be written says so through ``warnings`` once, even with
no logging configured; SQLite reports an unusable file as StoreError; a bad
setting is a ConfigurationError naming the variable, the value (unless
secret) and what it accepts; a misspelt variable gets a warning naming the
one it was meant to be.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from connector_resilience import ConfigurationError, Policy, flush_metrics, resilient
from connector_resilience.backends import open_store
from connector_resilience.errors import ConfigurationWarning, StoreError, StoreWarning

ROOT = Path(__file__).resolve().parent.parent

#: sysfs refuses new files to everyone, root included: a store that cannot be written.
UNWRITABLE_SQLITE = "sqlite:////sys/connector-resilience-test.db"


# 4. Store faults are visible; SQLite raises StoreError -----------------------------


def test_an_unwritable_store_warns_once_and_the_calls_go_on() -> None:
    @resilient("unwritable", store=UNWRITABLE_SQLITE, breaker=False)
    def ping() -> str:
        return "pong"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert ping() == "pong"
            flush_metrics()
    store_warnings = [w for w in caught if issubclass(w.category, StoreWarning)]
    assert len(store_warnings) == 1, [str(w.message) for w in caught]
    message = str(store_warnings[0].message)
    assert "writing metrics failed" in message
    assert "/sys/connector-resilience-test.db" in message


def test_the_warning_reaches_stderr_without_any_logging_configured(tmp_path: Path) -> None:
    script = (
        "from connector_resilience import resilient, flush_metrics\n"
        f"@resilient('unwritable', store={UNWRITABLE_SQLITE!r}, breaker=False)\n"
        "def ping():\n"
        "    return 'pong'\n"
        "print(ping())\n"
        "flush_metrics()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pong\n"
    assert "StoreWarning" in result.stderr
    assert result.stderr.count("writing metrics failed") == 1


def test_sqlite_reports_a_file_it_may_not_create_as_store_error() -> None:
    store = open_store(UNWRITABLE_SQLITE)
    with pytest.raises(StoreError, match="cannot open SQLite store") as caught:
        store.read_calls(since=0)
    assert isinstance(caught.value.__cause__, PermissionError)


def test_sqlite_reports_a_file_where_a_folder_should_be_as_store_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x", encoding="utf-8")
    store = open_store(f"sqlite:///{tmp_path}/not-a-folder/state.db")
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        store.get_circuit("any")


# 6. Settings errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "RETRY_MAX_ATTEMPTS",
            "abc",
            "RETRY_MAX_ATTEMPTS='abc' is not accepted: expected an integer from 1 to 1000",
        ),
        (
            "CB_HALF_OPEN_PROB",
            "2",
            "CB_HALF_OPEN_PROB='2' is not accepted: expected a number > 0 and <= 1",
        ),
        ("RETRY_BASE_MS", "-5", "RETRY_BASE_MS='-5' is not accepted: expected a number >= 0"),
        (
            "OAUTH2_REQUIRED",
            "maybe",
            "OAUTH2_REQUIRED='maybe' is not accepted: expected true or false",
        ),
        (
            "RETRY_JITTER",
            "some",
            "RETRY_JITTER='some' is not accepted: expected one of "
            "proportional, full, equal, decorrelated, none",
        ),
        (
            "RETRY_DEADLINE_S",
            "0",
            "RETRY_DEADLINE_S='0' is not accepted: expected a number > 0, or unset",
        ),
        # Load control and breaker recovery (issues 15 and 20) speak the same way.
        (
            "RETRY_ATTEMPT_TIMEOUT_S",
            "0",
            "RETRY_ATTEMPT_TIMEOUT_S='0' is not accepted: expected a number > 0, or unset",
        ),
        (
            "RETRY_BUDGET_SCOPE",
            "cluster",
            "RETRY_BUDGET_SCOPE='cluster' is not accepted: expected one of process, store",
        ),
        (
            "RATE_LIMIT_PER_S",
            "-1",
            "RATE_LIMIT_PER_S='-1' is not accepted: expected a number > 0, or unset",
        ),
        (
            "BULKHEAD_MAX_CONCURRENT",
            "abc",
            "BULKHEAD_MAX_CONCURRENT='abc' is not accepted: expected an integer >= 1, or unset",
        ),
        (
            "CB_HALF_OPEN_SUCCESSES",
            "x",
            "CB_HALF_OPEN_SUCCESSES='x' is not accepted: expected an integer from 1 to 1000",
        ),
        (
            "CB_COOLDOWN_MULTIPLIER",
            "0.5",
            "CB_COOLDOWN_MULTIPLIER='0.5' is not accepted: expected a finite number from 1 to 100",
        ),
        (
            "CB_SLOW_START_S",
            "-3",
            "CB_SLOW_START_S='-3' is not accepted: expected a finite number from 0 to 86400",
        ),
        ("CB_QUORUM", "0", "CB_QUORUM='0' is not accepted: expected an integer from 1 to 64"),
        ("CB_LOCAL_OPEN", "maybe", "CB_LOCAL_OPEN='maybe' is not accepted: expected true or false"),
    ],
)
def test_a_bad_variable_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        Policy()
    assert str(caught.value) == f"invalid settings: {expected}"
    assert isinstance(caught.value, ValidationError)  # code catching pydantic's still works
    assert caught.value.errors()[0]["loc"][-1] == variable


def test_the_first_decorated_call_raises_it_in_a_few_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "abc")

    @resilient("bad-settings")
    def ping() -> str:
        return "pong"

    with pytest.raises(ConfigurationError, match="RETRY_MAX_ATTEMPTS='abc'") as caught:
        ping()
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__  # no pydantic traceback chained under it


def test_a_secret_value_is_never_shown() -> None:
    secret = 123456789
    with pytest.raises(ConfigurationError) as caught:
        Policy(oauth={"encryption_key": secret})
    text = str(caught.value)
    assert "OAUTH_TOKEN_ENCRYPTION_KEY is not accepted: expected a secret string" in text
    assert str(secret) not in text
    assert isinstance(caught.value, ValidationError)
    assert str(secret) not in repr(caught.value.errors())


def test_a_bad_override_names_the_connector_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__GITHUB__RETRY_MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError) as caught:
        Policy()
    assert (
        "CONNECTOR__GITHUB__RETRY_MAX_ATTEMPTS='0' is not accepted: expected an integer "
        "from 1 to 1000"
    ) in str(caught.value)


def test_a_misspelt_variable_warns_with_the_closest_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_MAX_ATTEMTPS", "5")
    monkeypatch.setenv("CB_FAILURE_TO_OPEN", "2")
    monkeypatch.setenv("RATE_LIMIT_PER_SEC", "5")  # load control's prefixes are ours too
    monkeypatch.setenv("BULKHEAD_MAX_CONCURENT", "3")
    monkeypatch.setenv("CONNECTOR_RESILIENCE_CI", "1")  # ours, not a setting: no warning
    monkeypatch.setenv("CONNECTOR_TEAM", "payments")  # looks like nothing of ours
    with pytest.warns(ConfigurationWarning) as caught:
        policy = Policy()
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "BULKHEAD_MAX_CONCURENT is not a connector-resilience setting and is ignored; "
        "did you mean BULKHEAD_MAX_CONCURRENT?",
        "CB_FAILURE_TO_OPEN is not a connector-resilience setting and is ignored; "
        "did you mean CB_FAILURES_TO_OPEN?",
        "RATE_LIMIT_PER_SEC is not a connector-resilience setting and is ignored; "
        "did you mean RATE_LIMIT_PER_S?",
        "RETRY_MAX_ATTEMTPS is not a connector-resilience setting and is ignored; "
        "did you mean RETRY_MAX_ATTEMPTS?",
    ]
    assert policy.retry.max_attempts == 3  # ignored, as it says
    assert policy.limits.rate_per_s is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Policy()  # once per name, not at every Policy()


def test_a_misspelt_override_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONNECTOR__GITHUB__RETRY_BASEMS", "100")
    with pytest.raises(ConfigurationError, match="did you mean CONNECTOR__GITHUB__RETRY_BASE_MS"):
        Policy()
