"""A real redis-server for the tests: started on a free 127.0.0.1 port, stopped at the end.

``redis_server`` is one server for the whole session (tests isolate themselves
by key prefix). ``redis_server_factory`` starts private servers for tests that
stop, restart or password-protect theirs, so they never disturb the shared one.

Without redis-server on the PATH the Redis tests skip, except in CI
(``CONNECTOR_RESILIENCE_CI=1``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from connector_resilience.backends.redis import RedisStore

__all__ = [
    "RedisServer",
    "open_redis_store",
    "redis_server",
    "redis_server_factory",
    "redis_url",
    "require_redis_server",
]

# Read at import: the autouse ``_isolated`` fixture removes every CONNECTOR_*
# variable before a test's own fixtures run, this one included.
_IN_CI = os.environ.get("CONNECTOR_RESILIENCE_CI") == "1"
_START_TIMEOUT_S = 10.0


def require_redis_server() -> str:
    """The redis-server executable; skip without one, or fail in CI."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if _IN_CI:
            pytest.fail(f"{message}; CI must run the Redis tests", pytrace=False)
        pytest.skip(message)
    return path


def open_redis_store(url: str) -> RedisStore:
    """``open_store(url)``, typed as the Redis store it is."""
    # Imported here: this plugin loads for every test run, with or without redis-py.
    from connector_resilience.backends import open_store
    from connector_resilience.backends.redis import RedisStore

    store = open_store(url)
    assert isinstance(store, RedisStore)
    return store


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process bound to 127.0.0.1, with no persistence by default.

    Args:
        executable: path of redis-server.
        directory: its working folder (log file, and data files when persistent).
        password: ``requirepass`` when set.
        tls: (certificate file, key file): serve TLS only (``rediss://``).
        extra_args: further ``--option value`` arguments.
    """

    def __init__(
        self,
        executable: str,
        directory: Path,
        *,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.executable = executable
        self.directory = directory
        self.password = password
        self.tls = tls
        self.extra_args = extra_args
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` (with the password when one is set); no db, no slash."""
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            return
        if self.tls:
            cert, key = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert)]
            listen += ["--tls-key-file", str(key), "--tls-auth-clients", "no"]
        else:
            listen = ["--port", str(self.port)]
        args = [
            self.executable,
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--logfile",
            "redis.log",
            "--save",
            "",
            "--appendonly",
            "no",
            *self.extra_args,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.directory
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"redis-server exited at start: {self._stderr()}")
            if self._answers_ping():
                return
            time.sleep(0.01)  # polling a process start, bounded by the deadline
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {_START_TIMEOUT_S:g}s")

    def _answers_ping(self) -> bool:
        request = b"PING\r\n"
        if self.password:
            request = f"AUTH {self.password}\r\nPING\r\n".encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as plain:
                sock = plain
                if self.tls:
                    # Only asking whether it is up: no certificate check needed.
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    sock = context.wrap_socket(plain)
                sock.sendall(request)
                reply = b""
                while b"PONG" not in reply and len(reply) < 1024:
                    chunk = sock.recv(1024)
                    if not chunk:
                        break
                    reply += chunk
                return b"PONG" in reply
        except OSError:
            return False

    def _stderr(self) -> str:
        if self._process is None or self._process.stderr is None:
            return ""
        return self._process.stderr.read().decode(errors="replace")[-2000:]

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server now (SIGKILL: nothing is saved, clients see the connection drop)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()  # SIGKILL works on a paused process too
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests share it through key prefixes."""
    server = RedisServer(require_redis_server(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RedisServer]]:
    """Start private servers (``factory(password=, tls=, extra_args=)``); all stopped at the end."""
    executable = require_redis_server()
    started: list[RedisServer] = []

    def factory(
        *,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> RedisServer:
        server = RedisServer(
            executable,
            tmp_path_factory.mktemp("redis-private"),
            password=password,
            tls=tls,
            extra_args=extra_args,
        )
        started.append(server)
        server.start()
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer, tmp_path: Path) -> str:
    """A store URL on the session server with a key prefix of this test's own."""
    return f"{redis_server.url}/0?prefix={tmp_path.name}"
