"""``jsonl://FOLDER`` and the default store: append-only JSON lines, one file per kind.

* Writers append whole lines under a ``filelock`` (``<file>.lock``), so many
  processes can share the files; last write wins for circuits and tokens.
* Readers never take the lock: they read up to the last newline and keep their
  offset, so re-reading state after another process wrote costs one ``stat``
  and the new bytes, not the whole file.
* A corrupt line is skipped and counted, with one warning per read; a torn
  final line (a writer killed mid-line) is closed off by the next writer so
  that it can never swallow the record written after it.
* Files are read in blocks: a line longer than ``MAX_LINE_BYTES`` is skipped
  and counted without ever being held whole, and no reader loads a whole file.
* Files are never opened through a symbolic link nor when another user owns
  them, and a token folder others can write to is refused (``_files``).
* Metrics are in time order (up to a few seconds of buffering), so a window
  query bisects the file and reads only the window.
* ``compact()`` rewrites each file under its lock: temp file, fsync, rename.
* Aggregated metrics go beside the metrics file, one file per tier
  (``metrics.1s.jsonl``, ``metrics.1m.jsonl``, ``metrics.1h.jsonl``), and the
  connectors index (``metrics.connectors.jsonl``) lists every connector metrics
  were written for, so listing connectors never reads the history. A folder
  from an older version has no index: the first listing builds it from one
  scan of the metrics (the in-place migration; schema version in its first line).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from filelock import FileLock, Timeout

from connector_resilience import _clock
from connector_resilience.backends import (
    PARSE_ERRORS,
    CallAggregate,
    CallRecord,
    CircuitRecord,
    StoreStats,
    aggregate_tier,
)
from connector_resilience.backends import _limit_state as limit_state
from connector_resilience.backends._files import (
    PRIVATE_FILE_MODE,
    atomic_write_lines,
    check_folder,
    ensure_private_dir,
    open_private_append,
    open_store_file,
    write_all,
)
from connector_resilience.backends._lines import MAX_LINE_BYTES, read_lines, skip_line
from connector_resilience.errors import StoreError

__all__ = ["JsonlStore"]

logger = logging.getLogger("connector_resilience.store")

#: Records may reach the metrics file this much out of time order (buffered
#: flushes from several processes); a window read starts this much earlier.
ORDER_SLACK_S = 300.0
#: Below this many bytes a window search stops bisecting and scans.
_SCAN_BYTES = 64 * 1024
#: Aggregated rows are read in chunks of this size, so a window at the start
#: of a long file does not read the whole file.
_CHUNK_BYTES = 256 * 1024
#: The metrics schema of a JSONL folder: 1 had raw records only; 2 adds the
#: aggregate tiers and the connectors index, whose first line records it.
SCHEMA_VERSION = 2
_TIER_SUFFIXES = {1.0: "1s", 60.0: "1m", 3600.0: "1h"}
_LOCK_TIMEOUT_S = 30.0
_POLL_S = 0.0005
#: A bisection step reads this much of a line: enough for its leading "ts".
_TS_PREFIX_BYTES = 64

T = TypeVar("T")


class _LockedFile:
    """One JSONL file and the lock every writer of it takes.

    ``secret`` files (tokens) refuse a folder other users can write to, for
    reads as well as writes; the others warn about one once.
    """

    def __init__(
        self, path: Path, *, what: str, durable: bool = False, secret: bool = False
    ) -> None:
        self.path = path
        self.what = what
        self.durable = durable
        self.secret = secret
        self._folder_checked = False
        self.stats = StoreStats()
        self._new_locks()
        _open_files.add(self)

    def _new_locks(self) -> None:
        # Also called in a forked child: a lock another thread held at the fork
        # would otherwise stay held (or, for the file lock, look held) forever.
        self._thread_lock = threading.Lock()
        self._file_lock = FileLock(
            f"{self.path}.lock",
            timeout=_LOCK_TIMEOUT_S,
            mode=PRIVATE_FILE_MODE,
            poll_interval=_POLL_S,
        )

    def check_folder(self) -> None:
        """Refuse (tokens) or warn about (the rest) a folder other users can write to.

        Tokens are checked at every use; the rest once per process (a warning
        is all it would give, and metrics are written several times a second).
        """
        if self._folder_checked:
            return
        check_folder(self.path.parent, strict=self.secret, what=self.what)
        self._folder_checked = not self.secret

    def open_for_reading(self) -> IO[bytes]:
        """The file, opened without following a link (``FileNotFoundError`` if absent)."""
        return os.fdopen(open_store_file(self.path, os.O_RDONLY), "rb")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        ensure_private_dir(self.path.parent)
        self.check_folder()
        with self._thread_lock:
            try:
                self._file_lock.acquire()
            except Timeout as exc:
                raise StoreError(f"timed out waiting for the lock on {self.path}") from exc
            try:
                yield
            finally:
                self._file_lock.release()

    def append(self, lines: Sequence[bytes]) -> None:
        """Append complete lines; the caller holds :meth:`locked`.

        Raises:
            ValueError: a line is longer than readers accept (``MAX_LINE_BYTES``);
                nothing is written.
        """
        longest = max(map(len, lines), default=0)
        if longest > MAX_LINE_BYTES + 1:  # + its newline
            raise ValueError(
                f"a {self.what} record of {longest} bytes is longer than the "
                f"{MAX_LINE_BYTES} bytes a line may hold; it is not written"
            )
        fd = open_private_append(self.path)
        try:
            size = os.fstat(fd).st_size
            prefix = self._terminator(fd, size) if size else b""
            try:
                write_all(fd, prefix + b"".join(lines))
                if self.durable:
                    os.fsync(fd)
            except BaseException:
                # All or nothing: a write cut short (disk full, file size limit) must
                # not leave some of the lines behind, or the caller's retry of the
                # batch writes them twice. We hold the lock: nobody wrote after us.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def _terminator(self, fd: int, size: int) -> bytes:
        """A newline if the file ends in a torn line (its writer was killed mid-write)."""
        if os.pread(fd, 1, size - 1) == b"\n":
            return b""
        self.stats.torn_lines += 1
        logger.warning(
            "%s ends in an incomplete line (a writer stopped mid-write); it is skipped",
            self.path,
        )
        return b"\n"


_open_files: weakref.WeakSet[_LockedFile] = weakref.WeakSet()


def _renew_locks_after_fork() -> None:
    for file in list(_open_files):
        file._new_locks()


os.register_at_fork(after_in_child=_renew_locks_after_fork)


class _LastWins:
    """Incrementally read ``{"connector": ..., ...}`` lines into the latest value per key."""

    def __init__(
        self, file: _LockedFile, parse: Callable[[Mapping[str, Any]], Any], field: str
    ) -> None:
        self.file = file
        self._parse = parse
        self._field = field
        self._lock = threading.Lock()
        self._inode: tuple[int, int] | None = None
        self._offset = 0
        self.values: dict[str, Any] = {}

    def refresh(self) -> dict[str, Any]:
        """Read what was appended since the last call (or everything after a rewrite)."""
        with self._lock:
            if self.file.secret:
                self.file.check_folder()
            try:
                # lstat: a link put in the file's place reads as changed, and is
                # then refused when opened.
                st = os.lstat(self.file.path)
            except FileNotFoundError:
                self._inode, self._offset, self.values = None, 0, {}
                return self.values
            if (st.st_dev, st.st_ino) == self._inode and st.st_size == self._offset:
                return self.values
            try:
                handle = self.file.open_for_reading()
            except FileNotFoundError:
                self._inode, self._offset, self.values = None, 0, {}
                return self.values
            bad = 0
            with handle:
                st = os.fstat(handle.fileno())
                inode = (st.st_dev, st.st_ino)
                if inode != self._inode or st.st_size < self._offset:
                    self._inode, self._offset, self.values = inode, 0, {}
                # Block by block: memory stays bounded whatever the file holds.
                for lines, offset in read_lines(handle, self._offset, st.st_size):
                    for line in lines:
                        if line is None:
                            bad += 1  # longer than MAX_LINE_BYTES
                            continue
                        if not line.strip():
                            continue
                        try:
                            data = json.loads(line)
                            key = data[self._field]
                            if not isinstance(key, str):
                                raise TypeError("key must be a string")
                            self.values[key] = self._parse(data)
                        except PARSE_ERRORS:
                            bad += 1
                    self._offset = offset
            if bad:
                self.file.stats.skipped_lines += bad
                logger.warning("skipped %d unreadable line(s) in %s", bad, self.file.path)
            return self.values


class _NameIndex:
    """The connectors index file, read incrementally: a schema line, then one name a line."""

    def __init__(self, file: _LockedFile) -> None:
        self.file = file
        self._lock = threading.Lock()
        self._inode: tuple[int, int] | None = None
        self._offset = 0
        self.names: set[str] = set()

    def refresh(self) -> set[str]:
        """Read what was appended since the last call (or everything after a rewrite)."""
        with self._lock:
            try:
                handle = self.file.open_for_reading()
            except FileNotFoundError:
                self._inode, self._offset, self.names = None, 0, set()
                return set()
            bad = 0
            with handle:
                st = os.fstat(handle.fileno())
                inode = (st.st_dev, st.st_ino)
                if inode != self._inode or st.st_size < self._offset:
                    self._inode, self._offset, self.names = inode, 0, set()
                # Block by block, as every reader here: memory stays bounded.
                for lines, offset in read_lines(handle, self._offset, st.st_size):
                    for line in lines:
                        try:
                            if line is None:
                                raise ValueError("line too long")
                            data = json.loads(line)
                        except PARSE_ERRORS:
                            bad += 1
                            continue
                        name = data.get("connector") if isinstance(data, dict) else None
                        if isinstance(name, str):
                            self.names.add(name)
                    self._offset = offset
            if bad:
                self.file.stats.skipped_lines += bad
                logger.warning("skipped %d unreadable line(s) in %s", bad, self.file.path)
            return set(self.names)


class JsonlStore(limit_state.LimitSteps):
    """The JSONL store: metrics, circuit state and tokens in three files.

    Args:
        metrics_path: metrics file (``CONNECTOR_METRICS_PATH``).
        circuit_path: circuit state file (``CIRCUIT_STATE_PATH``).
        token_path: token file (``OAUTH_TOKEN_PATH``), created 0600 and fsynced
            on every save, since a lost rotating refresh token cannot be recovered.
        url: the URL it was opened with, for messages.
    """

    def __init__(
        self,
        *,
        metrics_path: str | os.PathLike[str],
        circuit_path: str | os.PathLike[str],
        token_path: str | os.PathLike[str],
        url: str | None = None,
    ) -> None:
        self._metrics = _LockedFile(Path(metrics_path), what="metrics")
        self._circuits_file = _LockedFile(Path(circuit_path), what="circuit states")
        self._tokens_file = _LockedFile(Path(token_path), what="tokens", durable=True, secret=True)
        self._limits_file = _LockedFile(
            Path(circuit_path).with_name("load_control.json"), what="load-control counters"
        )
        self.url = url or self.key_for_paths(
            metrics=metrics_path, circuits=circuit_path, tokens=token_path
        )
        self._circuits = _LastWins(self._circuits_file, _parse_circuit, "connector")
        self._tokens = _LastWins(self._tokens_file, _parse_token, "connector")
        base = Path(metrics_path)
        self._tiers = {
            tier: _LockedFile(
                base.with_name(f"{base.stem}.{suffix}{base.suffix or '.jsonl'}"),
                what="aggregated metrics",
            )
            for tier, suffix in _TIER_SUFFIXES.items()
        }
        self._index_file = _LockedFile(
            base.with_name(f"{base.stem}.connectors{base.suffix or '.jsonl'}"),
            what="connectors index",
        )
        self._index = _NameIndex(self._index_file)

    @staticmethod
    def key_for_paths(
        *,
        metrics: str | os.PathLike[str],
        circuits: str | os.PathLike[str],
        tokens: str | os.PathLike[str],
    ) -> str:
        """The registry key of the store made of these three files."""
        parts = (os.path.abspath(p) for p in (metrics, circuits, tokens))
        return "jsonl-files:" + "|".join(parts)

    @classmethod
    def from_url(cls, url: str) -> JsonlStore:
        """``jsonl://relative/folder`` or ``jsonl:///absolute/folder``."""
        folder = url.partition("://")[2]
        if not folder:
            raise StoreError("a jsonl:// URL needs a folder, such as jsonl://logs/connectors")
        base = Path(folder)
        return cls(
            metrics_path=base / "metrics.jsonl",
            circuit_path=base / "circuit_state.jsonl",
            token_path=base / "tokens.jsonl",
            url=url,
        )

    def __repr__(self) -> str:
        return f"JsonlStore({self.url!r})"

    @property
    def paths(self) -> dict[str, Path]:
        """The three files, by kind."""
        return {
            "metrics": self._metrics.path,
            "circuits": self._circuits_file.path,
            "tokens": self._tokens_file.path,
        }

    @property
    def metrics_paths(self) -> dict[str, Path]:
        """The files of aggregated metrics (by tier) and the connectors index."""
        out = {
            f"metrics-{suffix}": self._tiers[tier].path for tier, suffix in _TIER_SUFFIXES.items()
        }
        out["connectors"] = self._index_file.path
        return out

    @property
    def stats(self) -> StoreStats:
        """Lines skipped so far across the files."""
        total = StoreStats()
        files = (self._metrics, self._circuits_file, self._tokens_file, *self._tiers.values())
        for file in files:
            total.skipped_lines += file.stats.skipped_lines
            total.torn_lines += file.stats.torn_lines
        return total

    def now(self) -> float:
        """Wall-clock seconds since the epoch (every process on the host shares it)."""
        return _clock.wall()

    # Circuits -----------------------------------------------------------

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        """The latest record, reading only lines appended since the last read."""
        return _guard(lambda: self._circuits.refresh().get(connector), self._circuits_file)

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        """Append ``record`` under the lock if the version still matches."""
        if record.version != expected_version + 1:
            raise ValueError("record.version must be expected_version + 1")
        with self._circuits_file.locked():
            current = self._circuits.refresh().get(connector)
            if (current.version if current else 0) != expected_version:
                return False
            line = _dumps({"connector": connector, **record.to_json()})
            self._circuits_file.append([line])
            return True

    def list_circuits(self) -> dict[str, CircuitRecord]:
        """Every connector's latest record."""
        return dict(_guard(self._circuits.refresh, self._circuits_file))

    # Tokens -------------------------------------------------------------

    def load_token(self, connector: str) -> dict[str, Any] | None:
        """The latest token mapping (a copy)."""
        token = _guard(lambda: self._tokens.refresh().get(connector), self._tokens_file)
        return copy.deepcopy(token) if token is not None else None

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        """Append the token and fsync before returning."""
        line = _dumps({**token, "connector": connector})
        with self._tokens_file.locked():
            self._tokens_file.append([line])

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        """Every connector's latest token mapping."""
        tokens = _guard(self._tokens.refresh, self._tokens_file)
        return copy.deepcopy(dict(tokens))

    @contextlib.contextmanager
    def token_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> Iterator[None]:
        """A lock file beside the token file, one per connector.

        ``lease_s`` does not apply: the operating system frees the lock when its
        holder's process ends, however it ends.
        """
        path = self._tokens_file.path
        ensure_private_dir(path.parent)
        self._tokens_file.check_folder()
        lock = FileLock(
            f"{path}.{_safe_name(connector)}.refresh.lock",
            timeout=timeout_s,
            mode=PRIVATE_FILE_MODE,
            poll_interval=0.01,
            thread_local=False,
        )
        try:
            lock.acquire()
        except Timeout:
            raise TimeoutError(
                f"token lock for {connector!r} not acquired in {timeout_s:g}s"
            ) from None
        try:
            yield
        finally:
            lock.release()

    # Metrics ------------------------------------------------------------

    def append_calls(self, records: Sequence[CallRecord]) -> None:
        """Append records as one write under the lock."""
        if not records:
            return
        lines = [_dumps(r.to_json()) for r in records]
        with self._metrics.locked():
            self._metrics.append(lines)
            self._index_names({r.connector for r in records})

    def append_aggregates(self, rows: Sequence[CallAggregate]) -> None:
        """Append aggregated rows to their tiers' files, under the metrics lock."""
        if not rows:
            return
        by_tier: dict[float, list[bytes]] = {}
        for row in rows:
            by_tier.setdefault(aggregate_tier(row.resolution), []).append(_dumps(row.to_json()))
        with self._metrics.locked():
            for tier, lines in by_tier.items():
                self._tiers[tier].append(lines)
            self._index_names({r.connector for r in rows})

    def _index_names(self, names: set[str]) -> None:
        """Add names the connectors index lacks; the caller holds the metrics lock."""
        known = self._indexed()
        new = names.difference(known)
        if new:
            self._index_file.append([_dumps({"connector": n}) for n in sorted(new)])

    def _indexed(self) -> set[str]:
        """The connectors index, built from the history first if this folder predates it."""
        if not self._index_file.path.exists():
            self._build_index()
        return self._index.refresh()

    def _build_index(self) -> None:
        """The migration to schema 2: list every connector of the existing history, once."""
        names: set[str] = set()
        for file in (self._metrics, *self._tiers.values()):
            try:
                handle = file.open_for_reading()
            except FileNotFoundError:
                continue
            with handle:
                size = os.fstat(handle.fileno()).st_size
                for lines, _offset in read_lines(handle, 0, size):
                    for line in lines:
                        match = _CONNECTOR_RE.search(line) if line else None
                        if match is not None:
                            with contextlib.suppress(ValueError):
                                names.add(json.loads(match.group(1)))
        ensure_private_dir(self._index_file.path.parent)
        index = [_dumps({"schema": SCHEMA_VERSION})]
        index += [_dumps({"connector": n}) for n in sorted(names) if isinstance(n, str)]
        atomic_write_lines(self._index_file.path, index)

    def read_calls(
        self, *, since: float, until: float | None = None, connector: str | None = None
    ) -> list[CallRecord]:
        """Records in ``[since, until)``: bisect to the window, then read only it."""
        path = self._metrics.path
        try:
            handle = self._metrics.open_for_reading()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        out: list[CallRecord] = []
        bad = 0
        with handle:
            size = os.fstat(handle.fileno()).st_size
            start = _window_start(handle, size, since - ORDER_SLACK_S)
            bad = _window_records(
                handle, (start, size), since=since, until=until, connector=connector, out=out
            )
        if bad:
            self._metrics.stats.skipped_lines += bad
            logger.warning("skipped %d unreadable line(s) in %s", bad, path)
        return out

    def read_aggregates(
        self,
        *,
        resolution: float,
        since: float,
        until: float | None = None,
        connector: str | None = None,
    ) -> list[CallAggregate]:
        """Rows of the tier of ``resolution`` starting in ``[since, until)``, read by chunks."""
        file = self._tiers[aggregate_tier(resolution)]
        try:
            handle = file.open_for_reading()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {file.path}: {exc}") from exc
        out: list[CallAggregate] = []
        with handle:
            size = os.fstat(handle.fileno()).st_size
            start = _window_start(handle, size, since - ORDER_SLACK_S)
            bad = _window_rows(
                handle, (start, size), since=since, until=until, connector=connector, out=out
            )
        if bad:
            file.stats.skipped_lines += bad
            logger.warning("skipped %d unreadable line(s) in %s", bad, file.path)
        return out

    def connectors(self) -> list[str]:
        """Connectors named in metrics (from the index), circuits or tokens."""
        names = set(_guard(self._indexed, self._index_file))
        names.update(self.list_circuits())
        names.update(self.list_tokens())
        return sorted(names)

    # Maintenance --------------------------------------------------------

    def compact(self, *, metrics_retention_s: float) -> dict[str, int]:
        """Rewrite each file to what is still needed, atomically, under its lock."""
        cutoff = time.time() - metrics_retention_s
        counts: dict[str, int] = {}
        with self._metrics.locked():
            tally = {"metrics_kept": 0, "metrics_dropped": 0}
            if self._metrics.path.exists():
                kept = _retained(
                    self._metrics, tally, CallRecord.from_json, lambda r: r.ts >= cutoff
                )
                atomic_write_lines(self._metrics.path, kept)
            for tier in self._tiers.values():
                if tier.path.exists():
                    rows = _retained(
                        tier,
                        tally,
                        CallAggregate.from_json,
                        lambda r: r.ts + r.resolution > cutoff,  # the row's interval ends after it
                    )
                    atomic_write_lines(tier.path, rows)
            self._build_index()  # connectors whose metrics are all gone leave it
            counts.update(tally)
        for kind, file, reader in (
            ("circuits", self._circuits_file, self._circuits),
            ("tokens", self._tokens_file, self._tokens),
        ):
            with file.locked():
                values = reader.refresh()
                if file.path.exists():
                    atomic_write_lines(
                        file.path,
                        [_dumps({**_as_json(v), "connector": k}) for k, v in values.items()],
                    )
                counts[kind] = len(values)
        return counts

    def close(self) -> None:
        """Nothing stays open between calls."""

    # Load control -------------------------------------------------------

    def _limit_step(self, key: str, step: limit_state.Step[T]) -> T:
        """Run one load-control step on ``key`` with the state file locked.

        The file holds seconds-old counters, not history: it is replaced
        whole (temp file, rename) without an fsync, since losing it in a crash
        costs a few seconds of budget, and an unreadable one starts afresh.
        """
        file = self._limits_file
        with file.locked():
            try:
                states = _read_limit_states(file)
            except OSError as exc:
                raise StoreError(f"cannot read {file.path}: {exc}") from exc
            new_state, answer = step(states.get(key), _clock.wall())
            states[key] = new_state
            try:
                atomic_write_lines(file.path, [_ENCODER.encode(states).encode()], durable=False)
            except OSError as exc:
                raise StoreError(f"cannot write {file.path}: {exc}") from exc
        return answer


