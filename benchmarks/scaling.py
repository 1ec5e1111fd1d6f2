"""Cases ``summarize``, ``writes`` and ``concurrency``: how costs grow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks import subjects
from benchmarks._core import (
    Context,
    Stat,
    Table,
    UnavailableError,
    clock,
    close_loop,
    interleaved,
    ratio_stat,
)
from benchmarks._redis import redis_store_url
from connector_resilience import Policy, flush_metrics, resilient, summarize
from connector_resilience.backends import CallRecord, open_store

# summarize() as history grows ----------------------------------------------------------

#: Records inside the queried hour; the older history is at the same rate, so
#: a longer history reaches further back in time, as it does in production.
WINDOW_RECORDS = 2_000
_RATE_PER_S = WINDOW_RECORDS / 3600.0
_LINE = (
    b'{"ts":%r,"connector":"api","operation":"get","duration_ms":%r,"status":"%s",'
    b'"error":%s,"attempt":1,"final":true}\n'
)


def _history(older: int, now: float) -> list[tuple[float, float, bool]]:
    """(ts, duration_ms, failed) for ``older`` records before the hour, then the hour's."""
    step = 1.0 / _RATE_PER_S
    start = now - 3600.0
    # Half a step inside either edge, so rounding never moves a record across one.
    stamps = [start - (older - i - 0.5) * step for i in range(older)]
    stamps += [start + (j + 0.5) * step for j in range(WINDOW_RECORDS)]
    return [(round(ts, 6), float(5 + (i * 37) % 200), i % 20 == 0) for i, ts in enumerate(stamps)]


def _jsonl_lines(rows: list[tuple[float, float, bool]]) -> bytes:
    ok, err = (b"ok", b"null"), (b"error", b'"ConnectionError"')
    return b"".join(_LINE % ((ts, ms, *(err if failed else ok))) for ts, ms, failed in rows)


def _check_line_format() -> None:
    """The generated lines must read back as the records the store itself would write."""
    line = _jsonl_lines([(1700000000.123456, 12.0, True)])
    record = CallRecord.from_json(json.loads(line))
    expected = CallRecord(
        ts=1700000000.123456,
        connector="api",
        operation="get",
        duration_ms=12.0,
        status="error",
        error="ConnectionError",
    )
    if record != expected:
        raise RuntimeError(f"generated JSONL line reads back as {record}")


