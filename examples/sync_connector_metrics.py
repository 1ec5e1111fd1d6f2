"""A synchronous connector with @resilient, and what its metrics say.

A local exchange-rate service (standard library HTTP) answers most requests in
about 10 ms, every tenth one in about 250 ms, and every seventh with 503. The
connector retries the 503s; afterwards the summary shows what callers saw
(calls, errors) beside what the service did (attempts, retries, latency
percentiles), and the health verdict explains itself.

Run: python examples/sync_connector_metrics.py   (about 2 seconds)
"""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
import urllib.error
import urllib.request

from connector_resilience import Policy, health_status, resilient, summarize
from connector_resilience.metrics import health_report

RATES = {"USD": 1.08, "GBP": 0.86, "JPY": 161.2, "CHF": 0.95}


class RatesService(http.server.BaseHTTPRequestHandler):
    """GET /rates/EUR/USD -> {"rate": 1.08}; slow or failing on a fixed schedule."""

    counter = itertools.count(1)

    def do_GET(self) -> None:
        n = next(self.counter)
        time.sleep(0.25 if n % 10 == 0 else 0.01)
        if n % 7 == 0:
            self._answer(503, {"error": "overloaded"})
            return
        quote = self.path.rsplit("/", 1)[-1]
        if quote not in RATES:
            self._answer(404, {"error": f"unknown currency {quote}"})
            return
        self._answer(200, {"base": "EUR", "quote": quote, "rate": RATES[quote]})

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


def transient(exc: BaseException) -> bool:
    """Worth another attempt: overload and gateway errors, and network trouble."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (429, 502, 503, 504)
    return isinstance(exc, urllib.error.URLError | ConnectionError | TimeoutError)


# This connector's SLA: p95 under 200 ms. memory:// keeps the example's numbers
# to itself; a service would keep the default JSONL files (or SQLite, Redis).
POLICY = Policy(
    retry={"base_ms": 50, "cap_ms": 500},
    health={"p95_ms": 200},
    store={"url": "memory://rates-example"},
)


class RatesClient:
    connector_name = "rates"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    @resilient(policy=POLICY, retry_on=transient, failure_on=transient)
    def rate(self, quote: str) -> float:
        """EUR -> ``quote``; a 404 is the service working, so it never trips the breaker."""
        url = f"{self.base_url}/rates/EUR/{quote}"
        with urllib.request.urlopen(url, timeout=2) as response:
            rate: float = json.load(response)["rate"]
            return rate


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RatesService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = RatesClient(f"http://127.0.0.1:{server.server_port}")
    try:
        for quote in [*RATES] * 8 + ["XYZ"]:
            try:
                client.rate(quote)
            except urllib.error.HTTPError as exc:
                print(f"EUR/{quote}: HTTP {exc.code} (not retried)")
    finally:
        server.shutdown()

    s = summarize("rates", policy=POLICY)
    print(f"calls:    {s.total_calls} made, {s.errors} failed ({s.error_rate:.1%})")
    print(f"attempts: {s.attempts} made, {s.attempt_errors} failed, {s.retries} retries")
    print(f"latency:  p50 {s.p50_ms:.0f} ms, p95 {s.p95_ms:.0f} ms, p99 {s.p99_ms:.0f} ms")
    print(f"failures: {dict(s.errors_by_type)}")
    report = health_report("rates", policy=POLICY)
    print(f"health:   {health_status('rates', policy=POLICY)} ({'; '.join(report.reasons)})")


if __name__ == "__main__":
    main()
