"""A private redis-server on a free 127.0.0.1 port, when one is installed."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._core import Context, UnavailableError


def our_backend_present() -> bool:
    """Whether this checkout has the Redis store (it lands on its own branch)."""
    try:
        return importlib.util.find_spec("connector_resilience.backends.redis") is not None
    except ModuleNotFoundError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[tuple[str | None, str]]:
    """Yield ``(url, note)``: a running server's URL, or ``None`` and why not."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None, "no redis-server on PATH (apt-get install redis-server)"
        return
    try:
        import redis
    except ImportError:
        yield None, "redis-py is not installed (pip install 'connector-resilience[redis]')"
        return
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    yield None, "redis-server did not start"
                    return
                time.sleep(0.05)
        client.close()
        yield url, f"redis-server {_version(binary)} on 127.0.0.1:{port}, persistence off"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return "?"


def redis_store_url(ctx: Context, tag: str) -> str:
    """A ``redis://`` store URL for our backend, or :class:`UnavailableError` saying why not."""
    if not our_backend_present():
        raise UnavailableError(
            "not on this branch: connector_resilience.backends.redis does not exist yet"
        )
    if ctx.redis_url is None:
        raise UnavailableError(f"skipped: {ctx.redis_note}")
    return f"{ctx.redis_url}/0?prefix=bench-{tag}"
