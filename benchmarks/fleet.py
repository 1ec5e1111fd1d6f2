"""Cases ``storage``, ``long-summary``, ``startup``, ``burst``, ``percentiles``, ``memory``.

Issue 16's figures: metrics at fleet volume. Each writes a table and sets its targets.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from benchmarks._core import Context, Stat, Table, UnavailableError, interleaved, need
from connector_resilience import _clock
from connector_resilience.backends import CallAggregate, open_store
from connector_resilience.metrics import (
    LatencyHistogram,
    MetricsBuffer,
    percentile,
    summarize,
)
from connector_resilience.policy import Policy

ROOT = Path(__file__).resolve().parents[1]


def recorded_latencies(n: int, seed: int = 20260516) -> list[float]:
    """The recorded mixed distribution (ms): lognormal around 20 ms, a 3% slow tail."""
    rng = random.Random(seed)
    return [
        rng.uniform(400.0, 3000.0) if rng.random() < 0.03 else rng.lognormvariate(3.0, 0.6)
        for _ in range(n)
    ]


def _set(ctx: Context, key: str, values: list[float], detail: str) -> None:
    target = ctx.results.target(key)
    target.ratio = Stat.of(values)
    target.detail = detail


# Storage ----------------------------------------------------------------------------


def run_storage(ctx: Context) -> None:
    """Bytes on disk for 1M successful calls over 10 minutes at a steady rate (JSONL)."""
    calls = 100_000 if ctx.quick else 1_000_000
    seconds = 600.0
    folder = ctx.scratch / "storage"
    store = open_store(f"jsonl://{folder}")
    # Writes at every tick, as the writer does once per flush interval.
    buffer = MetricsBuffer(store, flush_interval_s=1e-9, max_pending=10**9, pending_max=10**9)
    series = buffer.series("api", "get", None)
    durations = recorded_latencies(calls)
    # The calls' wall times, steady over ten minutes: the writer's clocks are moved
    # with them, as they would move in those ten minutes.
    timeline = _Timeline(wall0=1_800_000_000.0, perf0=1000.0)
    step = seconds / calls
    # A tick per fine interval (0.5 s) of calls, as the writer ticks at least that
    # often: a tick stamps what it takes with the series' latest success.
    chunk = max(1, int(0.5 / step))
    saved = (_clock.wall, _clock.perf)
    _clock.wall, _clock.perf = timeline.wall, timeline.perf
    t0 = time.process_time()
    try:
        for first in range(0, calls, chunk):
            last = min(calls, first + chunk)
            series.pending.extend(d / 1000.0 for d in durations[first:last])
            timeline.elapsed = (last - 1) * step
            buffer.tick()
        buffer.stop()
    finally:
        _clock.wall, _clock.perf = saved
    elapsed = time.process_time() - t0
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix == ".jsonl"}
    total = sum(sizes.values())
    per_million = total * (1_000_000 / calls)
    raw_line = len(json.dumps(_raw_example(), separators=(",", ":"))) + 1
    table = Table(
        key="storage",
        title="Storage of 1M successful calls over 10 minutes (default JSONL store)",
        columns=["file", "bytes", "bytes per 1M calls"],
        note=(
            f"{calls:,} calls at a steady rate over {seconds:.0f} s with the recorded latency "
            "mix (lognormal around 20 ms, 3% at 0.4-3 s), through the real aggregator and "
            f"store ({elapsed:.1f} s of CPU to aggregate and write them). One raw record per "
            f"attempt is about {raw_line} bytes: {raw_line * 1_000_000 / 1e6:.0f} MB per 1M calls."
        ),
    )
    for name, size in sorted(sizes.items()):
        table.rows.append([name, f"{size:,}", f"{size * 1_000_000 / calls:,.0f}"])
    table.rows.append(["all", f"{total:,}", f"{per_million:,.0f}"])
    ctx.results.tables.append(table)
    ctx.results.series["storage"] = {"aggregated": per_million, "raw": raw_line * 1_000_000}
    _set(
        ctx, "storage_per_million", [per_million / 1e6], f"{per_million / 1e6:.2f} MB per 1M calls"
    )


class _Timeline:
    """Wall and perf-counter clocks that stand still until moved (the simulated ten minutes)."""

    def __init__(self, *, wall0: float, perf0: float) -> None:
        self.wall0, self.perf0, self.elapsed = wall0, perf0, 0.0

    def wall(self) -> float:
        return self.wall0 + self.elapsed

    def perf(self) -> float:
        return self.perf0 + self.elapsed


def _raw_example() -> dict[str, Any]:
    return {
        "ts": 1_800_000_000.123456,
        "connector": "api",
        "operation": "get",
        "duration_ms": 21.734512,
        "status": "ok",
        "error": None,
        "attempt": 1,
        "final": True,
    }


# summarize() over 24 hours ---------------------------------------------------------------


def _day_of_rows(now: float, per_second: int) -> list[CallAggregate]:
    """24 hours of rows at 1 s, 1 min and 1 h, as one writer at ``per_second`` makes them."""
    rng = random.Random(7)
    pool = recorded_latencies(per_second * 30)
    fine: list[LatencyHistogram] = []
    for _ in range(30):  # 30 distinct one-second histograms, reused in turn
        h = LatencyHistogram()
        h.add_many(rng.sample(pool, per_second))
        fine.append(h)
    minute = LatencyHistogram()
    for i in range(60):
        minute.merge(fine[i % 30])
    hour = LatencyHistogram()
    for _ in range(60):
        hour.merge(minute)
    start = (now // 3600) * 3600 - 86400

    def row(ts: float, res: float, h: LatencyHistogram) -> CallAggregate:
        return CallAggregate(ts, res, "api", "get", "ok", h.total, h.total, ts + res, h.to_runs())

    fine_runs = [row(0, 1.0, h) for h in fine]
    minute_row, hour_row = row(0, 60.0, minute), row(0, 3600.0, hour)
    rows = []
    for s in range(int(now - start)):
        ts = start + s
        rows.append(fine_runs[s % 30]._replace(ts=ts, last_ts=ts + 1))
        if s % 60 == 0:
            rows.append(minute_row._replace(ts=ts, last_ts=ts + 60))
        if s % 3600 == 0:
            rows.append(hour_row._replace(ts=ts, last_ts=ts + 3600))
    return rows


def run_long_summary(ctx: Context) -> None:
    """summarize(window_s=86400) over 24 hours of history at 1,000 calls/s."""
    per_second = 100 if ctx.quick else 1000
    now = time.time()
    rows = _day_of_rows(now, per_second)
    stores = {}
    t0 = time.perf_counter()
    for kind, url in (
        ("JSONL", f"jsonl://{ctx.scratch / 'day-jsonl'}"),
        ("SQLite", f"sqlite:///{ctx.scratch / 'day.db'}"),
    ):
        store = open_store(url)
        for i in range(0, len(rows), 5000):
            store.append_aggregates(rows[i : i + 5000])  # type: ignore[attr-defined]
        stores[kind] = store
    ctx.log(f"long-summary: {len(rows):,} rows written in {time.perf_counter() - t0:.1f}s")
    policy = Policy(store={"url": "memory://unused-day"})
    expected = per_second * 86400
    tick = time.process_time

    def measure(name: str) -> float:
        t = tick()
        summary = summarize("api", window_s=86400, store=stores[name], policy=policy, now=now)
        elapsed = (tick() - t) * 1000
        # The first and last second of the window are fine rows cut by its edges.
        if abs(summary.attempts - expected) > 2 * per_second:
            raise RuntimeError(f"{name}: {summary.attempts} attempts, not about {expected}")
        return elapsed

    for name in stores:
        measure(name)
    rounds = interleaved(list(stores), measure, ctx.repeats)
    table = Table(
        key="long_summary",
        title="summarize() over 24 hours of history at 1,000 calls/s",
        columns=["store", "ms per summarize()", "rows in the store"],
        note=(
            f"{expected:,} calls as {len(rows):,} aggregated rows (1 s, 1 min and 1 h); "
            "a summary reads hour rows for the whole hours, minute and second rows at the edges."
        ),
    )
    for name, values in rounds.items():
        table.rows.append([name, Stat.of(values).fmt(2), f"{len(rows):,}"])
    ctx.results.tables.append(table)
    ctx.results.series["long_summary"] = {k: Stat.of(v).as_dict() for k, v in rounds.items()}
    for kind, key in (("JSONL", "summary_day_jsonl"), ("SQLite", "summary_day_sqlite")):
        _set(ctx, key, rounds[kind], f"{Stat.of(rounds[kind]).fmt(2)} ms")


# Start-up --------------------------------------------------------------------------


def _child_cpu(code: list[str]) -> float:
    """CPU seconds (user + system) a fresh interpreter spends running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(code, check=True, capture_output=True, timeout=120, env=_clean_env())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {
        "PYTHONPATH": str(ROOT)
    }


