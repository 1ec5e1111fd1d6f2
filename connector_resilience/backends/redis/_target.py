"""What a Redis store URL names: a server, a Sentinel-watched master or a Cluster; our options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.connection

from connector_resilience._store_urls import redact_url
from connector_resilience.errors import ConfigurationError

__all__ = [
    "CLUSTER_SCHEME",
    "DEFAULT_PREFIX",
    "DEFAULT_RETENTION_S",
    "SENTINEL_SCHEME",
    "Kind",
    "Target",
    "parse_target",
    "password_of",
]

DEFAULT_PREFIX: Final = "connector-resilience"
DEFAULT_RETENTION_S: Final = 7 * 86400.0
SENTINEL_SCHEME: Final = "redis+sentinel"
CLUSTER_SCHEME: Final = "redis+cluster"

Kind = Literal["standalone", "sentinel", "cluster"]

#: Options this module sets itself; a URL may not change them.
_RESERVED_OPTIONS: Final = frozenset({"decode_responses", "encoding", "encoding_errors"})
#: Options of ours, not redis-py's.
_OWN_OPTIONS: Final = frozenset({"prefix", "retention_s"})
#: Options for the sentinels' own connections (``sentinel_password=...``).
_SENTINEL_OPTIONS: Final = {
    "sentinel_username": "username",
    "sentinel_password": "password",
}
_DEFAULT_PORTS: Final = {
    "redis": 6379,
    "rediss": 6379,
    SENTINEL_SCHEME: 26379,
    CLUSTER_SCHEME: 6379,
}


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed store URL.

    Attributes:
        kind: the deployment shape the URL names.
        redis_url: for ``standalone``, the URL redis-py opens (our options removed).
        nodes: the sentinels (``sentinel``) or the startup nodes (``cluster``).
        service: the master's name, as the sentinels know it.
        db: the database number (always 0 on a cluster).
        options: redis-py connection options for the data nodes.
        sentinel_options: redis-py connection options for the sentinels.
        prefix: the key prefix.
        retention_s: how long call metrics are kept.
    """

    kind: Kind
    redis_url: str
    nodes: tuple[tuple[str, int], ...]
    service: str | None
    db: int
    options: dict[str, Any] = field(hash=False)
    sentinel_options: dict[str, Any] = field(hash=False)
    prefix: str
    retention_s: float

    def as_cluster(self) -> Target:
        """The same server, talked to as a node of a Cluster (found by asking it)."""
        parts = urlsplit(self.redis_url)
        options = _parse_redis_url(self.redis_url)
        options.pop("db", None)
        host, port = options.pop("host", "localhost"), options.pop("port", 6379)
        if parts.scheme == "rediss":
            options.pop("connection_class", None)
            options["ssl"] = True
        return dataclasses.replace(self, kind="cluster", nodes=((host, port),), options=options)


