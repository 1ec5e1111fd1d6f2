"""What every CLI command shares: exit codes, opening the store, tables, progress."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from connector_resilience._store_urls import scheme_problem
from connector_resilience.backends import Store, open_store, store_for_policy
from connector_resilience.cli._basics import (
    EXIT_DEGRADED,
    EXIT_DOWN,
    EXIT_ERROR,
    EXIT_NO_STORE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    port_number,
    scrub,
)
from connector_resilience.metrics import HealthStatus
from connector_resilience.metrics.overview import describe_store
from connector_resilience.policy import Policy, current_policy

__all__ = [
    "EXIT_DEGRADED",
    "EXIT_DOWN",
    "EXIT_ERROR",
    "EXIT_NO_STORE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Context",
    "Progress",
    "exit_code_for",
    "format_age",
    "format_ms",
    "format_rate",
    "format_time",
    "open_context",
    "port_number",
    "print_json",
    "printable",
    "scrub",
    "table",
]

_EXIT_FOR_STATUS = {
    HealthStatus.HEALTHY: EXIT_OK,
    HealthStatus.DEGRADED: EXIT_DEGRADED,
    HealthStatus.DOWN: EXIT_DOWN,
}


def exit_code_for(status: HealthStatus) -> int:
    """0 healthy, 1 degraded, 2 down."""
    return _EXIT_FOR_STATUS[status]


class Context:
    """The store, policy and window a command works on.

    Attributes:
        store: the open store.
        policy: settings (health thresholds, retention, breaker settings).
        window_s: the window of history to look at.
        url: the store URL as given (``None`` for the default JSONL files).
        json: whether to print JSON instead of tables.
    """

    def __init__(
        self, *, store: Store, policy: Policy, window_s: float, url: str | None, json: bool
    ) -> None:
        self.store = store
        self.policy = policy
        self.window_s = window_s
        self.url = url
        self.json = json

    @property
    def store_name(self) -> str:
        """The store's printable name."""
        return describe_store(self.store)

    def known_connector(self, connector: str) -> None:
        """Raise :class:`CliError` unless the store knows ``connector``."""
        known = self.store.connectors()
        if connector not in known:
            listed = ", ".join(known) if known else "none"
            raise CliError(
                f"unknown connector {connector!r} in store {self.store_name} "
                f"(known connectors: {listed})"
            )


def open_context(args: argparse.Namespace, *, existing: bool = False) -> Context:
    """The store (``--store`` or the policy's) and window (``--window`` or the policy's).

    Args:
        args: the parsed command line.
        existing: the default JSONL files must be there already (``health``):
            with none, raise :class:`CliError` with :data:`EXIT_NO_STORE`.
    """
    policy = current_policy()
    given: str | None = getattr(args, "store", None)
    if given is not None and "://" not in given:
        # `sqlite:x.db` names no scheme at all: say how to write it (open_store
        # reports an unknown scheme with the list of known ones).
        raise CliError(str(scheme_problem(given.strip(), variable="--store")))
    url = given or policy.store.url
    store = open_store(url) if url else store_for_policy(policy)
    if url:
        _must_exist(store)
    elif existing:
        _default_files_exist(store)
    window = getattr(args, "window", None)
    window_s = float(window) if window is not None else policy.health.window_s
    return Context(
        store=store,
        policy=policy,
        window_s=window_s,
        url=url,
        json=bool(getattr(args, "json", False)),
    )


def _must_exist(store: Store) -> None:
    """Refuse a file store named by URL that is not there (a typo would read as empty)."""
    from connector_resilience.backends.jsonl import JsonlStore
    from connector_resilience.backends.sqlite import SqliteStore

    if isinstance(store, SqliteStore) and not store.path.is_file():
        hint = ""
        if not store.path.is_absolute():
            # sqlite:///tmp/x.db is the relative path tmp/x.db: say how to write /tmp/x.db.
            hint = (
                f" (sqlite:/// is followed by a path relative to {Path.cwd()}; "
                f"for /{store.path} write sqlite:////{store.path})"
            )
        raise CliError(f"no SQLite store at {store.path}: the file does not exist{hint}")
    if isinstance(store, JsonlStore):
        folder = Path(store.paths["metrics"]).parent
        if not folder.is_dir():
            raise CliError(f"no JSONL store at {folder}: the folder does not exist")


