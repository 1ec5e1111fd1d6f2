"""Cases ``success``, ``fail-once`` and ``rejection``: cost per call beside the peers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from benchmarks import subjects
from benchmarks._core import Context, Stat, Table, close_loop
from benchmarks._groups import Builder, Group, measure_group

MEMORY = "@resilient, memory://"
JSONL = "@resilient, default JSONL"
REDIS = "@resilient, redis://"


def _table(
    ctx: Context,
    key: str,
    title: str,
    group: Group,
    reference: str,
    *,
    note: str,
    all_label: str = "overhead per call, all-in (µs)",
) -> None:
    columns = [
        "subject",
        all_label,
        "calls alone (µs)",
        f"ratio to {reference} (all-in)",
        "all-in on the wall clock (µs)",
    ]
    table = Table(key=key, title=title, columns=columns, note=note)
    for name in [*group.order, *group.unavailable]:
        if name == group.baseline:
            raw = Stat.of(group.raw[name])
            table.rows.append([f"{name} (baseline)", f"cost itself: {raw.fmt(3)}", "", "", ""])
            continue
        if name in group.unavailable:
            table.rows.append([name, group.unavailable[name], "", "", ""])
            continue
        ratio = group.ratio(name, reference)
        table.rows.append(
            [
                name,
                group.stat(name).fmt(2),
                group.stat(name, hot=True).fmt(2),
                ratio.fmt(3) if ratio is not None else "n/a",
                group.stat(name, wall=True).fmt(2),
            ]
        )
    ctx.results.tables.append(table)
    ctx.results.series[key] = {
        name: {
            "all": group.stat(name).as_dict(),
            "hot": group.stat(name, hot=True).as_dict(),
            "wall": group.stat(name, wall=True).as_dict(),
        }
        for name in group.order
        if name != group.baseline
    }


def _set_target(
    ctx: Context,
    key: str,
    group: Group,
    ours: str,
    reference: str,
    *,
    wall: bool = False,
) -> None:
    """Set a target's ratio; ``wall`` for subjects that wait on a server (Redis)."""
    target = ctx.results.target(key)
    ratio = group.ratio(ours, reference, wall=wall)
    if ratio is None:
        missing = ours if not group.has(ours) else reference
        target.why_not = f"{missing}: {group.why_missing(missing)}"
        return
    target.ratio = ratio
    unit = "µs on the wall clock (waiting on Redis counts)" if wall else "µs"
    detail = (
        f"{group.stat(ours, wall=wall).fmt(2)} vs {group.stat(reference, wall=wall).fmt(2)} {unit}"
    )
    if not wall:
        hot = group.ratio(ours, reference, hot=True)
        if hot is not None:
            detail += f"; calls alone, without writing metrics: ratio {hot.fmt(3)}"
    target.detail = detail


_ALL_IN = (
    "All-in = the calls plus writing the metrics they buffered (flush_metrics() at the end "
    "of each batch, timed); peers record no metrics, so for them both columns are the same "
    "work. Overhead = cost per call minus the baseline of the same round. The wall-clock "
    "column also counts waiting (on Redis, on the disk) and whatever else the machine ran; "
    "the Redis targets use it, the others the CPU figures. "
)


def _groups(
    ctx: Context,
    label: str,
    make_sync: Callable[[Context], dict[str, Builder]],
    make_async: Callable[[Context, asyncio.AbstractEventLoop], dict[str, Builder]],
    baseline: str,
) -> tuple[Group, Group]:
    sync = measure_group(ctx, f"{label} sync", make_sync(ctx), baseline=baseline)
    loop = asyncio.new_event_loop()
    try:
        async_ = measure_group(ctx, f"{label} async", make_async(ctx, loop), baseline=baseline)
    finally:
        close_loop(loop)
    return sync, async_


def run_success(ctx: Context) -> None:
    """Success path: the wrapped function returns at once."""
    sync, async_ = _groups(
        ctx, "success", subjects.success_sync, subjects.success_async, "plain call"
    )
    tenacity = "tenacity @retry"
    for mode, group in (("sync", sync), ("async", async_)):
        _table(
            ctx,
            f"success_{mode}",
            f"Success path, {mode}: overhead per call",
            group,
            tenacity,
            note=_ALL_IN
            + "Our subjects are full @resilient: breaker + retry + a metric per attempt.",
        )
        _set_target(ctx, f"success_{mode}_tenacity", group, MEMORY, tenacity)
        _set_target(
            ctx, f"success_{mode}_pyresilience", group, MEMORY, "pyresilience retry + breaker"
        )
        _set_target(ctx, f"jsonl_{mode}_tenacity", group, JSONL, tenacity)
        _set_target(
            ctx, f"success_{mode}_jsonl_pyresilience", group, JSONL, "pyresilience retry + breaker"
        )
        _set_target(ctx, f"success_{mode}_circuitbreaker", group, MEMORY, "circuitbreaker")
        _set_target(
            ctx, f"redis_{mode}_interlock", group, REDIS, "interlock-cb + RedisStorage", wall=True
        )
    _set_target(
        ctx, "redis_sync_pybreaker", sync, REDIS, "pybreaker + CircuitRedisStorage", wall=True
    )


def run_fail_once(ctx: Context) -> None:
    """Every call fails once and succeeds on the retry, with waits configured to zero."""
    baseline = "plain call + one retry by hand"
    sync, async_ = _groups(
        ctx, "fail-once", subjects.fail_once_sync, subjects.fail_once_async, baseline
    )
    tenacity = "tenacity, wait_none()"
    ours = "@resilient, memory://, base_ms=0"
    for mode, group in (("sync", sync), ("async", async_)):
        _table(
            ctx,
            f"fail_once_{mode}",
            f"Fail once, then succeed, zero wait, {mode}: overhead per logical call",
            group,
            tenacity,
            note=_ALL_IN
            + "Each logical call is two attempts; ours writes two metrics. Zero wait is each "
            "library's own setting (ours: a Policy with retry base_ms=0), not a test helper.",
        )
        _set_target(ctx, f"fail_once_{mode}_tenacity", group, ours, tenacity)


def run_rejection(ctx: Context) -> None:
    """The breaker is open: the cost of refusing a call."""
    baseline = "plain call in try/except"
    sync, async_ = _groups(
        ctx, "rejection", subjects.rejection_sync, subjects.rejection_async, baseline
    )
    for mode, group in (("sync", sync), ("async", async_)):
        _table(
            ctx,
            f"rejection_{mode}",
            f"Open-circuit rejection, {mode}: cost per refused call",
            group,
            "circuitbreaker",
            note=_ALL_IN
            + "Cost = a refused call, its exception raised and caught, minus a plain call in "
            "the same try/except. Ours also records the rejection as a metric (the all-in "
            "column writes it).",
            all_label="cost per refused call, all-in (µs)",
        )
        _set_target(ctx, f"rejection_{mode}_circuitbreaker", group, MEMORY, "circuitbreaker")
