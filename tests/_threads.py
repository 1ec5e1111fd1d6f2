"""Thread helpers shared by the tests that race real threads against each other."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def fine_thread_switching() -> Iterator[None]:
    """Let threads take turns every few microseconds, so their steps interleave finely."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
