"""The sans-I/O HTTP rules (connector_resilience._http), on plain values."""

from __future__ import annotations

import email.utils
import math
import random
import ssl

import pytest

from connector_resilience import _http
from connector_resilience._http import (
    AuthOrigins,
    HttpRules,
    attempt_timeout_s,
    is_transient_error,
    normalize_origin,
    origin,
    retry_at,
    server_wait_s,
    stripe_should_retry,
)

NOW = 1_800_000_000.0


class Headers(dict[str, str]):
    """A case-insensitive header lookup, as every client's is."""

    def __init__(self, **fields: str) -> None:
        super().__init__({k.lower().replace("_", "-"): v for k, v in fields.items()})

    def get(self, key: str, default: None = None, /) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


def _rules(**options: object) -> HttpRules:
    defaults: dict[str, object] = {
        "retry_statuses": _http.DEFAULT_RETRY_STATUSES,
        "retry_methods": _http.IDEMPOTENT_METHODS,
        "idempotency_header": "Idempotency-Key",
        "add_idempotency_key": False,
        "auth_origins": None,
    }
    defaults.update(options)
    return HttpRules(**defaults)  # type: ignore[arg-type]


# retry_at: when the server asks us to come back ---------------------------------------


def test_retry_after_seconds_and_date() -> None:
    assert retry_at(503, Headers(Retry_After="3"), now=NOW) == NOW + 3
    date = email.utils.formatdate(NOW + 10, usegmt=True)
    assert retry_at(429, Headers(Retry_After=date), now=NOW) == pytest.approx(NOW + 10)


def test_retry_after_on_a_success_is_not_a_request_to_wait() -> None:
    assert retry_at(200, Headers(Retry_After="3"), now=NOW) is None


def test_github_primary_limit_is_the_reset_time() -> None:
    headers = Headers(x_ratelimit_remaining="0", x_ratelimit_reset=str(int(NOW) + 42))
    assert retry_at(403, headers, now=NOW) == NOW + 42
    # Already past: come back now, not in the past.
    past = Headers(x_ratelimit_remaining="0", x_ratelimit_reset=str(int(NOW) - 5))
    assert retry_at(403, past, now=NOW) == NOW
    # Quota left: nothing to wait for.
    assert (
        retry_at(403, Headers(x_ratelimit_remaining="12", x_ratelimit_reset="1"), now=NOW) is None
    )


def test_an_exhausted_quota_on_a_success_says_when_the_next_call_may_go() -> None:
    headers = Headers(x_ratelimit_remaining="0", x_ratelimit_reset=str(int(NOW) + 7))
    assert retry_at(200, headers, now=NOW) == NOW + 7


def test_the_latest_of_several_asks_wins() -> None:
    headers = Headers(
        Retry_After="60", x_ratelimit_remaining="0", x_ratelimit_reset=str(int(NOW) + 90)
    )
    assert retry_at(403, headers, now=NOW) == NOW + 90


@pytest.mark.parametrize(
    ("fields", "wait"),
    [
        ({"RateLimit": '"default";r=0;t=30'}, 30.0),
        ({"RateLimit": '"burst";r=5;t=1, "daily";r=0;t=3600'}, 3600.0),
        ({"RateLimit": '"default";r=0', "RateLimit-Policy": '"default";q=100;w=60'}, 60.0),
        ({"RateLimit": "limit=100, remaining=0, reset=12"}, 12.0),  # draft 07
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "9"}, 9.0),  # drafts up to 06
        ({"RateLimit": '"default";r=3;t=30'}, None),
        ({"RateLimit": "limit=100, remaining=4, reset=12"}, None),
        ({"RateLimit": "garbage;;;"}, None),
        ({"RateLimit": '"default";r=0;t=-4'}, None),
    ],
)
def test_ietf_ratelimit_fields(fields: dict[str, str], wait: float | None) -> None:
    headers = Headers()
    headers.update({k.lower(): v for k, v in fields.items()})
    got = retry_at(429, headers, now=NOW)
    assert (None if got is None else got - NOW) == wait


def test_malformed_values_say_nothing() -> None:
    headers = Headers(Retry_After="soon", x_ratelimit_remaining="0", x_ratelimit_reset="never")
    assert retry_at(503, headers, now=NOW) is None


# server_wait_s ------------------------------------------------------------------------


def test_server_wait_beyond_the_cap_is_infinite_never_shortened() -> None:
    assert server_wait_s(503, Headers(Retry_After="3600"), cap_s=60, now=NOW) == math.inf
    assert server_wait_s(503, Headers(Retry_After="60"), cap_s=60, now=NOW) == 60
    assert server_wait_s(503, Headers(), cap_s=60, now=NOW) is None


