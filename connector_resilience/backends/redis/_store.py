"""The Redis store itself: breaker CAS scripts, tokens, metrics and the token lock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript, Script
from redis.exceptions import LockError, RedisError
from redis.retry import Retry

from connector_resilience import _clock
from connector_resilience.backends import (
    DEFAULT_LOCK_LEASE_S,
    PARSE_ERRORS,
    CallRecord,
    CircuitRecord,
    LeaseGrant,
    StoreStats,
    TokenGrant,
    redact_url,
)
from connector_resilience.backends.redis import _limit_scripts
from connector_resilience.backends.redis._clock import ServerClock
from connector_resilience.backends.redis._watch import ANY_CONNECTOR, CircuitWatcher
from connector_resilience.errors import ConfigurationError, StoreError

__all__ = ["ANY_CONNECTOR", "DEFAULT_PREFIX", "DEFAULT_RETENTION_S", "RedisStore"]

logger = logging.getLogger("connector_resilience.store")

DEFAULT_PREFIX: Final = "connector-resilience"
DEFAULT_RETENTION_S: Final = 7 * 86400.0

#: Short timeouts: a store fault must reach the caller (who falls back to
#: local state) in about a second, not after the OS gives up on a socket.
#: A URL may set others (``?socket_timeout=2``).
_CONNECT_TIMEOUT_S: Final = 0.5
_SOCKET_TIMEOUT_S: Final = 1.0
#: Options this module sets itself; a URL may not change them.
_RESERVED_OPTIONS: Final = frozenset({"decode_responses", "encoding", "encoding_errors"})
#: How often the token lock polls while another process holds it.
_LOCK_POLL_S: Final = 0.01
#: Redis counts a lease in whole milliseconds; a zero lease is an error.
_MIN_LEASE_S: Final = 0.001

# KEYS: circuits hash, versions hash. ARGV: connector, expected version,
# new version, record JSON, channel. Publishing inside the script makes the
# notification part of the same atomic step as the write.
_COMPARE_AND_SET_LUA: Final = """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) then
    return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 1
"""

# KEYS: one connector's calls, the call-connectors set. ARGV: cutoff, connector.
# The connector leaves the index only if its set is empty at that instant, so
# a concurrent append is never orphaned.
_TRIM_LUA: Final = """
local dropped = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local kept = redis.call('ZCARD', KEYS[1])
if kept == 0 then
    redis.call('SREM', KEYS[2], ARGV[2])
end
return {dropped, kept}
"""


# Record ids: a random token per process and a counter. Members of a sorted
# set are unique, so two equal records (same time, same everything) need ids
# to both be kept; a forked child draws a new token so it never repeats its
# parent's ids.
_record_token = secrets.token_hex(8)
_record_sequence = itertools.count()


def _new_record_token() -> None:
    global _record_token, _record_sequence  # noqa: PLW0603 - per-process state, reset on fork
    _record_token = secrets.token_hex(8)
    _record_sequence = itertools.count()


os.register_at_fork(after_in_child=_new_record_token)


#: The fields of a stored call, in order (the connector is the key's).
_ROW_FIELDS: Final = (
    "ts",
    "operation",
    "duration_ms",
    "status",
    "error",
    "attempt",
    "final",
    "labels",
    "calls",
)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _batch_member(rows: list[list[Any]]) -> dict[str, float]:
    """``{member: score}`` for a batch of rows: an id (members are unique) and the rows."""
    return {_ENCODER.encode([_next_record_id(), rows]): max(float(row[0]) for row in rows)}


def _batch_rows(member: str | bytes) -> list[Any]:
    """The rows of a batch member; ``ValueError`` if it is not one."""
    value = json.loads(member)
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
        raise ValueError("not a batch of calls")
    rows: list[Any] = value[1]
    return rows


def _next_record_id() -> str:
    return f"{_record_token}-{next(_record_sequence)}"


def _text(value: str | bytes) -> str:
    """A reply as text (replies are decoded already; this satisfies the types)."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class _Keys:
    """Every Redis name the store uses, derived from the prefix and db."""

    prefix: str
    db: int

    @property
    def circuits(self) -> str:
        return f"{self.prefix}:circuits"

    @property
    def circuit_versions(self) -> str:
        return f"{self.prefix}:circuit-versions"

    @property
    def circuit_channel(self) -> str:
        # Channels are server-wide, not per database: the db keeps two apps
        # that share a prefix in different databases apart.
        return f"{self.prefix}:circuit-changed:{self.db}"

    @property
    def tokens(self) -> str:
        return f"{self.prefix}:tokens"

    @property
    def call_connectors(self) -> str:
        return f"{self.prefix}:call-connectors"

    def calls(self, connector: str) -> str:
        return f"{self.prefix}:calls:{connector}"

    def token_lock(self, connector: str) -> str:
        return f"{self.prefix}:lock:token:{connector}"


