"""Issue 21, items 1 to 3: a folder other users can write to never turns a store into a weapon.

Each attack is planted for real (symbolic links, files of another user made
with chown, folders of mode 0777) and the store must refuse it with a clear
StoreError, or warn, but never follow the link, re-permission or overwrite
the file, nor truncate anything outside its own files.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from connector_resilience.backends import CallRecord, CircuitRecord
from connector_resilience.backends.jsonl import JsonlStore
from connector_resilience.backends.sqlite import SqliteStore
from connector_resilience.errors import StoreError

IN_CI = os.environ.get("CONNECTOR_RESILIENCE_CI") == "1"
#: The uid of a user that is not this process's (nobody).
OTHER_UID = 65534


def _needs_root() -> None:
    """Making a file of another user needs root (CI runs as root)."""
    if os.geteuid() == 0:
        return
    if IN_CI:
        pytest.fail("CI must run the foreign-owner tests as root")
    pytest.skip("making a file of another user needs root")


def _filled_store(folder: Path) -> JsonlStore:
    store = JsonlStore.from_url(f"jsonl://{folder}")
    store.save_token("api", {"access_token": "at-secret-1", "refresh_token": "rt-secret-1"})
    assert store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    store.append_calls(
        [CallRecord(ts=1e9, connector="api", operation="op", duration_ms=1.0, status="ok")]
    )
    return store


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.conf"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    return victim


def _untouched(victim: Path) -> None:
    assert victim.read_bytes() == b"precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


# 1. compact() and its temporary files ------------------------------------------


def test_compact_never_writes_through_a_planted_temporary_file(tmp_path: Path) -> None:
    """The old predictable temp names, planted as links to a victim: compact() ignores them."""
    folder = tmp_path / "state"
    store = _filled_store(folder)
    victim = _victim(tmp_path)
    for path in store.paths.values():
        (folder / f".{path.name}.{os.getpid()}.tmp").symlink_to(victim)
    counts = store.compact(metrics_retention_s=1e12)
    assert counts == {"metrics_kept": 1, "metrics_dropped": 0, "circuits": 1, "tokens": 1}
    _untouched(victim)
    for path in store.paths.values():
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode), f"{path.name} is no longer a regular file"
        assert stat.S_IMODE(st.st_mode) == 0o600
    reopened = JsonlStore.from_url(f"jsonl://{folder}")
    assert reopened.load_token("api") == {
        "access_token": "at-secret-1",
        "refresh_token": "rt-secret-1",
    }


# 2. Store files that are links, or another user's -------------------------------


@pytest.mark.parametrize("kind", ["metrics", "circuits", "tokens"])
def test_jsonl_refuses_a_symlinked_store_file(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    victim = _victim(tmp_path)
    store = JsonlStore.from_url(f"jsonl://{folder}")
    store.paths[kind].symlink_to(victim)
    write = {
        "metrics": lambda: store.append_calls(
            [CallRecord(ts=1e9, connector="api", operation="op", duration_ms=1.0, status="ok")]
        ),
        "circuits": lambda: store.compare_and_set_circuit("api", 0, CircuitRecord(version=1)),
        "tokens": lambda: store.save_token("api", {"access_token": "at-secret-1"}),
    }[kind]
    read = {
        "metrics": lambda: store.read_calls(since=0),
        "circuits": lambda: store.get_circuit("api"),
        "tokens": lambda: store.load_token("api"),
    }[kind]
    for operation in (write, read):
        with pytest.raises(StoreError, match="symbolic link"):
            operation()
    _untouched(victim)


@pytest.mark.parametrize("kind", ["metrics", "circuits", "tokens"])
def test_jsonl_refuses_a_store_file_of_another_user(tmp_path: Path, kind: str) -> None:
    _needs_root()
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    store = JsonlStore.from_url(f"jsonl://{folder}")
    planted = store.paths[kind]
    planted.write_bytes(b"")
    planted.chmod(0o644)
    os.chown(planted, OTHER_UID, OTHER_UID)
    write: Callable[[], object] = {
        "metrics": lambda: store.append_calls(
            [CallRecord(ts=1e9, connector="api", operation="op", duration_ms=1.0, status="ok")]
        ),
        "circuits": lambda: store.compare_and_set_circuit("api", 0, CircuitRecord(version=1)),
        "tokens": lambda: store.save_token("api", {"access_token": "at-secret-1"}),
    }[kind]
    with pytest.raises(StoreError, match="belongs to another user"):
        write()
    st = planted.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_size) == (OTHER_UID, 0o644, 0)


def test_sqlite_refuses_a_symlinked_or_foreign_database(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    real = SqliteStore(tmp_path / "real.db")
    real.list_circuits()  # a real database, elsewhere
    linked = folder / "linked.db"
    linked.symlink_to(real.path)
    with pytest.raises(StoreError, match="symbolic link"):
        SqliteStore(linked).list_circuits()
    _needs_root()
    foreign = folder / "foreign.db"
    foreign.write_bytes(real.path.read_bytes())
    os.chown(foreign, OTHER_UID, OTHER_UID)
    with pytest.raises(StoreError, match="belongs to another user"):
        SqliteStore(foreign).list_circuits()


# 3. Folders other users can write to -------------------------------------------


def test_jsonl_token_folder_others_can_write_is_refused_metrics_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    store = JsonlStore.from_url(f"jsonl://{folder}")
    caplog.set_level(logging.WARNING, logger="connector_resilience.store")
    record = CallRecord(ts=1e9, connector="api", operation="op", duration_ms=1.0, status="ok")
    store.append_calls([record])
    store.append_calls([record])
    assert store.read_calls(since=0) == [record, record]
    warnings = [
        r.getMessage() for r in caplog.records if "another user could replace" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings  # once, not per write
    assert "0777" in warnings[0]
    for operation in (
        lambda: store.save_token("api", {"access_token": "at-secret-1"}),
        lambda: store.load_token("api"),
        store.list_tokens,
        lambda: store.token_lock("api", timeout_s=1).__enter__(),
    ):
        with pytest.raises(StoreError, match=r"refusing to keep tokens in .*0777.*chmod go-w"):
            operation()
    assert not store.paths["tokens"].exists()
    folder.chmod(0o700)  # fixed: tokens are kept again
    store.save_token("api", {"access_token": "at-secret-1"})
    assert store.load_token("api") == {"access_token": "at-secret-1"}


def test_sqlite_tokens_refused_in_a_folder_others_can_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)  # sticky, like /tmp: still anyone's to fill
    store = SqliteStore(folder / "state.db")
    caplog.set_level(logging.WARNING, logger="connector_resilience.store")
    assert store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert any("another user could replace" in r.getMessage() for r in caplog.records)
    with pytest.raises(StoreError, match="refusing to keep tokens"):
        store.save_token("api", {"access_token": "at-secret-1"})
    with pytest.raises(StoreError, match="refusing to keep tokens"):
        store.load_token("api")
