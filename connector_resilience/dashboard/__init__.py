"""``connector-resilience dashboard``: a live page, ``/healthz`` and ``/metrics`` from a store.

An aiohttp.web application on 127.0.0.1. A background task reads the store
every ``refresh_s`` seconds (one read for every connector, in a thread so the
event loop keeps serving) and keeps the latest view; every request is answered
from it, so many open pages cost the store nothing more. The page itself is
static HTML, CSS and vanilla JS shipped inside the package (no CDN: it works
offline) that polls ``/api/overview`` and draws its charts as inline SVG.

Breaker state over time is what this dashboard saw at each refresh since it
started (the store keeps only the current state), plus the current state back
to when it began. Latency and error rate over time are computed from the
window's call records, in ``buckets`` time buckets.

Endpoints:
    ``/``              the page
    ``/api/overview``  everything the page shows, as JSON
    ``/healthz``       JSON verdicts; 200 unless a connector is down (or the store is unreadable)
    ``/metrics``       Prometheus text of the store view (needs the ``prometheus`` extra)
"""

from __future__ import annotations

from connector_resilience.dashboard._server import (
    DashboardState,
    create_app,
    run_dashboard,
    time_series,
)

__all__ = ["DashboardState", "create_app", "run_dashboard", "time_series"]