def run_startup(ctx: Context) -> None:
    """Import time beside ``import tenacity``, and the CLI's ``--help``."""
    py = sys.executable
    subjects = {
        "python -c pass": [py, "-c", "pass"],
        "import tenacity": [py, "-c", "import tenacity"],
        "import connector_resilience": [py, "-c", "import connector_resilience"],
        "from connector_resilience import resilient": [
            py,
            "-c",
            "from connector_resilience import resilient",
        ],
        "first Policy()": [py, "-c", "from connector_resilience import Policy; Policy()"],
        "connector-resilience --help": [py, "-m", "connector_resilience.cli", "--help"],
    }
    repeats = max(5, ctx.repeats * 2)
    rounds = interleaved(list(subjects), lambda name: _child_cpu(subjects[name]), repeats)
    base = rounds["python -c pass"]
    tenacity = [t - b for t, b in zip(rounds["import tenacity"], base, strict=True)]
    table = Table(
        key="startup",
        title="Start-up: CPU time of a fresh interpreter (ms)",
        columns=["command", "total (ms)", "minus a bare interpreter (ms)", "vs import tenacity"],
        note=(
            f"{repeats} interleaved rounds; user + system CPU of the child process. "
            "The ratio compares the import alone (minus `python -c pass` of the same round)."
        ),
    )
    for name, values in rounds.items():
        extra = [v - b for v, b in zip(values, base, strict=True)]
        ratio = Stat.of(e / t for e, t in zip(extra, tenacity, strict=True) if t > 0)
        table.rows.append(
            [
                name,
                Stat.of(values).fmt(1, 1000),
                Stat.of(extra).fmt(1, 1000),
                ratio.fmt(2) if name != "python -c pass" else "",
            ]
        )
    ctx.results.tables.append(table)
    ours = [v - b for v, b in zip(rounds["import connector_resilience"], base, strict=True)]
    _set(
        ctx,
        "import_tenacity",
        [o / t for o, t in zip(ours, tenacity, strict=True) if t > 0],
        f"{Stat.of(ours).fmt(1, 1000)} vs {Stat.of(tenacity).fmt(1, 1000)} ms",
    )
    cli = [v * 1000 for v in rounds["connector-resilience --help"]]
    _set(ctx, "cli_help_ms", cli, f"{Stat.of(cli).fmt(0)} ms of CPU, interpreter start included")


