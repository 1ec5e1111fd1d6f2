"""Case ``http``: requests per second through the middleware against a local server.

The server runs in its own process (its own interpreter and event loop), so
the client's loop only runs the client. All clients take turns in one run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import subjects
from benchmarks._core import (
    Context,
    Stat,
    Table,
    UnavailableError,
    clock_name,
    close_loop,
    interleaved,
    need,
    ratio_stat,
)

CONCURRENCY = 10
#: Issue 16's figure: the default store's middleware under many concurrent requests.
WIDE = 64
BARE = "bare ClientSession"
OURS = "ResilienceMiddleware, memory://"
OURS_JSONL = "ResilienceMiddleware, default JSONL"
RETRY_CLIENT = "aiohttp-retry RetryClient"
INTERLOCK = "interlock-cb CircuitBreakerMiddleware"
NOOP = "a no-op middleware (reference)"


async def _noop_middleware(request: Any, handler: Any) -> Any:
    return await handler(request)


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """The server process: answer GET / with a small body until terminated."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        conn.send(sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


Fetch = Callable[[], Awaitable[int]]


async def _clients(ctx: Context, url: str) -> tuple[dict[str, Fetch], dict[str, str], list[Any]]:
    """One session (or client) per subject, built the way each library documents."""
    aiohttp = need("aiohttp", "aiohttp")
    fetches: dict[str, Fetch] = {}
    missing: dict[str, str] = {}
    closers: list[Any] = []

    def via(session: Any) -> Fetch:
        async def fetch() -> int:
            async with session.get(url) as response:
                await response.read()
                status: int = response.status
                return status

        return fetch

    def connector() -> Any:
        return aiohttp.TCPConnector(limit=CONCURRENCY * 2)

    bare = aiohttp.ClientSession(connector=connector())
    closers.append(bare)
    fetches[BARE] = via(bare)
    # What aiohttp's middleware machinery itself costs: the floor for any middleware.
    noop = aiohttp.ClientSession(connector=connector(), middlewares=(_noop_middleware,))
    closers.append(noop)
    fetches[NOOP] = via(noop)
    try:
        glue = need("connector_resilience.aiohttp", "connector-resilience[aiohttp]")
        for name, store in ((OURS, "memory"), (OURS_JSONL, "jsonl")):
            # The real configuration: the background metrics writer runs as shipped.
            policy = subjects.our_policy(ctx, store)
            policy = policy.model_copy(
                update={"store": policy.store.model_copy(update={"flush_interval_s": 0.5})}
            )
            session = aiohttp.ClientSession(
                connector=connector(),
                middlewares=(glue.ResilienceMiddleware("http", policy=policy),),
            )
            closers.append(session)
            fetches[name] = via(session)
    except UnavailableError as exc:
        missing[OURS] = missing[OURS_JSONL] = str(exc)
    try:
        retry = need("aiohttp_retry", "aiohttp-retry")
        client = retry.RetryClient(
            client_session=aiohttp.ClientSession(connector=connector()),
            retry_options=retry.ExponentialRetry(attempts=3),
        )
        closers.append(client)
        fetches[RETRY_CLIENT] = via(client)
    except UnavailableError as exc:
        missing[RETRY_CLIENT] = str(exc)
    try:
        interlock = need("interlock.integrations.aiohttp", "interlock-cb")
        session = aiohttp.ClientSession(
            connector=connector(), middlewares=(interlock.CircuitBreakerMiddleware(),)
        )
        closers.append(session)
        fetches[INTERLOCK] = via(session)
    except UnavailableError as exc:
        missing[INTERLOCK] = str(exc)
    return fetches, missing, closers


