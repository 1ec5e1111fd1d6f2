"""Backoff schedule, Retry-After and retry predicates, inside real tenacity retry loops."""

from __future__ import annotations

import asyncio
import calendar
import email.utils
import math
import random
import sys
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import tenacity
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from connector_resilience import compute_backoff_ms as public_compute_backoff_ms
from connector_resilience import testing
from connector_resilience.errors import BulkheadFullError, CircuitOpenError, RateLimitExceededError
from connector_resilience.policy import Policy
from connector_resilience.retry import (
    NEVER_RETRY,
    JitterKind,
    compute_backoff_ms,
    exception_predicate,
    parse_retry_after,
    retry_after_from,
    wait_backoff,
)

JITTERS: tuple[JitterKind, ...] = ("proportional", "full", "equal", "decorrelated", "none")

# 2015-10-21 07:00:00 UTC, the reference "now" for HTTP-dates.
NOW = float(calendar.timegm((2015, 10, 21, 7, 0, 0)))


class Extreme(random.Random):
    """A random source that always draws the top (or bottom) of the range."""

    def __init__(self, *, top: bool) -> None:
        super().__init__(0)
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


TOP, BOTTOM = Extreme(top=True), Extreme(top=False)


# compute_backoff_ms: the formula ------------------------------------------------


def test_exported_at_package_level() -> None:
    assert public_compute_backoff_ms is compute_backoff_ms


def test_schedule_doubles_from_attempt_zero_and_stops_at_the_cap() -> None:
    delays = [
        compute_backoff_ms(a, base_ms=400, cap_ms=60_000, jitter_pct=0.2, jitter="none")
        for a in range(10)
    ]
    assert delays == [400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000]


def test_defaults_come_from_the_design_table() -> None:
    """No arguments: RETRY_BASE_MS=400, RETRY_CAP_MS=60000, RETRY_JITTER_PCT=0.2."""
    rng = random.Random(7)
    for attempt in range(12):
        exp = 400 * 2**attempt
        delay = compute_backoff_ms(attempt, rng=rng)
        assert min(exp * 0.8, 60_000) <= delay <= min(exp * 1.2, 60_000)
    assert compute_backoff_ms(20) == 60_000  # 0.8 * 400 * 2**20 is far above the cap


def test_none_arguments_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "100")
    monkeypatch.setenv("RETRY_CAP_MS", "1000")
    monkeypatch.setenv("RETRY_JITTER", "none")
    assert [compute_backoff_ms(a) for a in range(6)] == [100, 200, 400, 800, 1000, 1000]


def test_jitter_pct_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_JITTER_PCT", "0.5")
    assert compute_backoff_ms(0, base_ms=100, cap_ms=1000, rng=TOP) == 150
    assert compute_backoff_ms(0, base_ms=100, cap_ms=1000, rng=BOTTOM) == 50


def test_each_none_argument_is_filled_independently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "100")
    monkeypatch.setenv("RETRY_CAP_MS", "150")
    monkeypatch.setenv("RETRY_JITTER_PCT", "0")
    assert compute_backoff_ms(0) == 100  # base, cap and jitter_pct from env
    assert compute_backoff_ms(3) == 150  # capped by the env cap
    assert compute_backoff_ms(3, cap_ms=10_000) == 800  # explicit cap, env base
    assert compute_backoff_ms(1, base_ms=10) == 20  # explicit base, env cap
    assert compute_backoff_ms(0, jitter_pct=0.5, rng=TOP) == 150  # explicit pct, capped


def test_policy_argument_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "100")
    policy = Policy(retry={"base_ms": 7, "jitter": "none"})
    assert compute_backoff_ms(0, policy=policy) == 7
    assert compute_backoff_ms(0, base_ms=9, policy=policy) == 9  # an argument beats both


def test_jitter_zero_is_exact() -> None:
    assert compute_backoff_ms(3, base_ms=100, cap_ms=10_000, jitter_pct=0) == 800


