"""File helpers of the file-based stores: private folders and files, hostile ones refused.

A store folder another user can write to is where the attacks start: a planted
symbolic link makes a writer truncate or re-permission a file it never meant to
touch, a planted file feeds it records. So every store file is opened with
``O_NOFOLLOW`` and refused unless it is a regular file of this process's user
(or root), temporary files are created exclusively under unpredictable names,
and a folder others can write to is refused for tokens and warned about for
the rest.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from connector_resilience.errors import StoreError

logger = logging.getLogger("connector_resilience.store")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

_warned_folders: set[str] = set()
_warned_lock = threading.Lock()


def ensure_private_dir(folder: Path) -> None:
    """Create ``folder`` and any missing parents as 0700, whatever the umask.

    Folders that already exist are left as they are: they are the user's
    (:func:`check_folder` judges them).
    """
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, PRIVATE_DIR_MODE)
            os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask


def _trusted_owner(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def check_folder(folder: Path, *, strict: bool, what: str) -> None:
    """Refuse (``strict``) or warn once about a folder other users can change.

    A folder that group or others can write to, or that belongs to another
    user, lets them replace the files in it. OpenSSH's StrictModes refuses such
    a folder for keys; tokens get the same rule, metrics and circuits a warning.

    Args:
        folder: the folder holding a store file (a symlinked folder is judged
            by what it points to).
        strict: raise instead of warning.
        what: what the folder holds, for the message ("tokens", "metrics").

    Raises:
        StoreError: ``strict`` and the folder is writable by others.
    """
    try:
        st = os.stat(folder)
    except OSError:
        return  # opening the file will report it
    if st.st_mode & 0o022:
        problem = f"group or others can write to it (mode {stat.S_IMODE(st.st_mode):04o})"
        fix = f"chmod go-w {folder}"
    elif not _trusted_owner(st.st_uid):
        problem = f"it belongs to another user (uid {st.st_uid})"
        fix = "use a folder of this user"
    else:
        return
    if strict:
        raise StoreError(
            f"refusing to keep {what} in {folder}: {problem}, so another user could "
            f"replace the files in it ({fix}, or choose a private folder)"
        )
    key = str(folder)
    with _warned_lock:
        if key in _warned_folders:
            return
        _warned_folders.add(key)
    logger.warning(
        "%s are kept in %s, but %s: another user could replace them (%s)",
        what,
        folder,
        problem,
        fix,
    )


def open_store_file(path: Path, flags: int) -> int:
    """:func:`open_checked`, without the file's status."""
    return open_checked(path, flags)[0]


def open_checked(path: Path, flags: int) -> tuple[int, os.stat_result]:
    """Open a store file without following a symbolic link; refuse a file of another user.

    Returns the descriptor and the file's status.

    Args:
        path: the file.
        flags: ``os.O_*`` flags (``O_NOFOLLOW``, ``O_NONBLOCK`` and
            ``O_CLOEXEC`` are added; a file created is 0600).

    Raises:
        StoreError: ``path`` is a symbolic link, not a regular file, or owned
            by another user (its mode is then left alone, never ``chmod``-ed).
        OSError: any other failure to open it.
    """
    # O_NONBLOCK: opening a FIFO planted in place of the file must not hang.
    extra = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | extra, PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(
                f"refusing {path}: it is a symbolic link. Store files are never opened "
                "through links (a planted one would redirect writes to another file); "
                "point the setting at the real file instead"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"cannot read or write {path}: it is not a regular file")
        if not _trusted_owner(st.st_uid):
            raise StoreError(
                f"refusing {path}: it belongs to another user (uid {st.st_uid}, this "
                f"process runs as uid {os.geteuid()}); remove it or run as its owner"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_private_append(path: Path) -> int:
    """Open ``path`` to append (and read its tail), created 0600: never readable by others."""
    fd, st = open_checked(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        if st.st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a short write is retried, not lost)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_lines(path: Path, lines: Iterable[bytes], *, durable: bool = True) -> None:
    """Replace ``path`` with ``lines``: temp file, fsync, rename, fsync the folder.

    The temporary file has an unpredictable name and is created exclusively
    (``mkstemp``: ``O_EXCL``, ``O_NOFOLLOW``, 0600), so nothing planted in
    the folder can make this write anywhere but a new file of its own.
    ``durable=False`` skips both fsyncs, for state worth only seconds (the
    rename is still atomic: a reader sees the old file or the new one).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        buffer: list[bytes] = []
        size = 0
        for line in lines:
            buffer.append(line)
            size += len(line)
            if size >= 1 << 20:
                write_all(fd, b"".join(buffer))
                buffer.clear()
                size = 0
        write_all(fd, b"".join(buffer))
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