def parse_target(url: str) -> Target:
    """Split a ``redis://``, ``rediss://``, ``redis+sentinel://`` or ``redis+cluster://`` URL.

    Raises:
        ConfigurationError: naming what is wrong, with the URL's password hidden.
    """
    safe = redact_url(url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ConfigurationError(
            f"a Redis store URL starts redis://, rediss://, {SENTINEL_SCHEME}:// or "
            f"{CLUSTER_SCHEME}://, not {safe!r}"
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    own, passed = _split_query(query, safe)
    prefix, retention_s = _own_options(own, safe)
    if scheme in ("redis", "rediss"):
        return _standalone(url, safe, prefix, retention_s)
    userinfo, at, hosts = netloc.rpartition("@")
    nodes = _nodes(hosts, _DEFAULT_PORTS[scheme], safe)
    path_parts = [part for part in path.split("/") if part]
    service: str | None = None
    if scheme == SENTINEL_SCHEME:
        if not path_parts:
            raise ConfigurationError(
                f"{safe!r} names no master: {SENTINEL_SCHEME}://host:26379[,host2:26379]"
                "/MASTER_NAME[/db] (the name the sentinels monitor)"
            )
        service = unquote(path_parts.pop(0))
    db = _db(path_parts, safe)
    if scheme == CLUSTER_SCHEME and db != 0:
        raise ConfigurationError(f"a Redis Cluster has database 0 only, not {db} ({safe!r})")
    sentinel_options = {
        _SENTINEL_OPTIONS[name]: value for name, value in passed if name in _SENTINEL_OPTIONS
    }
    node_query = urlencode([(n, v) for n, v in passed if n not in _SENTINEL_OPTIONS])
    # redis-py's own URL parser types the options (socket_timeout=2.5 -> 2.5).
    options = _redis_py_options(
        f"redis://{userinfo}{at}placeholder/{db}?{node_query}", safe, drop=("host", "port")
    )
    if scheme == CLUSTER_SCHEME:
        options.pop("db", None)
    return Target(
        kind="sentinel" if scheme == SENTINEL_SCHEME else "cluster",
        redis_url="",
        nodes=nodes,
        service=service,
        db=db,
        options=options,
        sentinel_options=sentinel_options,
        prefix=prefix,
        retention_s=retention_s,
    )


def _standalone(url: str, safe: str, prefix: str, retention_s: float) -> Target:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis store URL {safe!r}: {exc}") from None
    db = _db([part for part in parts.path.split("/") if part], safe)
    rest = [
        (n, v) for n, v in parse_qsl(parts.query, keep_blank_values=True) if n not in _OWN_OPTIONS
    ]
    # ``redis://`` alone means the local default server, as with redis-py.
    redis_url = urlunsplit(
        parts._replace(netloc=parts.netloc or "localhost", query=urlencode(rest))
    )
    return Target(
        kind="standalone",
        redis_url=redis_url,
        nodes=(),
        service=None,
        db=db,
        options={},
        sentinel_options={},
        prefix=prefix,
        retention_s=retention_s,
    )


def _split_query(query: str, safe: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    own: dict[str, str] = {}
    passed: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _OWN_OPTIONS:
            own[name] = value
        elif name in _RESERVED_OPTIONS:
            raise ConfigurationError(
                f"{name} is set by connector-resilience; remove it from {safe!r}"
            )
        else:
            passed.append((name, value))
    return own, passed


def _own_options(own: dict[str, str], safe: str) -> tuple[str, float]:
    prefix = own.get("prefix", DEFAULT_PREFIX)
    if not prefix or any(ch.isspace() or ch in "{}" for ch in prefix):
        raise ConfigurationError(
            f"the key prefix in {safe!r} must be non-empty, without spaces or braces "
            "(braces would move keys between Cluster slots)"
        )
    try:
        retention_s = float(own.get("retention_s", DEFAULT_RETENTION_S))
    except ValueError:
        retention_s = -1.0
    if not retention_s > 0 or retention_s == float("inf"):
        raise ConfigurationError(f"retention_s in {safe!r} must be a positive number of seconds")
    return prefix, retention_s


def _db(path_parts: list[str], safe: str) -> int:
    if len(path_parts) > 1:
        raise ConfigurationError(f"too many path parts in {safe!r}")
    text = path_parts[0] if path_parts else "0"
    if not text.isdigit():
        raise ConfigurationError(f"the Redis database in {safe!r} must be a number, not {text!r}")
    return int(text)


def _nodes(hosts: str, default_port: int, safe: str) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        if not item:
            continue
        if item.startswith("["):  # [IPv6]:port
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            port = -1
        if not host or not 0 < port < 65536:
            raise ConfigurationError(f"bad host:port {item!r} in {safe!r}")
        nodes.append((host, port))
    if not nodes:
        raise ConfigurationError(f"{safe!r} names no host")
    return tuple(nodes)


def _redis_py_options(url: str, safe: str, *, drop: tuple[str, ...]) -> dict[str, Any]:
    try:
        options = _parse_redis_url(url)
    except ValueError as exc:
        raise ConfigurationError(f"bad option in Redis store URL {safe!r}: {exc}") from None
    for name in drop:
        options.pop(name, None)
    return options


def _parse_redis_url(url: str) -> dict[str, Any]:
    """redis-py's own reading of a ``redis://`` URL into connection options."""
    options: dict[str, Any] = dict(_PARSE_URL(url))
    return options


_PARSE_URL: Any = redis.connection.parse_url


def password_of(target: Target) -> list[str]:
    """Every secret the target holds (to scrub them from error messages)."""
    found = [target.options.get("password"), target.sentinel_options.get("password")]
    if target.redis_url:
        password = urlsplit(target.redis_url).password
        found.append(unquote(password) if password else None)
    return [str(secret) for secret in found if secret]
