"""One :class:`Policy` that configures retries, the breaker, health, tokens and the store.

``Policy()`` reads the environment with the variable names of the original
connector framework (``RETRY_MAX_ATTEMPTS``, ``CB_COOLDOWN_S``, ...). Sources,
strongest first: keyword arguments, environment variables, a ``.env`` file,
a TOML file (``Policy.from_toml`` or ``CONNECTOR_POLICY_FILE``), then defaults.

Per-connector overrides let one connector have its own SLA::

    CONNECTOR__GITHUB__RETRY_MAX_ATTEMPTS=6    # environment
    [connectors.github.retry]                  # TOML
    max_attempts = 6

and ``policy.for_connector("github")`` returns the merged view.
"""

from __future__ import annotations

import contextvars
import math
import os
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connector_resilience._setting_errors import closest_name, describe, settings_error
from connector_resilience._store_urls import redact_url, scheme_problem
from connector_resilience.errors import ConfigurationError, ConfigurationWarning

__all__ = [
    "CircuitPolicy",
    "HealthPolicy",
    "LimitsPolicy",
    "OAuthPolicy",
    "Policy",
    "RetryPolicy",
    "StorePolicy",
    "current_policy",
    "env_var_table",
]

#: Environment variables that name per-connector overrides: CONNECTOR__<NAME>__<VARIABLE>.
CONNECTOR_OVERRIDE_PREFIX = "CONNECTOR__"
#: Environment variable that points at a TOML policy file.
POLICY_FILE_ENV = "CONNECTOR_POLICY_FILE"

_GROUP_CONFIG = ConfigDict(
    frozen=True,
    extra="forbid",
    validate_by_name=True,
    validate_by_alias=True,
    validate_default=True,
    # A bad value's input could be a secret (the token encryption key); the
    # error names the variable and the rule instead.
    hide_input_in_errors=True,
)


def _env(name: str, default: Any, description: str, **constraints: Any) -> Any:
    """A group field read from the environment variable ``name``."""
    return Field(default, validation_alias=name, description=description, **constraints)


class RetryPolicy(BaseModel):
    """How failed attempts are retried: count, backoff schedule, jitter, deadline."""

    model_config = _GROUP_CONFIG

    max_attempts: int = _env(
        "RETRY_MAX_ATTEMPTS", 3, "Attempts per call, the first one included.", ge=1, le=1000
    )
    base_ms: float = _env(
        "RETRY_BASE_MS", 400.0, "Delay before the first retry; doubles each retry.", ge=0
    )
    cap_ms: float = _env("RETRY_CAP_MS", 60_000.0, "Longest delay between two attempts.", gt=0)
    jitter_pct: float = _env(
        "RETRY_JITTER_PCT", 0.2, "Proportional jitter: +/- this share of the delay.", ge=0, le=1
    )
    jitter: Literal["proportional", "full", "equal", "decorrelated", "none"] = _env(
        "RETRY_JITTER",
        "proportional",
        "Jitter kind: proportional (+/- jitter_pct), full, equal, decorrelated or none.",
    )
    deadline_s: float | None = _env(
        "RETRY_DEADLINE_S",
        None,
        "Whole-call budget in seconds: no retry sleep may end past it. Unset: no deadline.",
        gt=0,
    )
    attempt_timeout_s: float | None = _env(
        "RETRY_ATTEMPT_TIMEOUT_S",
        None,
        "Longest one attempt may run: async functions are cancelled after it, HTTP "
        "adapters pass it through the client's own timeouts, within the deadline. "
        "Unset: no per-attempt limit (HTTP: the client's timeouts alone).",
        gt=0,
    )

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> Self:
        if self.cap_ms < self.base_ms:
            raise ValueError(
                f"RETRY_CAP_MS ({self.cap_ms:g}) must be >= RETRY_BASE_MS ({self.base_ms:g})"
            )
        return self


