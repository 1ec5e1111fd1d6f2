"""Load control, measured: ``python -m benchmarks.load [--quick] [--out DIR]``.

Three measurements in one run, written to ``docs/benchmarks/load.md``,
``load.json`` and three figures:

* **fleet**: 8 processes call one local dependency that answers 503 to
  everything for the whole run (10 s); requests the dependency receives per
  logical call, with the default retry budget (shared through the store),
  with it per process, and without a budget.
* **rate limit**: a local server allows N requests a second (a token bucket,
  N a second, burst N) and answers 429 with Retry-After beyond; 8 processes of
  4 concurrent requests each, through ``ResilienceMiddleware``, with the
  shared limiter at N/s and without it; the share of 429s.
* **overhead**: the success path of ``@resilient`` with the retry budget, a
  rate limiter and a bulkhead on (per process, none of them ever refusing) vs
  the plain decorator, in interleaved rounds of process CPU time.

Every server and client is a real process on 127.0.0.1; the shared store is a
redis-server this run starts (SQLite when there is none), or with
``--store jsonl`` the default JSONL files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 8
#: Logical calls each fleet client starts per second (paced, not flat out).
FLEET_RATE_PER_S = 100.0
RATE_LIMIT_N = 100.0
RATE_LIMIT_TASKS = 4

Mode = dict[str, Any]

DEFAULT_BUDGET = "default budget (store scope)"
FLEET_MODES: dict[str, Mode] = {
    DEFAULT_BUDGET: {},
    "per process (RETRY_BUDGET_SCOPE=process)": {"budget_scope": "process"},
    "no budget": {"budget_ratio": float("inf")},
}
RATE_MODES: dict[str, Mode] = {
    "shared limiter, N/s (store)": {
        "rate_per_s": RATE_LIMIT_N,
        "rate_scope": "store",
        "rate_max_wait_s": 30.0,
    },
    "no limiter": {},
}


# The servers (each in its own process) -------------------------------------------------


def _serve(kind: str, port_out: Any, stop: Any) -> None:
    from aiohttp import web

    counts = {"requests": 0, "ok": 0, "limited": 0}
    tokens = [RATE_LIMIT_N]
    stamp = [time.monotonic()]

    async def dependency(request: web.Request) -> web.Response:
        counts["requests"] += 1
        return web.Response(status=503, text="down")

    async def limited(request: web.Request) -> web.Response:
        counts["requests"] += 1
        now = time.monotonic()
        tokens[0] = min(RATE_LIMIT_N, tokens[0] + (now - stamp[0]) * RATE_LIMIT_N)
        stamp[0] = now
        if tokens[0] >= 1:
            tokens[0] -= 1
            counts["ok"] += 1
            return web.Response(text="ok")
        counts["limited"] += 1
        due = math.ceil((1 - tokens[0]) / RATE_LIMIT_N)
        return web.Response(status=429, text="slow down", headers={"Retry-After": str(due)})

    async def report(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/call", dependency if kind == "fleet" else limited)
        app.router.add_get("/counts", report)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port_out.put(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def _server(kind: str) -> Iterator[int]:
    ctx = multiprocessing.get_context("spawn")
    port_out, stop = ctx.Queue(), ctx.Event()
    process = ctx.Process(target=_serve, args=(kind, port_out, stop), daemon=True)
    process.start()
    try:
        yield int(port_out.get(timeout=60))
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.kill()


def _counts(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/counts")
    counts: dict[str, int] = json.loads(conn.getresponse().read())
    conn.close()
    return counts


# The clients (each in its own process) -------------------------------------------------


def _policy(store_url: str, limits: Mode, **groups: Any) -> Any:
    from connector_resilience import Policy

    return Policy(store={"url": store_url}, limits=limits, **groups)


class DependencyDownError(Exception):
    """The dependency answered 503."""


def _fleet_client(port: int, store_url: str, limits: Mode, run_s: float, out: Any) -> None:
    from connector_resilience import flush_metrics, resilient

    policy = _policy(
        store_url,
        limits,
        retry={"max_attempts": 3, "base_ms": 20},
        circuit={"enabled": False},  # the budget alone, not the breaker, is measured
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    @resilient("dependency", policy=policy)
    def call() -> bytes:
        conn.request("GET", "/call")
        response = conn.getresponse()
        body = response.read()
        if response.status >= 500:
            raise DependencyDownError(response.status)
        return body

    logical = 0
    start = time.monotonic()
    next_at = start
    while (now := time.monotonic()) < start + run_s:
        if now < next_at:
            time.sleep(next_at - now)
        next_at += 1.0 / FLEET_RATE_PER_S
        logical += 1
        with contextlib.suppress(DependencyDownError):
            call()
    flush_metrics()
    out.put(logical)


def _rate_client(port: int, store_url: str, limits: Mode, run_s: float, out: Any) -> None:
    import aiohttp

    from connector_resilience import RateLimitExceededError, flush_metrics
    from connector_resilience.aiohttp import ResilienceMiddleware

    policy = _policy(store_url, limits, retry={"max_attempts": 3})

    async def main() -> tuple[int, int, int]:
        middleware = ResilienceMiddleware("limited-api", policy=policy)
        done = ok = refused = 0
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base_url=base, middlewares=(middleware,)) as session:
            stop_at = time.monotonic() + run_s

            async def worker() -> None:
                nonlocal done, ok, refused
                while time.monotonic() < stop_at:
                    try:
                        async with session.get("/call") as response:
                            await response.read()
                            ok += response.status == 200
                    except RateLimitExceededError:
                        refused += 1
                    done += 1

            await asyncio.gather(*(worker() for _ in range(RATE_LIMIT_TASKS)))
        return done, ok, refused

    done, ok, refused = asyncio.run(main())
    flush_metrics()
    out.put((done, ok, refused))


def _run_clients(target: Any, port: int, store_url: str, limits: Mode, run_s: float) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    clients = [
        ctx.Process(target=target, args=(port, store_url, limits, run_s, out))
        for _ in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    answers = [out.get(timeout=run_s + 120) for _ in clients]
    for client in clients:
        client.join(30)
        if client.exitcode != 0:
            raise RuntimeError(f"a client exited with {client.exitcode}")
    return answers


# The measurements ----------------------------------------------------------------------


def measure_fleet(store_url: Any, run_s: float, log: Any) -> dict[str, Any]:
    """Requests per logical call while the dependency is down, per mode."""
    figures: dict[str, Any] = {}
    for mode, limits in FLEET_MODES.items():
        url = store_url(f"fleet-{len(figures)}")
        with _server("fleet") as port:
            logical = sum(_run_clients(_fleet_client, port, url, limits, run_s))
            requests = _counts(port)["requests"]
        figures[mode] = {
            "logical_calls": logical,
            "requests": requests,
            "requests_per_call": requests / logical,
        }
        log(f"fleet, {mode}: {requests} requests / {logical} calls = {requests / logical:.3f}")
    return figures


def measure_rate_limit(store_url: Any, run_s: float, log: Any) -> dict[str, Any]:
    """Share of 429s the server sent, per mode."""
    figures: dict[str, Any] = {}
    for mode, limits in RATE_MODES.items():
        url = store_url(f"rate-{len(figures)}")
        with _server("rate") as port:
            answers = _run_clients(_rate_client, port, url, limits, run_s)
            counts = _counts(port)
        done = sum(a[0] for a in answers)
        served = sum(a[1] for a in answers)
        figures[mode] = {
            "requests": counts["requests"],
            "ok": counts["ok"],
            "429": counts["limited"],
            "share_429": counts["limited"] / max(1, counts["requests"]),
            "ok_per_s": counts["ok"] / run_s,
            "logical_calls": done,
            "calls_answered_200": served,
            "calls_refused_locally": sum(a[2] for a in answers),
        }
        log(
            f"rate limit, {mode}: {counts['limited']} of {counts['requests']} requests were "
            f"429 ({figures[mode]['share_429']:.2%}); {counts['ok'] / run_s:.1f} ok/s"
        )
    return figures


def measure_overhead(scratch: Path, quick: bool, log: Any) -> dict[str, Any]:
    """Success-path cost with every load control on vs the plain decorator (CPU, µs/call)."""
    from benchmarks import subjects
    from benchmarks._core import Context, Results, async_runner, close_loop, sync_runner
    from benchmarks._groups import measure_group
    from connector_resilience import flush_metrics, resilient

    ctx = Context(quick=quick, repeats=3 if quick else 9, scratch=scratch, results=Results())
    ctx.verbose = False
    loaded: Mode = {
        "rate_per_s": 1e9,  # never waits: the cost of asking, not of waiting
        "rate_burst": 1e9,
        "bulkhead_max_concurrent": 1_000_000,
    }
    variants: dict[str, Mode] = {
        "plain decorator (budget off)": {"budget_ratio": float("inf")},
        "defaults (budget on)": {},
        "budget + limiter + bulkhead": loaded,
    }
    figures: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    try:
        for mode in ("sync", "async"):
            builders: dict[str, Any] = {}
            if mode == "sync":
                builders["plain call"] = lambda: sync_runner(subjects._plain)
            else:
                builders["plain call"] = lambda: async_runner(loop, subjects._aplain)
            for name, limits in variants.items():

                def build(limits: Mode = limits, mode: str = mode) -> Any:
                    policy = subjects.our_policy(ctx, "memory", limits=limits)
                    if mode == "sync":
                        return sync_runner(
                            resilient("bench", policy=policy)(subjects._plain), flush_metrics
                        )
                    fn = resilient("bench", policy=policy)(subjects._aplain)
                    return async_runner(loop, fn, flush_metrics)

                builders[name] = build
            group = measure_group(ctx, f"load overhead {mode}", builders, baseline="plain call")
            plain = "plain decorator (budget off)"
            figures[mode] = {
                name: {
                    "overhead_us": group.stat(name).as_dict(),
                    "ratio_to_plain": group.ratio(name, plain).as_dict()  # type: ignore[union-attr]
                    if name != plain
                    else None,
                }
                for name in variants
            }
            ratio = group.ratio("budget + limiter + bulkhead", plain)
            assert ratio is not None
            log(f"overhead {mode}: budget + limiter + bulkhead / plain = {ratio.fmt(3)}")
    finally:
        close_loop(loop)
    return figures


# The report ----------------------------------------------------------------------------

TARGETS = {
    "fleet": "default budget: requests per logical call <= 1.25 (about 3.0 without)",
    "rate": "shared limiter: 429s <= 1% of requests",
    "overhead": "budget + limiter + bulkhead vs plain decorator: <= +30% overhead",
}


def _verdicts(data: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    shared = data["fleet"][DEFAULT_BUDGET]["requests_per_call"]
    share = data["rate"]["shared limiter, N/s (store)"]["share_429"]
    worst = max(
        data["overhead"][mode]["budget + limiter + bulkhead"]["ratio_to_plain"]["median"]
        for mode in ("sync", "async")
    )
    return {
        "fleet": (shared <= 1.25, f"{shared:.3f} requests per logical call"),
        "rate": (share <= 0.01, f"{share:.2%} of requests were 429"),
        "overhead": (worst <= 1.30, f"x{worst:.3f} (worst of sync, async; median of rounds)"),
    }


def _fleet_bound(mode: str, figures: dict[str, Any], run_s: float) -> float:
    """Requests per call the budget's rule allows (3 attempts at most), for comparison."""
    if mode == "no budget":
        return 3.0
    floors = CLIENTS if "per process" in mode else 1
    return min(3.0, 1.2 + 10.0 * run_s * floors / float(figures["logical_calls"]))


