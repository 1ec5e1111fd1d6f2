"""Clients for each deployment shape, and the check at open that the shape and rights are right."""

from __future__ import annotations

from typing import Any, Final, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from connector_resilience.backends.redis import _acl
from connector_resilience.backends.redis._keys import KeyLayout
from connector_resilience.backends.redis._target import CLUSTER_SCHEME, SENTINEL_SCHEME, Target
from connector_resilience.errors import ConfigurationError

__all__ = ["AsyncClient", "SyncClient", "async_client", "sync_client", "verify"]

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

#: Short timeouts: a store fault must reach the caller (who falls back to
#: local state) in about a second, not after the OS gives up on a socket.
#: A URL may set others (``?socket_timeout=2``).
CONNECT_TIMEOUT_S: Final = 0.5
SOCKET_TIMEOUT_S: Final = 1.0
_TIMEOUTS: Final[dict[str, Any]] = {
    "socket_connect_timeout": CONNECT_TIMEOUT_S,
    "socket_timeout": SOCKET_TIMEOUT_S,
}
# redis-py leaves these untyped; the store types what it gets back.
_Sentinel: Any = redis.sentinel.Sentinel
_AsyncSentinel: Any = redis.asyncio.sentinel.Sentinel
_ClusterNode: Any = redis.cluster.ClusterNode
_AsyncClusterNode: Any = redis.asyncio.cluster.ClusterNode


def _options(target: Target) -> dict[str, Any]:
    return {**_TIMEOUTS, **target.options, "decode_responses": True}


def _sentinel_options(target: Target) -> dict[str, Any]:
    return {**_TIMEOUTS, **target.sentinel_options}


def sync_client(target: Target) -> SyncClient:
    """A redis-py client for ``target``; no connection is made yet, except to a Cluster.

    Raises:
        ConfigurationError: an option redis-py does not know.
        redis.RedisError: a Cluster could not be reached to learn its slots.
    """
    # One immediate retry on a dropped connection: after a Redis restart
    # (or a failover) every pooled connection is dead, and the retry reconnects.
    retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    try:
        if target.kind == "standalone":
            client: redis.Redis = redis.Redis.from_url(
                target.redis_url, retry=retry, **{**_TIMEOUTS, "decode_responses": True}
            )
        elif target.kind == "sentinel":
            sentinel = _Sentinel(
                list(target.nodes), sentinel_kwargs=_sentinel_options(target), **_TIMEOUTS
            )
            client = sentinel.master_for(target.service, retry=retry, **_options(target))
        else:
            return _cluster_client(target)
        pool = client.connection_pool
        # Built but not connected: an unknown URL option fails here, not on first use.
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"bad option in a Redis store URL: {exc}") from None
    return client


def _cluster_client(target: Target) -> redis.cluster.RedisCluster:
    # Built but not connected first: an unknown URL option fails here, not
    # as "cannot connect" (a Cluster client connects as it is built).
    cast(Any, redis.Connection)(**{**_options(target), "host": "localhost"})
    nodes = [_ClusterNode(host, port) for host, port in target.nodes]
    try:
        return redis.cluster.RedisCluster(startup_nodes=nodes, **_options(target))
    except RedisClusterException as exc:
        if "not enabled" in str(exc):
            raise ConfigurationError(
                f"a redis+cluster:// store URL names a server that is not a Cluster ({exc}); "
                "use redis://HOST:PORT/DB"
            ) from None
        raise


def async_client(target: Target) -> AsyncClient:
    """The asyncio twin of :func:`sync_client` (connects on first use, whatever the shape)."""
    retry = redis.asyncio.retry.Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    if target.kind == "standalone":
        return redis.asyncio.Redis.from_url(
            target.redis_url, retry=retry, **{**_TIMEOUTS, "decode_responses": True}
        )
    if target.kind == "sentinel":
        sentinel = _AsyncSentinel(
            list(target.nodes), sentinel_kwargs=_sentinel_options(target), **_TIMEOUTS
        )
        return cast(
            redis.asyncio.Redis,
            sentinel.master_for(target.service, retry=retry, **_options(target)),
        )
    nodes = [_AsyncClusterNode(host, port) for host, port in target.nodes]
    return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **_options(target))


def server_mode(client: SyncClient) -> tuple[str, str]:
    """``(mode, role)`` from ``HELLO`` (which needs no ACL right).

    Mode is standalone, cluster or sentinel; role master or replica.
    """
    node: Any = client
    if isinstance(client, redis.cluster.RedisCluster):
        node = client.get_redis_connection(cast(Any, client).get_default_node())
    reply = node.execute_command("HELLO")
    if isinstance(reply, list):  # RESP2: a flat list of names and values
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    return str(reply.get("mode", "standalone")), str(reply.get("role", "master"))


