"""``connector-resilience compact`` and ``export``: store maintenance."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TextIO

from connector_resilience.backends import CallRecord
from connector_resilience.cli._common import (
    CliError,
    Context,
    Progress,
    open_context,
    print_json,
    table,
)

__all__ = ["CSV_COLUMNS", "read_in_slices", "run_compact", "run_export"]

#: Columns of ``export --format csv``; ``labels`` is a JSON object (or empty).
CSV_COLUMNS = (
    "ts",
    "time",
    "connector",
    "operation",
    "status",
    "duration_ms",
    "error",
    "attempt",
    "final",
    "labels",
)

#: An export reads the window this many seconds at a time, so that memory stays
#: bounded and progress can be shown on long windows.
SLICE_S = 3600.0


def run_compact(args: argparse.Namespace, *, out: TextIO) -> int:
    """Drop metrics past the retention and superseded state; print what was kept."""
    ctx = open_context(args)
    retention: float = args.retention or ctx.policy.store.metrics_retention_s
    progress = Progress("compacting", mode=args.progress, out=sys.stderr)
    with progress.heartbeat(f"{ctx.store_name}, keeping {retention:g}s of metrics"):
        counts = ctx.store.compact(metrics_retention_s=retention)
    progress.done(f"{counts.get('metrics_kept', 0)} metrics kept")
    if ctx.json:
        print_json({"store": ctx.store_name, "retention_s": retention, **counts}, out=out)
        return 0
    out.write(f"compacted {ctx.store_name} (metrics older than {retention:g}s dropped)\n\n")
    out.write(table(["WHAT", "COUNT"], [[k, str(v)] for k, v in counts.items()], right=("COUNT",)))
    return 0


def read_in_slices(ctx: Context, *, connector: str | None) -> Iterator[tuple[float, CallRecord]]:
    """The window's records, oldest first, with the share of the window read so far."""
    end = ctx.store.now() + 1e-6
    start = end - ctx.window_s
    slices = max(1, math.ceil(ctx.window_s / SLICE_S))
    for i in range(slices):
        since = start + i * ctx.window_s / slices
        until = end if i == slices - 1 else start + (i + 1) * ctx.window_s / slices
        records = ctx.store.read_calls(since=since, until=until, connector=connector)
        records.sort(key=lambda r: r.ts)
        done = (i + 1) / slices
        for record in records:
            yield done, record


def run_export(args: argparse.Namespace, *, out: TextIO) -> int:
    """Write the window's metrics as JSONL or CSV to ``--output`` or stdout."""
    ctx = open_context(args)
    connector: str | None = args.connector
    if connector is not None:
        ctx.known_connector(connector)
    output: str | None = args.output
    progress = Progress("exporting", mode=args.progress, out=sys.stderr)
    progress.update(f"reading {ctx.window_s:g}s of metrics from {ctx.store_name}")
    if output is None or output == "-":
        count = _write(ctx, args.format, connector, out, progress)
    else:
        count = _write_file(ctx, args.format, connector, Path(output), progress)
    progress.done(f"{count} records")
    if output not in (None, "-"):
        # stdout stays clean when it is the export itself; a summary otherwise.
        out.write(f"exported {count} records ({args.format}) to {output}\n")
    return 0


def _write_file(
    ctx: Context, fmt: str, connector: str | None, path: Path, progress: Progress
) -> int:
    """Write to a temporary file beside ``path``, renamed over it only when complete."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8", newline="") as handle:
            count = _write(ctx, fmt, connector, handle, progress)
        os.replace(temp, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return count


def _write(
    ctx: Context, fmt: str, connector: str | None, handle: IO[str], progress: Progress
) -> int:
    count = 0
    writer = None
    if fmt == "csv":
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
    for done, record in read_in_slices(ctx, connector=connector):
        if writer is None:
            handle.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
        else:
            writer.writerow(_csv_row(record))
        count += 1
        if count % 1000 == 0:
            progress.update(f"{count} records, {done:.0%} of the window")
    return count


def _csv_row(record: CallRecord) -> list[str]:
    when = dt.datetime.fromtimestamp(record.ts, tz=dt.UTC).isoformat(timespec="milliseconds")
    return [
        repr(record.ts),
        when.replace("+00:00", "Z"),
        record.connector,
        record.operation,
        record.status,
        repr(record.duration_ms),
        record.error or "",
        str(record.attempt),
        "true" if record.final else "false",
        json.dumps(dict(record.labels), sort_keys=True) if record.labels else "",
    ]
