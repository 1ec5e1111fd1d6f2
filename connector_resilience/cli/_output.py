"""Terminal output for the CLI: colour on a TTY (NO_COLOR respected) and a stdout a pipe may close.

Colour is applied to a table after it is laid out, so that the escape codes
never count in column widths and ``table()`` stays one plain-text concern.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TextIO

__all__ = ["PipeSafe", "colour_column", "colour_for", "wants_colour"]

_RESET = "\x1b[0m"
#: Verdicts and breaker states, coloured as the dashboard colours them.
_PALETTE: Mapping[str, str] = {
    "healthy": "\x1b[32m",
    "closed": "\x1b[32m",
    "degraded": "\x1b[33m",
    "half_open": "\x1b[33m",
    "down": "\x1b[31;1m",
    "open": "\x1b[31;1m",
    "no data": "\x1b[2m",
}


def wants_colour(out: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set (no-color.org) or TERM=dumb."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def colour_for(cell: str) -> str | None:
    """The escape code for a cell's first word (``open (forced)`` is coloured as ``open``)."""
    text = cell.strip()
    return _PALETTE.get(text) or _PALETTE.get(text.split(" (")[0])


def colour_column(text: str, header: str, paint: Callable[[str], str | None] = colour_for) -> str:
    """``text`` (a laid-out table) with the cells of column ``header`` coloured.

    The column's span is read from the header line, so padding and alignment
    are untouched; rows shorter than the column are left as they are.
    """
    lines = text.split("\n")
    start = lines[0].find(header) if lines else -1
    if start < 0:
        return text
    rest = lines[0][start + len(header) :]
    gap = len(rest) - len(rest.lstrip(" "))
    end = start + len(header) + gap - 2 if rest.strip() else None
    out = [lines[0]]
    for line in lines[1:]:
        cell = line[start:end] if end is not None else line[start:]
        word = cell.rstrip()
        code = paint(word) if word else None
        if code is None:
            out.append(line)
            continue
        stop = start + len(word)
        out.append(f"{line[:start]}{code}{word}{_RESET}{line[stop:]}")
    return "\n".join(out)


class PipeSafe:
    """A stdout that a closed pipe (``health | head``) cannot turn into an error.

    The first write after the reader went away points the descriptor at
    ``/dev/null`` (so that the interpreter's last flush is quiet too) and
    drops the rest: the command finishes and exits with its own code.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text: str) -> int:
        if self.closed_by_reader:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self) -> None:
        if self.closed_by_reader:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def isatty(self) -> bool:
        return bool(self._stream.isatty())

    def _reader_left(self) -> None:
        self.closed_by_reader = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # not a real descriptor (a test's StringIO)
            pass
