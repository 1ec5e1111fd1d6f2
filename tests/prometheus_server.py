"""A real Prometheus server on 127.0.0.1 for the exporters' end-to-end tests.

Without ``prometheus`` (and ``promtool``) on the PATH these tests skip, except
in CI (``CONNECTOR_RESILIENCE_CI=1``), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

_IN_CI = os.environ.get("CONNECTOR_RESILIENCE_CI") == "1"
START_TIMEOUT_S = 20.0


def require(tool: str) -> str:
    """The path of ``prometheus`` or ``promtool``; skip without it, or fail in CI."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install prometheus)"
        if _IN_CI:
            pytest.fail(f"{message}; CI must run the Prometheus tests", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A port nothing listens on now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A running server and its HTTP API."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, *, at: float | None = None) -> Any:
        """An instant query's ``data`` (``resultType`` and ``result``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(at)
        return self.api("query", **params)

    def vector(self, expr: str, *, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """An instant vector as (labels, value) pairs."""
        data = self.query(expr, at=at)
        assert data["resultType"] == "vector", data
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]


@contextmanager
def prometheus(
    folder: Path, *, targets: dict[str, str], rule_files: Sequence[Path] = ()
) -> Iterator[Prometheus]:
    """Run Prometheus scraping ``targets`` (job -> host:port) every second until the block ends."""
    binary = require("prometheus")
    config = folder / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in rule_files],
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": [target]}]}
                    for job, target in targets.items()
                ],
            }
        )
    )
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(port)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Prometheus did not start: {(folder / 'prometheus.log').read_text()}")
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def until(condition: Any, what: str, *, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait for ``condition()`` to be true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` and capture its output."""
    return subprocess.run(
        [require("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