@pytest.mark.parametrize(
    ("jitter", "top", "bottom"),
    [
        ("proportional", 960.0, 640.0),  # 800 +/- 20%
        ("full", 800.0, 0.0),  # uniform 0..800
        ("equal", 800.0, 400.0),  # 400 + uniform 0..400
        ("none", 800.0, 800.0),
    ],
)
def test_jitter_kinds_reach_their_bounds(jitter: JitterKind, top: float, bottom: float) -> None:
    kw: dict[str, Any] = {"base_ms": 100, "cap_ms": 10_000, "jitter_pct": 0.2, "jitter": jitter}
    assert compute_backoff_ms(3, rng=TOP, **kw) == top
    assert compute_backoff_ms(3, rng=BOTTOM, **kw) == bottom


def test_decorrelated_draws_between_base_and_three_times_the_previous() -> None:
    kw: dict[str, Any] = {"base_ms": 100, "cap_ms": 100_000, "jitter_pct": 0.2}
    assert compute_backoff_ms(0, jitter="decorrelated", rng=TOP, **kw) == 300  # no previous
    assert compute_backoff_ms(5, jitter="decorrelated", previous_ms=1000, rng=TOP, **kw) == 3000
    assert compute_backoff_ms(5, jitter="decorrelated", previous_ms=1000, rng=BOTTOM, **kw) == 100
    # A previous delay below the base counts as the base.
    assert compute_backoff_ms(0, jitter="decorrelated", previous_ms=10, rng=TOP, **kw) == 300
    # It ignores the attempt number: only the previous delay grows it.
    assert compute_backoff_ms(9, jitter="decorrelated", rng=TOP, **kw) == 300


def test_decorrelated_is_capped() -> None:
    delay = compute_backoff_ms(
        0, base_ms=100, cap_ms=500, jitter_pct=0, jitter="decorrelated", previous_ms=400, rng=TOP
    )
    assert delay == 500


def test_proportional_jitter_is_applied_before_the_cap() -> None:
    """min(base * 2**attempt +/- jitter, cap): just below the cap, jitter can reach it."""
    kw: dict[str, Any] = {"base_ms": 100, "cap_ms": 850, "jitter_pct": 0.2}
    assert compute_backoff_ms(3, rng=TOP, **kw) == 850  # 960 capped
    assert compute_backoff_ms(3, rng=BOTTOM, **kw) == 640


def test_seeded_rng_gives_a_reproducible_schedule() -> None:
    def schedule(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [compute_backoff_ms(a, base_ms=100, cap_ms=10_000, rng=rng) for a in range(8)]

    assert schedule(3) == schedule(3)
    assert schedule(3) != schedule(4)


@pytest.mark.parametrize("jitter", JITTERS)
def test_zero_base_never_waits(jitter: JitterKind) -> None:
    for attempt in (0, 1, 50, 5000):
        assert compute_backoff_ms(attempt, base_ms=0, cap_ms=100, jitter_pct=1, jitter=jitter) == 0


@pytest.mark.parametrize("jitter", JITTERS)
@pytest.mark.parametrize("attempt", [1023, 1024, 1025, 10**6, 10**18, sys.maxsize, 2**200])
def test_huge_attempts_do_not_overflow(jitter: JitterKind, attempt: int) -> None:
    delay = compute_backoff_ms(
        attempt, base_ms=400, cap_ms=60_000, jitter_pct=0.2, jitter=jitter, rng=TOP
    )
    assert math.isfinite(delay)
    assert 0 <= delay <= 60_000
    if jitter in ("proportional", "none", "full", "equal"):
        assert delay == 60_000


def test_huge_base_and_attempt_hit_the_cap_not_infinity() -> None:
    delay = compute_backoff_ms(
        2000, base_ms=1e300, cap_ms=1e306, jitter_pct=0.2, jitter="proportional", rng=TOP
    )
    assert delay == 1e306


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempt": -1}, "attempt"),
        ({"base_ms": -1}, "base_ms"),
        ({"base_ms": 500, "cap_ms": 100}, "cap_ms"),
        ({"jitter_pct": -0.01}, "jitter_pct"),
        ({"jitter_pct": 1.01}, "jitter_pct"),
        ({"jitter_pct": float("nan")}, "jitter_pct"),
        ({"jitter": "gaussian"}, "jitter kind"),
    ],
)
def test_clear_value_errors(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "attempt": 0,
        "base_ms": 100,
        "cap_ms": 1000,
        "jitter_pct": 0.2,
        "jitter": "proportional",
    }
    args.update(kwargs)
    attempt = args.pop("attempt")
    with pytest.raises(ValueError, match=message):
        compute_backoff_ms(attempt, **args)


