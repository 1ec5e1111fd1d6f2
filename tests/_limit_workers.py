"""Children for the fleet tests of load control (run with ``python -m tests._limit_workers``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import aiohttp

from connector_resilience import Policy, RateLimitExceededError, resilient
from connector_resilience.aiohttp import ResilienceMiddleware


def shared_policy(url: str) -> Policy:
    """The policy parent and child share: one store, a shared bucket, a shared bulkhead."""
    return Policy(
        store={"url": url},
        retry={"max_attempts": 1},
        limits={
            "rate_per_s": 100,
            "rate_scope": "store",
            "rate_max_wait_s": 0,
            "bulkhead_max_concurrent": 1,
            "bulkhead_scope": "store",
            "bulkhead_lease_s": 0.5,
        },
    )


async def _request(store_url: str, base_url: str) -> str:
    middleware = ResilienceMiddleware("fleet-api", policy=shared_policy(store_url))
    async with aiohttp.ClientSession(base_url=base_url, middlewares=(middleware,)) as session:
        try:
            async with session.get("/data") as response:
                return f"status {response.status}"
        except RateLimitExceededError as exc:
            return f"paused {(exc.retry_at or 0) - time.time():.0f}"


def hold_a_slot(store_url: str) -> None:
    """Take the shared bulkhead's slot, say so, and hang until killed."""

    @resilient("fleet-api", policy=shared_policy(store_url))
    def hang() -> None:
        print("holding", flush=True)
        time.sleep(120)

    hang()


def budget_calls(successes: int) -> None:
    """``successes`` calls that succeed, then one that fails: print its attempts.

    The policy is the environment's (the default store: JSONL in the folder run in).
    """
    attempts = 0

    @resilient("fleet-budget")
    def call(fail: bool) -> None:
        nonlocal attempts
        attempts += 1
        if fail:
            raise ConnectionError("down")

    for _ in range(successes):
        call(False)
    attempts = 0
    with contextlib.suppress(ConnectionError):
        call(True)
    print(attempts, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "request":
        print(asyncio.run(_request(sys.argv[2], sys.argv[3])), flush=True)
    elif sys.argv[1] == "budget":
        budget_calls(int(sys.argv[2]))
    else:
        hold_a_slot(sys.argv[2])