def _read_limit_states(file: _LockedFile) -> dict[str, Any]:
    """The load-control states in the file; an empty mapping if absent or unreadable."""
    try:
        with file.open_for_reading() as handle:
            data = handle.read(MAX_LINE_BYTES + 1)
    except FileNotFoundError:
        return {}
    try:
        states = json.loads(data)
    except ValueError:  # also a file past the bound, cut short: a few seconds of counters
        logger.warning("%s is unreadable; load-control counters start afresh", file.path)
        return {}
    return states if isinstance(states, dict) else {}


def _retained(
    file: _LockedFile,
    tally: dict[str, int],
    parse: Callable[[Any], CallRecord | CallAggregate],
    kept: Callable[[Any], bool],
) -> Iterator[bytes]:
    """Stream the lines of ``file`` that ``parse`` reads and ``kept`` keeps, normalised.

    What is dropped (unreadable, too long, past the retention) is counted.
    """
    with file.open_for_reading() as handle:
        size = os.fstat(handle.fileno()).st_size
        for lines, _offset in read_lines(handle, 0, size):
            for line in lines:
                if line is not None and not line.strip():
                    continue
                try:
                    if line is None:
                        raise ValueError("line too long")
                    item = parse(json.loads(line))
                except PARSE_ERRORS:
                    tally["metrics_dropped"] += 1
                    continue
                if not kept(item):
                    tally["metrics_dropped"] += 1
                    continue
                tally["metrics_kept"] += 1
                yield _dumps(item.to_json())


