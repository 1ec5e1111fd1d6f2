"""Issue 8's, 14's and 16's targets, each a ratio taken inside one run (or a figure with
its unit in the text). Never loosened here."""

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
    # Issue 16: metrics at fleet volume.
    (
        "success_sync_jsonl_pyresilience",
        "success path, sync: @resilient on the default JSONL store vs pyresilience (no metrics)",
        1.0,
        "<=",
    ),
    (
        "success_async_jsonl_pyresilience",
        "success path, async: @resilient on the default JSONL store vs pyresilience (no metrics)",
        1.0,
        "<=",
    ),
    (
        "success_sync_circuitbreaker",
        "success path, sync: @resilient on memory:// vs circuitbreaker",
        1.0,
        "<=",
    ),
    (
        "success_async_circuitbreaker",
        "success path, async: @resilient on memory:// vs circuitbreaker",
        1.0,
        "<=",
    ),
    (
        "http_bare_jsonl_c64",
        "HTTP req/s at 64 concurrent: ResilienceMiddleware (default JSONL) vs bare ClientSession",
        0.95,
        ">=",
    ),
    (
        "storage_per_million",
        "storage: MB per 1M successful calls over 10 minutes (default JSONL, aggregated)",
        1.0,
        "<=",
    ),
    (
        "summary_day_jsonl",
        "summarize() over 24 h at 1,000 calls/s, JSONL: ms",
        50.0,
        "<=",
    ),
    (
        "summary_day_sqlite",
        "summarize() over 24 h at 1,000 calls/s, SQLite: ms",
        50.0,
        "<=",
    ),
    ("import_tenacity", "import connector_resilience vs import tenacity (CPU)", 2.0, "<="),
    ("cli_help_ms", "connector-resilience --help: ms of CPU, interpreter included", 150.0, "<="),
    (
        "burst_memory_mb",
        "10 s burst at full speed, default store: peak extra memory, MB",
        50.0,
        "<=",
    ),
    (
        "burst_write_gap",
        "10 s burst at full speed: longest gap between metric writes, in flush intervals",
        2.0,
        "<=",
    ),
    (
        "percentile_error",
        "p50/p95/p99 from aggregated rows: worst relative error, recorded mixed distribution",
        0.01,
        "<=",
    ),
    ("memory_per_connector", "memory per connector (bytes)", 4096.0, "<="),
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
