"""Case ``http``: client CPU per request through each HTTP adapter against a local server.

The server runs in its own process (its own interpreter and event loop, on a
core of its own), so the client's process only runs the client. Two tables:
the aiohttp middleware beside its peers at concurrency 10, then every adapter
(aiohttp, httpx async and sync, requests) beside its bare client and its peer
at concurrency 1 and 64.

The figure is requests per CPU-second of the client process, every thread
counted (the metrics writer's too): the work the client does per request,
which other processes on the shared machine do not add to, as they do to the
wall clock. Wall-clock rates are shown beside it.

A *round* is one burst of the same number of requests by each subject of a
table in turn (``concurrency`` workers, each sending its share back to back
and reading every body in full), its order rotated from one round to the
next; a subject's round ends by writing the metrics it buffered, timed, and
starts with the garbage of the one before it collected, untimed. A round
lasts about :data:`ROUND_S` of the bare client (at least a few requests per
worker), and as many rounds as :data:`BUDGET_S` allows are run (at least
:data:`MIN_ROUNDS`): short rounds in numbers put every subject through the
same spells of a busy machine, and a ratio is taken per round (each subject
against the bare client of the same round), its median reported with the
interval the median lies in at 95% confidence. A second bare client in every
table (*the noise floor*) measures what the method itself cannot resolve:
its ratio to the bare client would be 1.000 on a quiet machine.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
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
#: A round's length, in seconds of the bare client (quick runs: a third of it).
ROUND_S = 0.25
#: Seconds of rounds per table and concurrency (quick runs: a quarter of it).
BUDGET_S = 30.0
#: Rounds per table at least, however slow a client (quick runs: 4).
MIN_ROUNDS = 12
#: Rounds per table at most.
MAX_ROUNDS = 60
BARE = "bare ClientSession"
BARE_AGAIN = "a second bare ClientSession (the noise floor)"
OURS = "ResilienceMiddleware, memory://"
OURS_JSONL = "ResilienceMiddleware, default JSONL"
RETRY_CLIENT = "aiohttp-retry RetryClient"
INTERLOCK = "interlock-cb CircuitBreakerMiddleware"
NOOP = "a no-op middleware (reference)"
#: Our middleware's per-request flow alone: how much of its cost is the flow itself.
FLOW = "ResilienceMiddleware, metrics and breaker off (reference)"


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
    again = aiohttp.ClientSession(connector=connector())
    closers.append(again)
    fetches[BARE_AGAIN] = via(again)
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


def _plan(ctx: Context, subjects: int, rate: float, n_min: int) -> tuple[int, int]:
    """Requests per round and rounds for ``subjects`` clients, the bare one doing ``rate``/s.

    A round is about :data:`ROUND_S` of the bare client and at least ``n_min``
    requests; rounds fill :data:`BUDGET_S`, within :data:`MIN_ROUNDS` ..
    :data:`MAX_ROUNDS`.
    """
    round_s, budget_s = (ROUND_S / 3, BUDGET_S / 4) if ctx.quick else (ROUND_S, BUDGET_S)
    n = max(n_min, int(rate * round_s))
    rounds = int(budget_s * rate / (n * subjects))
    return n, max(4 if ctx.quick else MIN_ROUNDS, min(MAX_ROUNDS, rounds))


def median_interval(values: list[float]) -> tuple[float, float]:
    """The interval the median of ``values`` lies in at about 95% confidence.

    Distribution-free: the order statistics around the middle rank that a
    binomial(n, 1/2) count of values below the median reaches with 95%
    probability (normal approximation; the extremes for fewer than 6 values).
    """
    data = sorted(v for v in values if math.isfinite(v))
    n = len(data)
    if n == 0:
        return (math.nan, math.nan)
    half = 0.98 * math.sqrt(n)
    low = max(0, math.floor(n / 2 - half))
    high = min(n - 1, math.ceil(n / 2 + half) - 1)
    return data[low], data[high]


def _ratio_detail(numerators: list[float], denominators: list[float]) -> str:
    low, high = median_interval(
        [a / b for a, b in zip(numerators, denominators, strict=False) if b > 0]
    )
    return f"median's 95% interval {low:.3f}..{high:.3f}"


async def _burst(fetch: Fetch, n: int) -> tuple[float, float]:
    """``n`` requests by CONCURRENCY workers: (requests per wall second, per CPU second).

    CPU seconds are the client process's (every thread: the metrics writer too),
    which other processes on a shared machine cannot inflate.
    """
    per = max(1, n // CONCURRENCY)

    async def worker() -> None:
        for _ in range(per):
            status = await fetch()
            if status != 200:
                raise RuntimeError(f"server answered {status}")

    _settle()
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    _settle()  # timed: the round's own metrics, written
    done = per * CONCURRENCY
    return done / (time.perf_counter() - wall), done / max(1e-9, time.process_time() - cpu)


def _settle() -> None:
    """Write every metric buffered so far, in this thread (a no-op with nothing buffered).

    Called untimed before a round and timed at its end: a subject pays for
    writing its own metrics, and never for what the subject before it left to
    the background writer (whose CPU time, counted for the whole process,
    would otherwise land in whichever round runs next).
    """
    try:
        from connector_resilience import flush_metrics
    except ImportError:  # the bare clients alone, without the library
        return
    flush_metrics()


def _pin_apart(server_pid: int | None) -> set[int] | None:
    """The server on one core, this client on the others; the client's old cores, or None.

    Unpinned, the scheduler moves both processes between the cores as it likes,
    and a client that shares a core with the server now and then is slower for
    it: one subject's round may pay for it and the next not. Apart, every subject
    meets the same conditions.
    """
    if server_pid is None or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    os.sched_setaffinity(server_pid, {cores[-1]})
    os.sched_setaffinity(0, set(cores[:-1]))
    return set(cores)


def run_http(ctx: Context) -> None:
    """Requests/s of each client against the same local server, interleaved."""
    need("aiohttp", "aiohttp")
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    server = mp.Process(target=_serve, args=(child,), daemon=True)
    server.start()
    pinned = _pin_apart(server.pid)
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
            n, rounds_n = _plan(ctx, len(fetches), rate, 4 * CONCURRENCY)
            ctx.log(f"http: {len(fetches)} clients, {rounds_n} rounds of {n} requests")
            both = interleaved(
                list(fetches),
                lambda name: loop.run_until_complete(_burst(fetches[name], n)),
                rounds_n,
            )
        finally:
            for closer in closers:
                loop.run_until_complete(closer.close())
        # The table of every adapter beside its bare client, against the same server.
        _run_clients(ctx, url)
    finally:
        close_loop(loop)
        server.terminate()
        server.join(timeout=5)
        if pinned is not None:
            os.sched_setaffinity(0, pinned)
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
            "a metric per attempt written by the background thread (its CPU time is counted); "
            "each round ends by writing what it buffered, timed, so no subject's writing lands "
            "in the next subject's round. "
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
                f"{_ratio_detail(rounds[ours], rounds[reference])}; "
                f"wall clock: ratio {ratio_stat(wall[ours], wall[reference]).fmt(3)}"
            )
            if BARE_AGAIN in rounds and reference == BARE:
                target.detail += (
                    f"; the noise floor ({BARE_AGAIN} vs {BARE}): ratio "
                    f"{ratio_stat(rounds[BARE_AGAIN], rounds[BARE]).fmt(3)}"
                )
        else:
            gone = ours if ours not in rounds else reference
            target.why_not = f"{gone}: {missing.get(gone, 'not measured')}"


# Every adapter beside its bare client, at concurrency 1 and 64 ---------------------------

CLIENT_CONCURRENCY = (1, 64)
#: Targets read from the same measurement as another: issue 16 asks the aiohttp
#: middleware on the default store for 0.95x a bare session at 64 concurrent.
ALSO_MEASURES: dict[str, tuple[str, ...]] = {
    "http_aiohttp_c64_bare_jsonl": ("http_bare_jsonl_c64",),
}
#: (family, bare client, our adapter, the peer it is measured against or None)
FAMILIES: tuple[tuple[str, str, str, str | None], ...] = (
    ("aiohttp", "bare ClientSession", "ResilienceMiddleware", None),
    ("httpx-async", "bare httpx.AsyncClient", "ResilientTransport (async)", "httpx-retries"),
    ("httpx", "bare httpx.Client", "ResilientTransport (sync)", "httpx-retries"),
    ("requests", "bare requests.Session", "ResilientAdapter", "urllib3 Retry"),
)


def _subject_names(family: str) -> dict[str, str]:
    """Role -> row name for one family."""
    _, bare, ours, peer = next(f for f in FAMILIES if f[0] == family)
    names = {
        "bare": bare,
        "bare_again": f"a second {bare.removeprefix('bare ')} (the noise floor)",
        "ours": f"{ours}, memory://",
        "ours_jsonl": f"{ours}, default JSONL",
    }
    if family == "aiohttp":  # the floor under any middleware: aiohttp's own machinery
        names["noop"] = NOOP
        names["flow"] = FLOW
    if peer is not None:
        names["peer"] = {
            "httpx-retries": "httpx-retries RetryTransport",
            "urllib3 Retry": "requests + urllib3 Retry",
        }[peer]
    return names


def _http_policy(ctx: Context, store: str, **groups: Any) -> Any:
    # The real configuration: the background metrics writer runs as shipped.
    policy = subjects.our_policy(ctx, store, **groups)
    return policy.model_copy(
        update={"store": policy.store.model_copy(update={"flush_interval_s": 0.5})}
    )


def _async_clients(ctx: Context, family: str, url: str, concurrency: int) -> dict[str, Any]:
    """Role -> an object with ``get(url)`` (awaitable) and ``close()`` / ``aclose()``."""
    clients: dict[str, Any] = {}
    if family == "aiohttp":
        aiohttp = need("aiohttp", "aiohttp")
        glue = need("connector_resilience.aiohttp", "connector-resilience[aiohttp]")

        def session(*middlewares: Any) -> Any:
            connector = aiohttp.TCPConnector(limit=concurrency * 2)
            return aiohttp.ClientSession(connector=connector, middlewares=middlewares)

        clients["bare"] = session()
        clients["bare_again"] = session()
        clients["noop"] = session(_noop_middleware)
        for role, store in (("ours", "memory"), ("ours_jsonl", "jsonl")):
            policy = _http_policy(ctx, store)
            clients[role] = session(glue.ResilienceMiddleware("http", policy=policy))
        # The same flow (route, timing, status lookup, retry decision) with nothing
        # recorded and no breaker: what the per-request flow costs by itself.
        policy = _http_policy(ctx, "memory", circuit={"enabled": False})
        clients["flow"] = session(
            glue.ResilienceMiddleware("http-flow", policy=policy, metrics=False)
        )
        return clients
    httpx = need("httpx", "httpx")
    glue = need("connector_resilience.httpx", "connector-resilience[httpx]")
    limits = _httpx_limits(httpx, concurrency)

    def inner() -> Any:
        return httpx.AsyncHTTPTransport(limits=limits)

    clients["bare"] = httpx.AsyncClient(transport=inner())
    clients["bare_again"] = httpx.AsyncClient(transport=inner())
    for role, store in (("ours", "memory"), ("ours_jsonl", "jsonl")):
        policy = _http_policy(ctx, store)
        transport = glue.ResilientTransport("http", transport=inner(), policy=policy)
        clients[role] = httpx.AsyncClient(transport=transport)
    try:
        retries = need("httpx_retries", "httpx-retries")
        peer = retries.RetryTransport(transport=inner(), retry=retries.Retry(total=3))
        clients["peer"] = httpx.AsyncClient(transport=peer)
    except UnavailableError as exc:
        clients["peer"] = exc
    return clients


def _sync_clients(ctx: Context, family: str, concurrency: int) -> dict[str, Any]:
    """Role -> an object with ``get(url)`` and ``close()``."""
    clients: dict[str, Any] = {}
    if family == "requests":
        requests = need("requests", "requests")
        glue = need("connector_resilience.requests", "connector-resilience[requests]")
        urllib3 = need("urllib3", "urllib3")
        size = max(10, concurrency)

        def session(adapter: Any) -> Any:
            s = requests.Session()
            s.mount("http://", adapter)
            return s

        clients["bare"] = session(requests.adapters.HTTPAdapter(pool_maxsize=size))
        clients["bare_again"] = session(requests.adapters.HTTPAdapter(pool_maxsize=size))
        for role, store in (("ours", "memory"), ("ours_jsonl", "jsonl")):
            policy = _http_policy(ctx, store)
            clients[role] = session(glue.ResilientAdapter("http", policy=policy, pool_maxsize=size))
        retry = urllib3.Retry(total=3, backoff_factor=0.4, status_forcelist=(429, 502, 503, 504))
        clients["peer"] = session(
            requests.adapters.HTTPAdapter(max_retries=retry, pool_maxsize=size)
        )
        return clients
    httpx = need("httpx", "httpx")
    glue = need("connector_resilience.httpx", "connector-resilience[httpx]")
    limits = _httpx_limits(httpx, concurrency)

    def inner() -> Any:
        return httpx.HTTPTransport(limits=limits)

    clients["bare"] = httpx.Client(transport=inner())
    clients["bare_again"] = httpx.Client(transport=inner())
    for role, store in (("ours", "memory"), ("ours_jsonl", "jsonl")):
        policy = _http_policy(ctx, store)
        clients[role] = httpx.Client(
            transport=glue.ResilientTransport("http", transport=inner(), policy=policy)
        )
    try:
        retries = need("httpx_retries", "httpx-retries")
        peer = retries.RetryTransport(transport=inner(), retry=retries.Retry(total=3))
        clients["peer"] = httpx.Client(transport=peer)
    except UnavailableError as exc:
        clients["peer"] = exc
    return clients


#: How long an httpx client keeps an idle connection here (httpx's default: 5 s).
#: httpcore's pool walks every connection it holds on each request event, so
#: its cost per request grows with how many it holds. Kept for 5 s only, the
#: connections a round opens expire or not during the other subjects' rounds
#: depending on how long those last: the same client then swung between about
#: 160 and 900 requests per CPU-second from one round to the next at 64
#: concurrent. Kept through the case, every client holds the same connections.
HTTPX_KEEPALIVE_S = 600.0


def _httpx_limits(httpx: Any, concurrency: int) -> Any:
    return httpx.Limits(
        max_connections=concurrency * 2,
        max_keepalive_connections=concurrency * 2,
        keepalive_expiry=HTTPX_KEEPALIVE_S,
    )


def _fill_sync_pool(client: Any, url: str, concurrency: int, pool: ThreadPoolExecutor) -> None:
    """Make an httpx client's pool hold one connection per worker: all open at once.

    However many a pool opened while warming depends on how its first
    requests happened to overlap (26 to 42 at 64 threads, from one client to
    the next), and httpcore's cost per request grows with that number. With
    every worker holding a response open at the same moment, each pool holds
    ``concurrency`` connections, and keeps them (:data:`HTTPX_KEEPALIVE_S`):
    no later round needs more.
    """
    everyone = threading.Barrier(concurrency)

    def hold() -> None:
        with client.stream("GET", url) as response:
            everyone.wait(timeout=30)
            response.read()

    for future in [pool.submit(hold) for _ in range(concurrency)]:
        future.result()


async def _fill_async_pool(client: Any, url: str, concurrency: int) -> None:
    """:func:`_fill_sync_pool` for an httpx async client."""
    opened = 0
    everyone = asyncio.Event()

    async def hold() -> None:
        nonlocal opened
        async with client.stream("GET", url) as response:
            opened += 1
            if opened == concurrency:
                everyone.set()
            await asyncio.wait_for(everyone.wait(), 30)
            await response.aread()

    await asyncio.gather(*(hold() for _ in range(concurrency)))


def _status(response: Any) -> int:
    status = getattr(response, "status_code", None)
    return int(status if status is not None else response.status)


async def _async_burst(client: Any, url: str, n: int, concurrency: int) -> tuple[float, float]:
    """``n`` requests by ``concurrency`` tasks: (requests per wall second, per CPU second)."""
    per = max(1, n // concurrency)
    is_aiohttp = hasattr(client, "ws_connect")

    async def worker() -> None:
        for _ in range(per):
            if is_aiohttp:
                async with client.get(url) as response:
                    await response.read()
                    status = response.status
            else:
                status = (await client.get(url)).status_code
            if status != 200:
                raise RuntimeError(f"server answered {status}")

    _settle()
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    _settle()  # timed: the round's own metrics, written
    done = per * concurrency
    return done / (time.perf_counter() - wall), done / max(1e-9, time.process_time() - cpu)


def _sync_burst(
    client: Any, url: str, n: int, concurrency: int, pool: ThreadPoolExecutor
) -> tuple[float, float]:
    """``n`` requests by ``concurrency`` threads: (requests per wall second, per CPU second)."""
    per = max(1, n // concurrency)

    def worker() -> None:
        for _ in range(per):
            response = client.get(url)
            response.content  # noqa: B018 - read in full, as a caller does
            if _status(response) != 200:
                raise RuntimeError(f"server answered {_status(response)}")

    _settle()
    wall, cpu = time.perf_counter(), time.process_time()
    if concurrency == 1:
        worker()
    else:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    _settle()  # timed: the round's own metrics, written
    done = per * concurrency
    return done / (time.perf_counter() - wall), done / max(1e-9, time.process_time() - cpu)


def _measure_family(
    ctx: Context,
    family: str,
    concurrency: int,
    url: str,
    loop: asyncio.AbstractEventLoop,
    pool: ThreadPoolExecutor,
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, str]]:
    """Interleaved rounds of one family at one concurrency: role -> [(wall, cpu)], missing."""
    is_async = family in ("aiohttp", "httpx-async")
    if is_async:
        built = loop.run_until_complete(_make_async(ctx, family, url, concurrency))
    else:
        built = _sync_clients(ctx, family, concurrency)
    clients = {r: c for r, c in built.items() if not isinstance(c, UnavailableError)}
    missing = {r: str(c) for r, c in built.items() if isinstance(c, UnavailableError)}

    def burst(role: str, n: int) -> tuple[float, float]:
        client = clients[role]
        if is_async:
            return loop.run_until_complete(_async_burst(client, url, n, concurrency))
        return _sync_burst(client, url, n, concurrency, pool)

    try:
        if family.startswith("httpx") and concurrency > 1:
            for client in clients.values():
                if is_async:
                    loop.run_until_complete(_fill_async_pool(client, url, concurrency))
                else:
                    _fill_sync_pool(client, url, concurrency, pool)
        for role in clients:
            burst(role, 100)  # warm pools, engines and caches
        rate = burst("bare", 200)[0]
        # At least three requests per worker: a round of one request per worker
        # times mostly scheduling.
        n, rounds_n = _plan(ctx, len(clients), rate, 3 * concurrency)
        n += -n % concurrency
        ctx.log(
            f"http {family} c={concurrency}: {len(clients)} clients, "
            f"{rounds_n} rounds of {n} requests"
        )
        rounds = interleaved(list(clients), lambda role: burst(role, n), rounds_n)
    finally:
        for client in clients.values():
            if hasattr(client, "aclose"):
                loop.run_until_complete(client.aclose())
            else:
                closing = client.close()
                if asyncio.iscoroutine(closing):
                    loop.run_until_complete(closing)
    return rounds, missing


def _run_clients(ctx: Context, url: str) -> None:
    """The adapters-vs-bare table: requests/s and CPU us added, each family and concurrency."""
    cpu_based = clock_name() == "cpu"
    basis = "requests per client CPU-second" if cpu_based else "requests per second"
    table = Table(
        key="http_clients",
        title="HTTP adapters beside their bare clients, at concurrency 1 and 64",
        columns=[
            "client",
            "concurrency",
            "requests/s (wall clock)",
            "requests per client CPU-second",
            f"ratio to the bare client ({'CPU' if cpu_based else 'wall'})",
            "CPU us added per request",
            f"ratio to the peer ({'CPU' if cpu_based else 'wall'})",
        ],
        note=(
            "GET / with a 2-byte body read in full, against the same local aiohttp server "
            "in its own process. Sync clients run their workers in threads. Each family's "
            "subjects take turns in interleaved rounds; CPU is the client process's, every "
            "thread (the metrics writer too); each round ends by writing the metrics it "
            "buffered, timed, so none of it lands in the next subject's round. The peers "
            "retry like us on the failure path "
            "(3 attempts); on this success path they only add their bookkeeping. "
            "A bare httpx.AsyncClient at 64 concurrent is bound by httpcore 1.0.9's own "
            "connection pool, which walks every pooled connection (and, for each idle one, "
            "every connection again) each time a request starts or ends "
            "(encode/httpcore#1035, fixed in the httpx2 fork): most of its CPU per request "
            "there, the same under every adapter. httpx clients keep idle connections "
            f"through the case (keepalive_expiry={HTTPX_KEEPALIVE_S:g} s, not 5 s) so that "
            "every client holds the same number, one per worker, opened at once before "
            "the rounds; sniffio is installed, without which "
            "httpcore retries a failed import for each lock it sets up."
        ),
    )
    series: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    pool = ThreadPoolExecutor(max(CLIENT_CONCURRENCY))
    try:
        for family, *_ in FAMILIES:
            names = _subject_names(family)
            for concurrency in CLIENT_CONCURRENCY:
                try:
                    rounds, missing = _measure_family(ctx, family, concurrency, url, loop, pool)
                except UnavailableError as exc:
                    table.rows.append([names["ours"], str(concurrency), str(exc), "", "", "", ""])
                    continue
                wall = {role: [w for w, _ in v] for role, v in rounds.items()}
                cpu = {role: [c for _, c in v] for role, v in rounds.items()}
                chosen = cpu if cpu_based else wall
                for role, name in names.items():
                    if role in missing:
                        table.rows.append([name, str(concurrency), missing[role], "", "", "", ""])
                        continue
                    added = Stat.of(
                        (1e6 / ours - 1e6 / bare)
                        for ours, bare in zip(cpu[role], cpu["bare"], strict=False)
                    )
                    to_peer = (
                        ratio_stat(chosen[role], chosen["peer"]).fmt(3)
                        if "peer" in chosen and role.startswith("ours")
                        else ""
                    )
                    table.rows.append(
                        [
                            name,
                            str(concurrency),
                            Stat.of(wall[role]).fmt(0),
                            Stat.of(cpu[role]).fmt(0),
                            ratio_stat(chosen[role], chosen["bare"]).fmt(3),
                            "" if role == "bare" else added.fmt(1),
                            to_peer,
                        ]
                    )
                    series[f"{family}/c{concurrency}/{role}"] = Stat.of(chosen[role]).as_dict()
                for suffix, role, reference in (
                    ("bare", "ours", "bare"),
                    ("bare_jsonl", "ours_jsonl", "bare"),
                    ("peer", "ours", "peer"),
                ):
                    key = f"http_{family.replace('-', '_')}_c{concurrency}_{suffix}"
                    for name in (key, *ALSO_MEASURES.get(key, ())):
                        if name not in ctx.results.targets:
                            continue
                        target = ctx.results.target(name)
                        if role in chosen and reference in chosen:
                            target.ratio = ratio_stat(chosen[role], chosen[reference])
                            target.detail = (
                                f"{Stat.of(chosen[role]).fmt(0)} vs "
                                f"{Stat.of(chosen[reference]).fmt(0)} {basis}; "
                                f"{_ratio_detail(chosen[role], chosen[reference])}; wall clock: "
                                f"ratio {ratio_stat(wall[role], wall[reference]).fmt(3)}"
                            )
                            if reference == "bare" and "bare_again" in chosen:
                                target.detail += (
                                    "; the noise floor (a second bare client): ratio "
                                    f"{ratio_stat(chosen['bare_again'], chosen['bare']).fmt(3)}"
                                )
                            if reference == "bare" and "noop" in chosen:
                                target.detail += (
                                    "; a no-op middleware (aiohttp's own machinery): ratio "
                                    f"{ratio_stat(chosen['noop'], chosen['bare']).fmt(3)}"
                                )
                            if reference == "bare" and "flow" in chosen:
                                target.detail += (
                                    "; our flow with metrics and breaker off: ratio "
                                    f"{ratio_stat(chosen['flow'], chosen['bare']).fmt(3)}"
                                )
                        else:
                            target.why_not = missing.get(reference, "not measured")
    finally:
        pool.shutdown(wait=True)
        close_loop(loop)
    ctx.results.tables.append(table)
    ctx.results.series["http_clients"] = series


async def _make_async(ctx: Context, family: str, url: str, concurrency: int) -> dict[str, Any]:
    # aiohttp sessions must be made inside the running loop.
    return _async_clients(ctx, family, url, concurrency)