def _window_records(
    handle: IO[bytes],
    span: tuple[int, int],
    *,
    since: float,
    until: float | None,
    connector: str | None,
    out: list[CallRecord],
) -> int:
    """Append the records in ``[since, until)`` found in ``span`` to ``out``; count the bad."""
    start, size = span
    bad = 0
    for lines, _offset in read_lines(handle, start, size):
        for line in lines:
            if line is None:
                bad += 1  # longer than MAX_LINE_BYTES
                continue
            if not line.strip():
                continue
            try:
                record = CallRecord.from_json(json.loads(line))
            except PARSE_ERRORS:
                bad += 1
                continue
            if record.ts < since:
                continue
            if until is not None and record.ts >= until:
                # Past the window by more than the ordering slack: nothing later belongs.
                if record.ts >= until + ORDER_SLACK_S:
                    return bad
                continue
            if connector is None or record.connector == connector:
                out.append(record)
    return bad


def _window_rows(
    handle: IO[bytes],
    span: tuple[int, int],
    *,
    since: float,
    until: float | None,
    connector: str | None,
    out: list[CallAggregate],
) -> int:
    """Append the aggregated rows starting in ``[since, until)`` in ``span``; count the bad."""
    start, size = span
    stop = None if until is None else until + ORDER_SLACK_S
    bad = 0
    for lines, _offset in read_lines(handle, start, size):
        for line in lines:
            if line is None:
                bad += 1  # longer than MAX_LINE_BYTES
                continue
            if not line.strip():
                continue
            # The leading "ts" tells most lines outside the window apart unparsed
            # (the ordering slack reads a few minutes of them at each edge).
            ts = _line_ts(line)
            if ts is not None and (ts < since or (until is not None and ts >= until)):
                if stop is not None and ts >= stop:
                    return bad
                continue
            try:
                row = CallAggregate.from_json(json.loads(line))
            except PARSE_ERRORS:
                bad += 1
                continue
            if stop is not None and row.ts >= stop:
                return bad  # past the window by more than the ordering slack
            if row.ts < since or (until is not None and row.ts >= until):
                continue
            if connector is None or row.connector == connector:
                out.append(row)
    return bad


