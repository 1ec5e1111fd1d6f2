"""Measure a group of subjects against a baseline, in interleaved rounds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks._core import (
    Context,
    Runner,
    Stat,
    UnavailableError,
    calibrate,
    interleaved,
    ratio_stat,
)

Builder = Callable[[], Runner]


@dataclass
class Group:
    """Per-round figures for every subject of a group, in microseconds per call."""

    baseline: str
    order: list[str] = field(default_factory=list)
    #: cost per call including the deferred work (metrics written), minus the baseline
    overhead: dict[str, list[float]] = field(default_factory=dict)
    #: cost per call of the calls alone, minus the baseline
    hot: dict[str, list[float]] = field(default_factory=dict)
    #: raw cost per call, deferred work included
    raw: dict[str, list[float]] = field(default_factory=dict)
    #: like ``overhead`` on the wall clock (waiting on a server counts)
    wall: dict[str, list[float]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.overhead and bool(self.overhead[name])

    def _source(self, hot: bool, wall: bool) -> dict[str, list[float]]:
        return self.wall if wall else self.hot if hot else self.overhead

    def stat(self, name: str, *, hot: bool = False, wall: bool = False) -> Stat:
        return Stat.of(self._source(hot, wall).get(name, []))

    def ratio(
        self, name: str, reference: str, *, hot: bool = False, wall: bool = False
    ) -> Stat | None:
        """Per-round ratio of two subjects' overheads (paired by round)."""
        if not (self.has(name) and self.has(reference)):
            return None
        source = self._source(hot, wall)
        return ratio_stat(source[name], source[reference])

    def why_missing(self, name: str) -> str:
        return self.unavailable.get(name, "not measured")


def measure_group(
    ctx: Context, label: str, builders: dict[str, Builder], *, baseline: str
) -> Group:
    """Build every subject, warm it up, size its batch, then time it in interleaved rounds."""
    group = Group(baseline=baseline)
    runners: dict[str, Runner] = {}
    sizes: dict[str, int] = {}
    for name, build in builders.items():
        try:
            runner = build()
            # Warm up before sizing: a first batch that creates files (the JSONL
            # store's) would make a subject look slow and get batches of a few
            # hundred calls, each then paying a whole flush.
            runner(50)
            sizes[name] = calibrate(runner, ctx.batch_s)
            runner(max(50, sizes[name] // 10))  # warm-up at the measured size
        except UnavailableError as exc:
            group.unavailable[name] = str(exc)
            continue
        except Exception as exc:  # a peer that breaks is reported, not fatal
            group.unavailable[name] = f"failed: {type(exc).__name__}: {exc}"
            ctx.log(f"{label}: {name} failed: {exc!r}")
            continue
        runners[name] = runner
    if baseline not in runners:
        raise RuntimeError(f"{label}: the baseline {baseline!r} did not run")
    names = list(runners)
    group.order = names
    group.calls = sizes
    ctx.log(f"{label}: {len(names)} subjects x {ctx.repeats} rounds")

    def one(name: str) -> tuple[float, float, float]:
        n = sizes[name]
        loop_s, total_s, wall_s = runners[name](n)
        return loop_s / n * 1e6, total_s / n * 1e6, wall_s / n * 1e6

    rounds = interleaved(names, one, ctx.repeats)
    base = [loop for loop, _, _ in rounds[baseline]]
    base_wall = [wall for _, _, wall in rounds[baseline]]
    for name in names:
        r = rounds[name]
        group.raw[name] = [total for _, total, _ in r]
        group.overhead[name] = [total - b for (_, total, _), b in zip(r, base, strict=True)]
        group.hot[name] = [loop - b for (loop, _, _), b in zip(r, base, strict=True)]
        group.wall[name] = [w - b for (_, _, w), b in zip(r, base_wall, strict=True)]
    return group
