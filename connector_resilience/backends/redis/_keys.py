"""Every Redis name the store uses: one connector's keys share one Cluster hash slot."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeyLayout", "hash_tag"]

# Braces delimit a hash tag and ``%`` escapes them, so a connector named
# ``a}b`` still gets one slot of its own; an empty name gets a tag too
# (``{}`` would hash the whole key, splitting its keys over slots).
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def hash_tag(connector: str) -> str:
    """``{...}``: the part of a connector's keys that Redis Cluster hashes to a slot."""
    return "{" + (connector.translate(_ESCAPES) or "%") + "}"


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The keys and channel under one prefix and database.

    A connector's keys are ``<prefix>:{<connector>}:<kind>``: every script
    touches the keys of one connector only, so on a Cluster it runs on one
    node, atomically. Listings across connectors read the three index sets,
    each a key of its own.

    Attributes:
        prefix: the URL's ``prefix``.
        db: the database number.
    """

    prefix: str
    db: int

    def circuit(self, connector: str) -> str:
        """Hash: ``version`` and ``record`` (JSON) of the connector's breaker."""
        return f"{self.prefix}:{hash_tag(connector)}:circuit"

    def token(self, connector: str) -> str:
        """String: the connector's OAuth2 token (JSON)."""
        return f"{self.prefix}:{hash_tag(connector)}:token"

    def calls(self, connector: str) -> str:
        """Sorted set: batches of call records, scored by their newest call."""
        return f"{self.prefix}:{hash_tag(connector)}:calls"

    def batches(self, connector: str, writer: str) -> str:
        """Sorted set: one writer's batch numbers already applied (exactly-once appends)."""
        return f"{self.prefix}:{hash_tag(connector)}:batches:{writer}"

    def token_lock(self, connector: str) -> str:
        """String: the token refresh lock (redis-py's ``Lock``)."""
        return f"{self.prefix}:{hash_tag(connector)}:token-lock"

    def limits(self, key: str) -> str:
        """One load-control state (a retry budget, a token bucket, a bulkhead's leases).

        Each script touches this one key only, so on a Cluster it runs on the
        node of its slot, atomically.
        """
        return f"{self.prefix}:limits:{key}"

    @property
    def circuit_index(self) -> str:
        """Set: connectors with a circuit record."""
        return f"{self.prefix}:index:circuits"

    @property
    def token_index(self) -> str:
        """Set: connectors with a token."""
        return f"{self.prefix}:index:tokens"

    @property
    def call_index(self) -> str:
        """Set: connectors with call metrics."""
        return f"{self.prefix}:index:calls"

    @property
    def circuit_channel(self) -> str:
        """The channel breaker changes are published on.

        Channels are server-wide, not per database: the db keeps two apps
        that share a prefix in different databases apart.
        """
        return f"{self.prefix}:circuit-changed:{self.db}"

    @property
    def key_pattern(self) -> str:
        """The glob every key matches (what an ACL rule grants)."""
        return f"{self.prefix}:*"
