"""A fleet calling a flapping dependency through one shared breaker: how many calls hit it failing.

``python -m benchmarks.flapping [--out DIR] [--seconds 600] [--processes 10] [--rate 20]``

The dependency (simulated, deterministic) is healthy for a minute; then down
for 150 s, with 2 s flickers every 25 s in which it serves a fifth of the
fleet's load; then flaky for two minutes, failing 70% of calls at random; then
recovering slowly for two minutes, its capacity growing from a tenth of the
load to all of it; then healthy. A call over the capacity of the current second
fails, as an overloaded service fails: after a timeout of one second, while a
served call takes 50 ms.

Every process of the fleet is a real :class:`CircuitBreaker` sharing one
``memory://`` store, each with its own cache and random source, calling at a
steady rate; time is the test kit's ``FakeClock``, so a ten-minute run takes
seconds and gives the same figures every time. Each configuration of the
breaker runs the same schedule; the figure that matters is the number of calls
that reached the dependency while it could not serve them (failed calls), and
beside it the calls it did serve.

Prints the table (docs/breaker.md quotes it) and writes ``flapping.json`` and
``flapping.png`` (calls reaching the dependency per second, today's breaker
against all the recovery options) into ``--out`` (docs/benchmarks by default).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from connector_resilience import testing
from connector_resilience.circuit import CircuitBreaker, StateChange
from connector_resilience.errors import CircuitOpenError
from connector_resilience.policy import Policy

ROOT = Path(__file__).resolve().parents[1]

#: The breaker of every configuration starts from these (the rest are defaults).
BASE_CIRCUIT: dict[str, Any] = {
    "failures_to_open": 5,
    "cooldown_s": 5.0,
    "half_open_prob": 0.2,
    "half_open_max_probes": 1,
}

#: (name, circuit settings on top of BASE_CIRCUIT).
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("today (1 probe closes, fixed open time)", {}),
    ("CB_HALF_OPEN_SUCCESSES=5", {"half_open_successes": 5}),
    ("CB_COOLDOWN_MULTIPLIER=2, MAX 60 s", {"cooldown_multiplier": 2.0, "cooldown_max_s": 60.0}),
    ("CB_SLOW_START_S=30", {"slow_start_s": 30.0}),
    (
        "all three",
        {
            "half_open_successes": 5,
            "cooldown_multiplier": 2.0,
            "cooldown_max_s": 60.0,
            "slow_start_s": 30.0,
        },
    ),
]

#: How long a served call takes, and a failed one (an overloaded service times out).
SERVED_S = 0.05
FAILED_S = 1.0

_runs = itertools.count()


@dataclass(frozen=True)
class Schedule:
    """What the dependency can serve, second by second.

    Attributes:
        load: calls per second the whole fleet offers.
        healthy_until: the trouble starts here.
        down_s: first it is down this long ...
        flicker_every_s: ... coming back for a moment this often ...
        flicker_s: ... for this long ...
        flicker_share: ... serving this share of the load;
        flaky_s: then for this long it fails ``flaky_share`` of the calls at random;
        recovery_s: then its capacity grows from ``recovery_floor`` of the load
            to all of it over this long;
        recovery_floor: the share of the load it serves as it starts to recover.
    """

    load: float
    healthy_until: float = 60.0
    down_s: float = 150.0
    flicker_every_s: float = 25.0
    flicker_s: float = 2.0
    flicker_share: float = 0.2
    flaky_s: float = 120.0
    flaky_share: float = 0.7
    recovery_s: float = 120.0
    recovery_floor: float = 0.1

    def capacity(self, t: float) -> float:
        """Calls the dependency can serve in the second that starts at ``t``."""
        into = t - self.healthy_until
        if into < 0:
            return math.inf
        if into < self.down_s:
            flickering = into % self.flicker_every_s >= self.flicker_every_s - self.flicker_s
            return self.flicker_share * self.load if flickering else 0.0
        into -= self.down_s + self.flaky_s
        if 0 <= into < self.recovery_s:
            share = self.recovery_floor + (1 - self.recovery_floor) * into / self.recovery_s
            return share * self.load
        return math.inf

    def failing_share(self, t: float) -> float:
        """The share of calls that fail at random at ``t``, whatever the load."""
        into = t - self.healthy_until - self.down_s
        return self.flaky_share if 0 <= into < self.flaky_s else 0.0


@dataclass
class Tally:
    """What happened to the fleet's calls in one run."""

    name: str
    offered: int = 0
    refused: int = 0
    served: int = 0
    failed: int = 0
    opens: int = 0
    per_second: list[int] = field(default_factory=list)  # calls reaching the dependency

    @property
    def reached(self) -> int:
        """Calls that reached the dependency."""
        return self.served + self.failed


