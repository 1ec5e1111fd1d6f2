"""Least privilege: the exact ACL rights the store needs, and a check of them that runs nothing.

Each right is probed by queueing a command inside ``MULTI`` and then
``DISCARD``-ing the lot: Redis checks the user's command, key and channel
rights when it queues a command, so a missing right answers ``NOPERM`` while
nothing is ever executed. The probe needs ``+multi +discard`` itself, which
the rules below include.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError, ResponseError

from connector_resilience.backends.redis._keys import KeyLayout
from connector_resilience.backends.redis._target import Kind

__all__ = ["Right", "missing_rights", "probe_groups", "required_rights", "rules"]

#: A connector name used only to build probe keys (probes never run).
_PROBE_CONNECTOR = "acl-check"


@dataclass(frozen=True, slots=True)
class Right:
    """One command the store runs, what for, and how to probe for it.

    Attributes:
        command: the ACL command name (``zadd``, ``script|load``).
        purpose: what the store uses it for.
        probe: the command to queue, with ``{circuit}``-style placeholders
            for the probe keys (see :func:`probe_groups`).
    """

    command: str
    purpose: str
    probe: tuple[str, ...]


_COMMON: tuple[Right, ...] = (
    Right("hget", "read a circuit record", ("HGET", "{circuit}", "record")),
    Right(
        "hset",
        "write a circuit record (in the compare-and-set script)",
        ("HSET", "{circuit}", "version", "0"),
    ),
    Right("get", "read a token; the token lock", ("GET", "{token}")),
    Right("set", "save a token; take the token lock (SET NX PX)", ("SET", "{token}", "0")),
    Right("del", "release the token lock (in redis-py's release script)", ("DEL", "{lock}")),
    Right(
        "eval",
        "run a script whose SHA the server does not know",
        ("EVAL", "return 0", "1", "{circuit}"),
    ),
    Right("evalsha", "run the store's scripts", ("EVALSHA", "0" * 40, "1", "{circuit}")),
    Right("script|load", "load a script after a server restart", ("SCRIPT", "LOAD", "return 0")),
    Right(
        "zadd",
        "append call metrics; record applied batch numbers",
        ("ZADD", "{calls}", "0", "probe"),
    ),
    Right("zrangebyscore", "read call metrics by time", ("ZRANGEBYSCORE", "{calls}", "0", "1")),
    Right(
        "zremrangebyscore",
        "trim metrics past the retention",
        ("ZREMRANGEBYSCORE", "{calls}", "0", "1"),
    ),
    Right("zrem", "compact metrics", ("ZREM", "{calls}", "probe")),
    Right("zcard", "compact metrics", ("ZCARD", "{calls}")),
    Right(
        "zscore",
        "skip a batch already applied (exactly-once appends)",
        ("ZSCORE", "{batches}", "1"),
    ),
    Right("expire", "let metrics expire after the retention", ("EXPIRE", "{calls}", "1")),
    Right("exists", "compact: keep the index right", ("EXISTS", "{calls}")),
    Right("sadd", "index connectors", ("SADD", "{index}", "probe")),
    Right("smembers", "list connectors", ("SMEMBERS", "{index}")),
    Right("srem", "forget connectors with no metrics left", ("SREM", "{index}", "probe")),
    Right("scard", "count circuits and tokens (compact)", ("SCARD", "{index}")),
    Right(
        "publish",
        "announce a breaker change (in the script, before its write)",
        ("PUBLISH", "{channel}", "probe"),
    ),
    Right("subscribe", "hear breaker changes", ("SUBSCRIBE", "{channel}")),
    Right("ping", "check that the change feed still delivers", ("PING",)),
    Right("time", "time breakers and load control by Redis's clock", ("TIME",)),
    Right("hgetall", "read a load-control state", ("HGETALL", "{circuit}")),
    Right("hincrby", "count calls and retries (retry budget)", ("HINCRBY", "{circuit}", "n", "0")),
    Right("hdel", "forget old budget slots", ("HDEL", "{circuit}", "probe")),
    Right("pexpire", "let idle load-control state expire", ("PEXPIRE", "{circuit}", "1")),
    Right("zrange", "read a bulkhead's leases", ("ZRANGE", "{circuit}", "0", "0")),
    Right("multi", "this check of the rights at open", ()),
    Right("discard", "this check of the rights at open", ()),
)
_CLUSTER: tuple[Right, ...] = (
    Right("cluster|slots", "learn which node serves which slot (redis-py)", ("CLUSTER", "SLOTS")),
    Right("command", "learn where each command's keys are (redis-py)", ("COMMAND",)),
)


def required_rights(kind: Kind) -> tuple[Right, ...]:
    """Every command right the store needs on a deployment of this shape."""
    return _COMMON + _CLUSTER if kind == "cluster" else _COMMON


def rules(layout: KeyLayout, kind: Kind) -> str:
    """The ACL rules for the store's user, as ``ACL SETUSER name on >password RULES`` takes them."""
    commands = " ".join(f"+{right.command}" for right in required_rights(kind))
    return (
        f"resetkeys ~{layout.key_pattern} resetchannels &{layout.circuit_channel} -@all {commands}"
    )


