"""Issue 21, item 14: the dashboard never holds half-open connections, and caps how many it serves.

The dashboard runs as a real process (``run_dashboard`` with a short header
timeout and a small cap, so the test is quick); the clients are raw sockets on
127.0.0.1 that send part of a request head and stop.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.reliability._support import ROOT

HEADER_TIMEOUT_S = 2.0  # long enough to open every client before the first is timed out
MAX_CONNECTIONS = 20
HALF_OPEN = 30
SLACK_S = 1.0

_SERVE = """
import sys
from connector_resilience import Policy
from connector_resilience.backends import open_store
from connector_resilience.dashboard import run_dashboard

url = sys.argv[1]
run_dashboard(
    store=open_store(url), policy=Policy(store={{"url": url}}), window_s=3600, port=0,
    header_timeout_s={timeout}, max_connections={cap},
)
"""


def _close_times(clients: list[socket.socket], *, within_s: float) -> list[float | None]:
    """When the server closed each client, in seconds from now (``None``: still open)."""
    started = time.monotonic()
    closed: list[float | None] = [None] * len(clients)
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(clients):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        while any(at is None for at in closed):
            left = started + within_s - time.monotonic()
            if left <= 0:
                break
            for key, _ in selector.select(left):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except ConnectionResetError:
                    data = b""
                if not data:  # end of stream: the server closed it
                    closed[key.data] = time.monotonic() - started
                    selector.unregister(key.fileobj)
    return closed


def test_half_open_connections_are_closed_and_capped(tmp_path: Path) -> None:
    url = f"jsonl://{tmp_path / 'state'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVE.format(timeout=HEADER_TIMEOUT_S, cap=MAX_CONNECTIONS),
            url,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "dashboard on http://" in line, proc.stderr.read() if proc.stderr else line
        base = line.split()[2].rstrip("/")
        port = int(base.rpartition(":")[2])

        clients = []
        for _ in range(HALF_OPEN):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ...and never the blank line
            clients.append(sock)
        closed = _close_times(clients, within_s=HEADER_TIMEOUT_S + SLACK_S)
        for sock in clients:
            sock.close()
        still_open = sum(at is None for at in closed)
        assert still_open == 0, f"{still_open} of {HALF_OPEN} half-open connections still open"
        # Over the cap: refused at once. Within it: closed when the head is late.
        at_once = [at for at in closed if at is not None and at < HEADER_TIMEOUT_S / 2]
        assert len(at_once) == HALF_OPEN - MAX_CONNECTIONS, closed
        late = [at for at in closed if at is not None and at >= HEADER_TIMEOUT_S / 2]
        assert len(late) == MAX_CONNECTIONS
        assert max(late) < HEADER_TIMEOUT_S + SLACK_S

        # The slots are free again: a whole request is served.
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert response.status in (200, 503)
    finally:
        proc.terminate()
        proc.wait(10)