@dataclass(frozen=True, slots=True)
class _Options:
    redis_url: str
    prefix: str
    retention_s: float


def _parse_url(url: str) -> _Options:
    """Split our own options off the URL; the rest is redis-py's."""
    safe = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis store URL {safe!r}: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"a Redis store URL starts redis:// or rediss://, not {safe!r}")
    db_text = parts.path.strip("/")
    if db_text and not db_text.isdigit():
        raise ConfigurationError(
            f"the Redis database in {safe!r} must be a number, not {db_text!r}"
        )
    own: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("prefix", "retention_s"):
            own[name] = value
        elif name in _RESERVED_OPTIONS:
            raise ConfigurationError(
                f"{name} is set by connector-resilience; remove it from {safe!r}"
            )
        else:
            rest.append((name, value))
    prefix = own.get("prefix", DEFAULT_PREFIX)
    if not prefix or any(ch.isspace() for ch in prefix):
        raise ConfigurationError(f"the key prefix in {safe!r} must be non-empty, without spaces")
    try:
        retention_s = float(own.get("retention_s", DEFAULT_RETENTION_S))
    except ValueError:
        retention_s = -1.0
    if not retention_s > 0 or retention_s == float("inf"):
        raise ConfigurationError(f"retention_s in {safe!r} must be a positive number of seconds")
    # ``redis://`` alone means the local default server, as with redis-py.
    redis_url = urlunsplit(
        parts._replace(netloc=parts.netloc or "localhost", query=urlencode(rest))
    )
    return _Options(redis_url=redis_url, prefix=prefix, retention_s=retention_s)


@dataclass(slots=True)
class _AsyncClient:
    """The asyncio client of one event loop (redis.asyncio clients are bound to theirs)."""

    loop: asyncio.AbstractEventLoop
    client: redis.asyncio.Redis
    compare_and_set: AsyncScript
    closer: AsyncGenerator[None, None]


async def _close_with_loop(client: redis.asyncio.Redis) -> AsyncGenerator[None, None]:
    """Closes ``client`` when its event loop shuts down.

    A loop run by ``asyncio.run`` (or an ``asyncio.Runner``, as pytest-asyncio
    uses) closes every unfinished async generator before it closes; this one
    is kept unfinished on purpose, so the client's connections are closed in
    their own loop instead of leaking when the loop is gone.
    """
    try:
        yield
    finally:
        await client.aclose()


async def _finish(closer: AsyncGenerator[None, None]) -> None:
    await closer.aclose()


