"""Every subject, configured the way its documentation says a user would.

Three scenarios, sync and async:

* **success**: the wrapped function returns at once; what each library adds.
* **fail once**: every logical call fails once (ConnectionError), then succeeds
  on the retry, with the library's *own* zero-wait setting (for us a Policy
  with ``RETRY_BASE_MS=0``; never ``testing.no_waits()``, which would skip the
  engine's sleep decision).
* **rejection**: the breaker is open (cooldown of an hour); what refusing a
  call costs.

Peers are imported lazily: a missing or broken one becomes a row that says why.
"""

# ruff: noqa: PLW0108 - the lambdas defer building a peer until its builder runs,
# so a missing peer becomes a row that says why instead of an import error here.

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, cast

from benchmarks._core import (
    Context,
    Runner,
    UnavailableError,
    async_runner,
    need,
    sync_catching_runner,
    sync_runner,
)
from benchmarks._groups import Builder
from benchmarks._redis import redis_store_url
from connector_resilience import CircuitOpenError, Policy, flush_metrics, resilient

_tags = itertools.count()

PYBREAKER_NO_ASYNC = "n/a: pybreaker's call_async needs Tornado; it has no asyncio support"

# Our stores -------------------------------------------------------------------------

OUR_STORES = ("memory", "jsonl", "sqlite", "redis")
STORE_LABEL = {
    "memory": "memory://",
    "jsonl": "default JSONL",
    "sqlite": "sqlite:///",
    "redis": "redis://",
}


def our_policy(ctx: Context, kind: str, **groups: Any) -> Policy:
    """A policy on a fresh store of ``kind``; metrics are flushed by the runner.

    The background writer is slowed to once an hour so that every batch ends
    with an explicit ``flush_metrics()``: the writing is then timed, on the
    caller's thread, instead of landing at random inside some other subject's batch.
    """
    tag = f"{kind}-{next(_tags)}"
    cfg: dict[str, Any] = {"flush_interval_s": 3600.0, **groups.pop("store", {})}
    if kind == "memory":
        cfg["url"] = f"memory://bench-{tag}"
    elif kind == "jsonl":
        # The default store: no URL, the three JSONL files.
        folder = ctx.scratch / f"jsonl-{tag}"
        cfg.update(
            url=None,
            metrics_path=folder / "metrics.jsonl",
            circuit_state_path=folder / "circuit_state.jsonl",
            token_path=folder / "tokens.jsonl",
        )
    elif kind == "sqlite":
        cfg["url"] = f"sqlite:///{ctx.scratch / f'{tag}.db'}"
    elif kind == "redis":
        cfg["url"] = redis_store_url(ctx, tag)
    else:
        raise ValueError(kind)
    return Policy(store=cfg, **groups)


# Functions under test ------------------------------------------------------------------


def _plain() -> int:
    return 1


async def _aplain() -> int:
    return 1


def _flaky() -> tuple[Callable[[], int], list[int]]:
    """A function whose odd calls raise: each logical call fails once, then succeeds."""
    count = [0]

    def flaky() -> int:
        count[0] += 1
        if count[0] & 1:
            raise ConnectionError("the first attempt fails")
        return 1

    return flaky, count


def _aflaky() -> tuple[Callable[[], Awaitable[int]], list[int]]:
    count = [0]

    async def flaky() -> int:
        count[0] += 1
        if count[0] & 1:
            raise ConnectionError("the first attempt fails")
        return 1

    return flaky, count


def _boom() -> tuple[Callable[[], int], list[int]]:
    count = [0]

    def boom() -> int:
        count[0] += 1
        raise ConnectionError("down")

    return boom, count


def _aboom() -> tuple[Callable[[], Awaitable[int]], list[int]]:
    count = [0]

    async def boom() -> int:
        count[0] += 1
        raise ConnectionError("down")

    return boom, count


def _check(value: object, expected: object, who: str) -> None:
    if value != expected:
        raise RuntimeError(f"{who} returned {value!r}, expected {expected!r}")


# Peer decorators, one place per library ------------------------------------------


def tenacity_retry(*, zero_wait: bool = False) -> Callable[[Any], Any]:
    tenacity = need("tenacity", "tenacity")
    wait = (
        tenacity.wait_none()
        if zero_wait
        else tenacity.wait_exponential_jitter(initial=0.4, max=60.0)
    )
    retry: Callable[[Any], Any] = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=wait,
        retry=tenacity.retry_if_exception_type(ConnectionError),
        reraise=True,
    )
    return retry