def _as_json(value: Any) -> dict[str, Any]:
    if isinstance(value, CircuitRecord):
        return value.to_json()
    return dict(value)


def _parse_circuit(data: Mapping[str, Any]) -> CircuitRecord:
    return CircuitRecord.from_json(data)


def _parse_token(data: Mapping[str, Any]) -> dict[str, Any]:
    token = dict(data)
    token.pop("connector", None)
    return token


def _dumps(data: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(data).encode() + b"\n"


# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


_CONNECTOR_RE = re.compile(rb'"connector":("(?:[^"\\]|\\.)*")')
_TS_RE = re.compile(rb'^\{"ts":(-?[0-9.eE+-]+)')


def _safe_name(connector: str) -> str:
    digest = hashlib.sha256(connector.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", connector)[:40]
    return f"{stem}-{digest}"


def _line_ts(line: bytes) -> float | None:
    match = _TS_RE.match(line)
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def _window_start(handle: IO[bytes], size: int, target: float) -> int:
    """An offset at or before the first record with ``ts >= target``.

    Bisection over byte offsets: from a midpoint, skip to the next line start
    and read the first parsable timestamp. Unreadable lines are stepped over.
    """
    lo, hi = 0, size
    while hi - lo > _SCAN_BYTES:
        mid = (lo + hi) // 2
        handle.seek(mid)
        skip_line(handle)
        ts: float | None = None
        start = handle.tell()
        while start < hi:
            # Only the line's start: a huge line is stepped over, never read whole.
            line = handle.readline(_TS_PREFIX_BYTES)
            if not line:
                break
            if not line.endswith(b"\n"):
                skip_line(handle)
            ts = _line_ts(line)
            if ts is not None:
                break
            start = handle.tell()
        if ts is None or ts >= target:
            hi = mid
        else:
            lo = start
    return lo


def _guard(read: Callable[[], T], file: _LockedFile) -> T:
    try:
        return read()
    except OSError as exc:
        raise StoreError(f"cannot read {file.path}: {exc}") from exc