def probe_groups(
    layout: KeyLayout, kind: Kind
) -> list[tuple[str, list[tuple[Right, tuple[str, ...]]]]]:
    """``[(routing key, [(right, command)])]``: one ``MULTI`` per group.

    On a Cluster every key queued in one ``MULTI`` must be in one slot, so
    the connector's keys and the index form two groups.
    """
    values = {
        "{circuit}": layout.circuit(_PROBE_CONNECTOR),
        "{token}": layout.token(_PROBE_CONNECTOR),
        "{lock}": layout.token_lock(_PROBE_CONNECTOR),
        "{calls}": layout.calls(_PROBE_CONNECTOR),
        "{batches}": layout.batches(_PROBE_CONNECTOR, "probe"),
        "{index}": layout.circuit_index,
        "{channel}": layout.circuit_channel,
    }
    connector_group: list[tuple[Right, tuple[str, ...]]] = []
    index_group: list[tuple[Right, tuple[str, ...]]] = []
    for right in required_rights(kind):
        if not right.probe:
            continue
        command = tuple(values.get(part, part) for part in right.probe)
        (index_group if "{index}" in right.probe else connector_group).append((right, command))
    return [(values["{circuit}"], connector_group), (values["{index}"], index_group)]


def missing_rights(
    connection: Any, group: Sequence[tuple[Right, tuple[str, ...]]], layout: KeyLayout
) -> list[str]:
    """Queue every command of ``group`` on ``connection`` in one ``MULTI``, then discard.

    Returns:
        What is missing, as ACL rules (``+zadd``, ``~prefix:*``, ``&channel``);
        empty when every right is there.

    Raises:
        redis.RedisError, OSError: Redis could not be asked.
    """
    missing: list[str] = []
    denied = _queue(connection, ("MULTI",))
    if denied is not None:
        return ["+multi", "+discard"]
    try:
        for right, command in group:
            denied = _queue(connection, command)
            if denied is not None:
                missing.append(_rule_for(denied, right, layout))
    finally:
        _queue(connection, ("DISCARD",))
    return _unique(missing)


def _queue(connection: Any, command: tuple[str, ...]) -> str | None:
    """Send one command; the NOPERM message if refused, else None."""
    connection.send_command(*command)
    try:
        connection.read_response()
    except NoPermissionError as exc:
        return str(exc) or "NOPERM"
    except ResponseError as exc:
        if str(exc).startswith("NOPERM"):
            return str(exc)
    return None


def _rule_for(message: str, right: Right, layout: KeyLayout) -> str:
    text = message.lower()
    if "channel" in text:
        return f"&{layout.circuit_channel}"
    if "key" in text:
        return f"~{layout.key_pattern}"
    return f"+{right.command}"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
