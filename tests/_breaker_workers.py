"""A breaker in a process of its own, driven step by step by a test (spawned, so importable).

``serve`` runs in the child: it reads commands from a queue and answers each on
another, so one test can interleave several processes exactly ("A fails three
times; now B calls") without sleeping and hoping. :class:`BreakerProcess` is
the test's side.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import time
import traceback
from collections.abc import Callable
from typing import Any

#: Longest a test waits for one answer (a spawned child imports the library first).
ANSWER_TIMEOUT_S = 60.0


def serve(commands: Any, answers: Any) -> None:
    """Run commands until ``"stop"``; answer each ("ok", value) or ("error", traceback)."""
    breaker: list[Any] = [None]
    while True:
        name, args = commands.get()
        if name == "stop":
            answers.put(("ok", None))
            return
        try:
            if name == "setup":
                breaker[0] = _setup(*args)
                answers.put(("ok", None))
            else:
                answers.put(("ok", _COMMANDS[name](breaker[0], *args)))
        except Exception:
            answers.put(("error", traceback.format_exc()))


def _setup(url: str, circuit: dict[str, Any], seed: int, skew_s: float) -> Any:
    """A fresh breaker on ``url``; ``skew_s`` sets this process's wall clock that far off,
    as on a host whose clock is wrong."""
    from connector_resilience import _clock, testing
    from connector_resilience.circuit import CircuitBreaker
    from connector_resilience.policy import Policy

    testing.reset()  # the previous test's stores are gone with its folder
    _clock.wall = (lambda: time.time() + skew_s) if skew_s else time.time
    policy = Policy(store={"url": url}, circuit=circuit)
    return CircuitBreaker("shared", policy=policy, rng=random.Random(seed))


def _calls(breaker: Any, count: int, outcome: str) -> dict[str, Any]:
    """Make ``count`` calls that end in ``outcome``; count admissions, probes and refusals."""
    from connector_resilience.errors import CircuitOpenError

    tally: dict[str, Any] = {"admitted": 0, "probes": 0, "refused": 0, "reasons": []}
    for _ in range(count):
        try:
            probe = breaker.acquire()
        except CircuitOpenError as exc:
            tally["refused"] += 1
            if exc.reason not in tally["reasons"]:
                tally["reasons"].append(exc.reason)
            continue
        tally["admitted"] += 1
        tally["probes"] += probe is not None
        breaker.report(probe, outcome, error=ConnectionError(f"from {breaker.reporter_id}"))
    return tally


def _view(breaker: Any) -> dict[str, Any]:
    """What this process sees: its state, whether it is its own view, the share admitted."""
    return {
        "state": breaker.state,
        "local": breaker.local_record is not None,
        "share": breaker.admitted_share,
        "reporter": breaker.reporter_id,
        "record": breaker.record.to_json(),
    }


def _view_once(breaker: Any, state: str, timeout: float) -> dict[str, Any]:
    """The view once the state is ``state`` (a Redis push takes a moment), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = _view(breaker)
    while seen["state"] != state and time.monotonic() < deadline:
        time.sleep(0.005)
        seen = _view(breaker)
    return seen


_COMMANDS: dict[str, Callable[..., Any]] = {
    "calls": _calls,
    "view": _view,
    "view_once": _view_once,
}


class BreakerProcess:
    """The test's handle on a spawned process that runs one breaker (connector ``"shared"``).

    One process serves many tests: :meth:`setup` gives it a fresh breaker.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._commands = ctx.Queue()
        self._answers = ctx.Queue()
        self.process = ctx.Process(target=serve, args=(self._commands, self._answers), daemon=True)
        self.process.start()

    def ask(self, name: str, *args: Any) -> Any:
        """Run one command in the child and return its answer (raises what it raised)."""
        self._commands.put((name, args))
        try:
            status, value = self._answers.get(timeout=ANSWER_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"no answer to {name!r} within {ANSWER_TIMEOUT_S}s") from None
        if status == "error":
            raise AssertionError(f"{name!r} failed in the child:\n{value}")
        return value

    def setup(
        self, url: str, circuit: dict[str, Any], *, seed: int = 0, skew_s: float = 0.0
    ) -> BreakerProcess:
        """Give the child a fresh breaker on ``url`` with these circuit settings."""
        self.ask("setup", url, circuit, seed, skew_s)
        return self

    def calls(self, count: int, outcome: str = "success") -> dict[str, Any]:
        """``count`` calls ending in ``outcome``: admitted, probes, refused, refusal reasons."""
        tally: dict[str, Any] = self.ask("calls", count, outcome)
        return tally

    def view(self) -> dict[str, Any]:
        """The child's state, own view, admitted share, reporter id and record."""
        seen: dict[str, Any] = self.ask("view")
        return seen

    def view_once(self, state: str, timeout: float = 5.0) -> dict[str, Any]:
        """The child's view once its state is ``state``, or as it is after ``timeout``."""
        seen: dict[str, Any] = self.ask("view_once", state, timeout)
        return seen

    def stop(self) -> None:
        """Ask the child to end and wait for it (killed if it does not)."""
        if self.process.is_alive():
            try:
                self.ask("stop")
            finally:
                self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        assert self.process.exitcode == 0