@pytest.mark.parametrize("field", ["base_ms", "cap_ms"])
def test_nan_base_or_cap_is_refused(field: str) -> None:
    args: dict[str, Any] = {"base_ms": 100.0, "cap_ms": 1000.0, "jitter_pct": 0.2}
    args[field] = float("nan")
    with pytest.raises(ValueError, match=field):
        compute_backoff_ms(3, **args)


# Property tests of the bounds ----------------------------------------------------

attempts = st.integers(min_value=0, max_value=5000)
# Bases below ~1e-290 ms would expose the exponent clamp at 2**1000 (retry.py:53), which
# only matters for absurd bases, so they are left out.
bases = st.just(0.0) | st.floats(min_value=1e-6, max_value=1e7, allow_nan=False)
extra_caps = st.floats(min_value=0, max_value=1e9, allow_nan=False)
pcts = st.floats(min_value=0, max_value=1, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**32)
TOL = 1e-9


def capped(attempt: int, base: float, cap: float, factor: float = 1.0) -> float:
    """min(base * 2**attempt * factor, cap), computed exactly (no float overflow)."""
    return float(min(Fraction(base) * 2**attempt * Fraction(factor), Fraction(cap)))


def within(value: float, low: float, high: float) -> bool:
    slack = TOL * max(1.0, abs(low), abs(high))
    return low - slack <= value <= high + slack


@given(attempt=attempts, base=bases, extra=extra_caps, pct=pcts, seed=seeds)
@example(attempt=0, base=400, extra=59_600, pct=0.2, seed=0)
@example(attempt=5000, base=1e7, extra=0, pct=1, seed=1)
def test_property_proportional_bounds(
    attempt: int, base: float, extra: float, pct: float, seed: int
) -> None:
    cap = base + extra
    delay = compute_backoff_ms(
        attempt,
        base_ms=base,
        cap_ms=cap,
        jitter_pct=pct,
        jitter="proportional",
        rng=random.Random(seed),
    )
    assert within(delay, capped(attempt, base, cap, 1 - pct), capped(attempt, base, cap, 1 + pct))


@given(attempt=attempts, base=bases, extra=extra_caps, seed=seeds)
def test_property_full_bounds(attempt: int, base: float, extra: float, seed: int) -> None:
    cap = base + extra
    delay = compute_backoff_ms(
        attempt, base_ms=base, cap_ms=cap, jitter_pct=0.2, jitter="full", rng=random.Random(seed)
    )
    assert within(delay, 0, capped(attempt, base, cap))


@given(attempt=attempts, base=bases, extra=extra_caps, seed=seeds)
def test_property_equal_bounds(attempt: int, base: float, extra: float, seed: int) -> None:
    cap = base + extra
    top = capped(attempt, base, cap)
    delay = compute_backoff_ms(
        attempt, base_ms=base, cap_ms=cap, jitter_pct=0.2, jitter="equal", rng=random.Random(seed)
    )
    assert within(delay, top / 2, top)


@given(
    attempt=attempts,
    base=bases,
    extra=extra_caps,
    previous=st.none() | st.floats(min_value=0, max_value=1e10, allow_nan=False),
    seed=seeds,
)
def test_property_decorrelated_bounds(
    attempt: int, base: float, extra: float, previous: float | None, seed: int
) -> None:
    cap = base + extra
    grown = 3 * max(base if previous is None else previous, base)
    delay = compute_backoff_ms(
        attempt,
        base_ms=base,
        cap_ms=cap,
        jitter_pct=0.2,
        jitter="decorrelated",
        previous_ms=previous,
        rng=random.Random(seed),
    )
    assert within(delay, base, min(grown, cap))


