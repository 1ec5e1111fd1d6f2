"""``connector-resilience demo``: a real flaky service, a resilient client, live.

A small HTTP service on 127.0.0.1 goes through phases (healthy, flaky, down,
recovering); a connector calls it through ``@resilient`` and the demo prints
what happens: retries, the breaker opening and recovering, the health verdict.
It keeps its state in a store of its own (``jsonl://logs/connector-demo``, or
``--store``), never in your services' one, and can be run again at will. Only
the standard library is used for HTTP, so a bare install is all it needs.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from connector_resilience.backends import Store, open_store, redact_url
from connector_resilience.circuit import StateChange, breaker_for
from connector_resilience.errors import CircuitOpenError
from connector_resilience.metrics import HealthReport, health_report, summarize
from connector_resilience.policy import Policy, env_var_table
from connector_resilience.resilient import resilient

__all__ = ["FlakyService", "run_demo"]

CONNECTOR = "demo-inventory"
#: Where the demo keeps its state unless ``--store`` says otherwise.
DEMO_STORE = "jsonl://logs/connector-demo"


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

    def __init__(self, base_url: str, *, policy: Policy, store: Store) -> None:
        self.base_url = base_url
        self.get_item: Callable[[int], dict[str, object]] = resilient(
            CONNECTOR,
            operation="get_item",
            policy=policy,
            store=store,
            retry_on=(ServiceUnavailableError, urllib.error.URLError),
        )(self._get_item)

    def _get_item(self, item_id: int) -> dict[str, object]:
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
#: What the demo prints about its settings, in this order.
SHOWN_SETTINGS = ("RETRY_MAX_ATTEMPTS", *DEMO_DEFAULTS)


def demo_policy() -> tuple[Policy, list[str]]:
    """The demo's policy (its defaults where the environment sets nothing), and how to show it."""
    fields = {env: (group, name, info) for env, group, name, info in env_var_table()}
    overrides: dict[str, Any] = {}
    for env, value in DEMO_DEFAULTS.items():
        if env not in os.environ:
            group, name, _info = fields[env]
            overrides.setdefault(group, {})[name] = value
    policy = Policy(**overrides)
    shown = []
    for env in SHOWN_SETTINGS:
        group, name, info = fields[env]
        value = getattr(getattr(policy, group), name)
        note = f" (default {info.default:g})" if value != info.default else ""
        shown.append(f"{env}={value:g}{note}")
    return policy, shown


def run_demo(
    *,
    seconds: float = 30.0,
    out: TextIO,
    rate_per_s: float = 20.0,
    store: str | None = None,
    as_json: bool = False,
) -> int:
    """Run the demo for ``seconds``, printing to ``out``; returns an exit code.

    Args:
        seconds: how long the service's phases last in all.
        out: where to print.
        rate_per_s: calls per second.
        store: the store URL (the demo's own JSONL folder if ``None``).
        as_json: print one JSON document at the end instead of live lines.
    """
    policy, settings = demo_policy()
    url = store or DEMO_STORE
    state = open_store(url)
    breaker = breaker_for(CONNECTOR, policy=policy, store=state)
    breaker.reset()  # start from a closed breaker, whatever an earlier run left
    live = (lambda text: None) if as_json else out.write

    def on_change(change: StateChange) -> None:
        live(f"  >> circuit {change.old} -> {change.new}: {change.reason or ''}\n")

    breaker.add_listener(on_change)
    started_at = _on_an_interval(policy.store.metrics_interval_s)
    counts = {"ok": 0, "failed": 0, "rejected": 0}
    with FlakyService(phases_for(seconds)) as service:
        client = InventoryClient(service.url, policy=policy, store=state)
        live(
            f"flaky inventory service on {service.url} for {seconds:g}s; "
            f"connector {CONNECTOR!r}, state in {redact_url(url)}\n"
            f"settings: {', '.join(settings)}\n"
            "ran: calls that reached the service; rejected: refused by the open breaker, "
            "never sent\n"
        )
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
            if now >= next_report and not as_json:
                # Live figures come from the store, as an operator would see them.
                window = summarize(CONNECTOR, window_s=_since(started_at), store=state)
                out.write(
                    f"t={now - started:4.1f}s  service={service.phase().name:<10} "
                    f"ran={window.total_calls:<4} failed={window.errors:<3} "
                    f"retries={window.retries:<4} rejected={window.rejected:<4} "
                    f"circuit={breaker.state}\n"
                )
                out.flush()
                next_report = now + 1.0
            time.sleep(1.0 / rate_per_s)
        report = health_report(CONNECTOR, window_s=_since(started_at), store=state)
        service_counts = {"requests": service.requests, "answered_503": service.failures}
    if as_json:
        _print_json(
            report,
            url=url,
            seconds=seconds,
            policy=policy,
            service=service_counts,
            counts=counts,
            state=state,
            out=out,
        )
    else:
        _print_text(report, url=url, service=service_counts, counts=counts, state=state, out=out)
    return 0


