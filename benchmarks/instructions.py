"""Instructions per call under ``valgrind --tool=callgrind``: a figure noise cannot move.

Wall and even CPU time wobble on a shared machine; the number of instructions
a call executes does not. This runs a few scenarios in one valgrind process,
cutting the count at a marker (``os.getppid()``, dumped by ``--dump-before``)
between scenarios, and prints instructions per call::

    python -m benchmarks.instructions                       # every scenario
    python -m benchmarks.instructions fail-once-sync rejection-sync
    python -m benchmarks.instructions --source /tmp/patched  # a patched copy of the library

Kernel work (a ``time.sleep(0)`` system call, file writes) is not counted: it
is for finding hot spots in our Python code, beside the timed benchmarks, not
instead of them. Scenarios with a store include writing their metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]

Loop = Callable[[int], None]


def _sync_loop(fn: Callable[[], object], *, catching: bool = False) -> Loop:
    from connector_resilience import flush_metrics

    def run(n: int) -> None:
        for _ in range(n):
            try:
                fn()
            except Exception:
                if not catching:
                    raise
        flush_metrics()

    return run


def _async_loop(fn: Callable[[], Awaitable[object]], *, catching: bool = False) -> Loop:
    from connector_resilience import flush_metrics

    loop = asyncio.new_event_loop()

    async def body(n: int) -> None:
        for _ in range(n):
            try:
                await fn()
            except Exception:
                if not catching:
                    raise
        flush_metrics()

    return lambda n: loop.run_until_complete(body(n))


def _scenarios(scratch: Path) -> dict[str, Callable[[], Loop]]:
    from benchmarks import subjects
    from benchmarks._core import Context, Results
    from connector_resilience import resilient

    ctx = Context(quick=True, repeats=1, scratch=scratch, results=Results(), verbose=False)

    def ours(kind: str, fn: Callable[..., Any], **groups: Any) -> Callable[..., Any]:
        wrapped: Callable[..., Any] = resilient(
            "bench", policy=subjects.our_policy(ctx, kind, **groups)
        )(fn)
        return wrapped

    def flaky_sync() -> Callable[[], int]:
        return subjects._flaky()[0]

    def flaky_async() -> Callable[[], Awaitable[int]]:
        return subjects._aflaky()[0]

    def tripped_sync(fn: Callable[[], int]) -> Callable[[], int]:
        for _ in range(5):
            try:
                fn()
            except Exception:  # tripping the breaker
                continue
        return fn

    trip = {"circuit": {"failures_to_open": 1, "cooldown_s": 3600}, "retry": {"max_attempts": 1}}
    # Budget, rate limiter and bulkhead on, none of them ever refusing: the cost of asking.
    load = {"limits": {"rate_per_s": 1e9, "rate_burst": 1e9, "bulkhead_max_concurrent": 1_000_000}}
    limiter = {"limits": {"rate_per_s": 1e9, "rate_burst": 1e9}}
    bulkhead = {"limits": {"bulkhead_max_concurrent": 1_000_000}}
    zero = subjects._ZERO_WAIT  # the retry budget off: every call retries

    def middleware(kind: str, **options: Any) -> Loop:
        import aiohttp
        from yarl import URL

        class Response:
            status = 200

            def release(self) -> None:
                pass

        response = Response()

        async def handler(request: Any) -> Any:
            return response

        loop = asyncio.new_event_loop()

        async def setup() -> tuple[Any, Any]:
            session = aiohttp.ClientSession()
            request = aiohttp.ClientRequest(
                "GET", URL("http://127.0.0.1:9/x"), loop=asyncio.get_running_loop(), session=session
            )
            if kind == "ours":
                from connector_resilience.aiohttp import ResilienceMiddleware

                mw: Any = ResilienceMiddleware(
                    "bench", policy=subjects.our_policy(ctx, "memory"), **options
                )
            elif kind == "interlock":
                from interlock.integrations.aiohttp import CircuitBreakerMiddleware

                mw = CircuitBreakerMiddleware()
            else:

                async def mw(request: Any, handler: Any) -> Any:
                    return await handler(request)

            return request, mw

        request, mw = loop.run_until_complete(setup())
        from connector_resilience import flush_metrics

        async def body(n: int) -> None:
            for _ in range(n):
                await mw(request, handler)
            flush_metrics()

        return lambda n: loop.run_until_complete(body(n))

    return {
        "success-sync": lambda: _sync_loop(ours("memory", subjects._plain)),
        "success-sync-jsonl": lambda: _sync_loop(ours("jsonl", subjects._plain)),
        "success-sync-tenacity": lambda: _sync_loop(subjects.tenacity_retry()(subjects._plain)),
        "success-sync-pyresilience": lambda: _sync_loop(
            subjects.pyresilience_deco()(subjects._plain)
        ),
        "success-sync-circuitbreaker": lambda: _sync_loop(
            subjects.circuitbreaker_breaker(threshold=5, recovery_s=60)(subjects._plain)
        ),
        "success-sync-raw": lambda: _sync_loop(
            ours("memory", subjects._plain, store={"metrics_mode": "raw"})
        ),
        "success-async": lambda: _async_loop(ours("memory", subjects._aplain)),
        "success-async-tenacity": lambda: _async_loop(subjects.tenacity_retry()(subjects._aplain)),
        "success-sync-load": lambda: _sync_loop(ours("memory", subjects._plain, **load)),
        "success-async-load": lambda: _async_loop(ours("memory", subjects._aplain, **load)),
        "success-sync-limiter": lambda: _sync_loop(ours("memory", subjects._plain, **limiter)),
        "success-sync-bulkhead": lambda: _sync_loop(ours("memory", subjects._plain, **bulkhead)),
        "fail-once-sync": lambda: _sync_loop(ours("memory", flaky_sync(), **zero)),
        "fail-once-sync-tenacity": lambda: _sync_loop(
            subjects.tenacity_retry(zero_wait=True)(flaky_sync())
        ),
        "fail-once-async": lambda: _async_loop(ours("memory", flaky_async(), **zero)),
        "rejection-sync": lambda: _sync_loop(
            tripped_sync(ours("memory", subjects._boom()[0], **trip)), catching=True
        ),
        "rejection-sync-circuitbreaker": lambda: _sync_loop(
            tripped_sync(
                subjects.circuitbreaker_breaker(threshold=1, recovery_s=3600)(subjects._boom()[0])
            ),
            catching=True,
        ),
        "middleware": lambda: middleware("ours"),
        "middleware-interlock": lambda: middleware("interlock"),
        "middleware-nometrics": lambda: middleware("ours", metrics=False),
        "middleware-none": lambda: middleware("none"),
        **_http_scenarios(ctx),
    }


#: Where the HTTP scenarios send their requests: never reached, a canned answer
#: stands in for the network (see :func:`_http_scenarios`).
_CANNED_URL = "http://127.0.0.1:9/x"


def _http_scenarios(ctx: Any) -> dict[str, Callable[[], Loop]]:
    """A GET answered 200 through each HTTP adapter, its bare client and its peer.

    No sockets: what is counted is the client library and what an adapter adds.
    ``http-transport-*`` and ``http-adapter*`` count an adapter alone (httpx's
    transport, requests' adapter over an inner send that hands back one
    response), against that inner send called bare: the adapter's own cost,
    steadier than the difference of two whole-client figures.

    * httpx (sync and async): the client's inner transport is httpx's own
      ``MockTransport``, answering a fresh ``httpx.Response(200, content=b"ok")``;
      ours (``ResilientTransport``) and httpx-retries' ``RetryTransport`` wrap it,
      the bare client uses it directly.
    * requests: every session mounts an ``HTTPAdapter`` (ours, bare, or bare
      with urllib3 ``Retry(total=3, backoff_factor=0.4, status_forcelist=(429,
      502, 503, 504))``) whose urllib3 pool class is replaced by one whose
      ``_make_request`` (the socket exchange inside ``urlopen``) returns a
      canned 200 with a 2-byte body; everything above it (urllib3's ``urlopen``
      and its retry bookkeeping, the connection pool, requests' adapter and
      session) runs as shipped. Sessions have ``trust_env=False``: this
      machine's proxy variables and ``.netrc`` would otherwise cost each
      request more than any adapter does.

    ``http-httpx-sync-nometrics`` and ``http-requests-nometrics`` are ours
    with ``metrics=False``: the flow alone, beside which the metric's own cost
    shows. Part of that cost is paced by the wall clock, not by requests: the
    metrics writer's ticks (every 50 ms while calls come) and a call's look at
    whether the writer keeps up (every few ms). Under valgrind a whole-client
    request takes that long by itself, so each request pays for one of each
    here (about 9k instructions on httpx), where at native speed they are
    shared by tens to hundreds of requests.

    Two things that are not per request are kept out of the count. Garbage
    collection is off inside the loops: a full pass costs millions of
    instructions and lands in one subject's loop or another's by chance. Our
    breaker re-reads its store every ``CB_SYNC_INTERVAL_S`` (0.1 s) of wall
    time, which under valgrind's slowdown falls every few requests of these
    heavy clients, so ours is given an hour.
    """
    from benchmarks import subjects

    def policy() -> Any:
        return subjects.our_policy(ctx, "memory", circuit={"sync_interval_s": 3600.0})

    def httpx_client(kind: str, *, is_async: bool) -> Any:
        import httpx

        inner = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
        transport: Any = inner
        if kind in {"ours", "ours-nometrics"}:
            from connector_resilience.httpx import ResilientTransport

            transport = ResilientTransport(
                "bench", transport=inner, policy=policy(), metrics=kind == "ours"
            )
        elif kind == "retries":
            import httpx_retries

            transport = httpx_retries.RetryTransport(
                transport=inner, retry=httpx_retries.Retry(total=3)
            )
        return (httpx.AsyncClient if is_async else httpx.Client)(transport=transport)

    def httpx_sync(kind: str) -> Loop:
        client = httpx_client(kind, is_async=False)
        return _without_gc(_sync_loop(lambda: client.get(_CANNED_URL)))

    def httpx_async(kind: str) -> Loop:
        client = httpx_client(kind, is_async=True)
        return _without_gc(_async_loop(lambda: client.get(_CANNED_URL)))

    def requests_session(kind: str) -> Loop:
        import requests
        import urllib3

        if kind in {"ours", "ours-nometrics"}:
            from connector_resilience.requests import ResilientAdapter

            adapter: Any = ResilientAdapter("bench", policy=policy(), metrics=kind == "ours")
        elif kind == "urllib3":
            retry = urllib3.Retry(
                total=3, backoff_factor=0.4, status_forcelist=(429, 502, 503, 504)
            )
            adapter = requests.adapters.HTTPAdapter(max_retries=retry)
        else:
            adapter = requests.adapters.HTTPAdapter()
        adapter.poolmanager.pool_classes_by_scheme = {"http": _canned_pool()}
        session = requests.Session()
        session.trust_env = False
        session.mount("http://", adapter)

        def get() -> object:
            return session.get(_CANNED_URL).content

        return _without_gc(_sync_loop(get))

    def transport(kind: str, *, is_async: bool, metrics: bool = True) -> Loop:
        # The transport alone, over an inner one that hands back one response:
        # what the adapter adds, without the client's own (much larger) cost.
        import httpx

        request = httpx.Request("GET", _CANNED_URL)
        response = httpx.Response(200)

        class Inner(httpx.BaseTransport, httpx.AsyncBaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                return response

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                return response

        outer: Any = Inner()
        if kind == "ours":
            from connector_resilience.httpx import ResilientTransport

            outer = ResilientTransport("bench", transport=Inner(), policy=policy(), metrics=metrics)
        elif kind == "retries":
            import httpx_retries

            outer = httpx_retries.RetryTransport(
                transport=Inner(), retry=httpx_retries.Retry(total=3)
            )
        if is_async:
            return _without_gc(_async_loop(lambda: outer.handle_async_request(request)))
        return _without_gc(_sync_loop(lambda: outer.handle_request(request)))

    def adapter(kind: str, *, metrics: bool = True) -> Loop:
        # The adapter alone: HTTPAdapter.send underneath hands back one response.
        import requests

        from connector_resilience.requests import ResilientAdapter

        response = requests.Response()
        response.status_code = 200

        class Canned(requests.adapters.HTTPAdapter):
            def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
                return response

        class Ours(ResilientAdapter, Canned):
            pass

        mounted = Ours("bench", policy=policy(), metrics=metrics) if kind == "ours" else Canned()
        prepared = requests.Request("GET", _CANNED_URL).prepare()
        options: dict[str, Any] = {"stream": False, "timeout": None, "verify": True}
        return _without_gc(_sync_loop(lambda: mounted.send(prepared, **options)))

    return {
        "http-transport-sync": lambda: transport("ours", is_async=False),
        # The flow alone, without the metric record (metrics=False).
        "http-transport-sync-nometrics": lambda: transport("ours", is_async=False, metrics=False),
        "http-transport-async-nometrics": lambda: transport("ours", is_async=True, metrics=False),
        "http-adapter-nometrics": lambda: adapter("ours", metrics=False),
        "http-transport-sync-bare": lambda: transport("bare", is_async=False),
        "http-transport-async": lambda: transport("ours", is_async=True),
        "http-transport-async-bare": lambda: transport("bare", is_async=True),
        "http-transport-sync-retries": lambda: transport("retries", is_async=False),
        "http-transport-async-retries": lambda: transport("retries", is_async=True),
        "http-adapter": lambda: adapter("ours"),
        "http-adapter-bare": lambda: adapter("bare"),
        "http-httpx-sync": lambda: httpx_sync("ours"),
        "http-httpx-sync-nometrics": lambda: httpx_sync("ours-nometrics"),
        "http-httpx-sync-bare": lambda: httpx_sync("bare"),
        "http-httpx-sync-retries": lambda: httpx_sync("retries"),
        "http-httpx-async": lambda: httpx_async("ours"),
        "http-httpx-async-bare": lambda: httpx_async("bare"),
        "http-httpx-async-retries": lambda: httpx_async("retries"),
        "http-requests": lambda: requests_session("ours"),
        "http-requests-nometrics": lambda: requests_session("ours-nometrics"),
        "http-requests-bare": lambda: requests_session("bare"),
        "http-requests-urllib3": lambda: requests_session("urllib3"),
    }


def _without_gc(run: Loop) -> Loop:
    """``run`` with garbage collection off while it runs."""

    def quiet(n: int) -> None:
        gc.disable()
        try:
            run(n)
        finally:
            gc.enable()

    return quiet


def _canned_pool() -> type:
    """A urllib3 HTTP pool whose socket exchange is a canned 200 (see :func:`_http_scenarios`)."""
    import http.client
    import io

    import urllib3
    from urllib3.connectionpool import HTTPConnectionPool

    head = b"Content-Length: 2\r\nContent-Type: text/plain\r\n\r\n"

    class Body(io.BytesIO):
        """The body, standing in for http.client's response: closed once read in full."""

        msg = http.client.parse_headers(io.BytesIO(head))  # what requests reads cookies from

        def isclosed(self) -> bool:
            return self.closed

    class CannedPool(HTTPConnectionPool):
        def _make_request(self, conn: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            body = Body(b"ok")
            response = urllib3.HTTPResponse(
                body=body,
                headers=dict(Body.msg.items()),
                status=200,
                version=11,
                reason="OK",
                preload_content=kwargs.get("preload_content", True),
                decode_content=kwargs.get("decode_content", True),
                request_method=method,
                request_url=url,
                # So that the connection goes back to the pool once the body is read.
                original_response=cast(Any, body),
            )
            response.retries = kwargs.get("retries")
            response._connection = kwargs.get("response_conn")
            response._pool = self
            return response

    return CannedPool


def _child(names: list[str], calls: int) -> None:
    """Inside valgrind: warm each scenario, then run it between two markers."""
    with tempfile.TemporaryDirectory(prefix="cr-instr-") as scratch:
        table = _scenarios(Path(scratch))
        loops = {name: table[name]() for name in names}
        for run in loops.values():
            run(max(20, calls // 10))  # warm: caches, first-call setup
        for run in loops.values():
            os.getppid()  # marker: callgrind dumps here
            run(calls)
        os.getppid()


def _totals(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("scenarios", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--source", type=Path, default=None, help="tree holding connector_resilience/"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.scenarios, args.calls)
        return 0
    with tempfile.TemporaryDirectory() as probe:
        known = list(_scenarios(Path(probe)))
    names = args.scenarios or known
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(known)}")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    source = (args.source or ROOT).resolve()
    with tempfile.TemporaryDirectory(prefix="cr-callgrind-") as out:
        # The library from ``source``, the scenarios from this tree: a source
        # tree's own benchmarks/ (an older checkout's) must not shadow these.
        path = Path(out) / "path"
        path.mkdir()
        (path / "connector_resilience").symlink_to(source / "connector_resilience")
        (path / "benchmarks").symlink_to(ROOT / "benchmarks")
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(path)}
        command = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=os_getppid",
            f"--callgrind-out-file={out}/cg.out",
            sys.executable,
            "-c",
            "import runpy, sys; sys.path[:0] = [sys.argv.pop(1)]; "
            "runpy.run_module('benchmarks.instructions', run_name='__main__')",
            str(path),
            "--child",
            "--calls",
            str(args.calls),
            *names,
        ]
        done = subprocess.run(command, check=False, env=env, cwd=out, capture_output=True)
        if done.returncode != 0:
            print(done.stderr.decode(errors="replace")[-4000:], file=sys.stderr)
            return done.returncode
        # Dumps: .1 is start-up to the first marker; .2.. are the scenarios in order.
        dumps = sorted(Path(out).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        counts = [_totals(p) for p in dumps[1 : 1 + len(names)]]
    print(f"instructions per call ({args.calls} calls each, source {source}):")
    for name, total in zip(names, counts, strict=True):
        print(f"  {name:32s} {total / args.calls:12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
