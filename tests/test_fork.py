"""A forked worker (gunicorn --preload, multiprocessing's fork) keeps recording, once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connector_resilience import Policy, flush_metrics, resilient, summarize


@pytest.mark.parametrize("backend", ["jsonl", "sqlite"])
def test_forked_child_records_its_own_calls_and_not_the_parents(
    tmp_path: Path, backend: str
) -> None:
    url = f"jsonl://{tmp_path / 'state'}" if backend == "jsonl" else f"sqlite:///{tmp_path}/s.db"
    policy = Policy(store={"url": url, "flush_interval_s": 60})

    @resilient("fork", policy=policy)
    def call() -> int:
        return 1

    call()  # buffered in the parent, not yet written
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            call()
            call()
            code = 0 if flush_metrics() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert flush_metrics()
    summary = summarize("fork", policy=policy)
    assert summary.total_calls == 3  # one from the parent, two from the child, none twice