@given(attempt=attempts, base=bases, extra=extra_caps)
def test_property_no_jitter_is_the_formula(attempt: int, base: float, extra: float) -> None:
    cap = base + extra
    delay = compute_backoff_ms(attempt, base_ms=base, cap_ms=cap, jitter_pct=0.5, jitter="none")
    assert within(delay, capped(attempt, base, cap), capped(attempt, base, cap))


@given(base=bases, extra=extra_caps, first=attempts, more=st.integers(0, 100))
def test_property_no_jitter_never_decreases(
    base: float, extra: float, first: int, more: int
) -> None:
    kw: dict[str, Any] = {
        "base_ms": base,
        "cap_ms": base + extra,
        "jitter_pct": 0,
        "jitter": "none",
    }
    assert compute_backoff_ms(first, **kw) <= compute_backoff_ms(first + more, **kw)


@given(
    attempt=st.integers(min_value=0, max_value=10**30),
    base=bases,
    extra=extra_caps,
    pct=pcts,
    jitter=st.sampled_from(JITTERS),
    seed=seeds,
)
def test_property_every_kind_is_finite_and_within_zero_and_cap(
    attempt: int, base: float, extra: float, pct: float, jitter: JitterKind, seed: int
) -> None:
    cap = base + extra
    delay = compute_backoff_ms(
        attempt, base_ms=base, cap_ms=cap, jitter_pct=pct, jitter=jitter, rng=random.Random(seed)
    )
    assert math.isfinite(delay)
    assert 0 <= delay <= cap


