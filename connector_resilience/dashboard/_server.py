"""The dashboard's aiohttp.web application, its background reader and the CLI runner."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import itertools
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, TextIO

from connector_resilience._extras import require
from connector_resilience.backends import CALL_NOTES, CallAggregate, CallRecord, Store
from connector_resilience.metrics import HealthStatus, LatencyHistogram, percentile
from connector_resilience.metrics.overview import StoreView, read_view
from connector_resilience.policy import Policy

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["DashboardState", "create_app", "run_dashboard", "time_series"]

logger = logging.getLogger("connector_resilience.dashboard")

_STATIC = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
# The page loads only its own files: no inline script, nothing from elsewhere.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


#: The shortest span a chart covers, however recent the first call is.
_SHORTEST_CHART_S = 60.0
#: The narrowest time bucket of a chart.
_SHORTEST_BUCKET_S = 30.0


def time_series(
    records: Sequence[CallRecord],
    *,
    start: float,
    end: float,
    buckets: int,
    aggregates: Sequence[CallAggregate] = (),
) -> list[dict[str, float | int | None]]:
    """Per time bucket: attempts, attempt error rate, p50/p95/p99 (ms) and rejections.

    Args:
        records: one connector's records in the window.
        start: window start.
        end: window end.
        buckets: number of equal buckets.
        aggregates: one connector's aggregated rows in the window, each counted
            in the bucket its interval starts in.

    Returns:
        One point per bucket, ``t`` at its end; percentiles and the error rate
        are ``None`` for a bucket without attempts (the chart leaves a gap).
    """
    width = (end - start) / buckets
    durations: list[list[float]] = [[] for _ in range(buckets)]
    errors = [0] * buckets
    rejected = [0] * buckets
    for record in records:
        index = min(buckets - 1, max(0, int((record.ts - start) / width)))
        if record.status == "rejected":
            if record.error not in CALL_NOTES:  # notes are not refused calls
                rejected[index] += record.calls
            continue
        durations[index].append(record.duration_ms)
        errors[index] += record.status == "error"
    histograms: dict[int, LatencyHistogram] = {}
    for row in aggregates:
        index = min(buckets - 1, max(0, int((row.ts - start) / width)))
        if row.status == "rejected":
            rejected[index] += row.refused_calls()
            continue
        histograms.setdefault(index, LatencyHistogram()).add_runs(row.histogram)
        if row.status == "error":
            errors[index] += row.attempts
    points: list[dict[str, float | int | None]] = []
    for i in range(buckets):
        values = sorted(durations[i])
        histogram = histograms.get(i)
        attempts = len(values) + (histogram.total if histogram is not None else 0)
        if histogram is not None:
            histogram.add_many(values)
            p50, p95, p99 = histogram.quantiles((0.5, 0.95, 0.99))
        else:
            p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
        points.append(
            {
                "t": start + (i + 1) * width,
                "attempts": attempts,
                "rejected": rejected[i],
                "error_rate": errors[i] / attempts if attempts else None,
                "p50_ms": p50 if attempts else None,
                "p95_ms": p95 if attempts else None,
                "p99_ms": p99 if attempts else None,
            }
        )
    return points


@dataclass
class DashboardState:
    """What the dashboard knows: the latest store view and the breaker states it has seen.

    Attributes:
        store: the store it reads.
        policy: settings (health thresholds).
        window_s: window of history shown.
        refresh_s: seconds between two reads of the store (and two page polls).
        stale_after_s: data older than this is marked stale.
        buckets: time buckets of the charts.
        view: the latest view (``None`` before the first read).
        error: why the last read failed, if it did.
        read_at: when the last successful read finished.
        states: per connector, ``(time, state)`` at each change seen.
    """

    store: Store
    policy: Policy
    window_s: float
    refresh_s: float = 2.0
    stale_after_s: float = 60.0
    buckets: int = 60
    view: StoreView | None = field(default=None, init=False)
    error: str | None = field(default=None, init=False)
    read_at: float | None = field(default=None, init=False)
    states: dict[str, collections.deque[tuple[float, str]]] = field(
        default_factory=dict, init=False
    )
    _payload: dict[str, Any] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def refresh(self) -> None:
        """Read the store now (blocking); on failure keep the last view and note why.

        The page's JSON is built here too, in the caller's thread, so that
        serving it costs the event loop nothing.
        """
        try:
            view = read_view(
                store=self.store,
                policy=self.policy,
                window_s=self.window_s,
                # Rows as fine as the chart's buckets, which are as narrow as
                # _SHORTEST_BUCKET_S when the history is short.
                resolution_s=min(self.window_s / self.buckets, _SHORTEST_BUCKET_S),
            )
        except Exception as exc:  # the page shows it; the next refresh may succeed
            self.error = f"cannot read the store: {exc}"
            logger.warning("dashboard: %s", self.error)
            return
        # Only this (refresh) thread touches the breaker history, so the payload
        # is built outside the lock; requests wait for nothing but the swap.
        self._note_states(view)
        payload = self._build_payload(view)
        with self._lock:
            self._payload = payload
            self.view, self.error, self.read_at = view, None, time.time()

    def _note_states(self, view: StoreView) -> None:
        for c in view.connectors:
            seen = self.states.setdefault(c.connector, collections.deque())
            state = c.report.circuit_state + (" (forced)" if c.override else "")
            if not seen and c.circuit_since is not None and c.circuit_since < view.generated_at:
                seen.append((max(c.circuit_since, view.generated_at - self.window_s), state))
            if not seen or seen[-1][1] != state:
                seen.append((view.generated_at, state))
            horizon = view.generated_at - self.window_s
            while len(seen) > 1 and seen[1][0] <= horizon:
                seen.popleft()

    def overview(self) -> dict[str, Any]:
        """Everything the page shows, JSON-ready."""
        with self._lock:
            payload = self._payload or {"connectors": [], "status": None, "generated_at": None}
            return {
                "refresh_s": self.refresh_s,
                "stale_after_s": self.stale_after_s,
                "error": self.error,
                "read_at": self.read_at,
                **payload,
            }

    def _build_payload(self, view: StoreView) -> dict[str, Any]:
        start = view.generated_at - view.window_s
        by_connector: dict[str, list[CallRecord]] = collections.defaultdict(list)
        for record in view.records:
            by_connector[record.connector].append(record)
        rows: dict[str, list[CallAggregate]] = collections.defaultdict(list)
        for row in view.aggregates:
            rows[row.connector].append(row)
        connectors = []
        for c in view.connectors:
            data = c.as_dict()
            records = by_connector.get(c.connector, [])
            aggregates = rows.get(c.connector, [])
            # A few minutes of history in an hour's window: chart the minutes, not the hour.
            first = min(
                itertools.chain((r.ts for r in records), (a.ts for a in aggregates)),
                default=start,
            )
            series_start = max(start, min(first, view.generated_at - _SHORTEST_CHART_S))
            # ... in buckets wide enough that calls a few seconds apart draw a line, not dots.
            span = view.generated_at - series_start
            buckets = max(2, min(self.buckets, int(span // _SHORTEST_BUCKET_S)))
            data["series_start"] = series_start
            data["series"] = time_series(
                records,
                start=series_start,
                end=view.generated_at,
                buckets=buckets,
                aggregates=aggregates,
            )
            data["states"] = [
                {"t": max(t, start), "state": s} for t, s in self.states.get(c.connector, ())
            ]
            connectors.append(data)
        return {**view.as_dict(), "connectors": connectors}

    def health(self) -> tuple[int, dict[str, Any]]:
        """The ``/healthz`` status code and body."""
        view = self.view
        if view is None or self.error is not None:
            return 503, {"status": "unknown", "error": self.error or "no data yet"}
        body = {
            "status": view.status.value,
            "generated_at": view.generated_at,
            "connectors": {c.connector: c.status.value for c in view.connectors},
        }
        return (503 if view.status is HealthStatus.DOWN else 200), body


def create_app(state: DashboardState) -> web.Application:
    """The aiohttp application serving the page, its JSON, ``/healthz`` and ``/metrics``.

    The store is read every ``state.refresh_s`` seconds while the app runs.

    Raises:
        ConfigurationError: aiohttp is not installed (the message names the extra).
    """
    require("aiohttp", "aiohttp")
    from aiohttp import web

    static = {
        name: (resources.files(__package__) / "static" / name).read_bytes() for name in _STATIC
    }

    async def page(request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        if name not in static:
            raise web.HTTPNotFound()
        return web.Response(body=static[name], content_type=_STATIC[name], headers=_HEADERS)

    async def overview(request: web.Request) -> web.Response:
        return web.json_response(state.overview(), headers=_HEADERS)

    async def healthz(request: web.Request) -> web.Response:
        code, body = state.health()
        return web.json_response(body, status=code, headers=_HEADERS)

    async def metrics(request: web.Request) -> web.Response:
        try:
            require("prometheus_client", "prometheus")
        except Exception as exc:
            return web.Response(status=501, text=f"{exc}\n")
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from connector_resilience.exporters.prometheus import store_view_families

        class _Latest:
            def collect(self) -> list[Any]:
                return store_view_families(state.view)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Latest())
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def refresher(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.to_thread(state.refresh)
                await asyncio.sleep(state.refresh_s)

        await asyncio.to_thread(state.refresh)  # the first request already has data
        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = web.Application()
    app.cleanup_ctx.append(refresher)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", page)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def run_dashboard(
    *,
    store: Store,
    policy: Policy,
    window_s: float,
    host: str = "127.0.0.1",
    port: int = 8765,
    refresh_s: float = 2.0,
    stale_after_s: float = 60.0,
    out: TextIO | None = None,
    max_connections: int = 100,
    header_timeout_s: float = 10.0,
) -> int:
    """Serve the dashboard until interrupted (Ctrl-C or SIGTERM); prints its URL first.

    Args:
        store: the store to show.
        policy: settings (health thresholds).
        window_s: window of history shown.
        host: address to listen on (the page has no login: keep it on loopback).
        port: port, 0 for any free one.
        refresh_s: seconds between refreshes.
        stale_after_s: data older than this is marked stale.
        out: where to print the URL (stdout).
        max_connections: connections served at once; more are answered 503.
        header_timeout_s: a connection that has not sent a whole request head
            in this many seconds is closed, and so is one idle for as long
            between requests (half-open connections are never held for ever).

    Returns:
        The exit code, 0.

    Raises:
        StoreError: the store cannot be read.
    """
    out = out if out is not None else sys.stdout
    # Fail now, with a clear error, if the store cannot be read: a page that only
    # ever says "error" is a worse way to find out.
    store.connectors()
    state = DashboardState(
        store=store,
        policy=policy,
        window_s=window_s,
        refresh_s=refresh_s,
        stale_after_s=stale_after_s,
    )
    app = create_app(state)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve(
                app,
                host=host,
                port=port,
                out=out,
                store_name=_name(state),
                max_connections=max_connections,
                header_timeout_s=header_timeout_s,
            )
        )
    return 0


def _name(state: DashboardState) -> str:
    from connector_resilience.metrics.overview import describe_store

    return describe_store(state.store)


async def _serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    out: TextIO,
    store_name: str,
    max_connections: int,
    header_timeout_s: float,
) -> None:
    from aiohttp import web

    from connector_resilience.dashboard._connections import ConnectionGuard

    if not _is_loopback(host):
        sys.stderr.write(
            f"warning: the dashboard has no login and listens on {host}: "
            "anyone who can reach it sees your connectors\n"
        )
    sock = socket.create_server((host, port))
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=header_timeout_s)
    await runner.setup()
    loop = asyncio.get_running_loop()
    assert runner.server is not None  # set up above
    guard = ConnectionGuard(
        runner.server, max_connections=max_connections, header_timeout_s=header_timeout_s
    )
    server = await loop.create_server(guard, sock=sock)
    try:
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        out.write(f"dashboard on http://{shown}:{bound}/ (store: {store_name}); Ctrl-C to stop\n")
        out.flush()
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        server.close()
        await runner.cleanup()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
