"""File helpers shared by the file-based stores: private folders and files, atomic replace."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_private_dir(folder: Path) -> None:
    """Create ``folder`` and any missing parents as 0700, whatever the umask.

    Folders that already exist are left as they are: they are the user's.
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


def open_private_append(path: Path) -> int:
    """Open ``path`` to append (and read its tail), created 0600: never readable by others."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
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


def atomic_write_lines(path: Path, lines: Iterable[bytes]) -> None:
    """Replace ``path`` with ``lines``: temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
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
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
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