# parse_retry_after ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  7 ", 7.0),
        ("007", 7.0),
        ("1.5", 1.5),
        (5, 5.0),
        (1.5, 1.5),
        (0, 0.0),
    ],
)
def test_delta_seconds(value: str | float, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-1",
        "+5",
        ".5",
        "1.",
        "12abc",
        "0x10",
        "Wed, 32 Oct 2015 07:28:00 GMT",
        "Wed, 21 Oct 99999 07:28:00 GMT",
        "Wed, 21 Oct 2015 25:28:00 GMT",
        -1,
        -0.5,
        float("nan"),
        float("inf"),
    ],
)
def test_garbage_gives_none(value: str | float | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("value", ["²", "¹²", "①", "٣"])
def test_non_ascii_digits_give_none(value: str) -> None:
    """Delta-seconds is ASCII digits (RFC 9110 section 10.2.3); anything else is garbage."""
    assert parse_retry_after(value) is None


@pytest.mark.parametrize(
    "date",
    [
        "Wed, 21 Oct 2015 07:28:00 GMT",  # IMF-fixdate
        "Wednesday, 21-Oct-15 07:28:00 GMT",  # obsolete RFC 850
        "Wed Oct 21 07:28:00 2015",  # obsolete asctime
        "Wed, 21 Oct 2015 09:28:00 +0200",  # numeric zone
        "Wed, 21 Oct 2015 07:28:00 -0000",  # unknown zone: taken as UTC
    ],
)
def test_http_date_in_the_future(date: str) -> None:
    assert parse_retry_after(date, now=NOW) == 28 * 60


def test_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 06:00:00 GMT", now=NOW) == 0.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now=NOW) == 0.0


def test_http_date_without_now_uses_the_library_clock() -> None:
    with testing.FakeClock(start=NOW):
        assert parse_retry_after("Wed, 21 Oct 2015 07:00:30 GMT") == 30.0


@given(st.integers(min_value=0, max_value=10**12))
def test_property_delta_seconds_round_trip(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == float(seconds)


@given(
    when=st.integers(min_value=0, max_value=4_000_000_000),
    now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_property_http_date_is_the_distance_from_now(when: int, now: float) -> None:
    header = email.utils.formatdate(when, usegmt=True)
    result = parse_retry_after(header, now=now)
    assert result is not None
    assert result == pytest.approx(max(0.0, when - now), abs=1e-6)


@given(st.text(max_size=60))
@example("²")
@example("①")
@example("Wed, 21 Oct 2015 07:28:00 +9999")
def test_property_any_text_gives_none_or_a_non_negative_number(text: str) -> None:
    result = parse_retry_after(text, now=NOW)
    assert result is None or result >= 0


# retry_after_from ------------------------------------------------------------------


class RetryAfterAttrError(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__("limited")
        self.retry_after = retry_after


class HeadersError(Exception):
    def __init__(self, headers: object) -> None:
        super().__init__("limited")
        self.headers = headers


class Response:
    def __init__(self, headers: object) -> None:
        self.headers = headers


class ResponseError(Exception):
    def __init__(self, response: object, headers: object = None) -> None:
        super().__init__("limited")
        self.response = response
        if headers is not None:
            self.headers = headers


class RaisingHeaders:
    def get(self, name: str) -> str:
        raise TypeError("no")


@pytest.mark.parametrize(
    ("outcome", "seconds"),
    [
        (RetryAfterAttrError(3), 3.0),
        (RetryAfterAttrError(2.5), 2.5),
        (RetryAfterAttrError("4"), 4.0),
        (HeadersError({"Retry-After": "5"}), 5.0),
        (HeadersError(CIMultiDict({"retry-after": "6"})), 6.0),
        (Response({"Retry-After": "7"}), 7.0),
        (ResponseError(Response({"Retry-After": "8"})), 8.0),
        (ResponseError(Response(CIMultiDict({"RETRY-AFTER": "9"}))), 9.0),
        # The exception's own headers lack it; the response's have it.
        (ResponseError(Response({"Retry-After": "10"}), headers={"X": "1"}), 10.0),
    ],
)
def test_retry_after_from_finds_the_delay(outcome: object, seconds: float) -> None:
    assert retry_after_from(outcome) == seconds


@pytest.mark.parametrize(
    "outcome",
    [
        ValueError("plain"),
        None,
        RetryAfterAttrError(None),
        HeadersError({}),
        HeadersError({"Retry-After": 5}),  # not a header string
        HeadersError(None),
        HeadersError("Retry-After: 5"),
        HeadersError(RaisingHeaders()),
        ResponseError(None),
        ResponseError(Response({"Retry-After": "whenever"})),
    ],
)
def test_retry_after_from_without_a_delay(outcome: object) -> None:
    assert retry_after_from(outcome) is None


def test_retry_after_attribute_wins_over_headers() -> None:
    exc = RetryAfterAttrError(1)
    exc.headers = {"Retry-After": "99"}  # type: ignore[attr-defined]
    assert retry_after_from(exc) == 1.0


def test_a_plain_exception_type_still_carries_a_delay_given_to_one_instance() -> None:
    # Known as a type with nothing to look up once seen bare: an instance given
    # a delay later, and a type whose headers are a property, are still read.
    assert retry_after_from(ConnectionError("bare")) is None
    given = ConnectionError("limited")
    given.retry_after = 3  # type: ignore[attr-defined]
    assert retry_after_from(given) == 3.0

    class PropertyHeadersError(Exception):
        @property
        def headers(self) -> dict[str, str]:
            return {"Retry-After": "4"}

    assert retry_after_from(PropertyHeadersError()) == 4.0


def test_retry_after_from_a_real_aiohttp_error() -> None:
    aiohttp = pytest.importorskip("aiohttp")
    error = aiohttp.ClientResponseError(
        request_info=None,
        history=(),
        status=429,
        headers=CIMultiDict({"Retry-After": "12"}),
    )
    assert retry_after_from(error) == 12.0


def test_retry_after_http_date_uses_the_library_clock() -> None:
    with testing.FakeClock(start=NOW):
        assert retry_after_from(RetryAfterAttrError("Wed, 21 Oct 2015 07:01:00 GMT")) == 60.0


# wait_backoff inside tenacity ----------------------------------------------------------


def run(
    wait: tenacity.wait.wait_base,
    failures: list[BaseException],
    *,
    attempts: int | None = None,
) -> list[float]:
    """Run a real tenacity loop that fails with ``failures`` then succeeds; return its sleeps."""
    sleeps: list[float] = []
    pending = list(failures)
    retrying = tenacity.Retrying(
        wait=wait,
        stop=tenacity.stop_after_attempt(attempts or len(failures) + 1),
        sleep=sleeps.append,
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            if pending:
                raise pending.pop(0)
    return sleeps


def test_wait_backoff_is_the_same_schedule() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=1000, jitter_pct=0.2, jitter="none")
    expected = [compute_backoff_ms(a, base_ms=100, cap_ms=1000, jitter="none") for a in range(6)]
    assert run(wait, [ValueError()] * 6) == [ms / 1000 for ms in expected]
    assert run(wait, [ValueError()] * 6) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_wait_backoff_reraises_when_attempts_run_out() -> None:
    wait = wait_backoff(base_ms=10, cap_ms=100, jitter="none")
    with pytest.raises(KeyError):
        run(wait, [KeyError("a")] * 5, attempts=3)


def test_wait_backoff_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "50")
    monkeypatch.setenv("RETRY_CAP_MS", "150")
    monkeypatch.setenv("RETRY_JITTER", "none")
    assert run(wait_backoff(), [OSError()] * 4) == [0.05, 0.1, 0.15, 0.15]


def test_wait_backoff_default_schedule_is_the_design_one() -> None:
    sleeps = run(wait_backoff(rng=random.Random(1)), [OSError()] * 3)
    for attempt, sleep in enumerate(sleeps):
        assert 0.8 * 0.4 * 2**attempt <= sleep <= 1.2 * 0.4 * 2**attempt


def test_wait_backoff_from_a_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_MS", "999")
    policy = Policy(retry={"base_ms": 20, "cap_ms": 50, "jitter": "none"})
    assert run(wait_backoff(policy=policy), [OSError()] * 3) == [0.02, 0.04, 0.05]


def test_wait_backoff_honours_retry_after() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=10_000, jitter="none")
    sleeps = run(wait, [RetryAfterAttrError(2), ValueError(), HeadersError({"Retry-After": "3"})])
    assert sleeps == [2.0, 0.2, 3.0]


def test_wait_backoff_caps_retry_after() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=5_000, jitter="none")
    assert run(
        wait, [RetryAfterAttrError(120), RetryAfterAttrError("Fri, 31 Dec 9999 23:59:59 GMT")]
    ) == [
        5.0,
        5.0,
    ]


def test_wait_backoff_retry_after_http_date() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=60_000, jitter="none")
    with testing.FakeClock(start=NOW):
        assert run(wait, [RetryAfterAttrError("Wed, 21 Oct 2015 07:00:04 GMT")]) == [4.0]