def stamina_retry(*, zero_wait: bool = False) -> Callable[[Any], Any]:
    stamina = need("stamina", "stamina")
    if zero_wait:
        return cast(
            Callable[[Any], Any],
            stamina.retry(
                on=ConnectionError, attempts=3, wait_initial=0, wait_max=0, wait_jitter=0
            ),
        )
    return cast(Callable[[Any], Any], stamina.retry(on=ConnectionError, attempts=3))


def backoff_retry(*, zero_wait: bool = False) -> Callable[[Any], Any]:
    backoff = need("backoff", "backoff")
    if zero_wait:
        return cast(
            Callable[[Any], Any],
            backoff.on_exception(
                backoff.constant, ConnectionError, max_tries=3, interval=0, jitter=None
            ),
        )
    return cast(
        Callable[[Any], Any], backoff.on_exception(backoff.expo, ConnectionError, max_tries=3)
    )


def pybreaker_breaker(*, fail_max: int = 5, reset_s: float = 60, storage: Any = None) -> Any:
    pybreaker = need("pybreaker", "pybreaker")
    return pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_s, state_storage=storage)


def circuitbreaker_breaker(*, threshold: int = 5, recovery_s: float = 60) -> Any:
    circuitbreaker = need("circuitbreaker", "circuitbreaker")
    return circuitbreaker.CircuitBreaker(
        failure_threshold=threshold,
        recovery_timeout=recovery_s,
        expected_exception=ConnectionError,
        name=f"bench-{next(_tags)}",
    )


def aiobreaker_breaker(*, fail_max: int = 5, reset_s: float = 60) -> Any:
    aiobreaker = need("aiobreaker", "aiobreaker")
    return aiobreaker.CircuitBreaker(
        fail_max=fail_max, timeout_duration=dt.timedelta(seconds=reset_s)
    )


def purgatory_sync(*, threshold: int = 5, ttl: float = 60) -> Callable[[Any], Any]:
    purgatory = need("purgatory", "purgatory")
    factory = purgatory.SyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=ttl)
    factory.initialize()
    deco: Callable[[Any], Any] = factory(f"bench-{next(_tags)}")
    return deco


def purgatory_async(
    loop: asyncio.AbstractEventLoop, *, threshold: int = 5, ttl: float = 60
) -> Callable[[Any], Any]:
    purgatory = need("purgatory", "purgatory")
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=ttl)
    loop.run_until_complete(factory.initialize())
    deco: Callable[[Any], Any] = factory(f"bench-{next(_tags)}")
    return deco


def pyresilience_deco(
    *, retry: bool = True, zero_wait: bool = False, threshold: int = 5, recovery_s: float = 60
) -> Callable[[Any], Any]:
    pyres = need("pyresilience", "pyresilience")
    retry_cfg = None
    if retry:
        retry_cfg = (
            pyres.RetryConfig(max_attempts=3, delay=0.0, jitter=False, retry_on=(ConnectionError,))
            if zero_wait
            else pyres.RetryConfig(max_attempts=3, delay=0.4, retry_on=(ConnectionError,))
        )
    deco: Callable[[Any], Any] = pyres.resilient(
        retry=retry_cfg,
        circuit_breaker=pyres.CircuitBreakerConfig(
            failure_threshold=threshold, recovery_timeout=recovery_s
        ),
    )
    return deco


def interlock_breaker(*, trip_on_first: bool = False, storage: Any = None) -> Any:
    interlock = need("interlock", "interlock-cb")
    if trip_on_first:
        config = interlock.Config(
            minimum_number_of_calls=1, window_size=1, wait_duration_in_open=3600.0
        )
    else:
        # Never trips at the 50% attempt failure rate of the fail-once scenario.
        config = interlock.Config(failure_rate_threshold=1.0)
    return interlock.CircuitBreaker(name=f"bench-{next(_tags)}", config=config, storage=storage)


