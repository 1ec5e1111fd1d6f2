"""Issue 8's and issue 14's targets, each a ratio taken inside one run. Never loosened here."""

from __future__ import annotations

from benchmarks._core import Results, Target

#: (key, text, limit, direction)
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    (
        "success_sync_tenacity",
        "success path, sync: full @resilient on memory:// vs tenacity @retry alone",
        0.2,
        "<=",
    ),
    (
        "success_async_tenacity",
        "success path, async: full @resilient on memory:// vs tenacity @retry alone",
        0.2,
        "<=",
    ),
    (
        "success_sync_pyresilience",
        "success path, sync: full @resilient on memory:// vs pyresilience retry + breaker",
        1.0,
        "<=",
    ),
    (
        "success_async_pyresilience",
        "success path, async: full @resilient on memory:// vs pyresilience retry + breaker",
        1.0,
        "<=",
    ),
    (
        "fail_once_sync_tenacity",
        "fail once then succeed, zero wait, sync: @resilient (memory://) vs tenacity",
        0.2,
        "<=",
    ),
    (
        "fail_once_async_tenacity",
        "fail once then succeed, zero wait, async: @resilient (memory://) vs tenacity",
        0.2,
        "<=",
    ),
    (
        "rejection_sync_circuitbreaker",
        "open-circuit rejection, sync: @resilient (memory://) vs circuitbreaker",
        1.0,
        "<=",
    ),
    (
        "rejection_async_circuitbreaker",
        "open-circuit rejection, async: @resilient (memory://) vs circuitbreaker",
        1.0,
        "<=",
    ),
    (
        "jsonl_sync_tenacity",
        "success path, sync: full @resilient on the default JSONL store vs tenacity",
        1.0,
        "<=",
    ),
    (
        "jsonl_async_tenacity",
        "success path, async: full @resilient on the default JSONL store vs tenacity",
        1.0,
        "<=",
    ),
    (
        "redis_sync_interlock",
        "success path, sync: @resilient on redis:// vs interlock-cb + RedisStorage",
        1.0,
        "<=",
    ),
    (
        "redis_async_interlock",
        "success path, async: @resilient on redis:// vs interlock-cb + AsyncRedisStorage",
        1.0,
        "<=",
    ),
    (
        "redis_sync_pybreaker",
        "success path, sync: @resilient on redis:// vs pybreaker + CircuitRedisStorage",
        0.05,
        "<=",
    ),
    (
        "summarize_jsonl",
        "summarize() over the last hour, JSONL: 1M older records vs 10k",
        2.0,
        "<=",
    ),
    (
        "summarize_sqlite",
        "summarize() over the last hour, SQLite: 1M older records vs 10k",
        2.0,
        "<=",
    ),
    (
        "http_bare",
        "HTTP req/s: ResilienceMiddleware (memory://) vs bare ClientSession",
        0.9,
        ">=",
    ),
    (
        "http_bare_jsonl",
        "HTTP req/s: ResilienceMiddleware (JSONL) vs bare ClientSession",
        0.9,
        ">=",
    ),
    (
        "http_aiohttp_retry",
        "HTTP req/s: ResilienceMiddleware (memory://) vs aiohttp-retry RetryClient",
        1.0,
        ">=",
    ),
    (
        "http_interlock",
        "HTTP req/s: ResilienceMiddleware (memory://) vs interlock-cb's aiohttp middleware",
        1.0,
        ">=",
    ),
    # Issue 14: every HTTP adapter beside its bare client and its peer.
    (
        "http_aiohttp_c1_bare",
        "HTTP req/s, c=1: ResilienceMiddleware (memory://) vs bare ClientSession",
        0.95,
        ">=",
    ),
    (
        "http_aiohttp_c1_bare_jsonl",
        "HTTP req/s, c=1: ResilienceMiddleware (JSONL) vs bare ClientSession",
        0.9,
        ">=",
    ),
    (
        "http_aiohttp_c64_bare",
        "HTTP req/s, c=64: ResilienceMiddleware (memory://) vs bare ClientSession",
        0.95,
        ">=",
    ),
    (
        "http_aiohttp_c64_bare_jsonl",
        "HTTP req/s, c=64: ResilienceMiddleware (JSONL) vs bare ClientSession",
        0.9,
        ">=",
    ),
    (
        "http_httpx_async_c1_bare",
        "HTTP req/s, c=1: httpx async transport (memory://) vs bare httpx.AsyncClient",
        0.95,
        ">=",
    ),
    (
        "http_httpx_async_c1_bare_jsonl",
        "HTTP req/s, c=1: httpx async transport (JSONL) vs bare httpx.AsyncClient",
        0.9,
        ">=",
    ),
    (
        "http_httpx_async_c1_peer",
        "HTTP req/s, c=1, success: httpx async transport (memory://) vs httpx-retries",
        1.0,
        ">=",
    ),
    (
        "http_httpx_async_c64_bare",
        "HTTP req/s, c=64: httpx async transport (memory://) vs bare httpx.AsyncClient",
        0.95,
        ">=",
    ),
    (
        "http_httpx_async_c64_bare_jsonl",
        "HTTP req/s, c=64: httpx async transport (JSONL) vs bare httpx.AsyncClient",
        0.9,
        ">=",
    ),
    (
        "http_httpx_async_c64_peer",
        "HTTP req/s, c=64, success: httpx async transport (memory://) vs httpx-retries",
        1.0,
        ">=",
    ),
    (
        "http_httpx_c1_bare",
        "HTTP req/s, c=1: httpx sync transport (memory://) vs bare httpx.Client",
        0.95,
        ">=",
    ),
    (
        "http_httpx_c1_bare_jsonl",
        "HTTP req/s, c=1: httpx sync transport (JSONL) vs bare httpx.Client",
        0.9,
        ">=",
    ),
    (
        "http_httpx_c1_peer",
        "HTTP req/s, c=1, success: httpx sync transport (memory://) vs httpx-retries",
        1.0,
        ">=",
    ),
    (
        "http_httpx_c64_bare",
        "HTTP req/s, c=64: httpx sync transport (memory://) vs bare httpx.Client",
        0.95,
        ">=",
    ),
    (
        "http_httpx_c64_bare_jsonl",
        "HTTP req/s, c=64: httpx sync transport (JSONL) vs bare httpx.Client",
        0.9,
        ">=",
    ),
    (
        "http_httpx_c64_peer",
        "HTTP req/s, c=64, success: httpx sync transport (memory://) vs httpx-retries",
        1.0,
        ">=",
    ),
    (
        "http_requests_c1_bare",
        "HTTP req/s, c=1: ResilientAdapter (memory://) vs bare requests.Session",
        0.95,
        ">=",
    ),
    (
        "http_requests_c1_bare_jsonl",
        "HTTP req/s, c=1: ResilientAdapter (JSONL) vs bare requests.Session",
        0.9,
        ">=",
    ),
    (
        "http_requests_c1_peer",
        "HTTP req/s, c=1, success: ResilientAdapter (memory://) vs urllib3 Retry",
        1.0,
        ">=",
    ),
    (
        "http_requests_c64_bare",
        "HTTP req/s, c=64: ResilientAdapter (memory://) vs bare requests.Session",
        0.95,
        ">=",
    ),
    (
        "http_requests_c64_bare_jsonl",
        "HTTP req/s, c=64: ResilientAdapter (JSONL) vs bare requests.Session",
        0.9,
        ">=",
    ),
    (
        "http_requests_c64_peer",
        "HTTP req/s, c=64, success: ResilientAdapter (memory://) vs urllib3 Retry",
        1.0,
        ">=",
    ),
)


def register_targets(results: Results) -> None:
    for key, text, limit, direction in TARGETS:
        assert direction in ("<=", ">=")
        results.targets[key] = Target(
            key=key,
            text=text,
            limit=limit,
            direction="<=" if direction == "<=" else ">=",
        )
