"""Reading JSON lines in bounded memory: a line longer than the bound is skipped, never held whole.

A JSONL store file is read in blocks; a line longer than :data:`MAX_LINE_BYTES`
is dropped as its bytes arrive and reported as ``None`` (the caller counts it
as skipped), so one huge line costs a few blocks of memory, not its size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

__all__ = ["MAX_LINE_BYTES", "read_lines", "skip_line"]

#: The longest line a reader accepts (and a writer writes). Records are a few
#: hundred bytes; a token with its ciphertexts a few kilobytes.
MAX_LINE_BYTES = 1 << 20
#: Bytes read at a time.
BLOCK_BYTES = 256 * 1024


def read_lines(
    handle: IO[bytes],
    start: int,
    end: int,
    *,
    max_line: int = MAX_LINE_BYTES,
    block: int = BLOCK_BYTES,
) -> Iterator[tuple[list[bytes | None], int]]:
    """The complete lines of ``handle`` between ``start`` and ``end``, a block at a time.

    Args:
        handle: a binary file.
        start: offset of the first byte to read (a line start).
        end: offset to stop reading at.
        max_line: lines longer than this (without the newline) come back as ``None``.
        block: bytes read at a time.

    Yields:
        ``(lines, offset)``: the lines completed by one block (without their
        newlines; ``None`` for each over-long one) and the offset just past the
        last of them. A final line without its newline is never yielded.
    """
    handle.seek(start)
    pos = start
    carry = b""  # the start of an unfinished line, at most max_line bytes
    skipping = False  # inside an over-long line, dropping its bytes
    while pos < end:
        data = handle.read(min(block, end - pos))
        if not data:
            return
        pos += len(data)
        lines: list[bytes | None] = []
        if skipping:
            newline = data.find(b"\n")
            if newline < 0:
                continue
            lines.append(None)
            skipping = False
            data = data[newline + 1 :]
        last = data.rfind(b"\n")
        if last < 0:
            carry += data
        else:
            head = carry + data[:last] if carry else data[:last]
            lines.extend(line if len(line) <= max_line else None for line in head.split(b"\n"))
            carry = data[last + 1 :]
        done = pos - len(carry)
        if len(carry) > max_line:
            skipping, carry = True, b""
        if lines:
            yield lines, done


def skip_line(handle: IO[bytes], *, block: int = BLOCK_BYTES) -> None:
    """Move ``handle`` just past the next newline (or to the end), reading a block at a time."""
    while True:
        piece = handle.readline(block)
        if not piece or piece.endswith(b"\n"):
            return
