"""An httpx connector, sync and async, on one ``ResilientTransport`` class.

A local server (the standard library's, in a thread) plays a payments API:
the balance endpoint answers 503 twice, the charges endpoint answers 429
with ``Retry-After: 1`` once and a 409 that ``Stripe-Should-Retry: true``
marks as safe to repeat once. The transport retries what is safe to repeat,
waits as long as the server asked, and measures every attempt; the same
class serves ``httpx.Client`` and ``httpx.AsyncClient``.

Run: python examples/httpx_connector.py   (about 2 seconds)
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx

from connector_resilience import Policy, summarize
from connector_resilience.httpx import ResilientTransport


class PaymentsAPI(BaseHTTPRequestHandler):
    """GET /balance and GET /charges, with faults on a fixed schedule."""

    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        status, headers = 200, {}
        if self.path == "/balance" and n <= 2:
            status = 503
        elif self.path == "/charges" and n == 1:
            status, headers = 429, {"Retry-After": "1"}
        elif self.path == "/charges" and n == 2:
            status, headers = 409, {"Stripe-Should-Retry": "true"}
        data = json.dumps({"path": self.path, "attempt": n}).encode()
        self.send_response(status)
        for name, value in {"Content-Length": str(len(data)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


async def fetch_charges(base_url: str, policy: Policy) -> Any:
    transport = ResilientTransport("payments", policy=policy)
    async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
        response = await client.get("/charges")
        response.raise_for_status()
        return response.json()


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PaymentsAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    policy = Policy(retry={"base_ms": 100}, store={"url": "memory://httpx-example"})
    try:
        transport = ResilientTransport("payments", policy=policy, attempt_timeout_s=5)
        with httpx.Client(base_url=base_url, transport=transport) as client:
            balance = client.get("/balance")
            print("balance:", balance.status_code, balance.json())
        print("charges:", asyncio.run(fetch_charges(base_url, policy)))
    finally:
        server.shutdown()
    s = summarize("payments", policy=policy)
    print(f"{s.total_calls} calls, {s.attempts} attempts, {s.errors} errors seen by callers")
    print(f"failed attempts by cause: {dict(s.errors_by_type)}")


if __name__ == "__main__":
    main()