def test_server_wait_jitter_is_positive_and_small() -> None:
    rng = random.Random(7)
    waits = [
        server_wait_s(429, Headers(Retry_After="30"), cap_s=120, jitter_pct=0.2, rng=rng, now=NOW)
        for _ in range(200)
    ]
    assert all(w is not None and 30.0 <= w <= 31.0 for w in waits)  # 20% of at most 5 s
    assert len(set(waits)) > 100  # a fleet spreads out


# Stripe, retry and failure rules -------------------------------------------------------


def test_stripe_should_retry() -> None:
    assert stripe_should_retry(Headers(Stripe_Should_Retry="true")) is True
    assert stripe_should_retry(Headers(Stripe_Should_Retry="FALSE")) is False
    assert stripe_should_retry(Headers(Stripe_Should_Retry="maybe")) is None
    assert stripe_should_retry(Headers()) is None


def test_which_responses_are_retried_and_which_are_failures() -> None:
    rules = _rules()
    limited = Headers(x_ratelimit_remaining="0", x_ratelimit_reset=str(int(NOW) + 5))
    cases = {
        (200, ()): (False, False),
        (404, ()): (False, False),
        (500, ()): (False, True),
        (503, ()): (True, True),
        (429, ()): (True, True),
        (403, ()): (False, False),
        (403, ("limited",)): (True, True),
        (503, ("stripe-false",)): (False, True),
        (409, ("stripe-true",)): (True, True),
    }
    for (status, marks), (retried, failure) in cases.items():
        headers = Headers()
        if "limited" in marks:
            headers = limited
        if "stripe-false" in marks:
            headers = Headers(Stripe_Should_Retry="false")
        if "stripe-true" in marks:
            headers = Headers(Stripe_Should_Retry="true")
        assert rules.should_retry(status, headers) is retried, (status, marks)
        assert rules.is_failure(status, headers) is failure, (status, marks)
        assert rules.settles(status, headers) is (not retried and not failure), (status, marks)


def test_which_requests_may_be_repeated() -> None:
    rules = _rules()
    assert rules.retryable_request("get", {})
    assert rules.retryable_request("DELETE", {})
    assert not rules.retryable_request("POST", {})
    assert rules.retryable_request("POST", {"Idempotency-Key": "k"})
    assert not rules.retryable_request("CONNECT", {"Idempotency-Key": "k"})
    assert not rules.wants_idempotency_key("POST")
    assert _rules(add_idempotency_key=True).wants_idempotency_key("patch")
    assert not _rules(add_idempotency_key=True).wants_idempotency_key("GET")


def test_labels_are_method_host_port_status_and_cached() -> None:
    rules = _rules()
    labels = rules.labels("GET", "api.test", 443, 200)
    assert labels == {"method": "GET", "host": "api.test", "port": "443", "status_code": "200"}
    assert rules.labels("GET", "api.test", 443, 200) is labels
    assert rules.labels("GET", "api.test", 443, None) == {
        "method": "GET",
        "host": "api.test",
        "port": "443",
    }


# Exceptions ---------------------------------------------------------------------------


class ClientConnectError(OSError):
    """A client's connection error class."""


def test_tls_failures_are_never_transient_whatever_wraps_them() -> None:
    wrapped = ClientConnectError("connect failed")
    wrapped.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    assert not is_transient_error(wrapped, transient=(ClientConnectError,))
    assert is_transient_error(ClientConnectError("refused"), transient=(ClientConnectError,))
    assert not is_transient_error(
        ClientConnectError("x"), transient=(OSError,), permanent=(ClientConnectError,)
    )
    assert not is_transient_error(ValueError("x"), transient=(OSError,))


# Origins and timeouts ------------------------------------------------------------------


def test_origins_compare_as_browsers_do() -> None:
    assert origin("HTTPS", "API.test", 443) == "https://api.test"
    assert origin("http", "127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert origin("http", "::1", 80) == "http://[::1]"
    assert normalize_origin("https://api.test:443/v1/users") == "https://api.test"
    with pytest.raises(ValueError, match="auth_origins"):
        normalize_origin("api.test")


def test_auth_origins_trust_on_first_use_or_as_configured() -> None:
    first = AuthOrigins()
    assert first.allows("https://api.test")
    assert first.allows("https://api.test")
    assert not first.allows("https://evil.test")
    given = AuthOrigins(["https://api.test/"])
    assert not given.allows("https://other.test")
    assert given.allows("https://api.test")


def test_attempt_timeout_is_capped_by_the_remaining_deadline() -> None:
    assert attempt_timeout_s(None, None, now=0) is None
    assert attempt_timeout_s(5.0, None, now=0) == 5.0
    assert attempt_timeout_s(5.0, 2.0, now=0) == 2.0
    assert attempt_timeout_s(None, 3.0, now=1) == 2.0
    assert attempt_timeout_s(5.0, 1.0, now=4) == 0.001  # never 0: "no timeout" to some clients
