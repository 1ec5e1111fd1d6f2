"""``redis://`` and ``rediss://``: one store shared by many processes on many hosts.

URL: ``redis[s]://[[user]:password@]host[:port][/db][?prefix=myapp&retention_s=604800]``.
``prefix`` (default ``connector-resilience``) namespaces every key and the
change channel, so two applications on one Redis never collide;
``retention_s`` (default 7 days) is how long call metrics are kept. Any other
query option goes to redis-py (``socket_timeout``, ``ssl_ca_certs``, ...).

Keys, under ``<prefix>:``:

=========================  ==========================================================
``circuits``               hash: connector -> circuit record (JSON)
``circuit-versions``       hash: connector -> record version (what compare-and-set checks)
``tokens``                 hash: connector -> token mapping (JSON)
``calls:<connector>``      sorted set of call records scored by their time
``call-connectors``        set: connectors with metrics
``lock:token:<connector>`` the token refresh lock (redis-py's Lock)
=========================  ==========================================================

A breaker transition is one Lua script (compare the version, write, publish
the connector's name on ``<prefix>:circuit-changed:<db>``), so it is atomic and
takes one round trip. :meth:`RedisStore.now` is Redis's clock. Every Redis
failure raises :class:`~connector_resilience.errors.StoreError` within about a
second, naming the URL without its password; the next call reconnects.
"""

from __future__ import annotations

from connector_resilience.backends.redis._store import (
    ANY_CONNECTOR,
    DEFAULT_PREFIX,
    DEFAULT_RETENTION_S,
    RedisStore,
)

__all__ = ["ANY_CONNECTOR", "DEFAULT_PREFIX", "DEFAULT_RETENTION_S", "RedisStore"]