def _default_files_exist(store: Store) -> None:
    """Refuse to judge the default JSONL store when none of its files is there."""
    paths = getattr(store, "paths", None)
    if not isinstance(paths, dict):
        return
    state = [Path(paths[kind]) for kind in ("metrics", "circuits") if kind in paths]
    # Aggregated metrics (the default) are in files of their own beside the metrics file.
    aggregated = [Path(p) for p in (getattr(store, "metrics_paths", None) or {}).values()]
    if state and not any(path.exists() for path in (*state, *aggregated)):
        folder = state[0].parent
        raise CliError(
            f"no store here: no {', '.join(p.name for p in state)} in {folder.absolute()}; "
            "run this in the folder your service runs in, or name the store with --store "
            "or CONNECTOR_STORE_URL",
            code=EXIT_NO_STORE,
        )


# Output -----------------------------------------------------------------------


def print_json(data: Any, *, out: TextIO) -> None:
    """Indented, key-ordered JSON and a newline."""
    out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: every non-printable character escaped.

    Names and reasons come from the store, which anyone who can write to it
    fills: an ESC or BEL in a connector name must show as ``\x1b`` or ``\x07``,
    never reach the terminal as a control sequence. Line and paragraph
    separators, bidirectional overrides and lone surrogates are escaped too.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[str] = ()
) -> str:
    """Rows under headers, columns padded; columns whose header is in ``right`` right-aligned.

    Args:
        headers: column titles.
        rows: cells, already formatted (control characters are escaped here).
        right: titles of the columns to right-align (numbers).
    """
    rows = [[printable(cell) for cell in row] for row in rows]
    aligned_right = set(right)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if headers[i] in aligned_right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)]) + "\n"


def format_ms(value: float) -> str:
    """Milliseconds, with precision where it matters."""
    if value >= 100:
        return f"{value:.0f}ms"
    if value >= 10:
        return f"{value:.1f}ms"
    return f"{value:.2f}ms"


def format_rate(value: float) -> str:
    """A ratio as a percentage."""
    return f"{value:.1%}"


def format_age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def format_time(ts: float | None, *, now: float) -> str:
    """An ISO-8601 UTC time with how long ago (or from now) it is, or ``-``."""
    if ts is None:
        return "-"
    stamp = dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if ts > now + 0.5:
        return f"{stamp} (in {format_age(ts - now)})"
    return f"{stamp} ({format_age(now - ts)} ago)"


# Progress ---------------------------------------------------------------------


class Progress:
    """Progress lines on stderr for a long operation.

    Quiet for the first ``after_s`` seconds, so short runs and scripts see
    nothing; then a line at most every ``every_s`` seconds (rewritten in place
    on a terminal). :meth:`done` ends the line with a summary if anything showed.

    Args:
        what: what is running, e.g. "exporting".
        mode: ``"auto"`` (after ``after_s``), ``"always"`` or ``"never"``.
        out: where to write (stderr).
        after_s: seconds of silence before the first line in ``"auto"`` mode.
        every_s: least seconds between two lines.
    """

    def __init__(
        self,
        what: str,
        *,
        mode: str = "auto",
        out: TextIO | None = None,
        after_s: float = 1.0,
        every_s: float = 1.0,
    ) -> None:
        self.what = what
        self.out = out if out is not None else sys.stderr
        self.enabled = mode != "never"
        self._started = time.monotonic()
        self._next = self._started + (0.0 if mode == "always" else after_s)
        self._every_s = every_s
        self._shown = False
        self._tty = bool(getattr(self.out, "isatty", lambda: False)())
        self._lock = threading.Lock()

    def update(self, detail: str, *, force: bool = False) -> None:
        """Show ``detail`` if it is time to."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now < self._next:
                return
            self._next = now + self._every_s
            text = f"{self.what}: {detail} ({now - self._started:.1f}s)"
            self.out.write(f"\r{text}\x1b[K" if self._tty else text + "\n")
            self.out.flush()
            self._shown = True

    def done(self, detail: str) -> None:
        """End with ``detail`` (written only if progress was shown)."""
        if self._shown:
            self.update(f"{detail}, done", force=True)
            if self._tty:
                self.out.write("\n")
                self.out.flush()

    @contextmanager
    def heartbeat(self, detail: str) -> Iterator[None]:
        """Show ``detail`` with the time elapsed while a single long call runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(0.1):
                self.update(detail)

        thread = threading.Thread(target=beat, name="connector-resilience-progress", daemon=True)
        self.update(detail)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