# A burst -----------------------------------------------------------------------------

_BURST_CHILD = textwrap.dedent(
    """
    import json, resource, sys, threading, time
    from connector_resilience import Policy, resilient, flush_metrics
    folder, seconds = sys.argv[1], float(sys.argv[2])
    policy = Policy(store={"metrics_path": folder + "/metrics.jsonl",
                           "circuit_state_path": folder + "/circuit_state.jsonl",
                           "token_path": folder + "/tokens.jsonl"})
    @resilient("burst", policy=policy)
    def call():
        return 1
    for _ in range(1000):
        call()
    flush_metrics()
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    base = rss()
    peak = [base]
    stop = threading.Event()
    def watch():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss())
    threading.Thread(target=watch, daemon=True).start()
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            call()
        n += 1000
    stop.set()
    peak[0] = max(peak[0], rss())
    from connector_resilience import summarize
    summary = summarize("burst", policy=policy, window_s=3600)
    print(json.dumps({"calls": n, "base": base, "peak": peak[0], "seconds": seconds,
                      "counted": summary.total_calls - 1000, "dropped": summary.dropped}))
    """
)


def run_burst(ctx: Context) -> None:
    """A 10 s burst at full speed: peak extra memory and the longest gap between writes."""
    seconds = 3.0 if ctx.quick else 10.0
    folder = ctx.scratch / "burst"
    folder.mkdir()
    fine = folder / "metrics.1s.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BURST_CHILD, str(folder), str(seconds)],
        stdout=subprocess.PIPE,
        env=_clean_env(),
        text=True,
    )
    changes: list[float] = []
    last = -1
    while proc.poll() is None:  # the parent watches the file the child writes
        size = fine.stat().st_size if fine.exists() else 0
        if size != last:
            changes.append(time.monotonic())
            last = size
        time.sleep(0.01)
    out, _ = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise RuntimeError("the burst child failed")
    result = json.loads(out)
    gaps = [b - a for a, b in itertools.pairwise(changes[1:])]
    longest = max(gaps, default=float("nan"))
    extra_mb = (result["peak"] - result["base"]) / 1e6
    rate = result["calls"] / result["seconds"]
    flush = Policy().store.flush_interval_s
    table = Table(
        key="burst",
        title=f"A {seconds:g} s burst at the highest rate one process reaches (default store)",
        columns=[
            "calls/s",
            "peak extra memory (MB)",
            "longest gap between writes (s)",
            "flush",
            "calls made",
            "calls counted",
            "dropped",
        ],
        note=(
            "A child process calls one decorated function in a loop with default settings; "
            "it samples its own RSS every 20 ms; the parent watches the fine-rows file "
            "grow every 10 ms (the first write, after warm-up, is not a gap). Calls counted "
            "is what summarize() reports for the burst afterwards."
        ),
    )
    table.rows.append(
        [
            f"{rate:,.0f}",
            f"{extra_mb:.1f}",
            f"{longest:.2f}",
            f"{flush:g} s",
            f"{result['calls']:,}",
            f"{result['counted']:,}",
            f"{result['dropped']:,}",
        ]
    )
    ctx.results.tables.append(table)
    _set(ctx, "burst_memory_mb", [extra_mb], f"{extra_mb:.1f} MB at {rate:,.0f} calls/s")
    _set(
        ctx,
        "burst_write_gap",
        [longest / flush],
        f"longest gap {longest:.2f} s = {longest / flush:.2f} flush intervals of {flush:g} s",
    )


