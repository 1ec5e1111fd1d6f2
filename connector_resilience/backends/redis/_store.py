"""The Redis store itself: breaker CAS scripts, tokens, metrics and the token lock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import redis
import redis.asyncio
import redis.cluster
from redis.commands.core import AsyncScript, Script
from redis.exceptions import LockError, RedisClusterException, RedisError

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
from connector_resilience.backends.redis import _limit_scripts, _topology
from connector_resilience.backends.redis._clock import ServerClock
from connector_resilience.backends.redis._keys import KeyLayout
from connector_resilience.backends.redis._once import Batch, BatchLedger
from connector_resilience.backends.redis._scripts import (
    APPEND_CALLS_LUA,
    COMPARE_AND_SET_LUA,
    REWRITE_CALLS_LUA,
    TRIM_CALLS_LUA,
)
from connector_resilience.backends.redis._target import (
    DEFAULT_PREFIX,
    DEFAULT_RETENTION_S,
    Kind,
    parse_target,
    password_of,
)
from connector_resilience.backends.redis._topology import AsyncClient, SyncClient
from connector_resilience.backends.redis._watch import ANY_CONNECTOR, FOLLOW_S, CircuitWatcher
from connector_resilience.errors import ConfigurationError, StoreError

__all__ = ["ANY_CONNECTOR", "DEFAULT_PREFIX", "DEFAULT_RETENTION_S", "RedisStore"]

logger = logging.getLogger("connector_resilience.store")

#: What a Redis fault can raise (redis-py's Cluster errors are not RedisErrors).
_FAULTS: Final = (RedisError, RedisClusterException, OSError)
#: How often the token lock polls while another process holds it.
_LOCK_POLL_S: Final = 0.01
#: Redis counts a lease in whole milliseconds; a zero lease is an error.
_MIN_LEASE_S: Final = 0.001


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


def _rows(records: Sequence[CallRecord]) -> list[list[Any]]:
    """Records as compact arrays in ``_ROW_FIELDS`` order (the connector is the key's)."""
    return [
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
        for r in records
    ]


@dataclass(frozen=True, slots=True)
class _Sync:
    """The synchronous client and its registered scripts."""

    client: SyncClient
    compare_and_set: Script
    #: The load-control scripts (``_LIMIT_LUA``), registered with this client.
    limits: dict[str, Script]


@dataclass(slots=True)
class _AsyncClient:
    """The asyncio client of one event loop (redis.asyncio clients are bound to theirs)."""

    loop: asyncio.AbstractEventLoop
    client: AsyncClient
    compare_and_set: AsyncScript
    closer: AsyncGenerator[None, None]
    #: The load-control scripts (``_LIMIT_LUA``), registered with this client.
    limits: dict[str, AsyncScript]


async def _move_async_pool(client: AsyncClient) -> None:
    """:meth:`RedisStore._follow_master` for an asyncio client, in its own loop."""
    pool: Any = cast(Any, client).connection_pool
    with contextlib.suppress(*_FAULTS):
        await pool.get_master_address()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _close_with_loop(client: AsyncClient) -> AsyncGenerator[None, None]:
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
        url: ``redis://``, ``rediss://``, ``redis+sentinel://`` or
            ``redis+cluster://`` URL (see the package documentation).

    Raises:
        ConfigurationError: a malformed URL, an option redis-py does not know,
            a deployment the URL does not fit (a Sentinel behind ``redis://``,
            a replica, ...) or an ACL user missing a right the store needs.
            The last two are checked at open when Redis answers, else as soon
            as it does (then logged, and every operation fails with a
            ``StoreError`` saying why).
    """

    def __init__(self, url: str) -> None:
        target = parse_target(url)
        #: The URL with its password replaced by ``***``.
        self.url = redact_url(url)
        self.prefix = target.prefix
        self.retention_s = target.retention_s
        #: Every key and channel name the store uses.
        self.keys = KeyLayout(target.prefix, target.db)
        self.stats = StoreStats()
        self._target = target
        self._secrets = password_of(target)
        self._sync_lock = threading.Lock()
        self._sync: _Sync | None = None
        self._verified = False
        self._misconfigured: str | None = None
        self._ledger = BatchLedger()
        self._clock = ServerClock(
            self._read_server_time, describe=self.url, before_reading=self._check_if_put_off
        )
        self._watcher = CircuitWatcher(
            self._new_pubsub,
            self.keys.circuit_channel,
            describe=self.url,
        )
        self._async_clients: dict[asyncio.AbstractEventLoop, _AsyncClient] = {}
        self._stop_following = threading.Event()
        self._open()
        if target.kind == "sentinel":
            threading.Thread(
                target=self._follow_forever,
                args=(self._stop_following,),
                name="connector-resilience-redis-follow",
                daemon=True,
            ).start()

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Open a store from any of the Redis URL schemes."""
        return cls(url)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    @property
    def shape(self) -> Kind:
        """``"standalone"``, ``"sentinel"`` or ``"cluster"``: how the store talks to Redis.

        A ``redis://`` URL that turns out to name a Cluster node reads
        ``"cluster"`` once the store has seen it.
        """
        return self._target.kind

    # Connections --------------------------------------------------------

    def _open(self) -> None:
        """Check the deployment now, or in the background when opened on an event loop."""
        if _running_loop() is not None:
            # The check does network I/O, which an event loop's thread must not wait on.
            threading.Thread(
                target=self._check,
                kwargs={"raising": False, "at_open": True},
                name="connector-resilience-redis-check",
                daemon=True,
            ).start()
            return
        self._check(raising=True, at_open=True)

    def _sync_client(self) -> _Sync:
        """The synchronous client, built on first use (a Cluster client connects to build).

        Raises:
            StoreError: a Cluster could not be reached to learn its slots.
        """
        sync = self._sync
        if sync is not None:
            return sync
        with self._sync_lock:
            if self._sync is None:
                with self._failing_as_store_error("connecting"):
                    client = _topology.sync_client(self._target)
                self._sync = _Sync(
                    client,
                    client.register_script(COMPARE_AND_SET_LUA),
                    {name: client.register_script(text) for name, text in _LIMIT_LUA.items()},
                )
            return self._sync

    @property
    def _client(self) -> SyncClient:
        return self._sync_client().client

    def _new_pubsub(self) -> Any:
        return cast(Any, self._client).pubsub()

    def _follow_forever(self, stop: threading.Event) -> None:
        """Ask where the master is every ``FOLLOW_S`` until the store closes (Sentinel only)."""
        while not stop.wait(FOLLOW_S):
            if self._sync is not None and self._follow_master():
                self._watcher.resubscribe()

    def _follow_master(self) -> bool:
        """Ask the sentinels where the master is; move every connection if it moved.

        A failover leaves the old master accepting writes until the
        sentinels demote it (up to ~10 s): connections that stay on it would
        share state with each other, not with the rest. Runs in the store's
        follower thread, once a second.
        """
        pool: Any = cast(Any, self._client).connection_pool
        before = pool.master_address
        try:
            # Disconnects the idle connections itself when the address changed.
            after = pool.get_master_address()
        except _FAULTS:
            return False  # sentinels away: keep what we have
        if before is None or after == before:
            return False
        # redis-py drops the idle connections now, and one in use by another
        # thread when it comes back to the pool (it no longer "owns" it).
        for entry in list(self._async_clients.values()):
            if entry.loop.is_running():
                asyncio.run_coroutine_threadsafe(_move_async_pool(entry.client), entry.loop)
        logger.warning("store %s: the master moved to %s:%s (failover)", self.url, *after)
        return True

    def _check(self, *, raising: bool, at_open: bool) -> None:
        """Check the shape and the ACL rights; a ``redis://`` Cluster node switches to a Cluster.

        Args:
            raising: raise a misfit; else log it, and fail every operation with it.
            at_open: nothing has used the store yet (so it may still switch to a
                Cluster client); a put-off check is logged once, at open.

        Raises:
            ConfigurationError: with ``raising``, when the deployment does not fit.
        """
        try:
            mode = _topology.verify(self._client, self._target, self.keys, describe=self.url)
            if mode == "cluster" and self._target.kind == "standalone":
                if not at_open:
                    raise ConfigurationError(
                        f"Redis store {self.url} is a Cluster node: open it with "
                        "redis+cluster://HOST:PORT (found after the store was opened)"
                    )
                self._switch_to_cluster()
                _topology.verify(self._client, self._target, self.keys, describe=self.url)
        except ConfigurationError as exc:
            if raising:
                self.close()
                raise
            self._misconfigured = str(exc)
            logger.error(  # noqa: TRY400 - a configuration problem, not a crash: no traceback
                "%s; every operation of this store fails until it is reopened", exc
            )
            return
        except (*_FAULTS, StoreError) as exc:
            if at_open:
                self._put_off_checks(exc)
            return
        self._verified = True

    def _switch_to_cluster(self) -> None:
        old, self._sync = self._sync, None
        if old is not None:
            old.client.close()
        self._target = self._target.as_cluster()
        self._sync_client()

    def _put_off_checks(self, exc: BaseException) -> None:
        logger.warning(
            "%s; the deployment and ACL rights are checked when it answers",
            self._describe_failure("checking the deployment", exc),
        )

    async def _async_client(self) -> _AsyncClient:
        """This event loop's client, created on first use in it."""
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(loop)
        if entry is not None:
            return entry
        # Clients of loops that have ended can never be used (or closed) again.
        for old in [old for old in self._async_clients if old.is_closed()]:
            del self._async_clients[old]
        client = _topology.async_client(self._target)
        closer = _close_with_loop(client)
        await anext(closer)  # the loop now knows it, and will close it at shutdown
        entry = _AsyncClient(
            loop,
            client,
            client.register_script(COMPARE_AND_SET_LUA),
            closer,
            {name: client.register_script(text) for name, text in _LIMIT_LUA.items()},
        )
        self._async_clients[loop] = entry
        return entry

    @contextlib.contextmanager
    def _failing_as_store_error(self, what: str) -> Iterator[None]:
        """Turn any Redis failure into a StoreError naming the redacted URL."""
        if self._misconfigured is not None:
            raise StoreError(f"Redis store {self.url}: {what} refused: {self._misconfigured}")
        try:
            yield
        except _FAULTS as exc:
            raise StoreError(self._describe_failure(what, exc)) from exc

    def _describe_failure(self, what: str, exc: BaseException) -> str:
        detail = str(exc)
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return f"Redis store {self.url}: {what} failed ({type(exc).__name__}: {detail})"

    def _check_if_put_off(self) -> None:
        if not self._verified and self._misconfigured is None:
            # Redis did not answer at open: check now that it may (the clock
            # reads it in the background every second until it does).
            self._check(raising=False, at_open=False)

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
            raw = self._client.hget(self.keys.circuit(connector), "record")
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
            if expected_version != 0:
                return bool(self._sync_client().compare_and_set(keys=keys, args=args))
            pipe = self._client.pipeline(transaction=False)
            self._queue_first_compare_and_set(pipe, connector, keys, args)
            return bool(pipe.execute()[-1])

    def _queue_first_compare_and_set(
        self,
        pipe: Any,
        connector: str,
        keys: list[str],
        args: list[str | int],
    ) -> None:
        """A connector's first record: index it, then the script, in one round trip.

        The index comes first: a failing script then leaves a name without a
        record, which listings skip. (EVAL, not EVALSHA: a pipeline cannot
        reload a script the server forgot.)
        """
        pipe.sadd(self.keys.circuit_index, connector)
        pipe.execute_command("EVAL", COMPARE_AND_SET_LUA, len(keys), *keys, *args)

    def _compare_and_set_args(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> tuple[list[str], list[str | int]]:
        if record.version != expected_version + 1:
            raise ValueError("record.version must be expected_version + 1")
        data = json.dumps(record.to_json(), separators=(",", ":"))
        keys = [self.keys.circuit(connector)]
        args: list[str | int] = [
            expected_version,
            record.version,
            connector,
            self.keys.circuit_channel,
            data,
        ]
        return keys, args

    def list_circuits(self) -> dict[str, CircuitRecord]:
        """Every readable circuit record (two round trips: the index, then the records)."""
        with self._failing_as_store_error("listing circuits"):
            names = sorted(map(_text, self._client.smembers(self.keys.circuit_index)))
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.hget(self.keys.circuit(name), "record")
            raw = pipe.execute() if names else []
        out: dict[str, CircuitRecord] = {}
        for connector, data in zip(names, raw, strict=True):
            record = self._parse_circuit(connector, data)
            if record is not None:
                out[connector] = record
        return out

    def watch_circuits(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(connector)`` whenever any process changes a circuit.

        The callback runs in one background subscriber thread per store,
        usually within a millisecond of the change; exceptions it raises are
        logged. If the subscription drops (Redis restarted, network cut) or
        goes silent (no answer to a ping within a second), the thread
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
            raw = self._client.get(self.keys.token(connector))
        return self._parse_token(connector, raw)

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        """Replace the connector's token (as durable as the server's persistence)."""
        data = json.dumps(dict(token), separators=(",", ":"))
        with self._failing_as_store_error("saving a token"):
            pipe = self._client.pipeline(transaction=False)
            self._queue_save_token(pipe, connector, data)
            pipe.execute()

    def _queue_save_token(self, pipe: Any, connector: str, data: str) -> None:
        pipe.sadd(self.keys.token_index, connector)
        pipe.set(self.keys.token(connector), data)

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        """Every readable token mapping (two round trips)."""
        with self._failing_as_store_error("listing tokens"):
            names = sorted(map(_text, self._client.smembers(self.keys.token_index)))
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.get(self.keys.token(name))
            raw = pipe.execute() if names else []
        out: dict[str, dict[str, Any]] = {}
        for connector, data in zip(names, raw, strict=True):
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
        with self._failing_as_store_error("taking the token lock"):
            lock = self._client.lock(
                self.keys.token_lock(connector),
                timeout=max(DEFAULT_LOCK_LEASE_S if lease_s is None else lease_s, _MIN_LEASE_S),
                sleep=_LOCK_POLL_S,
                blocking_timeout=timeout_s,
            )
            acquired = lock.acquire()
        if not acquired:
            raise TimeoutError(f"token lock for {connector!r} not acquired in {timeout_s:g}s")
        try:
            yield
        finally:
            try:
                lock.release()
            except (LockError, *_FAULTS) as exc:
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
        """Add records in one round trip, trimming past the retention first.

        Exactly once: if a write fails after Redis may have applied it (a
        timeout), an append that starts with the same records sends them
        under the same batch numbers, and Redis skips the ones it applied.
        """
        if not records:
            return
        plan = self._plan_append(records)
        with self._settling(plan), self._failing_as_store_error("writing metrics"):
            pipe = self._client.pipeline(transaction=False)
            self._queue_append(pipe, plan)
            pipe.execute()

    def _plan_append(self, records: Sequence[CallRecord]) -> dict[str, list[Batch]]:
        """``{connector: batches}``: each connector's records, numbered for exactly-once."""
        grouped: dict[str, list[CallRecord]] = {}
        for record in records:
            grouped.setdefault(record.connector, []).append(record)
        return {name: self._ledger.plan(name, group) for name, group in grouped.items()}

    @contextlib.contextmanager
    def _settling(self, plan: Mapping[str, list[Batch]]) -> Iterator[None]:
        """Tell the ledger how a write of ``plan`` ended: applied, or in doubt."""
        try:
            yield
        except BaseException:
            for connector, batches in plan.items():
                self._ledger.in_doubt(connector, batches)
            raise
        for connector, batches in plan.items():
            self._ledger.applied(connector, batches)

    def _queue_append(self, pipe: Any, plan: Mapping[str, list[Batch]]) -> None:
        """The commands of one append, on a sync or asyncio pipeline.

        One member per connector per batch holds the batch's calls as compact
        JSON arrays (``_ROW_FIELDS``), scored by its newest call. Encoding and
        sending one member per record cost ~9 us a record; per batch it is
        ~1 us. The price: trimming on append drops whole batches only, so a
        batch partly past the retention keeps its older calls until
        ``compact()`` rewrites it (as files keep them too).
        """
        # Records are stamped by their writers' wall clocks, and retention is
        # days, not milliseconds: this host's clock is good enough here, and
        # reading it never waits on Redis (which an event loop must not).
        cutoff = _clock.wall() - self.retention_s
        ttl = int(self.retention_s) + 1
        writer = self._ledger.writer
        for connector, batches in plan.items():
            args: list[Any] = [repr(cutoff), ttl, self._ledger.low_water(connector, batches)]
            for batch in batches:
                ((member, score),) = _batch_member(_rows(batch.records)).items()
                args += [batch.seq, repr(score), member]
            keys = (self.keys.calls(connector), self.keys.batches(connector, writer))
            pipe.execute_command("EVAL", APPEND_CALLS_LUA, len(keys), *keys, *args)
        # After the data: a compaction that just dropped the connector from
        # the index (its calls had all expired) cannot leave these unlisted.
        pipe.sadd(self.keys.call_index, *plan)

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
                names = sorted(map(_text, self._client.smembers(self.keys.call_index)))
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.zrangebyscore(self.keys.calls(name), repr(float(start)), "+inf")
            batches: list[list[str]] = pipe.execute() if names else []
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
            pipe.smembers(self.keys.call_index)
            pipe.smembers(self.keys.circuit_index)
            pipe.smembers(self.keys.token_index)
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
            client = self._client
            names = sorted(map(_text, client.smembers(self.keys.call_index)))
            for name in names:
                key = self.keys.calls(name)
                remove: list[str] = []
                rewrite: dict[str, float] = {}
                members: list[Any] = client.zrangebyscore(key, "-inf", "+inf")
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
                if remove or rewrite:
                    pairs = [part for member, score in rewrite.items() for part in (score, member)]
                    client.eval(REWRITE_CALLS_LUA, 1, key, len(remove), *remove, *pairs)
                _, left = client.eval(TRIM_CALLS_LUA, 1, key, repr(cutoff))
                if not left:
                    self._forget_call_connector(client, name)
            pipe = client.pipeline(transaction=False)
            pipe.scard(self.keys.circuit_index)
            pipe.scard(self.keys.token_index)
            circuits, tokens = pipe.execute()
        return {
            "metrics_kept": kept,
            "metrics_dropped": dropped,
            "circuits": int(circuits),
            "tokens": int(tokens),
        }

    def _forget_call_connector(self, client: SyncClient, name: str) -> None:
        """Drop a connector left with no calls from the index, unless an append just came."""
        client.srem(self.keys.call_index, name)
        # An append writes its calls, then indexes them: if one landed after
        # the trim, it is indexed again here or by its own SADD, never lost.
        if client.exists(self.keys.calls(name)):
            client.sadd(self.keys.call_index, name)

    def close(self) -> None:
        """Stop the change feed and drop connections (a later call reconnects)."""
        self._stop_following.set()
        self._watcher.stop()
        self._clock.close()
        self._close_async_clients()
        sync = self._sync
        if sync is not None:
            with contextlib.suppress(*_FAULTS):
                if isinstance(sync.client, redis.cluster.RedisCluster):
                    cast(Any, sync.client).disconnect_connection_pools()
                else:
                    sync.client.connection_pool.disconnect()

    def _close_async_clients(self) -> None:
        """Close the asyncio clients whose loops can still run their close."""
        entries, self._async_clients = list(self._async_clients.values()), {}
        running = _running_loop()
        for entry in entries:
            loop = entry.loop
            if loop.is_closed():
                continue  # it was closed as the loop shut down
            if loop.is_running():
                # Possibly this very thread, inside a coroutine: schedule, do not wait.
                asyncio.run_coroutine_threadsafe(_finish(entry.closer), loop)
            elif running is None:
                with contextlib.suppress(*_FAULTS):
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
        with self._failing_as_store_error("reading a circuit"):
            client = (await self._async_client()).client
            raw = await client.hget(self.keys.circuit(connector), "record")
        return self._parse_circuit(connector, raw)

    async def acompare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        """:meth:`compare_and_set_circuit` without blocking the event loop."""
        keys, args = self._compare_and_set_args(connector, expected_version, record)
        with self._failing_as_store_error("updating a circuit"):
            entry = await self._async_client()
            if expected_version != 0:
                return bool(await entry.compare_and_set(keys=keys, args=args))
            pipe = entry.client.pipeline(transaction=False)
            self._queue_first_compare_and_set(pipe, connector, keys, args)
            return bool((await pipe.execute())[-1])

    async def aappend_calls(self, records: Sequence[CallRecord]) -> None:
        """:meth:`append_calls` without blocking the event loop."""
        if not records:
            return
        plan = self._plan_append(records)
        with self._settling(plan), self._failing_as_store_error("writing metrics"):
            client = (await self._async_client()).client
            pipe = client.pipeline(transaction=False)
            self._queue_append(pipe, plan)
            await pipe.execute()

    async def aload_token(self, connector: str) -> dict[str, Any] | None:
        """:meth:`load_token` without blocking the event loop."""
        with self._failing_as_store_error("reading a token"):
            client = (await self._async_client()).client
            raw = await client.get(self.keys.token(connector))
        return self._parse_token(connector, raw)

    async def asave_token(self, connector: str, token: Mapping[str, Any]) -> None:
        """:meth:`save_token` without blocking the event loop."""
        data = json.dumps(dict(token), separators=(",", ":"))
        with self._failing_as_store_error("saving a token"):
            client = (await self._async_client()).client
            pipe = client.pipeline(transaction=False)
            self._queue_save_token(pipe, connector, data)
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def atoken_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> AsyncIterator[None]:
        """:meth:`token_lock` for coroutines: waiting for it never blocks the event loop.

        Raises:
            TimeoutError: not acquired within ``timeout_s``.
            StoreError: Redis could not be reached.
        """
        with self._failing_as_store_error("taking the token lock"):
            lock = (await self._async_client()).client.lock(
                self.keys.token_lock(connector),
                timeout=max(DEFAULT_LOCK_LEASE_S if lease_s is None else lease_s, _MIN_LEASE_S),
                sleep=_LOCK_POLL_S,
                blocking_timeout=timeout_s,
            )
            acquired = await lock.acquire()
        if not acquired:
            raise TimeoutError(f"token lock for {connector!r} not acquired in {timeout_s:g}s")
        try:
            yield
        finally:
            try:
                await lock.release()
            except (LockError, *_FAULTS) as exc:
                self._lock_release_failed(connector, exc)

    # Load control -------------------------------------------------------
    #
    # Each rule is one Lua script run on the server's clock (_limit_scripts).

    def _limit_call(self, name: str, key: str, args: Sequence[str | int | float]) -> Any:
        with self._failing_as_store_error("updating load-control state"):
            script = self._sync_client().limits[name]
            return script(keys=[self.keys.limits(key)], args=list(args))

    async def _alimit_call(self, name: str, key: str, args: Sequence[str | int | float]) -> Any:
        with self._failing_as_store_error("updating load-control state"):
            script = (await self._async_client()).limits[name]
            return await script(keys=[self.keys.limits(key)], args=list(args))

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