def interlock_tenacity(breaker: Any, *, is_async: bool) -> Callable[[Any], Any]:
    """interlock has no retry engine; its docs compose tenacity with retry_unless_open."""
    tenacity = need("tenacity", "tenacity")
    glue = need("interlock.integrations.tenacity", "interlock-cb")
    kwargs = {
        "retry": glue.retry_unless_open(ConnectionError),
        "stop": tenacity.stop_after_attempt(3),
        "wait": tenacity.wait_none(),
        "reraise": True,
    }
    if is_async:
        retrying = tenacity.AsyncRetrying(**kwargs)

        def wrap_async(fn: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
            # tenacity awaits only coroutine functions; breaker.call_async is a plain
            # method returning an awaitable, so it gets a coroutine function around it.
            async def attempt() -> int:
                result: int = await breaker.call_async(fn)
                return result

            async def call() -> int:
                result: int = await retrying(attempt)
                return result

            return call

        return wrap_async
    retrying = tenacity.Retrying(**kwargs)

    def wrap(fn: Callable[[], int]) -> Callable[[], int]:
        def call() -> int:
            result: int = retrying(breaker.call_sync, fn)
            return result

        return call

    return wrap


def redis_client(ctx: Context, *, asynchronous: bool = False) -> Any:
    if ctx.redis_url is None:
        raise UnavailableError(f"skipped: {ctx.redis_note}")
    if asynchronous:
        aioredis = need("redis.asyncio", "redis")
        return aioredis.Redis.from_url(ctx.redis_url)
    redis = need("redis", "redis")
    return redis.Redis.from_url(ctx.redis_url)


def _pybreaker_redis(ctx: Context, *, fail_max: int = 5, reset_s: float = 60) -> Any:
    pybreaker = need("pybreaker", "pybreaker")
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, redis_client(ctx), namespace=f"bench-{next(_tags)}"
    )
    return pybreaker_breaker(fail_max=fail_max, reset_s=reset_s, storage=storage)


def _interlock_redis(ctx: Context, *, asynchronous: bool, trip_on_first: bool = False) -> Any:
    glue = need("interlock.integrations.redis", "interlock-cb")
    storage_cls = glue.AsyncRedisStorage if asynchronous else glue.RedisStorage
    storage = storage_cls(
        client=redis_client(ctx, asynchronous=asynchronous), key_prefix=f"bench-{next(_tags)}:"
    )
    return interlock_breaker(trip_on_first=trip_on_first, storage=storage)


def _ours_needs(ctx: Context, store: str) -> None:
    if store == "redis":
        redis_store_url(ctx, "probe")  # raises UnavailableError with the reason


# Success path ------------------------------------------------------------------------


def success_sync(ctx: Context) -> dict[str, Builder]:
    """Builders for the sync success path; ``plain`` is the baseline."""
    builders: dict[str, Builder] = {"plain call": lambda: sync_runner(_plain)}

    def ours(store: str) -> Builder:
        def build() -> Runner:
            _ours_needs(ctx, store)
            fn = resilient("bench", policy=our_policy(ctx, store))(_plain)
            _check(fn(), 1, "@resilient")
            return sync_runner(fn, flush_metrics)

        return build

    for store in OUR_STORES:
        builders[f"@resilient, {STORE_LABEL[store]}"] = ours(store)

    def peer(make: Callable[[], Callable[[], int]]) -> Builder:
        def build() -> Runner:
            fn = make()
            _check(fn(), 1, "peer")
            return sync_runner(fn)

        return build

    builders["tenacity @retry"] = peer(lambda: tenacity_retry()(_plain))
    builders["stamina @retry"] = peer(lambda: stamina_retry()(_plain))
    builders["backoff @on_exception"] = peer(lambda: backoff_retry()(_plain))
    builders["pybreaker"] = peer(lambda: pybreaker_breaker()(_plain))
    builders["circuitbreaker"] = peer(lambda: circuitbreaker_breaker()(_plain))
    builders["aiobreaker"] = peer(lambda: aiobreaker_breaker()(_plain))
    builders["purgatory"] = peer(lambda: purgatory_sync()(_plain))
    builders["pyresilience retry + breaker"] = peer(lambda: pyresilience_deco()(_plain))
    builders["interlock-cb"] = peer(lambda: interlock_breaker()(_plain))
    builders["tenacity + pybreaker"] = peer(lambda: tenacity_retry()(pybreaker_breaker()(_plain)))
    builders["pybreaker + CircuitRedisStorage"] = peer(lambda: _pybreaker_redis(ctx)(_plain))
    builders["interlock-cb + RedisStorage"] = peer(
        lambda: _interlock_redis(ctx, asynchronous=False)(_plain)
    )
    return builders


