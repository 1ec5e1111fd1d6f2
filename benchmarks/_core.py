"""Shared machinery: interleaved rounds, statistics, optional peers, the results model."""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.metadata
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

#: A batch runner: make ``n`` calls; return (seconds for the calls, seconds
#: including the work they left behind, such as writing buffered metrics) on
#: the chosen clock, then the second figure again on the wall clock.
Timing = tuple[float, float, float]
Runner = Callable[[int], Timing]


class UnavailableError(Exception):
    """A subject that cannot run here; the message says why, for the table."""


# Statistics -----------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Median and min..max over rounds."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        data = [v for v in values if math.isfinite(v)]
        if not data:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(data), min(data), max(data), len(data))

    def fmt(self, digits: int = 2, scale: float = 1.0) -> str:
        if self.n == 0:
            return "n/a"
        m, lo, hi = self.median * scale, self.low * scale, self.high * scale
        return f"{_num(m, digits)} ({_num(lo, digits)}..{_num(hi, digits)})"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def _num(value: float, digits: int) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio_stat(numerators: Sequence[float], denominators: Sequence[float]) -> Stat:
    """Per-round ratios (rounds paired by index), summarised."""
    return Stat.of(a / b for a, b in zip(numerators, denominators, strict=False) if b > 0)


# Clocks ------------------------------------------------------------------------------

#: The clock the in-process benchmarks read: "cpu" is this process's CPU time
#: (every thread: our metrics writer aggregates in a background thread, and its
#: work counts), so other processes on a shared machine do not inflate a
#: figure; "wall" is time.perf_counter.
CLOCK: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
_clock_name = ["cpu"]


def use_clock(name: str) -> None:
    if name not in CLOCK:
        raise ValueError(name)
    _clock_name[0] = name


def clock() -> Callable[[], float]:
    return CLOCK[_clock_name[0]]


def clock_name() -> str:
    return _clock_name[0]


# Interleaved rounds ----------------------------------------------------------


def interleaved(
    names: Sequence[str], measure: Callable[[str], T], repeats: int
) -> dict[str, list[T]]:
    """``repeats`` rounds over ``names``, starting each round one place further on.

    Rotation keeps a subject from always running right after the same
    neighbour (cache and frequency effects), and a slow spell on the machine
    hits every subject of the round rather than one subject's whole series.
    Before every measurement, untimed, garbage is collected and the survivors
    frozen (``gc.freeze``); the caller unfreezes after the case.
    """
    out: dict[str, list[T]] = {name: [] for name in names}
    for round_no in range(repeats):
        shift = round_no % max(1, len(names))
        for name in [*names[shift:], *names[:shift]]:
            # Untimed: the previous subject's garbage is collected now, not on this
            # subject's time, and what survives is frozen so that the collections
            # inside the next batch walk only that batch's own objects.
            gc.collect()
            gc.freeze()
            out[name].append(measure(name))
    return out


def calibrate(runner: Runner, target_s: float, *, lo: int = 200, hi: int = 400_000) -> int:
    """A call count that makes one batch of ``runner`` last about ``target_s``."""
    n = 50
    elapsed = max(runner(n)[1:])
    while elapsed < 0.01 and n < hi:
        n *= 4
        elapsed = max(runner(n)[1:])
    per_call = elapsed / n
    return max(lo, min(hi, int(target_s / per_call) if per_call > 0 else hi))


def sync_runner(fn: Callable[[], object], after: Callable[[], object] | None = None) -> Runner:
    """Time ``n`` calls of ``fn``, then ``after`` (included in the second figure)."""
    perf, wall = clock(), time.perf_counter

    def run(n: int) -> Timing:
        calls = range(n)
        wall_start = wall()
        start = perf()
        for _ in calls:
            fn()
        mid = perf()
        if after is not None:
            after()
        end = perf()
        return mid - start, end - start, wall() - wall_start

    return run