def check_shape(target: Target, mode: str, role: str, *, describe: str) -> None:
    """Refuse a shape the URL does not fit, saying which URL would.

    Raises:
        ConfigurationError: a Sentinel or a replica behind ``redis://``, a
            Cluster named by ``redis+sentinel://``, ...
    """
    if mode == "sentinel":
        raise ConfigurationError(
            f"Redis store {describe} points at a Sentinel, not a data node: use "
            f"{SENTINEL_SCHEME}://HOST:26379[,HOST2:26379]/MASTER_NAME/DB"
        )
    if mode == "cluster" and target.kind == "sentinel":
        raise ConfigurationError(
            f"Redis store {describe}: the sentinels name a Cluster node; a Cluster is "
            f"opened with {CLUSTER_SCHEME}://HOST:PORT[,HOST2:PORT]"
        )
    if mode != "cluster" and target.kind == "cluster":
        raise ConfigurationError(
            f"Redis store {describe} is not a Cluster (the server runs {mode}); "
            "use redis://HOST:PORT/DB"
        )
    if role not in ("master", "primary"):
        raise ConfigurationError(
            f"Redis store {describe} points at a read-only {role}: point it at the master, "
            f"or at the sentinels ({SENTINEL_SCHEME}://...) to follow failovers"
        )


def check_sentinels(target: Target, *, describe: str) -> None:
    """Refuse a master name no reachable sentinel knows (sentinels all down: nothing to say).

    Raises:
        ConfigurationError: the sentinels answer but monitor no such master,
            or the hosts are not sentinels.
    """
    known: set[str] = set()
    answered = False
    for host, port in target.nodes:
        sentinel = redis.Redis(host=host, port=port, **_sentinel_options(target))
        try:
            masters: Any = sentinel.sentinel_masters()
        except redis.ResponseError as exc:
            raise ConfigurationError(
                f"Redis store {describe}: {host}:{port} is not a sentinel ({exc})"
            ) from None
        except (redis.RedisError, OSError):
            continue
        finally:
            sentinel.close()
        answered = True
        known.update(masters)
    if answered and target.service not in known:
        raise ConfigurationError(
            f"Redis store {describe}: the sentinels monitor no master named "
            f"{target.service!r}; they know: {', '.join(sorted(known)) or 'none'}"
        )


def check_rights(client: SyncClient, target: Target, layout: KeyLayout, *, describe: str) -> None:
    """Probe every right the store needs (nothing runs) and refuse a user who lacks one.

    Raises:
        ConfigurationError: naming each missing right and the full rules to grant.
        redis.RedisError, OSError: Redis could not be asked.
    """
    missing: list[str] = []
    for routing_key, group in _acl.probe_groups(layout, target.kind):
        node: redis.Redis
        if isinstance(client, redis.cluster.RedisCluster):
            node = client.get_redis_connection(cast(Any, client).get_node_from_key(routing_key))
        else:
            node = client
        pool = node.connection_pool
        connection = pool.get_connection()
        try:
            missing += _acl.missing_rights(connection, group, layout)
        except BaseException:
            cast(Any, connection).disconnect()  # mid-MULTI: never hand it back half-way
            raise
        finally:
            pool.release(connection)
    if missing:
        user = target.options.get("username") or _username(client) or "default"
        raise ConfigurationError(
            f"Redis store {describe}: ACL user {user!r} lacks rights the store needs: "
            f"{' '.join(dict.fromkeys(missing))}. Grant all of them with: ACL SETUSER {user} "
            f"{_acl.rules(layout, target.kind)}"
        )


def _username(client: SyncClient) -> str | None:
    if isinstance(client, redis.cluster.RedisCluster):
        return None
    name = client.connection_pool.connection_kwargs.get("username")
    return str(name) if name else None


def verify(client: SyncClient, target: Target, layout: KeyLayout, *, describe: str) -> str:
    """Check the deployment's shape and the user's rights; return the server's mode.

    Raises:
        ConfigurationError: the shape does not fit the URL, or a right is missing.
        redis.RedisError, OSError: Redis could not be reached (nothing was decided).
    """
    if target.kind == "sentinel":
        check_sentinels(target, describe=describe)
    mode, role = server_mode(client)
    if mode == "cluster" and target.kind == "standalone":
        return mode  # the caller switches to a Cluster client, then checks again
    check_shape(target, mode, role, describe=describe)
    check_rights(client, target, layout, describe=describe)
    return mode