def _on_an_interval(interval_s: float) -> float:
    """Wait for the next whole metrics interval and return it (wall clock).

    Metric rows are stamped with the start of their interval: an earlier run's
    last rows, in the same folder, then all lie before this run's window.
    """
    start = math.ceil(time.time() / interval_s) * interval_s
    time.sleep(max(0.0, start - time.time()))
    return start


def _since(started_at: float) -> float:
    """The window from ``started_at`` to now, for summarize (a hair wider: float sums)."""
    return time.time() - started_at + 1e-3


def _print_text(
    report: HealthReport,
    *,
    url: str,
    service: dict[str, int],
    counts: dict[str, int],
    state: Store,
    out: TextIO,
) -> None:
    s = report.summary
    reasons = f" ({'; '.join(report.reasons)})" if report.reasons else ""
    out.write(
        f"\nserver saw {service['requests']} requests, {service['answered_503']} answered 503; "
        f"the caller saw {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['rejected']} rejected\n"
        f"health of {CONNECTOR!r}: {report.status.value}{reasons}\n"
        f"  calls: {s.total_calls} ran, {s.errors} failed after retries "
        f"(calls failed {s.error_rate:.1%}), {s.rejected} rejected by the breaker\n"
        f"  attempts={s.attempts}: {s.retries} retries, "
        f"attempts failed {s.attempt_error_rate:.1%} (what the verdict judges)\n"
        f"  p50={s.p50_ms:.1f}ms p95={s.p95_ms:.1f}ms p99={s.p99_ms:.1f}ms\n"
    )
    files = _state_files(state)
    if files:
        out.write("state files:\n")
        for kind, path in files.items():
            out.write(f"  {kind:<9} {path}\n")
    else:
        out.write(f"state is in {redact_url(url)}\n")
    out.write(f"see it again with: connector-resilience health --store {redact_url(url)}\n")


def _print_json(
    report: HealthReport,
    *,
    url: str,
    seconds: float,
    policy: Policy,
    service: dict[str, int],
    counts: dict[str, int],
    state: Store,
    out: TextIO,
) -> None:
    data: dict[str, Any] = {
        "connector": CONNECTOR,
        "store": redact_url(url),
        "seconds": seconds,
        "settings": {env: value for env, value in policy.iter_settings() if env in SHOWN_SETTINGS},
        "server": service,
        "caller": counts,
        "health": report.as_dict(),
        "state_files": {kind: str(path) for kind, path in _state_files(state).items()},
    }
    out.write(json.dumps(data, indent=2, default=str) + "\n")


def _state_files(state: Store) -> dict[str, Path]:
    """The store's files that exist (a JSONL store makes the tokens file only when needed)."""
    paths = getattr(state, "paths", None)
    if not isinstance(paths, dict):
        return {}
    # Aggregated metrics are in files of their own beside the raw metrics file.
    paths = {**paths, **(getattr(state, "metrics_paths", None) or {})}
    return {kind: Path(path) for kind, path in paths.items() if Path(path).exists()}
