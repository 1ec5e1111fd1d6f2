"""Policy: the environment contract of DESIGN.md section 3, its sources and their precedence.

Every test runs in its own empty folder with none of our variables set (the
autouse fixture in conftest.py), so ``Policy()`` there means "the defaults".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from connector_resilience import Policy as PublicPolicy
from connector_resilience.policy import (
    CircuitPolicy,
    OAuthPolicy,
    Policy,
    RetryPolicy,
    current_policy,
    env_var_table,
    forget_current_policy,
)

SECRET = "fernet-key-do-not-print-7f3a9c"

#: DESIGN.md section 3, verbatim: (variable, group, field, default).
DESIGN_TABLE: list[tuple[str, str, str, object]] = [
    ("CONNECTOR_METRICS_PATH", "store", "metrics_path", Path("logs/connectors/metrics.jsonl")),
    ("CONNECTOR_HEALTH_P95_MS", "health", "p95_ms", 2000),
    ("CONNECTOR_HEALTH_ERROR_RATE", "health", "error_rate", 0.10),
    ("OAUTH_TOKEN_PATH", "store", "token_path", Path("logs/connectors/tokens.jsonl")),
    ("OAUTH2_REQUIRED", "oauth", "required", False),
    ("OAUTH_REFRESH_SAFETY_WINDOW_S", "oauth", "refresh_safety_window_s", 300),
    ("RETRY_MAX_ATTEMPTS", "retry", "max_attempts", 3),
    ("RETRY_BASE_MS", "retry", "base_ms", 400),
    ("RETRY_CAP_MS", "retry", "cap_ms", 60000),
    ("RETRY_JITTER_PCT", "retry", "jitter_pct", 0.2),
    ("CB_FAILURES_TO_OPEN", "circuit", "failures_to_open", 5),
    ("CB_COOLDOWN_S", "circuit", "cooldown_s", 60),
    ("CB_HALF_OPEN_PROB", "circuit", "half_open_prob", 0.2),
    (
        "CIRCUIT_STATE_PATH",
        "store",
        "circuit_state_path",
        Path("logs/connectors/circuit_state.jsonl"),
    ),
    ("CONNECTOR_STORE_URL", "store", "url", None),
]

#: The settings policy.py adds beyond the design table, with their documented defaults.
EXTRA_TABLE: list[tuple[str, str, str, object]] = [
    ("RETRY_JITTER", "retry", "jitter", "proportional"),
    ("RETRY_DEADLINE_S", "retry", "deadline_s", None),
    ("RETRY_ATTEMPT_TIMEOUT_S", "retry", "attempt_timeout_s", None),
    ("CB_ENABLED", "circuit", "enabled", True),
    ("CB_HALF_OPEN_MAX_PROBES", "circuit", "half_open_max_probes", 1),
    ("CB_PROBE_LEASE_S", "circuit", "probe_lease_s", 30),
    ("CB_MODEL", "circuit", "model", "consecutive"),
    ("CB_WINDOW_SIZE", "circuit", "window_size", 100),
    ("CB_MIN_CALLS", "circuit", "min_calls", 10),
    ("CB_FAILURE_RATE", "circuit", "failure_rate", 0.5),
    ("CB_SLOW_CALL_MS", "circuit", "slow_call_ms", None),
    ("CB_SLOW_CALL_RATE", "circuit", "slow_call_rate", 1.0),
    ("CB_SYNC_INTERVAL_S", "circuit", "sync_interval_s", 0.1),
    ("CB_HALF_OPEN_SUCCESSES", "circuit", "half_open_successes", 1),
    ("CB_COOLDOWN_MULTIPLIER", "circuit", "cooldown_multiplier", 1.0),
    ("CB_COOLDOWN_MAX_S", "circuit", "cooldown_max_s", 600),
    ("CB_SLOW_START_S", "circuit", "slow_start_s", 0),
    ("CB_QUORUM", "circuit", "quorum", 1),
    ("CB_LOCAL_OPEN", "circuit", "local_open", True),
    ("CONNECTOR_HEALTH_DOWN_ERROR_RATE", "health", "down_error_rate", 0.9),
    ("CONNECTOR_HEALTH_MIN_CALLS", "health", "min_calls", 5),
    ("CONNECTOR_HEALTH_WINDOW_S", "health", "window_s", 3600),
    ("OAUTH_LOCK_TIMEOUT_S", "oauth", "lock_timeout_s", 30),
    ("OAUTH_TOKEN_ENCRYPTION_KEY", "oauth", "encryption_key", None),
    ("CONNECTOR_METRICS_RETENTION_S", "store", "metrics_retention_s", 7 * 86400),
    ("CONNECTOR_METRICS_FLUSH_S", "store", "flush_interval_s", 0.5),
    ("CONNECTOR_METRICS_BUFFER_MAX", "store", "buffer_max", 50_000),
    ("CONNECTOR_METRICS_MODE", "store", "metrics_mode", "aggregated"),
    ("CONNECTOR_METRICS_INTERVAL_S", "store", "metrics_interval_s", 0.5),
    ("CONNECTOR_METRICS_MAX_KEYS", "store", "metrics_max_keys", 1000),
    ("CONNECTOR_METRICS_PENDING_MAX", "store", "metrics_pending_max", 100_000),
    ("RETRY_BUDGET_RATIO", "limits", "budget_ratio", 0.2),
    ("RETRY_BUDGET_MIN_PER_S", "limits", "budget_min_per_s", 10),
    ("RETRY_BUDGET_WINDOW_S", "limits", "budget_window_s", 10),
    ("RETRY_BUDGET_SCOPE", "limits", "budget_scope", "store"),
    ("RATE_LIMIT_PER_S", "limits", "rate_per_s", None),
    ("RATE_LIMIT_BURST", "limits", "rate_burst", None),
    ("RATE_LIMIT_SCOPE", "limits", "rate_scope", "process"),
    ("RATE_LIMIT_MAX_WAIT_S", "limits", "rate_max_wait_s", 10),
    ("BULKHEAD_MAX_CONCURRENT", "limits", "bulkhead_max_concurrent", None),
    ("BULKHEAD_MAX_WAIT_S", "limits", "bulkhead_max_wait_s", 0),
    ("BULKHEAD_SCOPE", "limits", "bulkhead_scope", "process"),
    ("BULKHEAD_LEASE_S", "limits", "bulkhead_lease_s", 60),
]

#: A valid non-default value for every variable, as the environment spells it, and
#: what the policy must hold for it.
ENV_VALUES: dict[str, tuple[str, object]] = {
    "CONNECTOR_METRICS_PATH": ("m/calls.jsonl", Path("m/calls.jsonl")),
    "CONNECTOR_HEALTH_P95_MS": ("1500", 1500.0),
    "CONNECTOR_HEALTH_ERROR_RATE": ("0.25", 0.25),
    "OAUTH_TOKEN_PATH": ("t/tokens.jsonl", Path("t/tokens.jsonl")),
    "OAUTH2_REQUIRED": ("true", True),
    "OAUTH_REFRESH_SAFETY_WINDOW_S": ("60", 60.0),
    "RETRY_MAX_ATTEMPTS": ("7", 7),
    "RETRY_BASE_MS": ("250", 250.0),
    "RETRY_CAP_MS": ("9000", 9000.0),
    "RETRY_JITTER_PCT": ("0.5", 0.5),
    "CB_FAILURES_TO_OPEN": ("2", 2),
    "CB_COOLDOWN_S": ("15", 15.0),
    "CB_HALF_OPEN_PROB": ("0.75", 0.75),
    "CIRCUIT_STATE_PATH": ("c/state.jsonl", Path("c/state.jsonl")),
    "CONNECTOR_STORE_URL": ("memory://from-env", "memory://from-env"),
    "RETRY_JITTER": ("full", "full"),
    "RETRY_DEADLINE_S": ("12.5", 12.5),
    "RETRY_ATTEMPT_TIMEOUT_S": ("2.5", 2.5),
    "CB_ENABLED": ("false", False),
    "CB_HALF_OPEN_MAX_PROBES": ("3", 3),
    "CB_PROBE_LEASE_S": ("5", 5.0),
    "CB_MODEL": ("count", "count"),
    "CB_WINDOW_SIZE": ("20", 20),
    "CB_MIN_CALLS": ("4", 4),
    "CB_FAILURE_RATE": ("0.3", 0.3),
    "CB_SLOW_CALL_MS": ("800", 800.0),
    "CB_SLOW_CALL_RATE": ("0.6", 0.6),
    "CB_SYNC_INTERVAL_S": ("0", 0.0),
    "CB_HALF_OPEN_SUCCESSES": ("3", 3),
    "CB_COOLDOWN_MULTIPLIER": ("2", 2.0),
    "CB_COOLDOWN_MAX_S": ("900", 900.0),
    "CB_SLOW_START_S": ("30", 30.0),
    "CB_QUORUM": ("2", 2),
    "CB_LOCAL_OPEN": ("false", False),
    "CONNECTOR_HEALTH_DOWN_ERROR_RATE": ("0.75", 0.75),
    "CONNECTOR_HEALTH_MIN_CALLS": ("20", 20),
    "CONNECTOR_HEALTH_WINDOW_S": ("600", 600.0),
    "OAUTH_LOCK_TIMEOUT_S": ("3", 3.0),
    "OAUTH_TOKEN_ENCRYPTION_KEY": (SECRET, SECRET),
    "CONNECTOR_METRICS_RETENTION_S": ("86400", 86400.0),
    "CONNECTOR_METRICS_FLUSH_S": ("2", 2.0),
    "CONNECTOR_METRICS_BUFFER_MAX": ("10", 10),
    "CONNECTOR_METRICS_MODE": ("raw", "raw"),
    "CONNECTOR_METRICS_INTERVAL_S": ("5", 5.0),
    "CONNECTOR_METRICS_MAX_KEYS": ("50", 50),
    "CONNECTOR_METRICS_PENDING_MAX": ("1000", 1000),
    "RETRY_BUDGET_RATIO": ("0.5", 0.5),
    "RETRY_BUDGET_MIN_PER_S": ("0", 0.0),
    "RETRY_BUDGET_WINDOW_S": ("30", 30.0),
    "RETRY_BUDGET_SCOPE": ("process", "process"),
    "RATE_LIMIT_PER_S": ("12.5", 12.5),
    "RATE_LIMIT_BURST": ("20", 20.0),
    "RATE_LIMIT_SCOPE": ("store", "store"),
    "RATE_LIMIT_MAX_WAIT_S": ("0.5", 0.5),
    "BULKHEAD_MAX_CONCURRENT": ("8", 8),
    "BULKHEAD_MAX_WAIT_S": ("1.5", 1.5),
    "BULKHEAD_SCOPE": ("store", "store"),
    "BULKHEAD_LEASE_S": ("30", 30.0),
}

_WHERE = {env: (group, name) for env, group, name, _ in DESIGN_TABLE + EXTRA_TABLE}
DEFAULTS = {env: default for env, _, _, default in DESIGN_TABLE + EXTRA_TABLE}


def value_of(policy: Policy, env: str) -> object:
    """The policy's value for ``env``, with a secret unwrapped."""
    group, name = _WHERE[env]
    value = getattr(getattr(policy, group), name)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def error_text(exc: BaseException) -> str:
    """Everything a user could see of an error: its message and its repr."""
    return f"{exc}\n{exc!r}"


