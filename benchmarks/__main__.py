"""``python -m benchmarks [--quick] [--only CASE[,CASE]] [--repeats N] [--out DIR]``."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import calls, fleet, http, scaling
from benchmarks._core import PEER_DISTS, Context, Results, dist_version, use_clock
from benchmarks._redis import our_backend_present, redis_server
from benchmarks.report import write_report
from benchmarks.targets import register_targets
from connector_resilience import testing

ROOT = Path(__file__).resolve().parents[1]

CASES: dict[str, Callable[[Context], None]] = {
    "success": calls.run_success,
    "fail-once": calls.run_fail_once,
    "rejection": calls.run_rejection,
    "summarize": scaling.run_summarize,
    "writes": scaling.run_writes,
    "concurrency": scaling.run_concurrency,
    "http": http.run_http,
    "storage": fleet.run_storage,
    "long-summary": fleet.run_long_summary,
    "startup": fleet.run_startup,
    "burst": fleet.run_burst,
    "percentiles": fleet.run_percentiles,
    "memory": fleet.run_memory,
    "spread": fleet.run_spread,
}
#: Cases that use a redis-server when one is installed.
_REDIS_CASES = {"success", "writes"}
#: Our settings a developer's shell may hold; the benchmark must not inherit them.
_OWN_PREFIXES = ("CONNECTOR_", "RETRY_", "CB_", "OAUTH", "CIRCUIT_")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="connector-resilience beside its peers; writes docs/benchmarks/.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CASE",
        help=f"run only these cases (repeatable or comma-separated): {', '.join(CASES)}",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds per measurement")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks", help="output folder"
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="in-process timings: this thread's CPU time (default; other processes on a "
        "shared machine do not count) or wall-clock time",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    chosen = [c.strip() for item in args.only for c in item.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    args.cases = chosen or list(CASES)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def _commit() -> str:
    """The measured checkout's commit, marked when it has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "connector_resilience"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted library changes" if dirty else "")


def _meta(args: argparse.Namespace) -> dict[str, object]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 0
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "load_before": load,
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "commit": _commit(),
        "quick": args.quick,
        "repeats": args.repeats,
        "clock": args.clock,
        "cases": args.cases,
        "versions": {d: dist_version(d) for d in ("connector-resilience", *PEER_DISTS)},
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # A terminated run still stops its redis-server and removes its scratch folder.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    for name in list(os.environ):
        if name.startswith(_OWN_PREFIXES):
            del os.environ[name]
    # Like an application with logging configured, minus the I/O: records that
    # pass the levels (stamina logs every retry at WARNING) are made, then dropped,
    # instead of going to stderr through logging's last-resort handler.
    logging.getLogger().addHandler(logging.NullHandler())
    use_clock(args.clock)
    results = Results()
    register_targets(results)
    results.meta = _meta(args)
    started = time.perf_counter()
    failed: list[str] = []
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cr-bench-")))
        ctx = Context(
            quick=args.quick,
            repeats=args.repeats,
            scratch=scratch,
            results=results,
            verbose=not args.quiet,
        )
        if _REDIS_CASES & set(args.cases):
            ctx.redis_url, ctx.redis_note = stack.enter_context(redis_server(scratch / "redis"))
            if not our_backend_present():
                ctx.redis_note += (
                    "; our redis:// store is not on this branch "
                    "(connector_resilience.backends.redis), so only the peers ran on Redis"
                )
            results.meta["redis"] = ctx.redis_note
        for name in args.cases:
            ctx.log(f"case {name} ...")
            t0 = time.perf_counter()
            try:
                CASES[name](ctx)
            except Exception:
                failed.append(name)
                results.notes.append(f"case {name} failed:\n\n```\n{traceback.format_exc()}```")
                traceback.print_exc()
            # Forget the case's stores, breakers and buffers: a memory:// store holds
            # every record, and the next case's garbage collections would walk them.
            testing.reset()
            gc.unfreeze()
            gc.collect()
            results.timings[name] = time.perf_counter() - t0
            ctx.log(f"case {name}: {results.timings[name]:.1f}s")
    results.meta["total_s"] = round(time.perf_counter() - started, 1)
    written = write_report(results, args.out, plots=not args.no_plots)
    for path in written:
        print(path)
    if failed:
        print(f"failed cases: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
