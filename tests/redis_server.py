"""Real Redis deployments for the tests, on free 127.0.0.1 ports, stopped at the end.

``redis_server`` is one server for the whole session (tests isolate themselves
by key prefix). ``redis_server_factory`` starts private servers for tests that
stop, restart or password-protect theirs, so they never disturb the shared one.
``redis_cluster`` is a 3-master Cluster made with ``redis-cli --cluster
create``, and ``redis_sentinel`` a master, a replica and a ``redis-sentinel``
watching them, both one per session; ``sentinel_factory`` makes private ones
for tests that fail them over. ``acl_user`` adds a user with exactly the rights
``acl_rules`` documents. :class:`BlackHoleProxy` sits between clients and a
server and can kill, or silently swallow, the connections that subscribed.

Without redis-server on the PATH the Redis tests skip, except in CI
(``CONNECTOR_RESILIENCE_CI=1``), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from connector_resilience.backends.redis import RedisStore

__all__ = [
    "BlackHoleProxy",
    "ClusterServers",
    "RedisServer",
    "SentinelServers",
    "acl_user",
    "open_redis_store",
    "redis_cluster",
    "redis_sentinel",
    "redis_server",
    "redis_server_factory",
    "redis_url",
    "require_redis_server",
    "sentinel_factory",
]

# Read at import: the autouse ``_isolated`` fixture removes every CONNECTOR_*
# variable before a test's own fixtures run, this one included.
_IN_CI = os.environ.get("CONNECTOR_RESILIENCE_CI") == "1"
_START_TIMEOUT_S = 10.0


def require_redis_server(program: str = "redis-server", package: str = "redis-server") -> str:
    """A Redis executable (redis-server by default); skip without it, or fail in CI."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (apt-get install {package})"
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

    def client(self) -> Any:
        """A plain redis-py client on this server (the caller closes it)."""
        import redis

        return redis.Redis(port=self.port, password=self.password, decode_responses=True)

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


def _wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = _START_TIMEOUT_S
) -> None:
    """Poll a server-side condition (a cluster forming, a failover ending), bounded."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:g}s")
        time.sleep(0.05)


def _answer(check: Callable[[], bool]) -> Callable[[], bool]:
    """``check``, counting a Redis error (not up yet) as a no."""

    def guarded() -> bool:
        try:
            return check()
        except Exception:
            return False

    return guarded


# Cluster ---------------------------------------------------------------------------


class ClusterServers:
    """Masters with ``cluster-enabled yes``, joined by ``redis-cli --cluster create``.

    Args:
        executable: path of redis-server.
        directory: a folder for the nodes' folders.
        masters: how many masters (each owns an equal share of the slots).
    """

    def __init__(self, executable: str, directory: Path, *, masters: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for index in range(masters):
            folder = directory / f"node-{index}"
            folder.mkdir()
            args: tuple[str, ...] = ("--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
            # The bus port defaults to port + 10000, which may be past 65535.
            args += ("--cluster-config-file", "nodes.conf", "--cluster-port", str(_free_port()))
            self.nodes.append(RedisServer(executable, folder, extra_args=args))

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming two of the nodes (a client finds the rest)."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])
        return f"redis+cluster://{hosts}"

    def start(self) -> None:
        """Start every node, join them and wait until every node says the cluster is ok."""
        for node in self.nodes:
            node.start()
        cli = require_redis_server("redis-cli", "redis-tools")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for node in self.nodes:
            client = node.client()

            def formed(client: Any = client) -> bool:
                info = client.execute_command("CLUSTER INFO")  # parsed into a dict
                return bool(info.get("cluster_state") == "ok")

            _wait_for(_answer(formed), "cluster state ok")
            client.close()

    def node_id(self, node: RedisServer) -> str:
        """The node's cluster id."""
        client = node.client()
        try:
            return str(client.execute_command("CLUSTER MYID"))
        finally:
            client.close()

    def owner(self, slot: int) -> RedisServer:
        """The node that serves ``slot``."""
        client = self.nodes[0].client()
        try:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(node for node in self.nodes if node.port == port)
        finally:
            client.close()
        raise LookupError(slot)

    def move_slot(self, slot: int, target: RedisServer) -> int:
        """Move ``slot`` and its keys to ``target`` (Redis's documented resharding steps).

        Returns:
            How many keys were migrated.
        """
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        source_client, target_client = source.client(), target.client()
        moved = 0
        try:
            target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := source_client.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                source_client.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
                moved += len(keys)
            for node in self.nodes:
                client = node.client()
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
                client.close()
        finally:
            source_client.close()
            target_client.close()
        return moved

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    """One 3-master Cluster for the session; tests share it through key prefixes."""
    cluster = ClusterServers(require_redis_server(), tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# Sentinel ---------------------------------------------------------------------------

SENTINEL_MASTER = "mymaster"


class SentinelServers:
    """A master, a replica of it, and one ``redis-sentinel`` monitoring them (quorum 1).

    Args:
        executable: path of redis-server.
        directory: a folder for the three.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self.directory = directory
        for name in ("master", "replica", "sentinel"):
            (directory / name).mkdir()
        self.master = RedisServer(executable, directory / "master")
        self.replica = RedisServer(
            executable,
            directory / "replica",
            extra_args=("--replicaof", "127.0.0.1", str(self.master.port)),
        )
        self.sentinel_port = _free_port()
        self._sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:PORT/mymaster``: no db, no slash after it."""
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SENTINEL_MASTER}"

    def start(self) -> None:
        """Start the master, the replica (in sync), then the sentinel (which knows both)."""
        self.master.start()
        self.replica.start()
        replica = self.replica.client()
        _wait_for(
            _answer(lambda: replica.info("replication")["master_link_status"] == "up"),
            "replica in sync",
        )
        replica.close()
        executable = require_redis_server("redis-sentinel", "redis-sentinel")
        config = self.directory / "sentinel" / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\n"
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} 2000\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} 10000\n"
        )
        self._sentinel = subprocess.Popen(
            [executable, str(config), "--logfile", "sentinel.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=config.parent,
        )
        sentinel = self.sentinel_client()
        _wait_for(
            _answer(lambda: bool(sentinel.sentinel_slaves(SENTINEL_MASTER))),
            "sentinel knows the replica",
        )
        sentinel.close()

    def sentinel_client(self) -> Any:
        """A client on the sentinel itself."""
        import redis

        return redis.Redis(port=self.sentinel_port, decode_responses=True)

    def current_master_port(self) -> int:
        """The master's port, as the sentinel says."""
        sentinel = self.sentinel_client()
        try:
            _host, port = sentinel.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
            return int(port)
        finally:
            sentinel.close()

    def failover(self) -> RedisServer:
        """``SENTINEL FAILOVER``: promote the replica; return the new master once it is one."""
        old = self.current_master_port()
        new = self.replica if old == self.master.port else self.master
        sentinel = self.sentinel_client()
        sentinel.execute_command("SENTINEL FAILOVER", SENTINEL_MASTER)
        sentinel.close()
        client = new.client()
        _wait_for(
            _answer(
                lambda: (
                    self.current_master_port() == new.port
                    and client.info("replication")["role"] == "master"
                )
            ),
            "failover done",
            timeout_s=30,
        )
        client.close()
        return new

    def stop(self) -> None:
        """Stop the sentinel, then the servers."""
        process, self._sentinel = self._sentinel, None
        if process is not None:
            process.kill()
            process.wait(10)
        self.replica.stop()
        self.master.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelServers]:
    """One master + replica + sentinel for the session (never failed over)."""
    servers = SentinelServers(require_redis_server(), tmp_path_factory.mktemp("sentinel"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def sentinel_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[], SentinelServers]]:
    """Start private master + replica + sentinel sets (for failovers); stopped at the end."""
    executable = require_redis_server()
    started: list[SentinelServers] = []

    def factory() -> SentinelServers:
        servers = SentinelServers(executable, tmp_path_factory.mktemp("sentinel-private"))
        started.append(servers)
        servers.start()
        return servers

    yield factory
    for servers in started:
        servers.stop()