# The contract: names and defaults ------------------------------------------


def test_policy_is_exported_at_package_level() -> None:
    assert PublicPolicy is Policy


@pytest.mark.parametrize(("env", "group", "name", "default"), DESIGN_TABLE)
def test_design_variable_default(env: str, group: str, name: str, default: object) -> None:
    policy = Policy()
    assert getattr(getattr(policy, group), name) == default
    assert (env, group, name) in {(e, g, n) for e, g, n, _ in env_var_table()}


@pytest.mark.parametrize(("env", "group", "name", "default"), EXTRA_TABLE)
def test_extra_variable_default(env: str, group: str, name: str, default: object) -> None:
    policy = Policy()
    assert getattr(getattr(policy, group), name) == default
    assert (env, group, name) in {(e, g, n) for e, g, n, _ in env_var_table()}


def test_env_var_table_lists_exactly_the_known_variables() -> None:
    names = [env for env, *_ in env_var_table()]
    assert len(names) == len(set(names))
    assert set(names) == {env for env, *_ in DESIGN_TABLE + EXTRA_TABLE}
    assert set(names) == set(ENV_VALUES)


def test_every_setting_has_a_description() -> None:
    for env, _group, _name, info in env_var_table():
        assert info.description, env


@pytest.mark.parametrize("env", sorted(ENV_VALUES))
def test_each_variable_is_read_from_the_environment(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, expected = ENV_VALUES[env]
    monkeypatch.setenv(env, raw)
    assert value_of(Policy(), env) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("no", False)],
)
def test_oauth2_required_parses_booleans(
    raw: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTH2_REQUIRED", raw)
    assert Policy().oauth.required is expected


def test_variable_names_are_not_case_sensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("retry_max_attempts", "9")
    assert Policy().retry.max_attempts == 9


@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_store_url_means_unset(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_STORE_URL", raw)
    assert Policy().store.url is None


def test_store_url_is_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_STORE_URL", "  sqlite:///x.db  ")
    assert Policy().store.url == "sqlite:///x.db"


def test_iter_settings_yields_every_variable_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", SECRET)
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "4")
    settings = dict(Policy().iter_settings())
    assert set(settings) == set(ENV_VALUES)
    assert settings["RETRY_MAX_ATTEMPTS"] == 4
    assert SECRET not in str(settings)
    assert SECRET not in repr(settings)


def test_policy_is_frozen() -> None:
    policy = Policy()
    with pytest.raises(ValidationError):
        policy.retry = RetryPolicy()  # type: ignore[misc]
    with pytest.raises(ValidationError):
        policy.retry.max_attempts = 10
    with pytest.raises(ValidationError):
        policy.circuit.cooldown_s = 1.0
    assert policy.retry.max_attempts == 3


# Keyword overrides ---------------------------------------------------------


def test_keyword_group_mapping_by_field_name() -> None:
    policy = Policy(retry={"max_attempts": 5})
    assert policy.retry.max_attempts == 5
    assert policy.retry.base_ms == 400  # the rest keeps its defaults


def test_keyword_group_mapping_by_variable_name() -> None:
    policy = Policy(circuit={"CB_COOLDOWN_S": 5})
    assert policy.circuit.cooldown_s == 5


def test_keyword_group_model_counts_only_the_fields_it_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "100")
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "9")
    policy = Policy(retry=RetryPolicy(max_attempts=5))
    assert policy.retry.max_attempts == 5  # set on the model: beats the environment
    assert policy.retry.base_ms == 100  # left at its default on the model: env applies


