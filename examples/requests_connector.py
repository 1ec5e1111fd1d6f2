"""A requests connector: one ``ResilientAdapter`` mounted on the API's prefix.

A local server (the standard library's, in a thread) plays a GitHub-style API:
the repository answers 503 twice, the rate-limit endpoint answers GitHub's
403 with ``x-ratelimit-remaining: 0`` once, and creating an issue fails once
with 502. The adapter retries what is safe to retry, waits until the
rate-limit reset the server named, makes the POST retryable with an
Idempotency-Key, and measures every attempt.

Run: python examples/requests_connector.py   (about 3 seconds)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import requests

from connector_resilience import Policy, summarize
from connector_resilience.requests import ResilientAdapter


class FlakyAPI(BaseHTTPRequestHandler):
    """GET /repos/acme/widgets, GET /rate_limited, POST /issues, with faults."""

    hits: ClassVar[dict[str, int]] = {}

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _count(self) -> int:
        key = f"{self.command} {self.path}"
        self.hits[key] = self.hits.get(key, 0) + 1
        return self.hits[key]

    def do_GET(self) -> None:
        n = self._count()
        if self.path == "/repos/acme/widgets" and n <= 2:
            self._answer(503, {"message": "busy"})
        elif self.path == "/rate_limited" and n == 1:
            reset = str(int(time.time()) + 1)
            limited = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
            self._answer(403, {"message": "API rate limit exceeded"}, limited)
        else:
            self._answer(200, {"path": self.path, "attempt": n})

    def do_POST(self) -> None:
        n = self._count()
        self.rfile.read(int(self.headers["Content-Length"]))
        if n == 1:
            self._answer(502, {"message": "bad gateway"})
        else:
            self._answer(201, {"number": 7, "key": self.headers["Idempotency-Key"]})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


class WidgetsConnector:
    """The connector: a session whose API prefix goes through the resilient adapter."""

    def __init__(self, base_url: str, *, policy: Policy) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        adapter = ResilientAdapter("widgets", policy=policy, add_idempotency_key=True)
        self.session.mount(base_url + "/", adapter)

    def get(self, path: str) -> Any:
        response = self.session.get(self.base_url + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def create_issue(self, title: str) -> Any:
        response = self.session.post(self.base_url + "/issues", json={"title": title}, timeout=10)
        response.raise_for_status()
        return response.json()


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    policy = Policy(retry={"base_ms": 100}, store={"url": "memory://requests-example"})
    try:
        api = WidgetsConnector(base_url, policy=policy)
        print("repo:", api.get("/repos/acme/widgets"))
        print("rate-limited:", api.get("/rate_limited"))
        print("issue:", api.create_issue("bolts are loose")["number"])
    finally:
        server.shutdown()
    s = summarize("widgets", policy=policy)
    print(f"{s.total_calls} calls, {s.attempts} attempts, {s.errors} errors seen by callers")
    print(f"failed attempts by cause: {dict(s.errors_by_type)}")
    print(f"server saw: {FlakyAPI.hits}")


if __name__ == "__main__":
    main()