# Percentiles ---------------------------------------------------------------------------


def run_percentiles(ctx: Context) -> None:
    """Relative error of p50/p95/p99 on the recorded mixed distribution."""
    values = recorded_latencies(200_000)
    store = open_store("memory://bench-percentiles")
    buffer = MetricsBuffer(store, flush_interval_s=3600, max_pending=10, pending_max=10**6)
    series = buffer.series("api", "get", None)
    series.pending.extend(v / 1000.0 for v in values)
    buffer.flush()
    summary = summarize("api", store=store, policy=Policy(store={"url": "memory://unused-p"}))
    exact = sorted(values)
    errors = {}
    table = Table(
        key="percentiles",
        title="Percentiles from aggregated rows vs exact, recorded mixed latency distribution",
        columns=["percentile", "exact (ms)", "from the histogram (ms)", "relative error"],
        note="200,000 durations: lognormal around 20 ms plus a 3% slow tail of 0.4-3 s.",
    )
    for q, got in ((50, summary.p50_ms), (95, summary.p95_ms), (99, summary.p99_ms)):
        want = percentile(exact, q)
        errors[q] = abs(got - want) / want
        table.rows.append([f"p{q}", f"{want:.3f}", f"{got:.3f}", f"{errors[q]:.4%}"])
    ctx.results.tables.append(table)
    worst = max(errors.values())
    _set(
        ctx,
        "percentile_error",
        [worst],
        ", ".join(f"p{q} {e:.3%}" for q, e in errors.items()),
    )


# Calls spread over many connectors -------------------------------------------------