def sync_catching_runner(
    fn: Callable[[], object], after: Callable[[], object] | None = None
) -> Runner:
    """Like :func:`sync_runner` for calls that raise (a rejection): each is caught."""
    perf, wall = clock(), time.perf_counter

    def run(n: int) -> Timing:
        calls = range(n)
        wall_start = wall()
        start = perf()
        for _ in calls:
            try:  # noqa: SIM105 - contextlib.suppress would add its own cost to each call
                fn()
            except Exception:
                pass
        mid = perf()
        if after is not None:
            after()
        end = perf()
        return mid - start, end - start, wall() - wall_start

    return run


def async_runner(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[[], Awaitable[object]],
    after: Callable[[], object] | None = None,
    *,
    catching: bool = False,
) -> Runner:
    """Time ``n`` awaited calls of ``fn`` inside ``loop`` (one coroutine, no switching)."""
    perf, wall = clock(), time.perf_counter

    async def body(n: int) -> Timing:
        calls = range(n)
        wall_start = wall()
        start = perf()
        if catching:
            for _ in calls:
                try:  # noqa: SIM105 - contextlib.suppress would add its own cost to each call
                    await fn()
                except Exception:
                    pass
        else:
            for _ in calls:
                await fn()
        mid = perf()
        if after is not None:
            after()
        end = perf()
        return mid - start, end - start, wall() - wall_start

    def run(n: int) -> Timing:
        return loop.run_until_complete(body(n))

    return run


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what peers left running in ``loop`` (background lanes, queues), then close it."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        # Bounded: a peer's background task may swallow the cancellation.
        loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


# Optional peers ----------------------------------------------------------------


def need(module: str, dist: str) -> Any:
    """Import an optional peer, or raise :class:`UnavailableError` saying why not."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise UnavailableError(
                f"not installed: {dist} (pip install -r benchmarks/requirements.txt)"
            ) from None
        raise UnavailableError(
            f"not installable: {dist} does not import on Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}: {exc}"
        ) from None
    except Exception as exc:
        raise UnavailableError(
            f"not installable: {dist} does not import on Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}: {type(exc).__name__}: {exc}"
        ) from None


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


PEER_DISTS = (
    "tenacity",
    "stamina",
    "backoff",
    "pybreaker",
    "circuitbreaker",
    "aiobreaker",
    "purgatory",
    "pyresilience",
    "interlock-cb",
    "aiohttp-retry",
    "aiohttp",
    "redis",
    "matplotlib",
)


# Results ---------------------------------------------------------------------------

Verdict = Literal["PASS", "MISS", "NOT RUN", "N/A"]


@dataclass
class Table:
    """A Markdown table with a title and a note under it."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


@dataclass
class Target:
    """One of issue 8's targets: a ratio from this run against a limit."""

    key: str
    text: str
    limit: float
    direction: Literal["<=", ">="]
    ratio: Stat | None = None
    detail: str = ""
    why_not: str = ""

    @property
    def verdict(self) -> Verdict:
        if self.ratio is None or self.ratio.n == 0:
            return "N/A" if self.why_not else "NOT RUN"
        ok = (
            self.ratio.median <= self.limit
            if self.direction == "<="
            else (self.ratio.median >= self.limit)
        )
        return "PASS" if ok else "MISS"

    def by_how_much(self) -> str:
        """How far from the limit the median is, as a factor."""
        if self.ratio is None or self.ratio.n == 0:
            return ""
        m = self.ratio.median
        if self.direction == "<=":
            factor = m / self.limit
            return f"{factor:.2f}x the limit" if factor > 1 else f"{1 / factor:.1f}x under"
        factor = m / self.limit
        return f"{factor:.2f}x the limit"


@dataclass
class Results:
    """Everything one run found."""

    meta: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    targets: dict[str, Target] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def target(self, key: str) -> Target:
        return self.targets[key]


@dataclass
class Context:
    """What every case gets: options, a scratch folder, the results, a logger."""

    quick: bool
    repeats: int
    scratch: Path
    results: Results
    verbose: bool = True
    redis_url: str | None = None
    redis_note: str = ""

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    @property
    def batch_s(self) -> float:
        """How long one timed batch should last."""
        return 0.03 if self.quick else 0.08