def test_keyword_group_model_that_set_nothing_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CB_COOLDOWN_S", "7")
    assert Policy(circuit=CircuitPolicy()).circuit.cooldown_s == 7


def test_keyword_group_model_explicitly_set_to_the_default_still_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "9")
    assert Policy(retry=RetryPolicy(max_attempts=3)).retry.max_attempts == 3


def test_keyword_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "9")
    assert Policy(retry={"max_attempts": 2}).retry.max_attempts == 2


def test_keyword_unknown_group_field_names_it() -> None:
    with pytest.raises(ValueError, match=r"retry\.bogus"):
        Policy(retry={"bogus": 1})


def test_keyword_variable_of_another_group_is_refused() -> None:
    with pytest.raises(ValueError, match="CB_COOLDOWN_S"):
        Policy(retry={"CB_COOLDOWN_S": 1})


def test_keyword_unknown_top_level_is_refused() -> None:
    with pytest.raises(ValidationError, match="bogus"):
        Policy(bogus=1)  # type: ignore[call-arg]


def test_keyword_secret_is_a_secretstr() -> None:
    policy = Policy(oauth={"encryption_key": SECRET})
    assert isinstance(policy.oauth.encryption_key, SecretStr)
    assert policy.oauth.encryption_key.get_secret_value() == SECRET
    assert SECRET not in repr(policy)
    assert SECRET not in str(policy)


def test_keyword_model_with_secret_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = Policy(oauth=OAuthPolicy(encryption_key=SecretStr(SECRET)))
    assert policy.oauth.encryption_key is not None
    assert policy.oauth.encryption_key.get_secret_value() == SECRET


# .env files ----------------------------------------------------------------


def test_default_dotenv_in_cwd_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RETRY_MAX_ATTEMPTS=8\nCB_COOLDOWN_S=11\n")
    policy = Policy()
    assert policy.retry.max_attempts == 8
    assert policy.circuit.cooldown_s == 11


def test_explicit_env_file(tmp_path: Path) -> None:
    (tmp_path / "custom.env").write_text("RETRY_BASE_MS=123\n")
    (tmp_path / ".env").write_text("RETRY_BASE_MS=999\n")
    assert Policy(_env_file="custom.env").retry.base_ms == 123


def test_env_file_none_disables_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RETRY_MAX_ATTEMPTS=8\n")
    assert Policy(_env_file=None).retry.max_attempts == 3