def test_wait_backoff_zero_retry_after() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=60_000, jitter="none")
    assert run(wait, [RetryAfterAttrError(0)]) == [0.0]


def test_wait_backoff_can_ignore_retry_after() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=10_000, jitter="none", honour_retry_after=False)
    assert run(wait, [RetryAfterAttrError(7), RetryAfterAttrError(7)]) == [0.1, 0.2]


def test_wait_backoff_falls_back_on_unreadable_retry_after() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=10_000, jitter="none")
    assert run(wait, [RetryAfterAttrError("later"), HeadersError({"Retry-After": "x"})]) == [
        0.1,
        0.2,
    ]


def test_wait_backoff_when_retrying_on_a_result() -> None:
    sleeps: list[float] = []
    results = iter([None, None, "done"])
    retrying = tenacity.Retrying(
        wait=wait_backoff(base_ms=100, cap_ms=10_000, jitter="none"),
        retry=tenacity.retry_if_result(lambda r: r is None),
        stop=tenacity.stop_after_attempt(5),
        sleep=sleeps.append,
    )
    assert retrying(lambda: next(results)) == "done"
    assert sleeps == [0.1, 0.2]


def test_wait_backoff_decorrelated_grows_from_the_previous_sleep() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=10_000, jitter="decorrelated", rng=TOP)
    assert run(wait, [OSError()] * 5) == [0.3, 0.9, 2.7, 8.1, 10.0]


def test_wait_backoff_decorrelated_restarts_for_each_call() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=10_000, jitter="decorrelated", rng=TOP)
    assert run(wait, [OSError()] * 2) == [0.3, 0.9]
    assert run(wait, [OSError()] * 2) == [0.3, 0.9]