def summary_markdown(data: dict[str, Any]) -> str:
    """The targets table alone (the docs page includes it)."""
    lines = [
        "| measurement | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for key, (ok, measured) in _verdicts(data).items():
        lines.append(f"| {key} | {TARGETS[key]} | {measured} | {'pass' if ok else 'FAIL'} |")
    meta = data["meta"]
    lines += [
        "",
        f"Measured {meta['date']} on {meta['cores']} cores (load average before the run: "
        f"{meta['load_before']}); shared store: {meta['store']}.",
        "",
    ]
    return "\n".join(lines)


def _markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        "# Load control: measured",
        "",
        "Generated by `python -m benchmarks.load` "
        f"({meta['date']}, {meta['python']}, {meta['cores']} cores, load before "
        f"{meta['load_before']}, shared store: {meta['store']}). "
        "[Protecting the dependency](../protecting-the-dependency.md) explains the figures.",
        "",
        "## Targets",
        "",
        "| measurement | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for key, (ok, measured) in _verdicts(data).items():
        lines.append(f"| {key} | {TARGETS[key]} | {measured} | {'pass' if ok else 'FAIL'} |")
    lines += [
        "",
        f"## Fleet: {CLIENTS} processes, the dependency down for {meta['run_s']:g} s",
        "",
        f"Each process starts up to {FLEET_RATE_PER_S:g} logical calls a second; 3 attempts, "
        "20 ms base backoff, breaker off.",
        "",
        "The budget's own bound: 1 + 0.2 + (10 retries/s x the run) / logical calls, the",
        f"floor counted once for the shared budget and {CLIENTS} times per process; at most 3.",
        "",
        "| budget | logical calls | requests | requests per call | the rule's bound |",
        "|---|---|---|---|---|",
    ]
    for mode, f in data["fleet"].items():
        lines.append(
            f"| {mode} | {f['logical_calls']} | {f['requests']} | "
            f"{f['requests_per_call']:.3f} | {_fleet_bound(mode, f, meta['run_s']):.3f} |"
        )
    lines += [
        "",
        "![fleet](load_fleet.png)",
        "",
        f"## Rate limit: a server allowing {RATE_LIMIT_N:g} requests/s, {CLIENTS} processes "
        f"x {RATE_LIMIT_TASKS} concurrent requests",
        "",
        "| client | requests | 200 | 429 | share of 429 | 200 per second | refused locally |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, f in data["rate"].items():
        lines.append(
            f"| {mode} | {f['requests']} | {f['ok']} | {f['429']} | {f['share_429']:.2%} | "
            f"{f['ok_per_s']:.1f} | {f['calls_refused_locally']} |"
        )
    lines += [
        "",
        "![rate limit](load_rate_limit.png)",
        "",
        "## Success-path overhead (process CPU, µs per call over a plain call)",
        "",
        "| mode | subject | overhead (µs, median [min..max]) | ratio to the plain decorator |",
        "|---|---|---|---|",
    ]
    for mode, subjects_ in data["overhead"].items():
        for name, f in subjects_.items():
            o = f["overhead_us"]
            r = f["ratio_to_plain"]
            ratio = f"{r['median']:.3f} [{r['min']:.3f}..{r['max']:.3f}]" if r else "1"
            lines.append(
                f"| {mode} | {name} | {o['median']:.3f} [{o['min']:.3f}..{o['max']:.3f}] | "
                f"{ratio} |"
            )
    lines += ["", "![overhead](load_overhead.png)", ""]
    return "\n".join(lines)


def _plots(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleet = data["fleet"]
    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(fleet)
    ax.barh(names, [fleet[n]["requests_per_call"] for n in names], color="#1f77b4")
    ax.axvline(1.25, color="#d62728", linestyle="--", label="target 1.25")
    ax.set_xlabel("requests the dependency received per logical call")
    ax.set_title(f"{CLIENTS} processes, dependency down {data['meta']['run_s']:g} s")
    ax.invert_yaxis()
    ax.legend()
    fig.savefig(out / "load_fleet.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    rate = data["rate"]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    names = list(rate)
    ax.barh(names, [100 * rate[n]["share_429"] for n in names], color="#1f77b4")
    ax.axvline(1.0, color="#d62728", linestyle="--", label="target 1%")
    ax.set_xlabel("share of requests answered 429 (%)")
    ax.set_title(f"server allows {RATE_LIMIT_N:g}/s; {CLIENTS} processes")
    ax.invert_yaxis()
    ax.legend()
    fig.savefig(out / "load_rate_limit.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels, medians, lows, highs = [], [], [], []
    for mode, subjects_ in data["overhead"].items():
        for name, f in subjects_.items():
            o = f["overhead_us"]
            labels.append(f"{mode}: {name}")
            medians.append(o["median"])
            lows.append(o["median"] - o["min"])
            highs.append(o["max"] - o["median"])
    ax.barh(labels, medians, xerr=[lows, highs], color="#1f77b4", capsize=3)
    ax.set_xlabel("overhead per successful call (µs of CPU)")
    ax.set_title("success path: load control on vs off (median, min..max over rounds)")
    ax.invert_yaxis()
    fig.savefig(out / "load_overhead.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _write(data: dict[str, Any], out: Path, *, plots: bool) -> None:
    (out / "load.md").write_text(_markdown(data))
    (out / "load_summary.md").write_text(summary_markdown(data))
    if plots:
        _plots(data, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load")
    parser.add_argument("--quick", action="store_true", help="2 s runs instead of 10 s")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--render",
        action="store_true",
        help="write the pages and figures again from OUT/load.json, measuring nothing",
    )
    parser.add_argument(
        "--only",
        choices=("fleet", "rate", "overhead"),
        help="print one measurement's figures; writes nothing",
    )
    parser.add_argument(
        "--store",
        choices=("redis", "jsonl"),
        default="redis",
        help="the shared store: a redis-server this run starts, or the default JSONL files",
    )
    args = parser.parse_args(argv)
    if args.render:
        _write(json.loads((args.out / "load.json").read_text()), args.out, plots=not args.no_plots)
        return 0
    for name in list(os.environ):
        if name.startswith(("CONNECTOR_", "RETRY_", "CB_", "RATE_LIMIT_", "BULKHEAD_")):
            del os.environ[name]
    from benchmarks._redis import redis_server

    run_s = 2.0 if args.quick else 10.0

    def log(message: str) -> None:
        print(f"[load] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="cr-load-") as scratch_name:
        scratch = Path(scratch_name)
        with redis_server(scratch / "redis") as (redis_url, note):

            def store_url(tag: str) -> str:
                if args.store == "jsonl":
                    return f"jsonl://{scratch / tag}"
                if redis_url is not None:
                    return f"{redis_url}/0?prefix=load-{tag}"
                return f"sqlite:///{scratch / f'{tag}.db'}"

            data: dict[str, Any] = {
                "meta": {
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "python": sys.version.split()[0],
                    "cores": os.cpu_count(),
                    "load_before": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
                    "store": "JSONL files"
                    if args.store == "jsonl"
                    else note
                    if redis_url is not None
                    else f"SQLite ({note})",
                    "run_s": run_s,
                    "command": "python -m benchmarks.load " + " ".join(argv or sys.argv[1:]),
                }
            }
            if args.only is not None:
                if args.only == "fleet":
                    figures = measure_fleet(store_url, run_s, log)
                elif args.only == "rate":
                    figures = measure_rate_limit(store_url, run_s, log)
                else:
                    figures = measure_overhead(scratch, args.quick, log)
                print(json.dumps(figures, indent=2))
                return 0
            data["fleet"] = measure_fleet(store_url, run_s, log)
            data["rate"] = measure_rate_limit(store_url, run_s, log)
            data["overhead"] = measure_overhead(scratch, args.quick, log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(data, indent=2) + "\n")
    _write(data, args.out, plots=not args.no_plots)
    for key, (ok, measured) in _verdicts(data).items():
        print(f"{key}: {measured} ({'pass' if ok else 'FAIL'}: {TARGETS[key]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