def success_async(ctx: Context, loop: asyncio.AbstractEventLoop) -> dict[str, Builder]:
    """Builders for the async success path, run inside ``loop``."""
    builders: dict[str, Builder] = {"plain call": lambda: async_runner(loop, _aplain)}

    def ours(store: str) -> Builder:
        def build() -> Runner:
            _ours_needs(ctx, store)
            fn = resilient("bench", policy=our_policy(ctx, store))(_aplain)
            _check(loop.run_until_complete(fn()), 1, "@resilient")
            return async_runner(loop, fn, flush_metrics)

        return build

    for store in OUR_STORES:
        builders[f"@resilient, {STORE_LABEL[store]}"] = ours(store)

    def peer(make: Callable[[], Callable[[], Awaitable[int]]]) -> Builder:
        def build() -> Runner:
            fn = make()
            _check(loop.run_until_complete(fn()), 1, "peer")
            return async_runner(loop, fn)

        return build

    def unavailable(reason: str) -> Builder:
        def build() -> Runner:
            raise UnavailableError(reason)

        return build

    builders["tenacity @retry"] = peer(lambda: tenacity_retry()(_aplain))
    builders["stamina @retry"] = peer(lambda: stamina_retry()(_aplain))
    builders["backoff @on_exception"] = peer(lambda: backoff_retry()(_aplain))
    builders["pybreaker"] = unavailable(PYBREAKER_NO_ASYNC)
    builders["circuitbreaker"] = peer(lambda: circuitbreaker_breaker()(_aplain))
    builders["aiobreaker"] = peer(lambda: aiobreaker_breaker()(_aplain))
    builders["purgatory"] = peer(lambda: purgatory_async(loop)(_aplain))
    builders["pyresilience retry + breaker"] = peer(lambda: pyresilience_deco()(_aplain))
    builders["interlock-cb"] = peer(lambda: interlock_breaker()(_aplain))
    builders["tenacity + pybreaker"] = unavailable(PYBREAKER_NO_ASYNC)
    builders["pybreaker + CircuitRedisStorage"] = unavailable(PYBREAKER_NO_ASYNC)
    builders["interlock-cb + RedisStorage"] = peer(
        lambda: _interlock_redis(ctx, asynchronous=True)(_aplain)
    )
    return builders


# Fail once, then succeed, with zero wait ------------------------------------------------

# Every call retries here, so the retry budget (on by default, 20% of calls)
# would refuse most retries: it is off, as the peers have none.
_ZERO_WAIT: dict[str, Any] = {
    "retry": {"base_ms": 0, "max_attempts": 3},
    "limits": {"budget_ratio": float("inf")},
}


def _expect_two_attempts(call: Callable[[], int], count: list[int], who: str) -> None:
    before = count[0]
    _check(call(), 1, who)
    if count[0] - before != 2:
        raise RuntimeError(f"{who}: {count[0] - before} attempts, expected 2")


def fail_once_sync(ctx: Context) -> dict[str, Builder]:
    """Builders for fail-once-then-succeed; the baseline catches and calls again by hand."""

    def baseline() -> Runner:
        flaky, _ = _flaky()

        def by_hand() -> int:
            try:
                return flaky()
            except ConnectionError:
                return flaky()

        return sync_runner(by_hand)

    builders: dict[str, Builder] = {"plain call + one retry by hand": baseline}

    def ours(store: str) -> Builder:
        def build() -> Runner:
            _ours_needs(ctx, store)
            flaky, count = _flaky()
            fn = resilient("bench", policy=our_policy(ctx, store, **_ZERO_WAIT))(flaky)
            _expect_two_attempts(fn, count, "@resilient")
            return sync_runner(fn, flush_metrics)

        return build

    for store in ("memory", "jsonl"):
        builders[f"@resilient, {STORE_LABEL[store]}, base_ms=0"] = ours(store)

    def peer(make: Callable[[Callable[[], int]], Callable[[], int]]) -> Builder:
        def build() -> Runner:
            flaky, count = _flaky()
            fn = make(flaky)
            _expect_two_attempts(fn, count, "peer")
            return sync_runner(fn)

        return build

    builders["tenacity, wait_none()"] = peer(lambda f: tenacity_retry(zero_wait=True)(f))
    builders["stamina, wait_initial=0"] = peer(lambda f: stamina_retry(zero_wait=True)(f))
    builders["backoff, constant interval=0"] = peer(lambda f: backoff_retry(zero_wait=True)(f))
    builders["pyresilience, delay=0"] = peer(lambda f: pyresilience_deco(zero_wait=True)(f))
    builders["interlock-cb + tenacity, wait_none()"] = peer(
        lambda f: interlock_tenacity(interlock_breaker(), is_async=False)(f)
    )
    builders["tenacity + pybreaker, wait_none()"] = peer(
        lambda f: tenacity_retry(zero_wait=True)(pybreaker_breaker()(f))
    )
    return builders