async def _burst(fetch: Fetch, n: int, concurrency: int = CONCURRENCY) -> tuple[float, float]:
    """``n`` requests by ``concurrency`` workers: (requests per wall second, per CPU second).

    CPU seconds are the client process's (every thread: the metrics writer too),
    which other processes on a shared machine cannot inflate.
    """
    per = max(1, n // concurrency)

    async def worker() -> None:
        for _ in range(per):
            status = await fetch()
            if status != 200:
                raise RuntimeError(f"server answered {status}")

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = per * concurrency
    return done / (time.perf_counter() - wall), done / max(1e-9, time.process_time() - cpu)


def run_http(ctx: Context) -> None:
    """Requests/s of each client against the same local server, interleaved."""
    need("aiohttp", "aiohttp")
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    server = mp.Process(target=_serve, args=(child,), daemon=True)
    server.start()
    loop = asyncio.new_event_loop()
    try:
        if not parent.poll(30):
            raise RuntimeError("the aiohttp server did not start")
        url = f"http://127.0.0.1:{parent.recv()}/"
        fetches, missing, closers = loop.run_until_complete(_clients(ctx, url))
        try:
            for fetch in fetches.values():
                loop.run_until_complete(_burst(fetch, 200))  # warm pools and caches
            rate = loop.run_until_complete(_burst(fetches[BARE], 400))[0]
            n = max(200, int(rate * (0.15 if ctx.quick else 0.3)))
            rounds_n = ctx.repeats * 2
            ctx.log(f"http: {len(fetches)} clients, {rounds_n} rounds of {n} requests")
            both = interleaved(
                list(fetches),
                lambda name: loop.run_until_complete(_burst(fetches[name], n)),
                rounds_n,
            )
            wide = [name for name in (BARE, OURS_JSONL) if name in fetches]
            many = interleaved(
                wide,
                lambda name: loop.run_until_complete(_burst(fetches[name], n, WIDE)),
                rounds_n,
            )
        finally:
            for closer in closers:
                loop.run_until_complete(closer.close())
    finally:
        close_loop(loop)
        server.terminate()
        server.join(timeout=5)
    cpu_based = clock_name() == "cpu"
    wall = {name: [w for w, _ in values] for name, values in both.items()}
    cpu = {name: [c for _, c in values] for name, values in both.items()}
    rounds = cpu if cpu_based else wall
    basis = "requests per client CPU-second" if cpu_based else "requests per second"
    table = Table(
        key="http",
        title="HTTP: requests per second against a local aiohttp server",
        columns=[
            "client",
            "requests/s (wall clock)",
            "requests per client CPU-second",
            f"ratio to {BARE} ({'CPU' if cpu_based else 'wall'})",
            f"ratio to {BARE} (wall)",
            f"ratio to {RETRY_CLIENT} ({'CPU' if cpu_based else 'wall'})",
        ],
        note=(
            f"{CONCURRENCY} concurrent workers, GET / with a 2-byte body read in full; the "
            "server runs in its own process. Our middleware runs as shipped: retries, breaker, "
            "a metric per attempt written by the background thread (its CPU time is counted). "
            "Wall-clock rates swing with whatever else the shared machine runs; the verdicts "
            f"use {basis}, which only this client's own work can change."
        ),
    )
    series: dict[str, Any] = {}
    for name in rounds:
        series[name] = Stat.of(rounds[name]).as_dict()
        to_retry = (
            ratio_stat(rounds[name], rounds[RETRY_CLIENT]).fmt(3) if RETRY_CLIENT in rounds else ""
        )
        table.rows.append(
            [
                name,
                Stat.of(wall[name]).fmt(0),
                Stat.of(cpu[name]).fmt(0),
                ratio_stat(rounds[name], rounds[BARE]).fmt(3),
                ratio_stat(wall[name], wall[BARE]).fmt(3),
                to_retry,
            ]
        )
    for name, why in missing.items():
        table.rows.append([name, why, "", "", "", ""])
    ctx.results.tables.append(table)
    ctx.results.series["http"] = series
    for key, ours, reference in (
        ("http_bare", OURS, BARE),
        ("http_bare_jsonl", OURS_JSONL, BARE),
        ("http_aiohttp_retry", OURS, RETRY_CLIENT),
        ("http_interlock", OURS, INTERLOCK),
    ):
        target = ctx.results.target(key)
        if ours in rounds and reference in rounds:
            target.ratio = ratio_stat(rounds[ours], rounds[reference])
            target.detail = (
                f"{Stat.of(rounds[ours]).fmt(0)} vs {Stat.of(rounds[reference]).fmt(0)} {basis}; "
                f"wall clock: ratio {ratio_stat(wall[ours], wall[reference]).fmt(3)}"
            )
        else:
            gone = ours if ours not in rounds else reference
            target.why_not = f"{gone}: {missing.get(gone, 'not measured')}"
    target = ctx.results.target("http_bare_jsonl_c64")
    if OURS_JSONL in many and BARE in many:
        pick = 1 if cpu_based else 0
        mine = [v[pick] for v in many[OURS_JSONL]]
        bare = [v[pick] for v in many[BARE]]
        target.ratio = ratio_stat(mine, bare)
        target.detail = (
            f"{Stat.of(mine).fmt(0)} vs {Stat.of(bare).fmt(0)} {basis} at {WIDE} concurrent "
            "requests"
        )
        table.rows.append(
            [
                f"{OURS_JSONL}, {WIDE} concurrent",
                Stat.of(v[0] for v in many[OURS_JSONL]).fmt(0),
                Stat.of(v[1] for v in many[OURS_JSONL]).fmt(0),
                target.ratio.fmt(3),
                ratio_stat([v[0] for v in many[OURS_JSONL]], [v[0] for v in many[BARE]]).fmt(3),
                "",
            ]
        )
    else:
        target.why_not = "not measured"