def simulate(
    name: str,
    circuit: dict[str, Any],
    *,
    seconds: float = 600.0,
    processes: int = 10,
    rate: float = 20.0,
    seed: int = 1,
    schedule: Schedule | None = None,
) -> Tally:
    """Run the fleet against ``schedule`` (the default one for its load) with these settings."""
    schedule = schedule or Schedule(load=processes * rate)
    tally = Tally(name=name, per_second=[0] * math.ceil(seconds))
    step = 1.0 / rate
    with testing.FakeClock(start=1_000_000.0) as clock:
        policy = Policy(
            store={"url": f"memory://flapping-{next(_runs)}"},
            circuit={**BASE_CIRCUIT, **circuit},
        )
        breakers = [
            CircuitBreaker("dependency", policy=policy, rng=random.Random(seed * 1000 + i))
            for i in range(processes)
        ]

        def count_opens(change: StateChange) -> None:
            if change.new == "open" and change.old != "open":
                tally.opens += 1

        breakers[0].add_listener(count_opens)  # one process's view: one count per open
        # Each process calls every `step` seconds, its own phase within the step;
        # a call reports when it ends: served calls after SERVED_S, failed ones
        # after FAILED_S (an overloaded service times out).
        phases = [step * i / processes for i in range(processes)]
        pending: list[tuple[float, int, int, str | None, bool]] = []
        order = itertools.count()
        served_in: dict[int, int] = {}
        luck = random.Random(seed)
        t = 0.0
        for tick in range(int(seconds * rate)):
            for i, breaker in enumerate(breakers):
                now = tick * step + phases[i]
                while pending and pending[0][0] <= now:
                    ends, _, who, probe, ok = heapq.heappop(pending)
                    clock.advance(max(0.0, ends - t))
                    t = max(t, ends)
                    if ok:
                        breakers[who].report(probe, "success")
                    else:
                        breakers[who].report(probe, "failure", error="TimeoutError")
                clock.advance(max(0.0, now - t))
                t = max(t, now)
                second = int(t)
                tally.offered += 1
                try:
                    probe = breaker.acquire()
                except CircuitOpenError:
                    tally.refused += 1
                    continue
                tally.per_second[second] += 1
                ok = served_in.get(second, 0) < schedule.capacity(second) and (
                    luck.random() >= schedule.failing_share(t)
                )
                if ok:
                    served_in[second] = served_in.get(second, 0) + 1
                    tally.served += 1
                else:
                    tally.failed += 1
                latency = SERVED_S if ok else FAILED_S
                heapq.heappush(pending, (t + latency, next(order), i, probe, ok))
    testing.reset()
    return tally


def run_all(*, seconds: float, processes: int, rate: float) -> list[Tally]:
    """Every configuration of :data:`CONFIGS` on the same schedule."""
    return [
        simulate(name, circuit, seconds=seconds, processes=processes, rate=rate)
        for name, circuit in CONFIGS
    ]


def tallies_from_json(data: list[dict[str, Any]]) -> list[Tally]:
    """Tallies back from ``flapping.json``."""
    return [Tally(**{k: v for k, v in row.items() if k != "reached"}) for row in data]


def table(tallies: Sequence[Tally]) -> str:
    """The results as a markdown table, failed calls relative to today's breaker."""
    base = tallies[0].failed or 1
    lines = [
        "| breaker | calls reaching the dependency while it fails | vs today "
        "| calls served | refused by the breaker | opens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {t.name} | {t.failed:,} | {t.failed / base:.0%} | {t.served:,} "
        f"| {t.refused:,} | {t.opens} |"
        for t in tallies
    )
    return "\n".join(lines)


def plot(tallies: Sequence[Tally], schedule: Schedule, path: Path) -> None:
    """Calls per second reaching the dependency, today against all three options."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = range(len(tallies[0].per_second))
    capacity = [
        min(schedule.capacity(s), schedule.load) * (1 - schedule.failing_share(s)) for s in seconds
    ]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, sharey=True)
    for ax, tally in zip(axes, (tallies[0], tallies[-1]), strict=True):
        ax.fill_between(seconds, capacity, step="post", alpha=0.25, label="what it can serve")
        ax.step(seconds, tally.per_second, where="post", linewidth=0.8, label="calls reaching it")
        ax.set_title(f"{tally.name}: {tally.failed:,} calls reached it failing", fontsize=10)
        ax.set_ylabel("calls / s")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds (simulated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the simulation and write its table, data and figure."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flapping")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="calls per second per process")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    tallies = run_all(seconds=args.seconds, processes=args.processes, rate=args.rate)
    text = table(tallies)
    args.out.mkdir(parents=True, exist_ok=True)
    data = [{**asdict(t), "reached": t.reached} for t in tallies]
    (args.out / "flapping.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if not args.no_plot:
        plot(tallies, Schedule(load=args.processes * args.rate), args.out / "flapping.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