def test_several_env_files_later_wins(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("RETRY_MAX_ATTEMPTS=4\nRETRY_BASE_MS=10\n")
    (tmp_path / "b.env").write_text("RETRY_MAX_ATTEMPTS=6\n")
    policy = Policy(_env_file=("a.env", "b.env"))
    assert (policy.retry.max_attempts, policy.retry.base_ms) == (6, 10)


def test_missing_env_file_is_ignored() -> None:
    assert Policy(_env_file="nope.env").retry.max_attempts == 3


def test_dotenv_ignores_other_variables(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgres://x\nRETRY_MAX_ATTEMPTS=4\n")
    assert Policy().retry.max_attempts == 4


def test_dotenv_per_connector_override(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CONNECTOR__GITHUB__CB_COOLDOWN_S=9\n")
    policy = Policy()
    assert policy.for_connector("github").circuit.cooldown_s == 9
    assert policy.circuit.cooldown_s == 60


def test_dotenv_invalid_value_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RETRY_JITTER_PCT=3\n")
    with pytest.raises(ValidationError, match="RETRY_JITTER_PCT"):
        Policy()


# TOML ----------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_toml_group_tables(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "policy.toml",
        "[retry]\nmax_attempts = 6\nbase_ms = 50\n[circuit]\ncooldown_s = 12.5\n"
        '[store]\nmetrics_path = "here/m.jsonl"\n',
    )
    policy = Policy.from_toml(toml)
    assert policy.retry.max_attempts == 6
    assert policy.retry.base_ms == 50
    assert policy.circuit.cooldown_s == 12.5
    assert policy.store.metrics_path == Path("here/m.jsonl")


def test_toml_flat_variable_names(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "policy.toml",
        "RETRY_MAX_ATTEMPTS = 6\nCB_HALF_OPEN_PROB = 0.5\nOAUTH2_REQUIRED = true\n",
    )
    policy = Policy.from_toml(str(toml))
    assert policy.retry.max_attempts == 6
    assert policy.circuit.half_open_prob == 0.5
    assert policy.oauth.required is True


def test_toml_flat_names_in_lower_case(tmp_path: Path) -> None:
    toml = write(tmp_path / "policy.toml", "retry_max_attempts = 6\n")
    assert Policy.from_toml(toml).retry.max_attempts == 6


def test_toml_variable_names_inside_their_group_table(tmp_path: Path) -> None:
    toml = write(tmp_path / "policy.toml", "[retry]\nRETRY_BASE_MS = 70\n")
    assert Policy.from_toml(toml).retry.base_ms == 70


def test_toml_group_tables_and_flat_names_side_by_side(tmp_path: Path) -> None:
    toml = write(tmp_path / "policy.toml", "RETRY_BASE_MS = 70\n[retry]\nmax_attempts = 2\n")
    policy = Policy.from_toml(toml)
    assert (policy.retry.base_ms, policy.retry.max_attempts) == (70, 2)


def test_toml_in_pyproject_tool_table(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "svc"\nversion = "1"\n\n[tool.ruff]\nline-length = 100\n\n'
        "[tool.connector-resilience]\nRETRY_MAX_ATTEMPTS = 4\n\n"
        "[tool.connector-resilience.circuit]\nfailures_to_open = 2\n\n"
        "[tool.connector-resilience.connectors.github.retry]\nmax_attempts = 9\n",
    )
    policy = Policy.from_toml(toml)
    assert policy.retry.max_attempts == 4
    assert policy.circuit.failures_to_open == 2
    assert policy.for_connector("github").retry.max_attempts == 9


def test_toml_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "p.toml", "[retry]\nmax_attempts = 6\n")
    monkeypatch.setenv("CONNECTOR_POLICY_FILE", str(tmp_path / "conf" / "p.toml"))
    assert Policy().retry.max_attempts == 6


def test_from_toml_path_beats_the_policy_file_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "env.toml", "[retry]\nmax_attempts = 6\n")
    explicit = write(tmp_path / "explicit.toml", "[retry]\nmax_attempts = 2\n")
    monkeypatch.setenv("CONNECTOR_POLICY_FILE", "env.toml")
    assert Policy.from_toml(explicit).retry.max_attempts == 2


def test_from_toml_does_not_leak_into_later_policies(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[retry]\nmax_attempts = 6\n")
    assert Policy.from_toml(toml).retry.max_attempts == 6
    assert Policy().retry.max_attempts == 3


def test_from_toml_does_not_leak_after_an_error(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", "[retry]\nmax_attempts = 0\n")
    with pytest.raises(ValidationError):
        Policy.from_toml(bad)
    assert Policy().retry.max_attempts == 3


def test_from_toml_keyword_overrides_win(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[retry]\nmax_attempts = 6\nbase_ms = 10\n")
    policy = Policy.from_toml(toml, retry={"max_attempts": 2})
    assert (policy.retry.max_attempts, policy.retry.base_ms) == (2, 10)


def test_toml_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.toml.*does not exist"):
        Policy.from_toml(tmp_path / "nope.toml")


def test_toml_missing_file_from_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_POLICY_FILE", "gone.toml")
    with pytest.raises(ValueError, match=r"gone\.toml"):
        Policy()


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "broken.toml", "[retry\nmax_attempts = 1\n")
    with pytest.raises(ValueError, match=r"broken\.toml.*not valid TOML"):
        Policy.from_toml(bad)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("colour = 1\n", "colour"),
        ("[retry]\nmax_atempts = 4\n", "retry.max_atempts"),
        ("[retry]\nCB_COOLDOWN_S = 4\n", "retry.CB_COOLDOWN_S"),
        ("[breaker]\nx = 1\n", "breaker"),
        ("[connectors.github]\nfoo = 1\n", "foo"),
        ("[connectors.github.retry]\nfoo = 1\n", "retry.foo"),
    ],
)
def test_toml_unknown_keys_are_named(tmp_path: Path, text: str, named: str) -> None:
    toml = write(tmp_path / "p.toml", text)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        Policy.from_toml(toml)