def fail_once_async(ctx: Context, loop: asyncio.AbstractEventLoop) -> dict[str, Builder]:
    """Async twin of :func:`fail_once_sync`."""

    def baseline() -> Runner:
        flaky, _ = _aflaky()

        async def by_hand() -> int:
            try:
                return await flaky()
            except ConnectionError:
                return await flaky()

        return async_runner(loop, by_hand)

    builders: dict[str, Builder] = {"plain call + one retry by hand": baseline}

    def check(fn: Callable[[], Awaitable[int]], count: list[int], who: str) -> None:
        _expect_two_attempts(lambda: loop.run_until_complete(fn()), count, who)

    def ours(store: str) -> Builder:
        def build() -> Runner:
            _ours_needs(ctx, store)
            flaky, count = _aflaky()
            fn = resilient("bench", policy=our_policy(ctx, store, **_ZERO_WAIT))(flaky)
            check(fn, count, "@resilient")
            return async_runner(loop, fn, flush_metrics)

        return build

    for store in ("memory", "jsonl"):
        builders[f"@resilient, {STORE_LABEL[store]}, base_ms=0"] = ours(store)

    def peer(
        make: Callable[[Callable[[], Awaitable[int]]], Callable[[], Awaitable[int]]],
    ) -> Builder:
        def build() -> Runner:
            flaky, count = _aflaky()
            fn = make(flaky)
            check(fn, count, "peer")
            return async_runner(loop, fn)

        return build

    builders["tenacity, wait_none()"] = peer(lambda f: tenacity_retry(zero_wait=True)(f))
    builders["stamina, wait_initial=0"] = peer(lambda f: stamina_retry(zero_wait=True)(f))
    builders["backoff, constant interval=0"] = peer(lambda f: backoff_retry(zero_wait=True)(f))
    builders["pyresilience, delay=0"] = peer(lambda f: pyresilience_deco(zero_wait=True)(f))
    builders["interlock-cb + tenacity, wait_none()"] = peer(
        lambda f: interlock_tenacity(interlock_breaker(), is_async=True)(f)
    )
    return builders


# Open-circuit rejection ----------------------------------------------------------------

#: Errors that mean "rejected by an open breaker", per library.
_OPEN_ERRORS = (
    ("connector_resilience", "CircuitOpenError"),
    ("circuitbreaker", "CircuitBreakerError"),
    ("pybreaker", "CircuitBreakerError"),
    ("aiobreaker", "CircuitBreakerError"),
    ("purgatory.domain.model", "OpenedState"),
    ("pyresilience", "CircuitOpenError"),
    ("interlock", "CircuitOpenError"),
)