class RedisStore:
    """A store in Redis, shared by every process and host that opens the same URL.

    Args:
        url: ``redis://`` or ``rediss://`` URL (see the module documentation).

    Raises:
        ConfigurationError: a malformed URL or an option redis-py does not know.
    """

    def __init__(self, url: str) -> None:
        options = _parse_url(url)
        #: The URL with its password replaced by ``***``.
        self.url = redact_url(url)
        self.prefix = options.prefix
        self.retention_s = options.retention_s
        self.stats = StoreStats()
        self._redis_url = options.redis_url
        self._client = self._sync_client()
        db = int(self._client.connection_pool.connection_kwargs.get("db") or 0)
        self._keys = _Keys(self.prefix, db)
        self._password = self._client.connection_pool.connection_kwargs.get("password") or ""
        self._compare_and_set = self._client.register_script(_COMPARE_AND_SET_LUA)
        self._trim = self._client.register_script(_TRIM_LUA)
        self._limit_scripts = {n: self._client.register_script(s) for n, s in _LIMIT_LUA.items()}
        self._alimit_scripts: dict[str, AsyncScript] = {}
        self._clock = ServerClock(self._read_server_time, describe=self.url)
        self._watcher = CircuitWatcher(self._client, self._keys.circuit_channel, describe=self.url)
        self._async_clients: dict[asyncio.AbstractEventLoop, _AsyncClient] = {}

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Open a store from a ``redis://`` or ``rediss://`` URL."""
        return cls(url)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    # Connections --------------------------------------------------------

    def _sync_client(self) -> redis.Redis:
        # One immediate retry on a dropped connection: after a Redis restart
        # every pooled connection is dead, and the retry reconnects.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        try:
            client = redis.Redis.from_url(
                self._redis_url,
                decode_responses=True,
                retry=retry,
                socket_connect_timeout=_CONNECT_TIMEOUT_S,
                socket_timeout=_SOCKET_TIMEOUT_S,
            )
            pool = client.connection_pool
            # Built but not connected: an unknown URL option fails here, not on first use.
            pool.connection_class(**pool.connection_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad option in Redis store URL {self.url!r}: {exc}") from None
        return client

    async def _async_client(self) -> _AsyncClient:
        """This event loop's client, created on first use in it."""
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(loop)
        if entry is not None:
            return entry
        # Clients of loops that have ended can never be used (or closed) again.
        for old in [old for old in self._async_clients if old.is_closed()]:
            del self._async_clients[old]
        retry = redis.asyncio.retry.Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        client = redis.asyncio.Redis.from_url(
            self._redis_url,
            decode_responses=True,
            retry=retry,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
        )
        closer = _close_with_loop(client)
        await anext(closer)  # the loop now knows it, and will close it at shutdown
        entry = _AsyncClient(loop, client, client.register_script(_COMPARE_AND_SET_LUA), closer)
        self._async_clients[loop] = entry
        return entry

    @contextlib.contextmanager
    def _failing_as_store_error(self, what: str) -> Iterator[None]:
        """Turn any Redis failure into a StoreError naming the redacted URL."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StoreError(self._describe_failure(what, exc)) from exc

    def _describe_failure(self, what: str, exc: BaseException) -> str:
        detail = str(exc)
        if self._password:
            detail = detail.replace(self._password, "***")
        return f"Redis store {self.url}: {what} failed ({type(exc).__name__}: {detail})"

    def _read_server_time(self) -> tuple[int, int]:
        seconds, micros = self._client.time()
        return int(seconds), int(micros)

    def now(self) -> float:
        """Redis's clock (``TIME``), estimated locally between readings.

        The offset to Redis is measured on first use (one round trip) and every
        15 s in the background, then carried forward by the local monotonic
        clock: no round trip per reading, and a host whose wall clock is off
        cannot open or close a breaker early. Until Redis has answered once,
        the local wall clock stands in; this never raises.
        """
        return self._clock.now()

    # Circuits -----------------------------------------------------------

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        """The connector's record, or ``None`` (one round trip)."""
        with self._failing_as_store_error("reading a circuit"):
            raw = self._client.hget(self._keys.circuits, connector)
        return self._parse_circuit(connector, raw)

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        """Write ``record`` if the stored version is ``expected_version``, and announce it.

        One atomic script (one round trip); on success every process watching
        this store hears about the change (:meth:`watch_circuits`).
        """
        keys, args = self._compare_and_set_args(connector, expected_version, record)
        with self._failing_as_store_error("updating a circuit"):
            return bool(self._compare_and_set(keys=keys, args=args))

    def _compare_and_set_args(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> tuple[list[str], list[str | int]]:
        if record.version != expected_version + 1:
            raise ValueError("record.version must be expected_version + 1")
        data = json.dumps(record.to_json(), separators=(",", ":"))
        keys = [self._keys.circuits, self._keys.circuit_versions]
        args: list[str | int] = [
            connector,
            expected_version,
            record.version,
            data,
            self._keys.circuit_channel,
        ]
        return keys, args

    def list_circuits(self) -> dict[str, CircuitRecord]:
        """Every readable circuit record (one round trip)."""
        with self._failing_as_store_error("listing circuits"):
            raw = self._client.hgetall(self._keys.circuits)
        out: dict[str, CircuitRecord] = {}
        for name, data in raw.items():
            connector = _text(name)
            record = self._parse_circuit(connector, data)
            if record is not None:
                out[connector] = record
        return out

    def watch_circuits(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(connector)`` whenever any process changes a circuit.

        The callback runs in one background subscriber thread per store,
        usually within a millisecond of the change; exceptions it raises are
        logged. If the subscription drops (Redis restarted), the thread
        resubscribes by itself and then calls ``callback("*")``, meaning
        "changes may have been missed: read every circuit again".
        Waits (at most 1 s) for the first subscription, so a change made after
        this returns is not missed.

        Returns:
            A function that stops this callback.
        """
        return self._watcher.add(callback)

    def _parse_circuit(self, connector: str, raw: str | bytes | None) -> CircuitRecord | None:
        if raw is None:
            return None
        try:
            return CircuitRecord.from_json(json.loads(raw))
        except PARSE_ERRORS:
            self.stats.skipped_lines += 1
            logger.warning("unreadable circuit record for %r in %s; ignored", connector, self.url)
            return None

    # Tokens -------------------------------------------------------------

    def load_token(self, connector: str) -> dict[str, Any] | None:
        """The connector's token mapping, or ``None``."""
        with self._failing_as_store_error("reading a token"):
            raw = self._client.hget(self._keys.tokens, connector)
        return self._parse_token(connector, raw)

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        """Replace the connector's token (as durable as the server's persistence)."""
        data = json.dumps(dict(token), separators=(",", ":"))
        with self._failing_as_store_error("saving a token"):
            self._client.hset(self._keys.tokens, connector, data)

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        """Every readable token mapping."""
        with self._failing_as_store_error("listing tokens"):
            raw = self._client.hgetall(self._keys.tokens)
        out: dict[str, dict[str, Any]] = {}
        for name, data in raw.items():
            connector = _text(name)
            token = self._parse_token(connector, data)
            if token is not None:
                out[connector] = token
        return out

    @contextlib.contextmanager
    def token_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> Iterator[None]:
        """A lock shared by every host, for single-flight token refresh.

        ``timeout_s`` is how long to wait for the lock; ``lease_s`` how long a
        holder keeps it at most: a holder that dies loses the lock when the
        lease ends, by Redis's clock. Only the holder's own token releases it.

        Raises:
            TimeoutError: not acquired within ``timeout_s``.
            StoreError: Redis could not be reached.
        """
        lock = self._client.lock(
            self._keys.token_lock(connector),
            timeout=max(DEFAULT_LOCK_LEASE_S if lease_s is None else lease_s, _MIN_LEASE_S),
            sleep=_LOCK_POLL_S,
            blocking_timeout=timeout_s,
        )
        with self._failing_as_store_error("taking the token lock"):
            acquired = lock.acquire()
        if not acquired:
            raise TimeoutError(f"token lock for {connector!r} not acquired in {timeout_s:g}s")
        try:
            yield
        finally:
            try:
                lock.release()
            except (LockError, RedisError, OSError) as exc:
                self._lock_release_failed(connector, exc)

    def _lock_release_failed(self, connector: str, exc: BaseException) -> None:
        # The lease ends by itself; failing the caller's block for this would be worse.
        if isinstance(exc, LockError):
            logger.warning(
                "store %s: token lock for %r expired before release (the refresh outlasted "
                "its lease); another process may have refreshed too",
                self.url,
                connector,
            )
        else:
            logger.warning(
                "%s; it frees itself when its lease ends",
                self._describe_failure(f"releasing the token lock for {connector!r}", exc),
            )

    def _parse_token(self, connector: str, raw: str | bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            token = json.loads(raw)
        except PARSE_ERRORS:
            token = None
        if not isinstance(token, dict):
            self.stats.skipped_lines += 1
            logger.warning("unreadable token record for %r in %s; ignored", connector, self.url)
            return None
        return token

    # Metrics ------------------------------------------------------------

    def append_calls(self, records: Sequence[CallRecord]) -> None:
        """Add records in one transaction (one round trip), trimming past the retention first."""
        if not records:
            return
        groups = self._members_by_connector(records)
        with self._failing_as_store_error("writing metrics"):
            pipe = self._client.pipeline(transaction=True)
            self._queue_append(pipe, groups)
            pipe.execute()

    def _members_by_connector(self, records: Sequence[CallRecord]) -> dict[str, dict[str, float]]:
        """``{connector: {member: score}}``: one member per connector per batch.

        A member holds a batch's calls as compact JSON arrays (``_ROW_FIELDS``),
        scored by its newest call. Encoding and sending one member per record
        cost ~9 us a record; per batch it is ~1 us. The price: trimming on append
        drops whole batches only, so a batch partly past the retention keeps its
        older calls until ``compact()`` rewrites it (as files keep them too).
        """
        rows: dict[str, list[list[Any]]] = {}
        for r in records:
            rows.setdefault(r.connector, []).append(
                [
                    r.ts,
                    r.operation,
                    r.duration_ms,
                    r.status,
                    r.error,
                    r.attempt,
                    r.final,
                    dict(r.labels) if r.labels else None,
                    r.calls,
                ]
            )
        return {connector: _batch_member(batch) for connector, batch in rows.items()}

    def _queue_append(
        self,
        pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline,
        groups: Mapping[str, Mapping[str, float]],
    ) -> None:
        """The commands of one append, on a sync or asyncio pipeline."""
        # Records are stamped by their writers' wall clocks, and retention is
        # days, not milliseconds: this host's clock is good enough here, and
        # reading it never waits on Redis (which an event loop must not).
        cutoff = _clock.wall() - self.retention_s
        for connector, members in groups.items():
            key = self._keys.calls(connector)
            # Trim before adding, so a batch is never trimmed by its own write.
            pipe.zremrangebyscore(key, "-inf", f"({cutoff!r}")
            pipe.zadd(key, dict(members))
            # A connector no longer called vanishes once all its calls are past retention.
            pipe.expire(key, int(self.retention_s) + 1)
        pipe.sadd(self._keys.call_connectors, *groups)

    def read_calls(
        self, *, since: float, until: float | None = None, connector: str | None = None
    ) -> list[CallRecord]:
        """Records with ``since <= ts < until``, reading only that range of each sorted set.

        One round trip for one connector; two (list connectors, then read them
        all pipelined) for every connector.
        """
        # Batches are scored by their newest call, so every batch holding a call
        # at or after ``since`` has a score >= since; the rows are then filtered.
        start = since
        with self._failing_as_store_error("reading metrics"):
            if connector is not None:
                names = [connector]
            else:
                names = sorted(map(_text, self._client.smembers(self._keys.call_connectors)))
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.zrangebyscore(self._keys.calls(name), repr(float(start)), "+inf")
            batches: list[list[str]] = pipe.execute()
        out: list[CallRecord] = []
        for name, members in zip(names, batches, strict=True):
            out.extend(
                record
                for record in self._parse_calls(name, members)
                if record.ts >= start and (until is None or record.ts < until)
            )
        out.sort(key=lambda r: r.ts)
        return out

    def _parse_calls(self, connector: str, members: list[str]) -> list[CallRecord]:
        """Every readable call in ``members``; unreadable ones are counted and skipped."""
        out: list[CallRecord] = []
        bad = 0
        for member in members:
            try:
                rows = _batch_rows(member)
            except PARSE_ERRORS:
                bad += 1
                continue
            for row in rows:
                try:
                    if not isinstance(row, list) or len(row) != len(_ROW_FIELDS):
                        raise ValueError("not a call record")
                    fields = dict(zip(_ROW_FIELDS, row, strict=True))
                    fields["connector"] = connector
                    out.append(CallRecord.from_json(fields))
                except PARSE_ERRORS:
                    bad += 1
        if bad:
            self.stats.skipped_lines += bad
            logger.warning("skipped %d unreadable metric record(s) in %s", bad, self.url)
        return out

    def connectors(self) -> list[str]:
        """Connectors named in metrics, circuits or tokens (one round trip)."""
        with self._failing_as_store_error("listing connectors"):
            pipe = self._client.pipeline(transaction=False)
            pipe.smembers(self._keys.call_connectors)
            pipe.hkeys(self._keys.circuits)
            pipe.hkeys(self._keys.tokens)
            metrics, circuits, tokens = pipe.execute()
        return sorted({_text(name) for name in (*metrics, *circuits, *tokens)})

    # Maintenance --------------------------------------------------------

    def compact(self, *, metrics_retention_s: float) -> dict[str, int]:
        """Drop metrics older than ``metrics_retention_s`` (by Redis's clock); return counts.

        Circuits and tokens keep one value per connector already, and an
        expired lock lease is removed by Redis itself.
        """
        cutoff = self.now() - metrics_retention_s
        kept = dropped = 0
        with self._failing_as_store_error("compacting metrics"):
            names = sorted(map(_text, self._client.smembers(self._keys.call_connectors)))
            for name in names:
                key = self._keys.calls(name)
                remove: list[str] = []
                rewrite: dict[str, float] = {}
                members: list[Any] = self._client.zrangebyscore(key, "-inf", "+inf")
                for raw in members:
                    member = _text(raw)
                    try:
                        rows = [r for r in _batch_rows(member) if isinstance(r, list) and r]
                    except PARSE_ERRORS:
                        remove.append(member)  # unreadable: nothing in it can be kept
                        continue
                    recent = [r for r in rows if isinstance(r[0], int | float) and r[0] >= cutoff]
                    kept += len(recent)
                    dropped += len(rows) - len(recent)
                    if len(recent) < len(rows):
                        remove.append(member)
                        if recent:
                            rewrite.update(_batch_member(recent).items())
                # Only members read above are touched: a concurrent append stays.
                pipe = self._client.pipeline(transaction=True)
                if remove:
                    pipe.zrem(key, *remove)
                if rewrite:
                    pipe.zadd(key, rewrite)
                pipe.execute()
                # Forget the connector if its set is now empty (atomically, see _TRIM_LUA).
                self._trim(keys=[key, self._keys.call_connectors], args=[repr(cutoff), name])
            circuits = self._client.hlen(self._keys.circuits)
            tokens = self._client.hlen(self._keys.tokens)
        return {
            "metrics_kept": kept,
            "metrics_dropped": dropped,
            "circuits": int(circuits),
            "tokens": int(tokens),
        }

    def close(self) -> None:
        """Stop the change feed and drop connections (a later call reconnects)."""
        self._watcher.stop()
        self._clock.close()
        self._close_async_clients()
        self._client.connection_pool.disconnect()

    def _close_async_clients(self) -> None:
        """Close the asyncio clients whose loops can still run their close."""
        entries, self._async_clients = list(self._async_clients.values()), {}
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for entry in entries:
            loop = entry.loop
            if loop.is_closed():
                continue  # it was closed as the loop shut down
            if loop.is_running():
                # Possibly this very thread, inside a coroutine: schedule, do not wait.
                asyncio.run_coroutine_threadsafe(_finish(entry.closer), loop)
            elif running is None:
                with contextlib.suppress(RedisError, OSError):
                    loop.run_until_complete(_finish(entry.closer))
            # Else another loop runs in this thread: this one closes it at its shutdown.

    # Asyncio twins ------------------------------------------------------

    async def aclose(self) -> None:
        """Close this event loop's Redis client (call it before the loop ends)."""
        entry = self._async_clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await _finish(entry.closer)

    async def aget_circuit(self, connector: str) -> CircuitRecord | None:
        """:meth:`get_circuit` without blocking the event loop."""
        client = (await self._async_client()).client
        with self._failing_as_store_error("reading a circuit"):
            raw = await client.hget(self._keys.circuits, connector)
        return self._parse_circuit(connector, raw)

    async def acompare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        """:meth:`compare_and_set_circuit` without blocking the event loop."""
        keys, args = self._compare_and_set_args(connector, expected_version, record)
        script = (await self._async_client()).compare_and_set
        with self._failing_as_store_error("updating a circuit"):
            return bool(await script(keys=keys, args=args))

    async def aappend_calls(self, records: Sequence[CallRecord]) -> None:
        """:meth:`append_calls` without blocking the event loop."""
        if not records:
            return
        groups = self._members_by_connector(records)
        client = (await self._async_client()).client
        with self._failing_as_store_error("writing metrics"):
            pipe = client.pipeline(transaction=True)
            self._queue_append(pipe, groups)
            await pipe.execute()

    async def aload_token(self, connector: str) -> dict[str, Any] | None:
        """:meth:`load_token` without blocking the event loop."""
        client = (await self._async_client()).client
        with self._failing_as_store_error("reading a token"):
            raw = await client.hget(self._keys.tokens, connector)
        return self._parse_token(connector, raw)

    async def asave_token(self, connector: str, token: Mapping[str, Any]) -> None:
        """:meth:`save_token` without blocking the event loop."""
        data = json.dumps(dict(token), separators=(",", ":"))
        client = (await self._async_client()).client
        with self._failing_as_store_error("saving a token"):
            await client.hset(self._keys.tokens, connector, data)

    @contextlib.asynccontextmanager
    async def atoken_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> AsyncIterator[None]:
        """:meth:`token_lock` for coroutines: waiting for it never blocks the event loop.

        Raises:
            TimeoutError: not acquired within ``timeout_s``.
            StoreError: Redis could not be reached.
        """
        lock = (await self._async_client()).client.lock(
            self._keys.token_lock(connector),
            timeout=max(DEFAULT_LOCK_LEASE_S if lease_s is None else lease_s, _MIN_LEASE_S),
            sleep=_LOCK_POLL_S,
            blocking_timeout=timeout_s,
        )
        with self._failing_as_store_error("taking the token lock"):
            acquired = await lock.acquire()
        if not acquired:
            raise TimeoutError(f"token lock for {connector!r} not acquired in {timeout_s:g}s")
        try:
            yield
        finally:
            try:
                await lock.release()
            except (LockError, RedisError, OSError) as exc:
                self._lock_release_failed(connector, exc)

    # Load control -------------------------------------------------------
    #
    # Each rule is one Lua script run on the server's clock (_limit_scripts).

    def _limit_call(self, name: str, key: str, args: Sequence[str | int | float]) -> Any:
        script: Script = self._limit_scripts[name]
        with self._failing_as_store_error("updating load-control state"):
            return script(keys=[f"{self.prefix}:limits:{key}"], args=list(args))

    async def _alimit_call(self, name: str, key: str, args: Sequence[str | int | float]) -> Any:
        client = (await self._async_client()).client
        script = self._alimit_scripts.get(name)
        if script is None:
            # One script object serves every loop's client: it is only text and a hash.
            script = self._alimit_scripts[name] = AsyncScript(client, _LIMIT_LUA[name])
        with self._failing_as_store_error("updating load-control state"):
            return await script(
                keys=[f"{self.prefix}:limits:{key}"], args=list(args), client=client
            )

    def spend_retry_budget(
        self,
        key: str,
        *,
        calls: int,
        retry: bool,
        ratio: float,
        min_per_s: float,
        window_s: float,
    ) -> bool:
        """Count calls and maybe take a retry from ``key``'s budget (one script, one round trip)."""
        args = _budget_args(calls, retry, ratio, min_per_s, window_s)
        return bool(self._limit_call("budget", f"budget:{key}", args))

    async def aspend_retry_budget(
        self,
        key: str,
        *,
        calls: int,
        retry: bool,
        ratio: float,
        min_per_s: float,
        window_s: float,
    ) -> bool:
        """:meth:`spend_retry_budget` without blocking the event loop."""
        args = _budget_args(calls, retry, ratio, min_per_s, window_s)
        return bool(await self._alimit_call("budget", f"budget:{key}", args))

    def take_token(
        self, key: str, *, rate_per_s: float, burst: float, max_wait_s: float
    ) -> TokenGrant:
        """Reserve the next token of ``key``'s bucket, by the server's clock."""
        reply = self._limit_call("token", f"bucket:{key}", [rate_per_s, burst, max_wait_s])
        return _token_grant(reply)

    async def atake_token(
        self, key: str, *, rate_per_s: float, burst: float, max_wait_s: float
    ) -> TokenGrant:
        """:meth:`take_token` without blocking the event loop."""
        reply = await self._alimit_call("token", f"bucket:{key}", [rate_per_s, burst, max_wait_s])
        return _token_grant(reply)

    def pause_tokens(self, key: str, *, seconds: float, rate_per_s: float, burst: float) -> None:
        """Hand out no token of ``key``'s bucket for ``seconds`` of the server's clock."""
        self._limit_call("pause", f"bucket:{key}", [seconds, rate_per_s, burst])

    async def apause_tokens(
        self, key: str, *, seconds: float, rate_per_s: float, burst: float
    ) -> None:
        """:meth:`pause_tokens` without blocking the event loop."""
        await self._alimit_call("pause", f"bucket:{key}", [seconds, rate_per_s, burst])

    def acquire_lease(self, key: str, *, limit: int, lease_s: float, holder: str) -> LeaseGrant:
        """Give ``holder`` a slot of ``key`` if one is free; leases end by the server's clock."""
        return _lease_grant(self._limit_call("acquire", f"leases:{key}", [limit, lease_s, holder]))

    async def aacquire_lease(
        self, key: str, *, limit: int, lease_s: float, holder: str
    ) -> LeaseGrant:
        """:meth:`acquire_lease` without blocking the event loop."""
        reply = await self._alimit_call("acquire", f"leases:{key}", [limit, lease_s, holder])
        return _lease_grant(reply)

    def release_lease(self, key: str, *, holder: str) -> None:
        """Give ``holder``'s slot of ``key`` back."""
        self._limit_call("release", f"leases:{key}", [holder])

    async def arelease_lease(self, key: str, *, holder: str) -> None:
        """:meth:`release_lease` without blocking the event loop."""
        await self._alimit_call("release", f"leases:{key}", [holder])


_LIMIT_LUA: Final = {
    "budget": _limit_scripts.SPEND_RETRY_BUDGET,
    "token": _limit_scripts.TAKE_TOKEN,
    "pause": _limit_scripts.PAUSE_TOKENS,
    "acquire": _limit_scripts.ACQUIRE_LEASE,
    "release": _limit_scripts.RELEASE_LEASE,
}


def _budget_args(
    calls: int, retry: bool, ratio: float, min_per_s: float, window_s: float
) -> list[str | int | float]:
    return [calls, 1 if retry else 0, repr(float(ratio)), repr(float(min_per_s)), window_s]


def _token_grant(reply: Any) -> TokenGrant:
    return TokenGrant(bool(int(reply[0])), float(reply[1]))


def _lease_grant(reply: Any) -> LeaseGrant:
    return LeaseGrant(bool(int(reply[0])), float(reply[1]) if reply[1] else None)