class CircuitPolicy(BaseModel):
    """When the breaker opens, how long it stays open and how it probes recovery."""

    model_config = _GROUP_CONFIG

    enabled: bool = _env("CB_ENABLED", True, "Turn the circuit breaker on or off.")
    failures_to_open: int = _env(
        "CB_FAILURES_TO_OPEN", 5, "Consecutive failures that open the circuit.", ge=1
    )
    cooldown_s: float = _env(
        "CB_COOLDOWN_S",
        60.0,
        "Seconds an open circuit waits before probing.",
        gt=0,
        allow_inf_nan=False,
    )
    half_open_prob: float = _env(
        "CB_HALF_OPEN_PROB",
        0.2,
        "Chance that a call is admitted as a probe while half-open.",
        gt=0,
        le=1,
    )
    half_open_max_probes: int = _env(
        "CB_HALF_OPEN_MAX_PROBES",
        1,
        "Probes in flight at once while half-open, across every process sharing the store.",
        ge=1,
    )
    probe_lease_s: float = _env(
        "CB_PROBE_LEASE_S",
        30.0,
        "A probe slot is freed after this long even if its holder never reports back.",
        gt=0,
    )
    model: Literal["consecutive", "count", "time"] = _env(
        "CB_MODEL",
        "consecutive",
        "Trip rule: consecutive failures, or failure rate over a count or time window.",
    )
    window_size: int = _env(
        "CB_WINDOW_SIZE",
        100,
        "Sliding window length: calls (model=count) or seconds (model=time).",
        ge=1,
    )
    min_calls: int = _env(
        "CB_MIN_CALLS", 10, "Calls in the window before a rate can trip the circuit.", ge=1
    )
    failure_rate: float = _env(
        "CB_FAILURE_RATE", 0.5, "Failure share in the window that opens the circuit.", gt=0, le=1
    )
    slow_call_ms: float | None = _env(
        "CB_SLOW_CALL_MS",
        None,
        "A call slower than this counts as slow. Unset: slowness never trips the circuit.",
        gt=0,
    )
    slow_call_rate: float = _env(
        "CB_SLOW_CALL_RATE",
        1.0,
        "Slow-call share in the window that opens the circuit.",
        gt=0,
        le=1,
    )
    sync_interval_s: float = _env(
        "CB_SYNC_INTERVAL_S",
        0.1,
        "Longest a process trusts its cached breaker state before re-reading a shared store.",
        ge=0,
    )
    half_open_successes: int = _env(
        "CB_HALF_OPEN_SUCCESSES",
        1,
        "Probe successes that close a half-open circuit; with CB_MODEL count or time, "
        "the failure rate over this many probes decides.",
        ge=1,
        le=1000,
    )
    cooldown_multiplier: float = _env(
        "CB_COOLDOWN_MULTIPLIER",
        1.0,
        "Each reopen without a close in between multiplies the open time by this (1: fixed).",
        ge=1,
        le=100,
        allow_inf_nan=False,
    )
    cooldown_max_s: float = _env(
        "CB_COOLDOWN_MAX_S",
        600.0,
        "Longest open time that CB_COOLDOWN_MULTIPLIER can grow to.",
        gt=0,
        allow_inf_nan=False,
    )
    slow_start_s: float = _env(
        "CB_SLOW_START_S",
        0.0,
        "After a close, admission ramps from 10% to 100% of calls over this many seconds (0: off).",
        ge=0,
        le=86_400,
        allow_inf_nan=False,
    )
    quorum: int = _env(
        "CB_QUORUM",
        1,
        "Distinct processes whose failures it takes to open a shared circuit for everyone.",
        ge=1,
        le=64,
    )
    local_open: bool = _env(
        "CB_LOCAL_OPEN",
        True,
        "Below CB_QUORUM, a process whose own failures trip the circuit opens it for itself.",
    )

    @model_validator(mode="after")
    def _growth_cap_not_below_cooldown(self) -> Self:
        if self.cooldown_multiplier > 1 and self.cooldown_max_s < self.cooldown_s:
            raise ValueError(
                f"CB_COOLDOWN_MAX_S ({self.cooldown_max_s:g}) must be >= CB_COOLDOWN_S "
                f"({self.cooldown_s:g}) when CB_COOLDOWN_MULTIPLIER is above 1"
            )
        return self