def test_toml_group_that_is_not_a_table(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "retry = 5\n")
    with pytest.raises(ValueError, match=r"\[retry\] must be a table"):
        Policy.from_toml(toml)


def test_toml_invalid_value_names_the_variable(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[retry]\njitter_pct = 2\n")
    with pytest.raises(ValidationError, match="RETRY_JITTER_PCT"):
        Policy.from_toml(toml)


def test_toml_wrong_type_names_the_variable(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", '[circuit]\nfailures_to_open = "many"\n')
    with pytest.raises(ValidationError, match="CB_FAILURES_TO_OPEN"):
        Policy.from_toml(toml)


# Precedence: keyword > environment > .env > TOML > defaults --------------------


LAYERS = ("keyword", "env", "dotenv", "toml")


@pytest.mark.parametrize("top", [*LAYERS, "default"])
def test_precedence_of_one_setting(
    top: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RETRY_BASE_MS set in every layer from ``top`` down: the strongest of those wins."""
    values = {"keyword": 10.0, "env": 20.0, "dotenv": 30.0, "toml": 40.0, "default": 400.0}
    active = LAYERS[LAYERS.index(top) :] if top in LAYERS else ()
    kwargs: dict[str, Any] = {}
    if "keyword" in active:
        kwargs["retry"] = {"base_ms": values["keyword"]}
    if "env" in active:
        monkeypatch.setenv("RETRY_BASE_MS", str(values["env"]))
    if "dotenv" in active:
        (tmp_path / ".env").write_text(f"RETRY_BASE_MS={values['dotenv']}\n")
    toml = write(tmp_path / "p.toml", f"RETRY_BASE_MS = {values['toml']}\n" if active else "")
    assert Policy.from_toml(toml, **kwargs).retry.base_ms == values[top]


def test_precedence_is_per_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each field comes from the strongest layer that sets it, whatever the others set."""
    toml = write(
        tmp_path / "p.toml",
        "[retry]\nbase_ms = 40\ncap_ms = 4000\nmax_attempts = 4\njitter_pct = 0.4\n",
    )
    (tmp_path / ".env").write_text(
        "RETRY_CAP_MS=3000\nRETRY_MAX_ATTEMPTS=3\nRETRY_JITTER_PCT=0.3\n"
    )
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("RETRY_JITTER_PCT", "0.2")
    policy = Policy.from_toml(toml, retry={"jitter_pct": 0.1})
    retry = policy.retry
    assert retry.base_ms == 40  # TOML only
    assert retry.cap_ms == 3000  # .env over TOML
    assert retry.max_attempts == 2  # env over .env and TOML
    assert retry.jitter_pct == 0.1  # keyword over everything
    assert retry.deadline_s is None  # nobody: default


def test_precedence_keyword_variable_name_beats_env_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two spellings of one setting must still merge on one key."""
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "9")
    assert Policy(retry={"RETRY_MAX_ATTEMPTS": 2}).retry.max_attempts == 2


def test_precedence_env_beats_toml_group_table_spelled_by_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write(tmp_path / "p.toml", "[retry]\nmax_attempts = 6\n")
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "2")
    assert Policy.from_toml(toml).retry.max_attempts == 2


def test_precedence_for_per_connector_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write(
        tmp_path / "p.toml",
        "[connectors.github.retry]\nmax_attempts = 6\nbase_ms = 60\ncap_ms = 6000\n",
    )
    (tmp_path / ".env").write_text(
        "CONNECTOR__GITHUB__RETRY_BASE_MS=50\nCONNECTOR__GITHUB__RETRY_CAP_MS=5000\n"
    )
    monkeypatch.setenv("CONNECTOR__GITHUB__RETRY_CAP_MS", "4000")
    policy = Policy.from_toml(toml, connectors={"github": {"retry": {"max_attempts": 2}}})
    view = policy.for_connector("github")
    assert view.retry.max_attempts == 2  # keyword
    assert view.retry.cap_ms == 4000  # env over .env over TOML
    assert view.retry.base_ms == 50  # .env over TOML


# Per-connector overrides ---------------------------------------------------


@pytest.mark.parametrize("env", sorted(ENV_VALUES))
def test_each_variable_can_be_overridden_per_connector(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, expected = ENV_VALUES[env]
    monkeypatch.setenv(f"CONNECTOR__GITHUB__{env}", raw)
    policy = Policy()
    assert value_of(policy.for_connector("github"), env) == expected
    # The base policy and every other connector keep the default.
    assert value_of(policy, env) == DEFAULTS[env]
    assert value_of(policy.for_connector("gitlab"), env) == DEFAULTS[env]


def test_connector_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__GITHUB__RETRY_MAX_ATTEMPTS", "6")
    policy = Policy()
    for name in ("github", "GitHub", "GITHUB"):
        assert policy.for_connector(name).retry.max_attempts == 6


def test_lower_case_connector_in_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__github__RETRY_MAX_ATTEMPTS", "6")
    assert Policy().for_connector("GitHub").retry.max_attempts == 6


def test_connector_name_with_underscores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__BILLING_API__CB_FAILURES_TO_OPEN", "2")
    policy = Policy()
    assert policy.for_connector("billing_api").circuit.failures_to_open == 2
    assert policy.for_connector("billing").circuit.failures_to_open == 5


def test_view_merges_with_the_base_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "100")
    monkeypatch.setenv("CB_COOLDOWN_S", "30")
    monkeypatch.setenv("CONNECTOR__GITHUB__RETRY_MAX_ATTEMPTS", "6")
    view = Policy(retry={"jitter_pct": 0.5}).for_connector("github")
    assert view.retry.max_attempts == 6  # the override
    assert view.retry.base_ms == 100  # same group, from the environment
    assert view.retry.jitter_pct == 0.5  # same group, from a keyword
    assert view.circuit.cooldown_s == 30  # another group


def test_view_has_no_connectors_table_and_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__GITHUB__RETRY_MAX_ATTEMPTS", "6")
    policy = Policy()
    view = policy.for_connector("github")
    assert view.connectors == {}
    assert view is policy.for_connector("GITHUB")
    assert view.for_connector("github") is view
    assert policy.retry.max_attempts == 3  # the base is unchanged


def test_connector_without_overrides_gets_the_policy_itself() -> None:
    policy = Policy()
    assert policy.for_connector("anything") is policy


def test_several_connectors_and_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__A__RETRY_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("CONNECTOR__A__CONNECTOR_HEALTH_P95_MS", "100")
    monkeypatch.setenv("CONNECTOR__B__CB_FAILURES_TO_OPEN", "9")
    policy = Policy()
    a, b = policy.for_connector("a"), policy.for_connector("b")
    assert (a.retry.max_attempts, a.health.p95_ms, a.circuit.failures_to_open) == (1, 100, 5)
    assert (b.retry.max_attempts, b.health.p95_ms, b.circuit.failures_to_open) == (3, 2000, 9)


def test_keyword_connectors_with_group_tables_and_flat_names() -> None:
    policy = Policy(
        connectors={
            "GitHub": {"retry": {"max_attempts": 6}, "CB_COOLDOWN_S": 5},
            "slack": {"health": {"CONNECTOR_HEALTH_P95_MS": 900}},
        }
    )
    assert policy.for_connector("github").retry.max_attempts == 6
    assert policy.for_connector("github").circuit.cooldown_s == 5
    assert policy.for_connector("SLACK").health.p95_ms == 900


def test_toml_connector_tables(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "p.toml",
        "[connectors.GitHub]\nCB_COOLDOWN_S = 3\n[connectors.GitHub.retry]\nmax_attempts = 6\n",
    )
    view = Policy.from_toml(toml).for_connector("github")
    assert (view.retry.max_attempts, view.circuit.cooldown_s) == (6, 3)


def test_toml_and_env_overrides_of_one_connector_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = write(tmp_path / "p.toml", "[connectors.github.retry]\nmax_attempts = 6\n")
    monkeypatch.setenv("CONNECTOR__GITHUB__CB_COOLDOWN_S", "3")
    view = Policy.from_toml(toml).for_connector("github")
    assert (view.retry.max_attempts, view.circuit.cooldown_s) == (6, 3)


def test_keyword_connector_in_other_case_merges_with_env_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONNECTOR__GITHUB__CB_COOLDOWN_S", "7")
    view = Policy(connectors={"GitHub": {"retry": {"max_attempts": 6}}}).for_connector("github")
    assert view.retry.max_attempts == 6
    assert view.circuit.cooldown_s == 7


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("RETRY_MAX_ATTEMPTS", "0"),
        ("RETRY_JITTER_PCT", "1.5"),
        ("CB_HALF_OPEN_PROB", "2"),
        ("CB_COOLDOWN_S", "-1"),
        ("CONNECTOR_HEALTH_ERROR_RATE", "abc"),
        ("CONNECTOR_STORE_URL", "ftp://nowhere"),
    ],
)
def test_invalid_connector_override_names_connector_and_variable(
    variable: str, raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"CONNECTOR__GITHUB__{variable}", raw)
    with pytest.raises(ValueError, match=f"CONNECTOR__GITHUB__{variable}") as caught:
        Policy()
    assert "github" in str(caught.value)


def test_connector_override_breaking_cap_over_base_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRY_CAP_MS", "1000")
    monkeypatch.setenv("CONNECTOR__GITHUB__RETRY_BASE_MS", "5000")
    with pytest.raises(ValueError, match="RETRY_CAP_MS") as caught:
        Policy()
    assert "github" in str(caught.value)


def test_unknown_per_connector_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__GITHUB__RETRY_MAX_ATTEMPT", "4")
    with pytest.raises(ValueError, match="CONNECTOR__GITHUB__RETRY_MAX_ATTEMPT"):
        Policy()


@pytest.mark.parametrize("name", ["CONNECTOR__GITHUB", "CONNECTOR____RETRY_MAX_ATTEMPTS"])
def test_malformed_per_connector_variable_is_named(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "4")
    with pytest.raises(ValueError, match="CONNECTOR__<CONNECTOR>__<VARIABLE>"):
        Policy()


def test_invalid_keyword_connector_override_names_the_variable() -> None:
    with pytest.raises(ValueError, match="CONNECTOR__SLACK__CB_FAILURES_TO_OPEN"):
        Policy(connectors={"slack": {"circuit": {"failures_to_open": 0}}})


def test_unknown_keyword_connector_setting_is_named() -> None:
    with pytest.raises(ValueError, match="colour"):
        Policy(connectors={"slack": {"colour": "red"}})


def test_toml_invalid_connector_override_names_the_variable(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[connectors.gh.retry]\nmax_attempts = 0\n")
    with pytest.raises(ValueError, match="CONNECTOR__GH__RETRY_MAX_ATTEMPTS"):
        Policy.from_toml(toml)


# Validation messages name the variable ---------------------------------------


BAD_VALUES: list[tuple[str, str]] = [
    ("RETRY_MAX_ATTEMPTS", "0"),
    ("RETRY_MAX_ATTEMPTS", "-1"),
    ("RETRY_MAX_ATTEMPTS", "three"),
    ("RETRY_MAX_ATTEMPTS", "1001"),
    ("RETRY_BASE_MS", "-1"),
    ("RETRY_CAP_MS", "0"),
    ("RETRY_JITTER_PCT", "1.01"),
    ("RETRY_JITTER_PCT", "-0.1"),
    ("RETRY_JITTER", "random"),
    ("RETRY_DEADLINE_S", "0"),
    ("RETRY_ATTEMPT_TIMEOUT_S", "0"),
    ("CB_ENABLED", "maybe"),
    ("CB_FAILURES_TO_OPEN", "0"),
    ("CB_COOLDOWN_S", "0"),
    ("CB_COOLDOWN_S", "-5"),
    ("CB_HALF_OPEN_PROB", "1.5"),
    ("CB_HALF_OPEN_PROB", "-0.2"),
    ("CB_HALF_OPEN_PROB", "0"),  # a half-open breaker that never probes never closes
    ("CB_HALF_OPEN_MAX_PROBES", "0"),
    ("CB_PROBE_LEASE_S", "0"),
    ("CB_MODEL", "sliding"),
    ("CB_WINDOW_SIZE", "0"),
    ("CB_MIN_CALLS", "0"),
    ("CB_FAILURE_RATE", "0"),
    ("CB_FAILURE_RATE", "1.5"),
    ("CB_SLOW_CALL_MS", "0"),
    ("CB_SLOW_CALL_RATE", "2"),
    ("CB_SYNC_INTERVAL_S", "-1"),
    ("CB_HALF_OPEN_SUCCESSES", "0"),
    ("CB_COOLDOWN_MULTIPLIER", "0.5"),
    ("CB_COOLDOWN_MAX_S", "0"),
    ("CB_SLOW_START_S", "-1"),
    ("CB_QUORUM", "0"),
    ("CB_LOCAL_OPEN", "maybe"),
    ("CONNECTOR_HEALTH_P95_MS", "0"),
    ("CONNECTOR_HEALTH_P95_MS", "fast"),
    ("CONNECTOR_HEALTH_ERROR_RATE", "1.1"),
    ("CONNECTOR_HEALTH_ERROR_RATE", "-0.1"),
    ("CONNECTOR_HEALTH_DOWN_ERROR_RATE", "0"),
    ("CONNECTOR_HEALTH_DOWN_ERROR_RATE", "1.5"),
    ("CONNECTOR_HEALTH_MIN_CALLS", "0"),
    ("CONNECTOR_HEALTH_WINDOW_S", "0"),
    ("OAUTH2_REQUIRED", "perhaps"),
    ("OAUTH_REFRESH_SAFETY_WINDOW_S", "-1"),
    ("OAUTH_LOCK_TIMEOUT_S", "0"),
    ("CONNECTOR_METRICS_RETENTION_S", "0"),
    ("CONNECTOR_METRICS_FLUSH_S", "0"),
    ("CONNECTOR_METRICS_BUFFER_MAX", "0"),
    ("CONNECTOR_STORE_URL", "ftp://host/x"),
    ("CONNECTOR_STORE_URL", "logs/connectors"),
]


@pytest.mark.parametrize(("variable", "raw"), BAD_VALUES)
def test_invalid_env_value_names_the_variable(
    variable: str, raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ValidationError) as caught:
        Policy()
    assert variable in str(caught.value)


@pytest.mark.parametrize(("variable", "raw"), BAD_VALUES)
def test_invalid_keyword_value_names_the_variable(variable: str, raw: str) -> None:
    group, name = _WHERE[variable]
    kwargs: dict[str, Any] = {group: {name: raw}}
    with pytest.raises(ValidationError) as caught:
        Policy(**kwargs)
    assert variable in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("RETRY_JITTER_PCT", "0"),
        ("RETRY_JITTER_PCT", "1"),
        ("RETRY_BASE_MS", "0"),
        ("CB_HALF_OPEN_PROB", "1"),
        ("CB_FAILURE_RATE", "1"),
        ("CONNECTOR_HEALTH_ERROR_RATE", "0"),
        ("CONNECTOR_HEALTH_ERROR_RATE", "1"),
        ("CONNECTOR_HEALTH_DOWN_ERROR_RATE", "1"),
        ("OAUTH_REFRESH_SAFETY_WINDOW_S", "0"),
        ("RETRY_MAX_ATTEMPTS", "1"),
        ("RETRY_MAX_ATTEMPTS", "1000"),
        ("CB_FAILURES_TO_OPEN", "1"),
    ],
)
def test_boundary_values_are_accepted(
    variable: str, raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, raw)
    assert value_of(Policy(), variable) == float(raw)


def test_cap_equal_to_base_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "500")
    monkeypatch.setenv("RETRY_CAP_MS", "500")
    assert Policy().retry.cap_ms == 500


def test_cap_below_base_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "500")
    monkeypatch.setenv("RETRY_CAP_MS", "100")
    with pytest.raises(ValidationError) as caught:
        Policy()
    assert "RETRY_CAP_MS" in str(caught.value)
    assert "RETRY_BASE_MS" in str(caught.value)


def test_cap_below_base_from_keywords_and_group_model() -> None:
    with pytest.raises(ValidationError, match="RETRY_CAP_MS"):
        Policy(retry={"base_ms": 500, "cap_ms": 100})
    with pytest.raises(ValidationError, match="RETRY_CAP_MS"):
        RetryPolicy(base_ms=500, cap_ms=100)


def test_cap_below_default_base_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_CAP_MS", "100")  # default base is 400
    with pytest.raises(ValidationError, match="RETRY_CAP_MS"):
        Policy()


def test_unknown_store_scheme_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_STORE_URL", "postgres://db/x")
    with pytest.raises(ValidationError) as caught:
        Policy()
    text = str(caught.value)
    assert "CONNECTOR_STORE_URL" in text
    assert "'postgres'" in text
    for known in ("memory", "jsonl", "sqlite", "redis"):
        assert known in text


@pytest.mark.parametrize(
    "url", ["memory://", "memory://x", "jsonl://logs/c", "sqlite:///x.db", "redis://h:6379/0"]
)
def test_known_store_schemes_are_accepted(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_STORE_URL", url)
    assert Policy().store.url == url


def test_several_invalid_values_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "0")
    monkeypatch.setenv("CB_HALF_OPEN_PROB", "3")
    with pytest.raises(ValidationError) as caught:
        Policy()
    assert "RETRY_MAX_ATTEMPTS" in str(caught.value)
    assert "CB_HALF_OPEN_PROB" in str(caught.value)


# Secrets never reach error text ------------------------------------------------


@pytest.mark.parametrize(("variable", "raw"), BAD_VALUES[:12])
def test_secret_not_in_error_from_env(
    variable: str, raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", SECRET)
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ValidationError) as caught:
        Policy()
    assert SECRET not in error_text(caught.value)


def test_secret_not_in_error_from_its_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", SECRET)
    monkeypatch.setenv("OAUTH_LOCK_TIMEOUT_S", "-1")
    with pytest.raises(ValidationError) as caught:
        Policy()
    assert "OAUTH_LOCK_TIMEOUT_S" in str(caught.value)
    assert SECRET not in error_text(caught.value)


def test_secret_not_in_error_from_keywords() -> None:
    with pytest.raises(ValidationError) as caught:
        Policy(oauth={"encryption_key": SECRET, "lock_timeout_s": 0})
    assert SECRET not in error_text(caught.value)


def test_secret_not_in_error_from_toml(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "p.toml", f'[oauth]\nencryption_key = "{SECRET}"\nrefresh_safety_window_s = -1\n'
    )
    with pytest.raises(ValidationError) as caught:
        Policy.from_toml(toml)
    assert SECRET not in error_text(caught.value)


def test_secret_not_in_error_from_unknown_toml_key(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", f'[oauth]\nencryption_key = "{SECRET}"\ncolour = 1\n')
    with pytest.raises(ValueError) as caught:
        Policy.from_toml(toml)
    assert SECRET not in error_text(caught.value)


def test_secret_not_in_error_when_secret_has_the_wrong_type(tmp_path: Path) -> None:
    toml = write(tmp_path / "p.toml", "[oauth]\nencryption_key = 31234567\n")
    with pytest.raises(ValidationError, match="OAUTH_TOKEN_ENCRYPTION_KEY") as caught:
        Policy.from_toml(toml)
    assert "31234567" not in error_text(caught.value)


def test_secret_not_in_error_from_bad_per_connector_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", SECRET)
    monkeypatch.setenv("CONNECTOR__GH__OAUTH_TOKEN_ENCRYPTION_KEY", SECRET + "-gh")
    monkeypatch.setenv("CONNECTOR__GH__OAUTH_LOCK_TIMEOUT_S", "-1")
    with pytest.raises(ValidationError) as caught:
        Policy()
    assert "CONNECTOR__GH__OAUTH_LOCK_TIMEOUT_S" in str(caught.value)
    assert SECRET not in error_text(caught.value)


def test_secret_not_in_policy_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", SECRET)
    policy = Policy()
    assert SECRET not in repr(policy)
    assert SECRET not in str(policy)
    assert SECRET not in policy.model_dump_json()


def test_per_connector_secret_is_a_secretstr_in_the_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__GH__OAUTH_TOKEN_ENCRYPTION_KEY", SECRET)
    view = Policy().for_connector("gh")
    assert isinstance(view.oauth.encryption_key, SecretStr)
    assert SECRET not in repr(view)


def test_per_connector_secret_not_in_policy_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__GH__OAUTH_TOKEN_ENCRYPTION_KEY", SECRET)
    policy = Policy()
    assert SECRET not in repr(policy)
    assert SECRET not in str(policy)


# current_policy() -----------------------------------------------------------


def test_current_policy_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "4")
    assert current_policy().retry.max_attempts == 4


def test_current_policy_is_cached_while_the_environment_is_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = current_policy()
    assert current_policy() is first
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    monkeypatch.setenv("PATH_EXTRA_FOR_TEST", "x")
    assert current_policy() is first


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("RETRY_MAX_ATTEMPTS", "4"),
        ("CB_COOLDOWN_S", "5"),
        ("CONNECTOR_HEALTH_P95_MS", "100"),
        ("CONNECTOR_STORE_URL", "memory://cached"),
        ("OAUTH2_REQUIRED", "true"),
        ("OAUTH_REFRESH_SAFETY_WINDOW_S", "1"),
        ("CIRCUIT_STATE_PATH", "c.jsonl"),
        ("CONNECTOR__GITHUB__RETRY_MAX_ATTEMPTS", "6"),
    ],
)
def test_current_policy_rebuilds_when_one_of_our_variables_changes(
    variable: str, raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = current_policy()
    monkeypatch.setenv(variable, raw)
    second = current_policy()
    assert second is not first
    assert current_policy() is second
    monkeypatch.delenv(variable)
    assert current_policy() is not second
    assert current_policy().retry.max_attempts == 3


def test_current_policy_follows_the_policy_file_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.toml", "[retry]\nmax_attempts = 6\n")
    write(tmp_path / "b.toml", "[retry]\nmax_attempts = 7\n")
    monkeypatch.setenv("CONNECTOR_POLICY_FILE", "a.toml")
    assert current_policy().retry.max_attempts == 6
    monkeypatch.setenv("CONNECTOR_POLICY_FILE", "b.toml")
    assert current_policy().retry.max_attempts == 7


def test_forget_current_policy_rereads_files(tmp_path: Path) -> None:
    first = current_policy()
    (tmp_path / ".env").write_text("RETRY_MAX_ATTEMPTS=8\n")
    assert current_policy() is first  # files are not watched...
    forget_current_policy()
    assert current_policy().retry.max_attempts == 8  # ...until the cache is dropped


def test_current_policy_keeps_the_last_good_policy_after_an_invalid_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = current_policy()
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "0")
    with pytest.raises(ValidationError, match="RETRY_MAX_ATTEMPTS"):
        current_policy()
    monkeypatch.delenv("RETRY_MAX_ATTEMPTS")
    assert current_policy() is first


def test_docstring_example() -> None:
    policy = Policy(retry={"max_attempts": 5})
    assert policy.retry.max_attempts == 5
    assert policy.circuit.failures_to_open == 5