def test_wait_backoff_proportional_bounds_in_a_loop() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=1_000, jitter_pct=0.2, rng=random.Random(5))
    for _ in range(20):
        sleeps = run(wait, [OSError()] * 5)
        for attempt, sleep in enumerate(sleeps):
            exp = 0.1 * 2**attempt
            assert min(exp * 0.8, 1.0) <= sleep <= min(exp * 1.2, 1.0)


def test_wait_backoff_combines_with_other_tenacity_waits() -> None:
    wait = wait_backoff(base_ms=100, cap_ms=1_000, jitter="none") + tenacity.wait_fixed(1)
    assert run(wait, [OSError()] * 2) == pytest.approx([1.1, 1.2])


async def test_wait_backoff_in_async_retrying() -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError
        await asyncio.sleep(0)
        return "ok"

    retrying = tenacity.AsyncRetrying(
        wait=wait_backoff(base_ms=100, cap_ms=1_000, jitter="none"),
        stop=tenacity.stop_after_attempt(5),
        sleep=fake_sleep,
    )
    assert await retrying(flaky) == "ok"
    assert sleeps == [0.1, 0.2, 0.4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_ms": -1, "cap_ms": 10}, "base_ms"),
        ({"base_ms": 500, "cap_ms": 100}, "cap_ms"),
        ({"jitter_pct": 2}, "jitter_pct"),
        ({"jitter": "pink"}, "jitter kind"),
    ],
)
def test_wait_backoff_validates_when_built(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wait_backoff(**kwargs)


def test_wait_backoff_repr() -> None:
    text = repr(wait_backoff(base_ms=100, cap_ms=1000, jitter_pct=0.1, jitter="full"))
    assert text == "wait_backoff(base_ms=100, cap_ms=1000, jitter='full', jitter_pct=0.1)"


def test_wait_backoff_seeded_schedule_matches_compute_backoff_ms() -> None:
    kw: dict[str, Any] = {"base_ms": 100, "cap_ms": 10_000, "jitter_pct": 0.2}
    sleeps = run(wait_backoff(rng=random.Random(42), **kw), [OSError()] * 4)
    rng = random.Random(42)
    assert sleeps == [compute_backoff_ms(a, rng=rng, **kw) / 1000 for a in range(4)]


# exception_predicate -------------------------------------------------------------


class TransientError(Exception):
    pass


class FlakyError(TransientError):
    pass


FORMS: list[tuple[str, Callable[[], Any]]] = [
    ("type", lambda: TransientError),
    ("tuple", lambda: (KeyError, TransientError)),
    ("predicate", lambda: lambda exc: isinstance(exc, TransientError)),
    ("tenacity type", lambda: tenacity.retry_if_exception_type(TransientError)),
    (
        "tenacity predicate",
        lambda: tenacity.retry_if_exception(lambda e: isinstance(e, TransientError)),
    ),
]


@pytest.mark.parametrize(("form", "make"), FORMS)
def test_predicate_forms(form: str, make: Callable[[], Any]) -> None:
    should_retry = exception_predicate(make())
    assert should_retry(TransientError()) is True
    assert should_retry(FlakyError()) is True  # subclasses too
    assert should_retry(ValueError()) is False


def test_predicate_tuple_matches_every_member_and_empty_matches_nothing() -> None:
    should_retry = exception_predicate((KeyError, TimeoutError))
    assert should_retry(KeyError())
    assert should_retry(TimeoutError())
    assert not should_retry(ValueError())
    assert not exception_predicate(())(ValueError())


def test_predicate_result_is_a_bool() -> None:
    truthy: Any = lambda exc: "yes"  # noqa: E731 - a predicate returning a non-bool
    falsy: Any = lambda exc: 0  # noqa: E731
    assert exception_predicate(truthy)(ValueError()) is True
    assert exception_predicate(falsy)(ValueError()) is False


def test_tenacity_not_exception_type_and_message() -> None:
    not_value = exception_predicate(tenacity.retry_if_not_exception_type(ValueError))
    assert not_value(KeyError())
    assert not not_value(ValueError())
    by_message = exception_predicate(tenacity.retry_if_exception_message(match="try again.*"))
    assert by_message(RuntimeError("try again later"))
    assert not by_message(RuntimeError("fatal"))


NEVER: list[BaseException] = [
    asyncio.CancelledError(),
    KeyboardInterrupt(),
    SystemExit(1),
    GeneratorExit(),
    CircuitOpenError("github", retry_at=None),
    RateLimitExceededError("github", retry_at=None),
    BulkheadFullError("github"),
]


class OpenAgainError(CircuitOpenError):
    pass


ALWAYS_YES: list[tuple[str, Callable[[], Any]]] = [
    ("BaseException", lambda: BaseException),
    ("tuple", lambda: (BaseException, Exception)),
    ("predicate", lambda: lambda exc: True),
    ("tenacity type", lambda: tenacity.retry_if_exception_type(BaseException)),
    ("tenacity predicate", lambda: tenacity.retry_if_exception(lambda e: True)),
    ("tenacity not-type", lambda: tenacity.retry_if_not_exception_type(ValueError)),
    ("exact type", lambda: (KeyboardInterrupt, CircuitOpenError, asyncio.CancelledError)),
]


@pytest.mark.parametrize(("form", "make"), ALWAYS_YES)
@pytest.mark.parametrize("exc", [*NEVER, OpenAgainError("x", retry_at=1.0)], ids=repr)
def test_never_retry_members_are_never_retried(
    form: str, make: Callable[[], Any], exc: BaseException
) -> None:
    assert exception_predicate(make())(exc) is False


def test_never_retry_lists_the_documented_exceptions() -> None:
    assert set(NEVER_RETRY) == {type(e) for e in NEVER}


def test_never_retry_inside_a_real_tenacity_loop() -> None:
    should_retry = exception_predicate(lambda exc: True)
    calls = 0

    def interrupted() -> None:
        nonlocal calls
        calls += 1
        raise KeyboardInterrupt

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(should_retry),
        stop=tenacity.stop_after_attempt(5),
        sleep=lambda s: None,
        reraise=True,
    )
    with pytest.raises(KeyboardInterrupt):
        retrying(interrupted)
    assert calls == 1