def _fill_sqlite(path: Path, rows: list[tuple[float, float, bool]]) -> None:
    store = open_store(f"sqlite:///{path}")
    store.connectors()  # creates the schema
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO metrics (ts, connector, operation, duration_ms, status, error, "
            "attempt, final, labels) VALUES (?, 'api', 'get', ?, ?, ?, 1, 1, NULL)",
            (
                (ts, ms, "error" if failed else "ok", "ConnectionError" if failed else None)
                for ts, ms, failed in rows
            ),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def run_summarize(ctx: Context) -> None:
    """summarize(window_s=3600) with 10k, 100k, 1M older records on JSONL and SQLite."""
    _check_line_format()
    sizes = [10_000, 100_000] if ctx.quick else [10_000, 100_000, 1_000_000]
    now = time.time()
    stores: dict[str, Any] = {}
    for size in sizes:
        rows = _history(size, now)
        t0 = time.perf_counter()
        folder = ctx.scratch / f"history-{size}"
        folder.mkdir()
        (folder / "metrics.jsonl").write_bytes(_jsonl_lines(rows))
        stores[f"JSONL|{size}"] = open_store(f"jsonl://{folder}")
        _fill_sqlite(ctx.scratch / f"history-{size}.db", rows)
        stores[f"SQLite|{size}"] = open_store(f"sqlite:///{ctx.scratch / f'history-{size}.db'}")
        ctx.log(f"summarize: {size:,} older records written in {time.perf_counter() - t0:.1f}s")
    per_round = 5
    tick = clock()

    def measure(name: str) -> float:
        store = stores[name]
        t0 = tick()
        for _ in range(per_round):
            summary = summarize("api", window_s=3600, store=store, now=now)
        elapsed = (tick() - t0) / per_round * 1000
        if summary.attempts != WINDOW_RECORDS:
            raise RuntimeError(
                f"{name}: {summary.attempts} records in the hour, not {WINDOW_RECORDS}"
            )
        return elapsed

    names = list(stores)
    for name in names:
        measure(name)  # warm the page cache and the connection
    rounds = interleaved(names, measure, ctx.repeats)
    table = Table(
        key="summarize",
        title="summarize() of the last hour as older history grows",
        columns=["older records", "JSONL (ms)", "SQLite (ms)", "JSONL vs 10k", "SQLite vs 10k"],
        note=(
            f"The hour holds {WINDOW_RECORDS:,} records; older records are at the same rate "
            "(a longer history reaches further back). Each figure is the mean of "
            f"{per_round} calls per round; the ratio is per round against the 10k store."
        ),
    )
    series: dict[str, dict[str, Any]] = {"JSONL": {}, "SQLite": {}}
    for size in sizes:
        row = [f"{size:,}"]
        ratios = []
        for kind in ("JSONL", "SQLite"):
            values = rounds[f"{kind}|{size}"]
            row.append(Stat.of(values).fmt(2))
            ratios.append(ratio_stat(values, rounds[f"{kind}|{sizes[0]}"]).fmt(2))
            series[kind][str(size)] = Stat.of(values).as_dict()
        table.rows.append(row + ratios)
    ctx.results.tables.append(table)
    ctx.results.series["summarize"] = series
    for kind, key in (("JSONL", "summarize_jsonl"), ("SQLite", "summarize_sqlite")):
        target = ctx.results.target(key)
        if 1_000_000 not in sizes:
            target.why_not = "quick run: the largest history is 100k"
            continue
        big, small = rounds[f"{kind}|1000000"], rounds[f"{kind}|10000"]
        target.ratio = ratio_stat(big, small)
        target.detail = f"{Stat.of(big).fmt(2)} ms vs {Stat.of(small).fmt(2)} ms"


# Write throughput with concurrent processes -----------------------------------------------


def _writer(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: write metrics to a store when told, report how many."""
    policy = Policy(store={"flush_interval_s": 3600.0})
    opened: dict[str, Any] = {}
    while True:
        command = conn.recv()
        if command[0] == "stop":
            return
        _, url, mode, start_at, duration = command
        try:
            conn.send(_write_for(opened, policy, url, mode, start_at, duration))
        except Exception as exc:
            conn.send(f"{type(exc).__name__}: {exc}")


def _write_for(
    opened: dict[str, Any], policy: Policy, url: str, mode: str, start_at: float, duration: float
) -> int:
    from connector_resilience.metrics import record_call

    store = opened.get(url)
    if store is None:
        store = opened[url] = open_store(url)
    count = 0
    time.sleep(max(0.0, start_at - time.time()))
    end = start_at + duration
    if mode == "batch":
        batch = [
            CallRecord(
                ts=time.time(), connector="api", operation="get", duration_ms=5.0, status="ok"
            )
            for _ in range(100)
        ]
        while time.time() < end:
            store.append_calls(batch)
            count += len(batch)
    else:
        while time.time() < end:
            record_call("api", "get", 5.0, "ok", store=store, policy=policy)
            count += 1
    return count


MODES = {
    "batch": "append_calls(100 records)",
    "record_call": "record_call() (1 record, written before it returns)",
}


def run_writes(ctx: Context) -> None:
    """Records/s written by 1, 2, 4, 8 processes sharing one store."""
    counts = [1, 4] if ctx.quick else [1, 2, 4, 8]
    duration = 0.4 if ctx.quick else 0.6
    rounds_n = 1 if ctx.quick else min(ctx.repeats, 3)
    urls = {
        "JSONL": f"jsonl://{ctx.scratch / 'writes-jsonl'}",
        "SQLite": f"sqlite:///{ctx.scratch / 'writes.db'}",
    }
    skipped: list[str] = []
    try:
        urls["Redis"] = redis_store_url(ctx, "writes")
    except UnavailableError as exc:
        skipped.append(f"Redis: {exc}")
    for url in urls.values():
        # Created here first, as a deployed store would already exist: the case
        # measures writing, not several processes racing to create the schema.
        open_store(url).connectors()
    mp = multiprocessing.get_context("spawn")
    workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
    try:
        for _ in range(max(counts)):
            parent, child = mp.Pipe()
            proc = mp.Process(target=_writer, args=(child,), daemon=True)
            proc.start()
            workers.append((proc, parent))
        # Open every store in every worker before timing anything.
        for url in urls.values():
            _dispatch(workers, len(workers), url, "batch", 0.01)

        def measure(name: str) -> float:
            store, mode, n = name.split("|")
            return _dispatch(workers, int(n), urls[store], mode, duration) / duration

        names = [f"{s}|{m}|{n}" for s in urls for m in MODES for n in counts]
        rounds = interleaved(names, measure, rounds_n)
    finally:
        for proc, parent in workers:
            with contextlib.suppress(OSError):
                parent.send(("stop",))
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    table = Table(
        key="writes",
        title="Metric write throughput with concurrent processes (records/s, all processes)",
        columns=["store", "how", *[f"{n} proc" for n in counts]],
        note=(
            f"Each process writes for {duration:g} s, all starting together; "
            f"{rounds_n} round(s), median (min..max). The machine has "
            f"{ctx.results.meta.get('usable_cores')} usable cores, so past that the processes "
            "share CPUs. " + " ".join(skipped)
        ),
    )
    series: dict[str, dict[str, Any]] = {}
    for store in urls:
        for mode, how in MODES.items():
            row = [store, how]
            points: dict[str, Any] = {}
            for n in counts:
                stat = Stat.of(rounds[f"{store}|{mode}|{n}"])
                row.append(stat.fmt(0))
                points[str(n)] = stat.as_dict()
            table.rows.append(row)
            series[f"{store}, {'batch of 100' if mode == 'batch' else 'record_call'}"] = points
    ctx.results.tables.append(table)
    ctx.results.series["writes"] = series


def _dispatch(
    workers: list[tuple[Any, multiprocessing.connection.Connection]],
    n: int,
    url: str,
    mode: str,
    duration: float,
) -> int:
    start_at = time.time() + 0.15
    for _, conn in workers[:n]:
        conn.send(("run", url, mode, start_at, duration))
    total = 0
    for _, conn in workers[:n]:
        if not conn.poll(60):
            raise RuntimeError("a writer process did not answer")
        answer = conn.recv()
        if isinstance(answer, str):
            raise RuntimeError(f"a writer process failed: {answer}")
        total += int(answer)
    return total


# Async overhead as concurrent tasks grow -----------------------------------------------


async def _work() -> int:
    await asyncio.sleep(0)  # a real suspension, so the tasks interleave
    return 1


def run_concurrency(ctx: Context) -> None:
    """Overhead per call with 1, 100 and 1,000 tasks calling at once."""
    tasks_list = [1, 100, 1000]
    total = 5_000 if ctx.quick else 12_000
    tick = clock()
    loop = asyncio.new_event_loop()
    try:
        makers: dict[str, Callable[[], Callable[[], Awaitable[int]]]] = {
            "plain call": lambda: _work,
            "@resilient, memory://": lambda: resilient(
                "bench", policy=subjects.our_policy(ctx, "memory")
            )(_work),
            "@resilient, default JSONL": lambda: resilient(
                "bench", policy=subjects.our_policy(ctx, "jsonl")
            )(_work),
            "tenacity @retry": lambda: subjects.tenacity_retry()(_work),
            "pyresilience retry + breaker": lambda: subjects.pyresilience_deco()(_work),
        }
        fns: dict[str, Callable[[], Awaitable[int]]] = {}
        missing: dict[str, str] = {}
        for name, make in makers.items():
            try:
                fns[name] = make()
            except UnavailableError as exc:
                missing[name] = str(exc)

        def measure(name: str) -> float:
            subject, tasks = name.split("|")
            fn = fns[subject]
            per = total // int(tasks)

            async def worker() -> None:
                for _ in range(per):
                    await fn()

            async def batch() -> float:
                t0 = tick()
                await asyncio.gather(*(worker() for _ in range(int(tasks))))
                flush_metrics()
                return (tick() - t0) / (per * int(tasks)) * 1e6

            return loop.run_until_complete(batch())

        names = [f"{s}|{t}" for t in tasks_list for s in fns]
        for name in names:
            measure(name)  # warm-up
        rounds = interleaved(names, measure, ctx.repeats)
    finally:
        close_loop(loop)
    table = Table(
        key="concurrency",
        title="Async overhead per call as concurrent tasks grow (µs per call)",
        columns=[
            "subject",
            *[f"{t} task(s)" for t in tasks_list],
            "ratio to tenacity, 1,000 tasks",
        ],
        note=(
            f"{total:,} calls per round shared by the tasks; the function awaits "
            "asyncio.sleep(0) so the tasks interleave. Overhead = cost per call minus the "
            "plain call's in the same round; ours includes writing its metrics."
        ),
    )
    series: dict[str, dict[str, Any]] = {}
    subjects_run = [s for s in fns if s != "plain call"]
    overhead = {
        f"{s}|{t}": [
            a - b for a, b in zip(rounds[f"{s}|{t}"], rounds[f"plain call|{t}"], strict=True)
        ]
        for s in subjects_run
        for t in tasks_list
    }
    reference = f"tenacity @retry|{tasks_list[-1]}"
    for subject in subjects_run:
        row = [subject]
        points: dict[str, Any] = {}
        for tasks in tasks_list:
            stat = Stat.of(overhead[f"{subject}|{tasks}"])
            row.append(stat.fmt(2))
            points[str(tasks)] = stat.as_dict()
        mine = overhead[f"{subject}|{tasks_list[-1]}"]
        row.append(ratio_stat(mine, overhead[reference]).fmt(3) if reference in overhead else "n/a")
        table.rows.append(row)
        series[subject] = points
    for name, why in missing.items():
        table.rows.append([name, why])
    ctx.results.tables.append(table)
    ctx.results.series["concurrency"] = series
