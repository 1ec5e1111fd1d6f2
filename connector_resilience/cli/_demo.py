"""``connector-resilience demo``: a real flaky service, a resilient client, live.

A small HTTP service on 127.0.0.1 goes through phases (healthy, flaky, down,
recovering); a connector calls it through ``@resilient`` on the default store
(JSONL files unless ``CONNECTOR_STORE_URL`` says otherwise) and the demo prints
what happens: retries, the breaker opening and recovering, the health verdict.
Only the standard library is used for HTTP, so ``pip install connector-resilience``
is all it needs.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TextIO

from connector_resilience.backends import redact_url, store_for_policy
from connector_resilience.circuit import StateChange, breaker_for
from connector_resilience.errors import CircuitOpenError
from connector_resilience.metrics import health_report, summarize
from connector_resilience.policy import current_policy
from connector_resilience.resilient import resilient

__all__ = ["FlakyService", "run_demo"]

CONNECTOR = "inventory"


@dataclass(frozen=True)
class Phase:
    """A stretch of the service's life: how long, and what share of requests fail."""

    name: str
    seconds: float
    failure_rate: float


def phases_for(total_s: float) -> list[Phase]:
    """healthy -> flaky -> down -> recovering -> healthy, scaled to ``total_s``."""
    shares = [
        ("healthy", 0.2, 0.0),
        ("flaky", 0.2, 0.35),
        ("down", 0.25, 1.0),
        ("recovering", 0.15, 0.1),
        ("healthy", 0.2, 0.0),
    ]
    return [Phase(name, total_s * share, rate) for name, share, rate in shares]


class FlakyService:
    """An HTTP service on 127.0.0.1 whose failure rate follows a list of phases.

    Failures are deterministic (every n-th request in a phase), so a run is
    the same on every machine. Requests are counted server-side.
    """

    def __init__(self, phases: list[Phase]) -> None:
        self.phases = phases
        self.requests = 0
        self.failures = 0
        self._started = time.monotonic()
        self._lock = threading.Lock()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fail = service.decide()
                body = json.dumps({"ok": not fail}).encode()
                self.send_response(503 if fail else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # keep the demo's output readable

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the service."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def phase(self) -> Phase:
        """The phase the service is in now."""
        elapsed = time.monotonic() - self._started
        for phase in self.phases:
            if elapsed < phase.seconds:
                return phase
            elapsed -= phase.seconds
        return self.phases[-1]

    def decide(self) -> bool:
        """Whether the current request fails."""
        with self._lock:
            self.requests += 1
            rate = self.phase().failure_rate
            fail = rate >= 1.0 or (rate > 0 and (self.requests * rate) % 1.0 < rate)
            self.failures += fail
            return fail

    def __enter__(self) -> FlakyService:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class ServiceUnavailableError(Exception):
    """The service answered 503."""


class InventoryClient:
    """A connector: each method is one operation against the inventory service."""

    connector_name = CONNECTOR

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    @resilient(retry_on=(ServiceUnavailableError, urllib.error.URLError))
    def get_item(self, item_id: int) -> dict[str, object]:
        """Fetch one item; a 503 is retried, and counts against the breaker."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/items/{item_id}", timeout=2) as resp:  # noqa: S310
                data: dict[str, object] = json.load(resp)
                return data
        except urllib.error.HTTPError as exc:
            if exc.code == 503:
                raise ServiceUnavailableError(f"item {item_id}: 503") from None
            raise


#: Demo-sized settings, applied only where the environment sets nothing.
DEMO_DEFAULTS = {
    "RETRY_BASE_MS": "50",
    "RETRY_CAP_MS": "400",
    "CB_FAILURES_TO_OPEN": "4",
    "CB_COOLDOWN_S": "2",
    "CB_HALF_OPEN_PROB": "0.5",
}


def run_demo(*, seconds: float = 30.0, out: TextIO, rate_per_s: float = 20.0) -> int:
    """Run the demo for ``seconds``, printing to ``out``; returns an exit code."""
    for name, value in DEMO_DEFAULTS.items():
        os.environ.setdefault(name, value)
    policy = current_policy()
    store = store_for_policy(policy)
    breaker = breaker_for(CONNECTOR, policy=policy, store=store)
    breaker.reset()  # start from a closed breaker, whatever an earlier run left

    def on_change(change: StateChange) -> None:
        out.write(f"  >> circuit {change.old} -> {change.new}: {change.reason or ''}\n")

    breaker.add_listener(on_change)
    started_at = time.time()
    counts = {"ok": 0, "failed": 0, "rejected": 0}
    with FlakyService(phases_for(seconds)) as service:
        client = InventoryClient(service.url)
        where = "the default JSONL files" if hasattr(store, "paths") else redact_url(store.url)
        out.write(f"flaky inventory service on {service.url} for {seconds:g}s; state in {where}\n")
        started = time.monotonic()
        next_report = started + 1.0
        item = 0
        while time.monotonic() - started < seconds:
            item += 1
            try:
                client.get_item(item)
                counts["ok"] += 1
            except CircuitOpenError:
                counts["rejected"] += 1
            except (ServiceUnavailableError, urllib.error.URLError):
                counts["failed"] += 1
            now = time.monotonic()
            if now >= next_report:
                # Live figures come from the store, as an operator would see them.
                window = summarize(CONNECTOR, window_s=time.time() - started_at + 1, store=store)
                out.write(
                    f"t={now - started:4.1f}s  service={service.phase().name:<10} "
                    f"calls={window.total_calls:<4} failed={window.errors:<3} "
                    f"retries={window.retries:<4} rejected={window.rejected:<4} "
                    f"circuit={breaker.state}\n"
                )
                out.flush()
                next_report = now + 1.0
            time.sleep(1.0 / rate_per_s)

        report = health_report(CONNECTOR, window_s=time.time() - started_at + 1, store=store)
        summary = report.summary
        reasons = f" ({'; '.join(report.reasons)})" if report.reasons else ""
        out.write(
            f"\nserver saw {service.requests} requests, {service.failures} answered 503; "
            f"the caller saw {counts['ok']} ok, {counts['failed']} failed, "
            f"{counts['rejected']} rejected\n"
            f"health of {CONNECTOR!r}: {report.status.value}{reasons}\n"
            f"  calls={summary.total_calls} errors={summary.errors} attempts={summary.attempts} "
            f"retries={summary.retries} rejected={summary.rejected} "
            f"error_rate={summary.error_rate:.1%}\n"
            f"  p50={summary.p50_ms:.1f}ms p95={summary.p95_ms:.1f}ms p99={summary.p99_ms:.1f}ms\n"
        )
    paths = getattr(store, "paths", None)
    if isinstance(paths, dict):
        out.write("state files:\n")
        for kind, path in paths.items():
            out.write(f"  {kind:<9} {path}\n")
    else:
        out.write(f"state is in {redact_url(store.url)}\n")
    out.write("see it again with: connector-resilience health\n")
    return 0
