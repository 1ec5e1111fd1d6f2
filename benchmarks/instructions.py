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
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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
    zero = subjects._ZERO_WAIT  # the retry budget off: every call retries

    def middleware(kind: str) -> Loop:
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

                mw: Any = ResilienceMiddleware("bench", policy=subjects.our_policy(ctx, "memory"))
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
        "middleware-none": lambda: middleware("none"),
    }


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
        env = {
            **os.environ,
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": os.pathsep.join([str(source), str(ROOT)]),
        }
        command = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=os_getppid",
            f"--callgrind-out-file={out}/cg.out",
            sys.executable,
            "-c",
            "import runpy, sys; sys.path[:0] = [sys.argv.pop(1)]; "
            "runpy.run_module('benchmarks.instructions', run_name='__main__')",
            str(source),
            "--child",
            "--calls",
            str(args.calls),
            *names,
        ]
        subprocess.run(command, check=True, env=env, cwd=out, capture_output=True)
        # Dumps: .1 is start-up to the first marker; .2.. are the scenarios in order.
        dumps = sorted(Path(out).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        counts = [_totals(p) for p in dumps[1 : 1 + len(names)]]
    print(f"instructions per call ({args.calls} calls each, source {source}):")
    for name, total in zip(names, counts, strict=True):
        print(f"  {name:32s} {total / args.calls:12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