class HealthPolicy(BaseModel):
    """Thresholds that turn a metrics summary into healthy, degraded or down."""

    model_config = _GROUP_CONFIG

    p95_ms: float = _env(
        "CONNECTOR_HEALTH_P95_MS", 2000.0, "p95 latency above this is degraded.", gt=0
    )
    error_rate: float = _env(
        "CONNECTOR_HEALTH_ERROR_RATE", 0.10, "Error rate above this is degraded.", ge=0, le=1
    )
    down_error_rate: float = _env(
        "CONNECTOR_HEALTH_DOWN_ERROR_RATE",
        0.9,
        "Error rate at or above this is down (the circuit being open is down too).",
        gt=0,
        le=1,
    )
    min_calls: int = _env(
        "CONNECTOR_HEALTH_MIN_CALLS", 5, "Attempts in the window before errors can mean down.", ge=1
    )
    window_s: float = _env(
        "CONNECTOR_HEALTH_WINDOW_S", 3600.0, "Window of history health looks at.", gt=0
    )


class OAuthPolicy(BaseModel):
    """OAuth2 token rules."""

    model_config = _GROUP_CONFIG

    required: bool = _env(
        "OAUTH2_REQUIRED", False, "Refuse to call a connector that has no usable token."
    )
    refresh_safety_window_s: float = _env(
        "OAUTH_REFRESH_SAFETY_WINDOW_S",
        300.0,
        "Refresh a token this many seconds before it expires.",
        ge=0,
    )
    lock_timeout_s: float = _env(
        "OAUTH_LOCK_TIMEOUT_S",
        30.0,
        "Longest wait for another process's refresh before giving up.",
        gt=0,
    )
    encryption_key: SecretStr | None = _env(
        "OAUTH_TOKEN_ENCRYPTION_KEY",
        None,
        "Fernet key that encrypts tokens at rest (needs the crypto extra). Unset: plain JSON.",
    )


