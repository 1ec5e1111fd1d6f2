"""Redis stores: one state shared by many processes on many hosts.

URLs (see docs/redis.md for every option):

* ``redis[s]://[[user]:password@]host[:port][/db][?prefix=myapp&retention_s=604800]``:
  one server, or a managed primary endpoint. A Cluster node named this way
  is detected at open and talked to as a Cluster.
* ``redis+sentinel://[[user]:password@]host:26379[,host2:26379]/MASTER[/db]``:
  the master the sentinels monitor, followed through failovers
  (``sentinel_username`` / ``sentinel_password`` options for the sentinels).
* ``redis+cluster://[[user]:password@]host:port[,host2:port]``: a Redis Cluster.

``prefix`` (default ``connector-resilience``) namespaces every key and the
change channel; ``retention_s`` (default 7 days) is how long call metrics are
kept. Any other query option goes to redis-py (``socket_timeout``,
``ssl_ca_certs``, ...).

Every key of one connector is ``<prefix>:{<connector>}:<kind>`` (see
:class:`KeyLayout`), in one Cluster hash slot, so each script (a breaker
compare-and-set, an exactly-once metrics append) is atomic on every shape.
At open the store checks that the server fits the URL and that the user has
every right :func:`acl_rules` lists, and raises ``ConfigurationError``
naming what is wrong. Every Redis failure later raises
:class:`~connector_resilience.errors.StoreError` within about a second,
naming the URL without its password; the next call reconnects.
"""

from __future__ import annotations

from connector_resilience.backends.redis._acl import rules as _rules
from connector_resilience.backends.redis._keys import KeyLayout
from connector_resilience.backends.redis._store import (
    ANY_CONNECTOR,
    DEFAULT_PREFIX,
    DEFAULT_RETENTION_S,
    RedisStore,
)
from connector_resilience.backends.redis._target import parse_target as _parse_target
from connector_resilience.backends.redis._watch import SILENCE_BOUND_S

__all__ = [
    "ANY_CONNECTOR",
    "DEFAULT_PREFIX",
    "DEFAULT_RETENTION_S",
    "SILENCE_BOUND_S",
    "KeyLayout",
    "RedisStore",
    "acl_rules",
]


def acl_rules(url: str) -> str:
    """The ACL rules a store at ``url`` needs, for ``ACL SETUSER <user> on >password <rules>``.

    Exactly what the store uses: its keys by prefix, its change channel, and
    each command it runs (Cluster URLs add what redis-py needs to find slots).
    Nothing is connected.

    Raises:
        ConfigurationError: a malformed URL.
    """
    target = _parse_target(url)
    return _rules(KeyLayout(target.prefix, target.db), target.kind)