def _open_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [CircuitOpenError]
    for module, name in _OPEN_ERRORS:
        try:
            cls = getattr(need(module, module), name)
        except (UnavailableError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def _trip(call: Callable[[], object], count: list[int], who: str) -> None:
    """Fail calls until the breaker refuses one; then make sure it refuses without calling."""
    rejected = _open_error_types()
    for _ in range(50):
        try:
            call()
        except rejected:
            break
        except ConnectionError:
            continue
    else:
        raise RuntimeError(f"{who}: the breaker never opened")
    before = count[0]
    for _ in range(10):
        try:
            call()
        except rejected:
            continue
        raise RuntimeError(f"{who}: a call went through an open breaker")
    if count[0] != before:
        raise RuntimeError(f"{who}: the function ran while the breaker was open")


def rejection_sync(ctx: Context) -> dict[str, Builder]:
    """Builders for calls refused by an open breaker; the baseline is a caught plain call."""
    builders: dict[str, Builder] = {
        "plain call in try/except": lambda: sync_catching_runner(_plain)
    }
    trip_policy = {
        "circuit": {"failures_to_open": 1, "cooldown_s": 3600},
        "retry": {"max_attempts": 1},
    }

    def ours(store: str) -> Builder:
        def build() -> Runner:
            _ours_needs(ctx, store)
            boom, count = _boom()
            fn = resilient("bench", policy=our_policy(ctx, store, **trip_policy))(boom)
            _trip(fn, count, "@resilient")
            return sync_catching_runner(fn, flush_metrics)

        return build

    for store in ("memory", "jsonl"):
        builders[f"@resilient, {STORE_LABEL[store]}"] = ours(store)

    def peer(make: Callable[[Callable[[], int]], Callable[[], int]]) -> Builder:
        def build() -> Runner:
            boom, count = _boom()
            fn = make(boom)
            _trip(fn, count, "peer")
            return sync_catching_runner(fn)

        return build

    builders["circuitbreaker"] = peer(
        lambda f: circuitbreaker_breaker(threshold=1, recovery_s=3600)(f)
    )
    builders["pybreaker"] = peer(lambda f: pybreaker_breaker(fail_max=1, reset_s=3600)(f))
    builders["aiobreaker"] = peer(lambda f: aiobreaker_breaker(fail_max=1, reset_s=3600)(f))
    builders["purgatory"] = peer(lambda f: purgatory_sync(threshold=1, ttl=3600)(f))
    builders["pyresilience"] = peer(
        lambda f: pyresilience_deco(retry=False, threshold=1, recovery_s=3600)(f)
    )
    builders["interlock-cb"] = peer(lambda f: interlock_breaker(trip_on_first=True)(f))
    return builders


def rejection_async(ctx: Context, loop: asyncio.AbstractEventLoop) -> dict[str, Builder]:
    """Async twin of :func:`rejection_sync`."""

    async def caught_plain() -> int:
        return 1

    builders: dict[str, Builder] = {
        "plain call in try/except": lambda: async_runner(loop, caught_plain, catching=True)
    }
    trip_policy = {
        "circuit": {"failures_to_open": 1, "cooldown_s": 3600},
        "retry": {"max_attempts": 1},
    }

    def trip(fn: Callable[[], Awaitable[int]], count: list[int], who: str) -> None:
        _trip(lambda: loop.run_until_complete(fn()), count, who)

    def ours(store: str) -> Builder:
        def build() -> Runner:
            _ours_needs(ctx, store)
            boom, count = _aboom()
            fn = resilient("bench", policy=our_policy(ctx, store, **trip_policy))(boom)
            trip(fn, count, "@resilient")
            return async_runner(loop, fn, flush_metrics, catching=True)

        return build

    for store in ("memory", "jsonl"):
        builders[f"@resilient, {STORE_LABEL[store]}"] = ours(store)

    def peer(
        make: Callable[[Callable[[], Awaitable[int]]], Callable[[], Awaitable[int]]],
    ) -> Builder:
        def build() -> Runner:
            boom, count = _aboom()
            fn = make(boom)
            trip(fn, count, "peer")
            return async_runner(loop, fn, catching=True)

        return build

    def unavailable(reason: str) -> Builder:
        def build() -> Runner:
            raise UnavailableError(reason)

        return build

    builders["circuitbreaker"] = peer(
        lambda f: circuitbreaker_breaker(threshold=1, recovery_s=3600)(f)
    )
    builders["pybreaker"] = unavailable(PYBREAKER_NO_ASYNC)
    builders["aiobreaker"] = peer(lambda f: aiobreaker_breaker(fail_max=1, reset_s=3600)(f))
    builders["purgatory"] = peer(lambda f: purgatory_async(loop, threshold=1, ttl=3600)(f))
    builders["pyresilience"] = peer(
        lambda f: pyresilience_deco(retry=False, threshold=1, recovery_s=3600)(f)
    )
    builders["interlock-cb"] = peer(lambda f: interlock_breaker(trip_on_first=True)(f))
    return builders