@pytest.mark.parametrize(
    ("strategy", "retried"),
    [
        (tenacity.retry_always, True),
        (tenacity.retry_never, False),
        (tenacity.retry_any(tenacity.retry_always), True),
        (tenacity.retry_all(tenacity.retry_always, tenacity.retry_never), False),
    ],
    ids=["always", "never", "any", "all"],
)
def test_whole_attempt_strategies_judge_exceptions_as_tenacity_does(
    strategy: tenacity.retry_base, retried: bool
) -> None:
    predicate = exception_predicate(strategy)
    assert predicate(ValueError("x")) is retried
    assert predicate(KeyboardInterrupt()) is False  # never retried, whatever it says


@pytest.mark.parametrize(
    "strategy",
    [tenacity.retry_if_result(bool), tenacity.retry_if_not_result(bool)],
    ids=["if_result", "if_not_result"],
)
def test_result_strategies_are_refused_as_retry_on(strategy: tenacity.retry_base) -> None:
    with pytest.raises(TypeError, match="retry_on_result"):
        exception_predicate(strategy)


@pytest.mark.parametrize("bad", [5, "ValueError", (ValueError, "KeyError"), (ValueError, 3)])
def test_garbage_retry_on_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="retry_on"):
        exception_predicate(bad)


def test_result_strategy_is_refused() -> None:
    with pytest.raises(TypeError):
        exception_predicate(tenacity.retry_if_result(lambda result: True))


def test_non_exception_class_is_refused() -> None:
    with pytest.raises(TypeError):
        exception_predicate(int)  # type: ignore[arg-type]


@given(st.sampled_from([ValueError, KeyError, OSError, TimeoutError, TransientError, FlakyError]))
def test_property_type_form_is_isinstance(exc_type: type[Exception]) -> None:
    for retry_on in (OSError, TransientError, Exception):
        assert exception_predicate(retry_on)(exc_type()) is issubclass(exc_type, retry_on)