class StorePolicy(BaseModel):
    """Where state lives."""

    model_config = _GROUP_CONFIG

    url: str | None = _env(
        "CONNECTOR_STORE_URL",
        None,
        "memory://, jsonl://FOLDER, sqlite:///FILE or redis://HOST:PORT/DB. "
        "Unset: the three JSONL paths below.",
    )
    metrics_path: Path = _env(
        "CONNECTOR_METRICS_PATH",
        Path("logs/connectors/metrics.jsonl"),
        "JSONL file of call metrics (default store).",
    )
    token_path: Path = _env(
        "OAUTH_TOKEN_PATH",
        Path("logs/connectors/tokens.jsonl"),
        "JSONL file of OAuth2 tokens, created 0600 (default store).",
    )
    circuit_state_path: Path = _env(
        "CIRCUIT_STATE_PATH",
        Path("logs/connectors/circuit_state.jsonl"),
        "JSONL file of circuit breaker state (default store).",
    )
    metrics_retention_s: float = _env(
        "CONNECTOR_METRICS_RETENTION_S",
        7 * 86400.0,
        "Compaction drops metrics older than this.",
        gt=0,
    )
    flush_interval_s: float = _env(
        "CONNECTOR_METRICS_FLUSH_S",
        0.5,
        "Decorated calls buffer metrics and write them at most this long after the call.",
        gt=0,
    )
    buffer_max: int = _env(
        "CONNECTOR_METRICS_BUFFER_MAX",
        50_000,
        "Metrics held in memory while the store is unreachable; older ones are dropped.",
        ge=1,
    )
    metrics_mode: Literal["aggregated", "raw"] = _env(
        "CONNECTOR_METRICS_MODE",
        "aggregated",
        "aggregated: one row per (connector, operation, status, labels) per interval, with a "
        "latency histogram (1% relative error); raw: one record per attempt.",
    )
    metrics_interval_s: float = _env(
        "CONNECTOR_METRICS_INTERVAL_S",
        0.5,
        "Aggregated metrics: length of the finest row's interval; divides 60 s, at most 30. "
        "Each is written as it ends, so the store lags calls by about this much.",
        gt=0,
        le=30,
    )
    metrics_max_keys: int = _env(
        "CONNECTOR_METRICS_MAX_KEYS",
        1000,
        "Aggregated metrics: keys held per interval; past it the oldest key is written early.",
        ge=1,
    )
    metrics_pending_max: int = _env(
        "CONNECTOR_METRICS_PENDING_MAX",
        100_000,
        "Attempts buffered before they are aggregated; past half of it calls aggregate them "
        "themselves when the writer thread falls behind, so none is dropped.",
        ge=1,
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A store URL may carry a password (redis://:secret@host): never show it.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" and isinstance(value, str) else value

    @field_validator("metrics_interval_s")
    @classmethod
    def _divides_a_minute(cls, interval: float) -> float:
        ratio = 60.0 / interval
        if abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(
                "CONNECTOR_METRICS_INTERVAL_S must divide 60 seconds evenly "
                "(0.5, 1, 2, 5, 10, 15 or 30, for example)"
            )
        return interval

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        problem = scheme_problem(url.strip())
        if problem is not None:
            raise ValueError(problem)
        return url.strip()


Scope = Literal["process", "store"]


class LimitsPolicy(BaseModel):
    """Load control: the retry budget, the rate limiter and the bulkhead, per connector."""

    model_config = _GROUP_CONFIG

    budget_ratio: float = _env(
        "RETRY_BUDGET_RATIO",
        0.2,
        "Retries may add at most this share of the recent logical calls (plus the floor "
        "below); 0 turns retries off, inf turns the budget off.",
        ge=0,
    )
    budget_min_per_s: float = _env(
        "RETRY_BUDGET_MIN_PER_S",
        10.0,
        "Retries per second always allowed on top of the ratio, so a quiet connector can retry.",
        ge=0,
    )
    budget_window_s: float = _env(
        "RETRY_BUDGET_WINDOW_S",
        10.0,
        "Seconds of calls and retries the budget looks back over.",
        gt=0,
        le=86400,
    )
    budget_scope: Scope = _env(
        "RETRY_BUDGET_SCOPE",
        "process",
        "process: each process has its own budget; store: every process sharing the store "
        "shares one.",
    )
    rate_per_s: float | None = _env(
        "RATE_LIMIT_PER_S",
        None,
        "Requests per second the connector may send (attempts, retries included). "
        "Unset: no rate limit.",
        gt=0,
    )
    rate_burst: float | None = _env(
        "RATE_LIMIT_BURST",
        None,
        "Requests that may go at once after a quiet spell. Unset: one second's worth (at least 1).",
        ge=1,
    )
    rate_scope: Scope = _env(
        "RATE_LIMIT_SCOPE",
        "process",
        "process: each process has its own bucket; store: one bucket shared through the store.",
    )
    rate_max_wait_s: float = _env(
        "RATE_LIMIT_MAX_WAIT_S",
        10.0,
        "Longest a call waits for a token (less if its deadline is nearer); "
        "past it the call raises RateLimitExceededError.",
        ge=0,
    )
    bulkhead_max_concurrent: int | None = _env(
        "BULKHEAD_MAX_CONCURRENT",
        None,
        "Calls to the connector that may run at once. Unset: no bulkhead.",
        ge=1,
    )
    bulkhead_max_wait_s: float = _env(
        "BULKHEAD_MAX_WAIT_S",
        0.0,
        "Longest a call waits for a free slot before it raises BulkheadFullError.",
        ge=0,
    )
    bulkhead_scope: Scope = _env(
        "BULKHEAD_SCOPE",
        "process",
        "process: a cap per process; store: one cap across every process sharing the store.",
    )
    bulkhead_lease_s: float = _env(
        "BULKHEAD_LEASE_S",
        60.0,
        "A shared slot is freed after this long even if its holder never gives it back.",
        gt=0,
    )

    @field_validator("budget_ratio", "budget_min_per_s")
    @classmethod
    def _not_nan(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError("must be a number, not NaN")
        return value


_GROUPS: dict[str, type[BaseModel]] = {
    "retry": RetryPolicy,
    "circuit": CircuitPolicy,
    "health": HealthPolicy,
    "oauth": OAuthPolicy,
    "store": StorePolicy,
    "limits": LimitsPolicy,
}


def _env_names() -> dict[str, tuple[str, str]]:
    """Map every environment variable to its (group, field)."""
    table: dict[str, tuple[str, str]] = {}
    for group, model in _GROUPS.items():
        for field_name, info in model.model_fields.items():
            alias = info.validation_alias
            assert isinstance(alias, str)
            table[alias] = (group, field_name)
    return table


_ENV_NAMES = _env_names()


def _field_of(variable: str) -> FieldInfo | None:
    """The field an environment variable sets, or ``None`` for a name that is not ours."""
    found = _ENV_NAMES.get(variable)
    return None if found is None else _GROUPS[found[0]].model_fields[found[1]]


#: Variables with our prefixes that are not settings, but are not typos either.
_NOT_SETTINGS_PREFIXES = ("CONNECTOR__", "CONNECTOR_POLICY_FILE", "CONNECTOR_RESILIENCE_")
#: The first words of our variables (RETRY_, CB_, RATE_, BULKHEAD_...): a name
#: that starts like one of ours and is not ours may be a typo.
_OUR_PREFIXES = tuple(sorted({name.split("_", 1)[0] + "_" for name in _ENV_NAMES}))
_warned_names: set[str] = set()


def _warn_misspelt(names: Iterator[str] | list[str]) -> None:
    """Warn once per name about a variable that looks like a misspelt setting of ours."""
    for name in names:
        if name in _ENV_NAMES or name in _warned_names:
            continue
        if not name.startswith(_OUR_PREFIXES) or name.startswith(_NOT_SETTINGS_PREFIXES):
            continue
        match = closest_name(name, _ENV_NAMES)
        if match is not None:
            _warned_names.add(name)
            warnings.warn(
                f"{name} is not a connector-resilience setting and is ignored; "
                f"did you mean {match}?",
                ConfigurationWarning,
                stacklevel=2,
            )


def env_var_table() -> list[tuple[str, str, str, FieldInfo]]:
    """Every setting as (environment variable, group, field, field info), for docs and the CLI."""
    return [
        (env, group, name, _GROUPS[group].model_fields[name])
        for env, (group, name) in _ENV_NAMES.items()
    ]


def _nest(values: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Turn a TOML table or flat env mapping into ``{group: {field: value}}``.

    Accepts group tables (``{"retry": {"max_attempts": 5}}``) and flat variable
    names (``{"RETRY_MAX_ATTEMPTS": 5}``) side by side.
    """
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if key in _GROUPS:
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}: [{key}] must be a table, not {type(value).__name__}")
            nested.setdefault(key, {}).update(_normalise_group(key, value, where=where))
        elif key.upper() in _ENV_NAMES:
            group, field_name = _ENV_NAMES[key.upper()]
            nested.setdefault(group, {})[field_name] = value
        elif key == "connectors" and isinstance(value, Mapping):
            nested["connectors"] = {
                str(name).lower(): _nest(table, where=f"{where} [connectors.{name}]")
                for name, table in value.items()
            }
        else:
            raise ValueError(f"{where}: unknown setting {key!r}")
    return nested


def _normalise_group(group: str, values: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    fields = _GROUPS[group].model_fields
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in fields:
            out[key] = value
        elif key.upper() in _ENV_NAMES and _ENV_NAMES[key.upper()][0] == group:
            out[_ENV_NAMES[key.upper()][1]] = value
        else:
            raise ValueError(f"{where}: unknown setting {group}.{key}")
    return out


def _by_alias(nested: dict[str, Any]) -> dict[str, Any]:
    """Key each group's values by variable name, so every source merges on one key.

    pydantic-settings deep-merges the sources; if one used ``max_attempts`` and
    another ``RETRY_MAX_ATTEMPTS`` both would survive and precedence would be lost.
    Keying by variable name also makes every validation error name the variable.
    """
    out = dict(nested)
    for group, model in _GROUPS.items():
        values = out.get(group)
        if isinstance(values, Mapping):
            fields = model.model_fields
            out[group] = {
                (fields[k].validation_alias if k in fields else k): v for k, v in values.items()
            }
    return out


class _EnvironmentSource(PydanticBaseSettingsSource):
    """Reads the flat variable names (and per-connector overrides) from a mapping."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = {key.upper(): value for key, value in environ.items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ builds the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        _warn_misspelt(list(self._environ))
        nested: dict[str, Any] = {}
        for env, (group, _field_name) in _ENV_NAMES.items():
            if env in self._environ:
                # Keep the variable's own name as the key so that a validation
                # error names the variable the user set.
                nested.setdefault(group, {})[env] = self._environ[env]
        connectors: dict[str, dict[str, Any]] = {}
        for key, value in self._environ.items():
            if not key.startswith(CONNECTOR_OVERRIDE_PREFIX):
                continue
            name, sep, variable = key[len(CONNECTOR_OVERRIDE_PREFIX) :].partition("__")
            if not sep or not name:
                raise ConfigurationError(
                    f"{key}: per-connector overrides are named "
                    f"{CONNECTOR_OVERRIDE_PREFIX}<CONNECTOR>__<VARIABLE>"
                )
            if variable not in _ENV_NAMES:
                match = closest_name(variable, _ENV_NAMES)
                hint = (
                    f"; did you mean {CONNECTOR_OVERRIDE_PREFIX}{name}__{match}?" if match else ""
                )
                raise ConfigurationError(
                    f"{key}: {variable!r} is not a connector-resilience setting{hint}"
                )
            group, field_name = _ENV_NAMES[variable]
            connectors.setdefault(name.lower(), {}).setdefault(group, {})[field_name] = value
        if connectors:
            nested["connectors"] = connectors
        return nested


class _DotEnvSource(_EnvironmentSource):
    def __init__(self, settings_cls: type[BaseSettings], env_file: Any) -> None:
        from dotenv import dotenv_values

        environ: dict[str, str] = {}
        files = env_file if isinstance(env_file, list | tuple) else [env_file]
        for path in files:
            if path is not None and Path(path).is_file():
                environ.update({k: v for k, v in dotenv_values(path).items() if v is not None})
        super().__init__(settings_cls, environ)


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError

    def __call__(self) -> dict[str, Any]:
        if self._path is None:
            return {}
        try:
            with self._path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ValueError(f"policy file {str(self._path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"policy file {str(self._path)!r} is not valid TOML: {exc}") from None
        # A pyproject.toml keeps it under [tool.connector-resilience].
        tool = data.get("tool", {}).get("connector-resilience")
        if isinstance(tool, dict):
            data = tool
        return _by_alias(_nest(data, where=str(self._path)))


class _InitSource(PydanticBaseSettingsSource):
    """Keyword arguments; a group given as a model counts only for the fields it set."""

    def __init__(self, settings_cls: type[BaseSettings], kwargs: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._kwargs = kwargs

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, given in self._kwargs.items():
            value = given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else given
            if key in _GROUPS and isinstance(value, Mapping):
                value = _normalise_group(key, value, where="Policy()")
            if key == "connectors" and isinstance(value, Mapping):
                # Lower-case names so they merge with the environment's overrides.
                value = {str(name).lower(): table for name, table in value.items()}
            out[key] = value
        return _by_alias(out)


_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "connector_resilience_policy_toml", default=None
)


class Policy(BaseSettings):
    """Every connector-resilience setting, read from the environment.

    Example:
        >>> policy = Policy(retry={"max_attempts": 5})
        >>> policy.retry.max_attempts
        5
        >>> policy.circuit.failures_to_open  # CB_FAILURES_TO_OPEN, default 5
        5

    Attributes:
        retry: attempts, backoff and deadline.
        circuit: breaker thresholds and half-open probing.
        health: thresholds for healthy / degraded / down.
        oauth: token refresh and OAUTH2_REQUIRED.
        store: which store holds state, and where the JSONL files are.
        limits: the retry budget, rate limiter and bulkhead.
        connectors: per-connector overrides, ``{name: {group: {field: value}}}``.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_file=".env",
        validate_default=True,
        hide_input_in_errors=True,
    )

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit: CircuitPolicy = Field(default_factory=CircuitPolicy)
    health: HealthPolicy = Field(default_factory=HealthPolicy)
    oauth: OAuthPolicy = Field(default_factory=OAuthPolicy)
    store: StorePolicy = Field(default_factory=StorePolicy)
    limits: LimitsPolicy = Field(default_factory=LimitsPolicy)
    connectors: dict[str, dict[str, Any]] = Field(default_factory=dict)

    _views: dict[str, Policy] = PrivateAttr(default_factory=dict)

    _groups: ClassVar[dict[str, type[BaseModel]]] = _GROUPS

    if not TYPE_CHECKING:  # type checkers keep pydantic's signature, with every field

        def __init__(self, **values: Any) -> None:
            try:
                super().__init__(**values)
            except ValidationError as exc:
                # Name the variable, its value and what it accepts, not pydantic's model paths.
                raise settings_error(exc, _field_of) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment, then ``.env``, then a TOML file."""
        kwargs = getattr(init_settings, "init_kwargs", {})
        toml = _toml_path.get()
        if toml is None and os.environ.get(POLICY_FILE_ENV):
            toml = Path(os.environ[POLICY_FILE_ENV])
        return (
            _InitSource(settings_cls, kwargs),
            _EnvironmentSource(settings_cls, os.environ),
            _DotEnvSource(settings_cls, getattr(dotenv_settings, "env_file", None)),
            _TomlSource(settings_cls, toml),
        )

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> Policy:
        """Build a policy whose file layer is the TOML file at ``path``.

        The environment and keyword arguments still take precedence over the file.
        Settings may be group tables (``[retry]``), flat variable names, and
        ``[connectors.NAME]`` tables; a ``pyproject.toml`` keeps them under
        ``[tool.connector-resilience]``.
        """
        token = _toml_path.set(Path(path))
        try:
            return cls(**overrides)
        finally:
            _toml_path.reset(token)

    @field_validator("connectors", mode="before")
    @classmethod
    def _normalise_connectors(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, dict[str, Any]] = {}
        for name, table in value.items():
            if not isinstance(table, Mapping):
                raise ValueError(f"connectors.{name} must be a mapping of settings")
            nested = _nest(table, where=f"connectors.{name}")
            secret = nested.get("oauth", {}).get("encryption_key")
            if isinstance(secret, str):
                nested["oauth"]["encryption_key"] = SecretStr(secret)
            out[str(name).lower()] = nested
        return out

    @model_validator(mode="after")
    def _validate_connector_views(self) -> Self:
        for name in self.connectors:
            self.for_connector(name)
        return self

    def for_connector(self, connector: str) -> Policy:
        """The policy for one connector: this policy with that connector's overrides applied.

        Args:
            connector: the connector's name (case-insensitive).

        Returns:
            A policy with no per-connector table of its own; ``self`` when the
            connector has no overrides.

        Raises:
            ValueError: an override is invalid; the message names the connector
                and the variable.
        """
        key = connector.lower()
        overrides = self.connectors.get(key)
        if not overrides:
            return self
        view = self._views.get(key)
        if view is not None:
            return view
        update: dict[str, Any] = {}
        for group, values in overrides.items():
            current: BaseModel = getattr(self, group)
            merged = {**current.model_dump(), **values}
            try:
                update[group] = self._groups[group].model_validate(merged)
            except ValidationError as exc:
                raise ConfigurationError(_describe_override_error(key, group, exc)) from None
        view = self.model_copy(update={**update, "connectors": {}})
        self._views[key] = view
        return view

    def iter_settings(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(environment variable, current value)`` for every setting (secrets masked)."""
        for env, (group, name) in _ENV_NAMES.items():
            value = getattr(getattr(self, group), name)
            if env == "CONNECTOR_STORE_URL" and isinstance(value, str):
                value = redact_url(value)  # a password in the URL is a secret too
            yield env, value


def _describe_override_error(connector: str, group: str, exc: ValidationError) -> str:
    parts = []
    fields = _GROUPS[group].model_fields
    for error in exc.errors():
        loc = error["loc"]
        field_name = str(loc[0]) if loc else ""
        alias = fields[field_name].validation_alias if field_name in fields else None
        if not isinstance(alias, str):
            parts.append(f"{group}: {error['msg'].removeprefix('Value error, ')}")
            continue
        variable = f"{CONNECTOR_OVERRIDE_PREFIX}{connector.upper()}__{alias}"
        parts.append(describe({**error, "loc": (alias,)}, _field_of, shown_as=variable))
    return f"invalid override for connector {connector!r}: " + "; ".join(parts)


_ENV_PREFIXES: tuple[str, ...] = ("CONNECTOR_", "RETRY_", "CB_", "OAUTH", "CIRCUIT_STATE_PATH")
_ENV_PREFIXES += ("RATE_LIMIT_", "BULKHEAD_")  # the load-control settings
_current: tuple[tuple[tuple[str, str], ...], Policy] | None = None


def current_policy() -> Policy:
    """The policy the environment describes now, rebuilt only when our variables change.

    The module-level functions (``record_call``, ``summarize``, ``load_token``...)
    and decorators given no ``policy=`` use this.
    """
    global _current  # noqa: PLW0603 - a one-slot cache
    snapshot = tuple(
        sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(_ENV_PREFIXES))
    )
    cached = _current
    if cached is not None and cached[0] == snapshot:
        return cached[1]
    policy = Policy()
    _current = (snapshot, policy)
    return policy


def forget_current_policy() -> None:
    """Drop the cached environment policy (``.env`` and TOML files are re-read next time)."""
    global _current  # noqa: PLW0603
    _current = None
    _warned_names.clear()  # and warn again about misspelt variables