#: How many connectors the calls of each subject are spread over, round-robin.
SPREADS = (1, 100, 10_000)


def run_spread(ctx: Context) -> None:
    """CPU per call when the calls are spread over many connectors: none pays for the others.

    Each subject calls its connectors in turn (a decorated function each, on
    memory://), pausing 1 ms every 1,000 calls as a service between requests
    does, so that each connector is called now and then, not flat out. CPU is
    the process's, the metrics writer's included.
    """
    from connector_resilience import flush_metrics, resilient

    policy = Policy(store={"url": "memory://bench-spread"})
    spreads = (*SPREADS[:2], 1000) if ctx.quick else SPREADS
    subjects: dict[str, list[Any]] = {}
    for n in spreads:
        fns = [resilient(f"spread-{n}-{i}", policy=policy)(lambda: 1) for i in range(n)]
        for fn in fns:
            fn()
        subjects[f"{n:,} connector(s)"] = fns
    flush_metrics()
    calls = 20_000 if ctx.quick else 100_000

    def measure(name: str) -> float:
        cycle = itertools.cycle(subjects[name])
        start = time.process_time()
        for done in range(calls):
            next(cycle)()
            if done % 1000 == 999:
                time.sleep(0.001)
        flush_metrics()
        return (time.process_time() - start) / calls * 1e6

    rounds = interleaved(list(subjects), measure, 3 if ctx.quick else 5)
    gc.unfreeze()
    one = rounds[f"{spreads[0]:,} connector(s)"]
    table = Table(
        key="spread",
        title="CPU per call, the calls spread over many connectors (us)",
        columns=["calls spread over", "CPU us per call", "ratio to one connector"],
        note=(
            f"{calls:,} calls per round, round-robin over the connectors, 1 ms pause "
            "every 1,000 calls; process CPU, the metrics writer included; "
            "interleaved rounds, medians (min..max)."
        ),
    )
    for name, values in rounds.items():
        ratio = [v / base for v, base in zip(values, one, strict=True)]
        table.rows.append([name, Stat.of(values).fmt(2), Stat.of(ratio).fmt(3)])
    ctx.results.tables.append(table)


# Memory per connector -----------------------------------------------------------------


def _bytes_per(make: Any, n: int = 2000) -> float:
    keep = [make(-1)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    keep.extend(make(i) for i in range(n))
    from connector_resilience import flush_metrics

    flush_metrics()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(d.size_diff for d in after.compare_to(before, "filename")) / n


def run_memory(ctx: Context) -> None:
    """Memory per connector: a decorated function called once, its breaker, engine, metrics."""
    from connector_resilience import resilient

    policy = Policy(store={"url": "memory://bench-memory", "flush_interval_s": 3600})

    def ours(i: int) -> Any:
        fn = resilient(f"conn-{i}", policy=policy)(lambda: 1)
        fn()
        return fn

    subjects: dict[str, Any] = {"@resilient, memory://": ours}
    try:
        pybreaker = need("pybreaker", "pybreaker")

        def peer(i: int) -> Any:
            breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
            fn = breaker(lambda: 1)
            fn()
            return fn

        subjects["pybreaker"] = peer
    except UnavailableError:
        pass
    figures = {name: _bytes_per(make) for name, make in subjects.items()}
    table = Table(
        key="memory",
        title="Memory per connector (bytes)",
        columns=["subject", "bytes per connector"],
        note=(
            "tracemalloc over 2,000 connectors, each a decorated function called once, "
            "metrics flushed: the function, its engine and breaker, and its share of the "
            "metrics aggregation (minute and hour rows still open)."
        ),
    )
    for name, value in figures.items():
        table.rows.append([name, f"{value:,.0f}"])
    ctx.results.tables.append(table)
    mine = figures["@resilient, memory://"]
    detail = f"{mine:,.0f} bytes"
    if "pybreaker" in figures:
        detail += f" (pybreaker: {figures['pybreaker']:,.0f})"
    _set(ctx, "memory_per_connector", [mine], detail)


_ = threading  # the burst child uses it; kept importable here for type checkers