# ACL --------------------------------------------------------------------------------


def acl_user(servers: list[RedisServer], store_url: str) -> tuple[str, str]:
    """Add a user with exactly ``acl_rules(store_url)`` to each server: ``(name, password)``."""
    from connector_resilience.backends.redis import acl_rules

    name, password = f"store-{secrets.token_hex(4)}", secrets.token_hex(12)
    rules = acl_rules(store_url).split()
    for server in servers:
        client = server.client()
        client.execute_command("ACL SETUSER", name, "reset", "on", f">{password}", *rules)
        client.close()
    return name, password


def with_user(url: str, name: str, password: str) -> str:
    """``url`` with ``name:password@`` put in front of its hosts."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{name}:{password}@{rest}"


# A proxy that can kill or black-hole pub/sub connections ----------------------------


class _Link:
    """One client connection through the proxy, and its connection to the server."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.subscribed = False
        self.silent = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.close()


class BlackHoleProxy:
    """Forwards 127.0.0.1 TCP to a Redis port; can cut or silently swallow subscriptions.

    A connection counts as a subscription once its client sent ``SUBSCRIBE``.
    :meth:`black_hole_subscriptions` keeps those connections open but drops
    everything either side sends from then on, as a dead NAT entry or a
    half-open TCP connection does; :meth:`kill_subscriptions` closes them.
    Connections made later pass normally.

    Args:
        target_port: the Redis server's port on 127.0.0.1.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, name="black-hole-proxy", daemon=True)
        self._threads.append(accept)
        accept.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            pump = threading.Thread(target=self._pump, args=(link,), daemon=True)
            self._threads.append(pump)
            pump.start()

    def _pump(self, link: _Link) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(link.client, selectors.EVENT_READ, link.server)
            selector.register(link.server, selectors.EVENT_READ, link.client)
            while not link.closed and not self._stopped:
                for key, _ in selector.select(timeout=0.2):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        link.close()
                        return
                    if source is link.client and b"subscribe" in data.lower():
                        link.subscribed = True
                    if link.silent:
                        continue  # swallowed: neither side hears anything more
                    try:
                        key.data.sendall(data)
                    except OSError:
                        link.close()
                        return

    def subscriptions(self) -> list[_Link]:
        """The subscriptions passing traffic now (not closed, not black-holed)."""
        with self._lock:
            return [
                link
                for link in self._links
                if link.subscribed and not link.closed and not link.silent
            ]

    def black_hole_subscriptions(self) -> int:
        """Silently drop all traffic of today's subscriptions; return how many."""
        links = self.subscriptions()
        for link in links:
            link.silent = True
        return len(links)

    def kill_subscriptions(self) -> int:
        """Close today's subscriptions (both sides see the connection end); return how many."""
        links = self.subscriptions()
        for link in links:
            link.close()
        return len(links)

    def stop(self) -> None:
        """Close everything and stop."""
        self._stopped = True
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()
        for thread in self._threads:
            thread.join(2)
