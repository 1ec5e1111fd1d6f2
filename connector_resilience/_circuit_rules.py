"""The breaker's rules as pure functions of (record, store time, settings): no I/O, no clock.

:mod:`connector_resilience.circuit` feeds them what it read from the store and
writes back what they return; the same rules serve a process's own view of a
breaker opened below quorum, which never reaches the store.
"""

from __future__ import annotations

import dataclasses
from typing import Final, Literal

from connector_resilience.backends import CircuitRecord, CircuitState
from connector_resilience.errors import CircuitTransitionError
from connector_resilience.policy import CircuitPolicy

__all__ = [
    "SLOW_START_FLOOR",
    "Refusal",
    "admitted_share",
    "closed",
    "cooldown_for",
    "effective_state",
    "holding_probe",
    "opened",
    "probe_outcome",
    "probe_refusal",
    "transition",
    "with_vote",
]

#: Share of calls a slow start admits at its first instant (Envoy's default
#: minimum weight); it then grows linearly to all of them.
SLOW_START_FLOOR: Final = 0.1

#: Why a call is refused and when to try again: (retry_at, reason).
Refusal = tuple[float | None, str]

Verdict = Literal["open", "close", "continue"]


def effective_state(record: CircuitRecord, now: float) -> CircuitState:
    """The state a record means at ``now``: open turns half-open once the cooldown ends."""
    if record.override == "forced_open":
        return "open"
    if record.override == "disabled":
        return "closed"
    if record.state == "open" and record.reopen_at is not None and now >= record.reopen_at:
        return "half_open"
    return record.state


def admitted_share(record: CircuitRecord, now: float) -> float:
    """The share of calls a closed breaker admits at ``now``: below 1.0 only in a slow start.

    The ramp is stored in the record in store time, so every process sharing
    the store admits the same share at the same moment.
    """
    start, end = record.ramp_from, record.ramp_until
    if start is None or end is None or now >= end or end <= start:
        return 1.0
    if record.override is not None or record.state != "closed":
        return 1.0
    progress = max(0.0, now - start) / (end - start)
    return SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * progress


def cooldown_for(opens: int, cfg: CircuitPolicy) -> float:
    """How long the ``opens``-th open in a row lasts: the cooldown, grown and capped."""
    if cfg.cooldown_multiplier == 1 or opens <= 1:
        return cfg.cooldown_s
    try:
        grown = cfg.cooldown_s * cfg.cooldown_multiplier ** (opens - 1)
    except OverflowError:
        return cfg.cooldown_max_s
    return min(grown, cfg.cooldown_max_s)


def opened(
    record: CircuitRecord,
    now: float,
    cfg: CircuitPolicy,
    reason: str,
    failure: tuple[str, str] | None,
) -> CircuitRecord:
    """The record after the breaker opens at ``now``: a reopen (no close since) lasts longer."""
    opens = record.opens + 1 if record.state != "closed" else 1
    return dataclasses.replace(
        record,
        version=record.version + 1,
        state="open",
        failures=0,
        opened_at=now,
        reopen_at=now + cooldown_for(opens, cfg),
        probes=(),
        reason=reason,
        changed_at=now,
        opens=opens,
        probe_successes=0,
        probe_failures=0,
        ramp_from=None,
        ramp_until=None,
        reporters=(),
        last_failure=failure,
    )


def closed(
    record: CircuitRecord, now: float, cfg: CircuitPolicy, *, slow_start: bool
) -> CircuitRecord:
    """The record after the breaker closes at ``now`` (with a slow start if asked and set)."""
    ramp = slow_start and cfg.slow_start_s > 0
    return dataclasses.replace(
        record,
        version=record.version + 1,
        state="closed",
        failures=0,
        opened_at=None,
        reopen_at=None,
        probes=(),
        reason=None,
        changed_at=now,
        opens=0,
        probe_successes=0,
        probe_failures=0,
        ramp_from=now if ramp else None,
        ramp_until=now + cfg.slow_start_s if ramp else None,
        reporters=(),
        last_failure=None,
    )


def probe_refusal(
    record: CircuitRecord, now: float, cfg: CircuitPolicy, *, draw: float
) -> Refusal | None:
    """Why a half-open breaker refuses a call as a probe, or ``None`` when it may probe.

    Args:
        draw: a uniform random number in [0, 1): the call is picked as a probe
            when it is below ``CB_HALF_OPEN_PROB``.
    """
    live = [p[1] for p in record.probes if p[1] > now]
    if len(live) >= cfg.half_open_max_probes:
        return min(live), "half-open: every probe slot is taken"
    if draw >= cfg.half_open_prob:
        return now, "half-open: call not picked as a probe"
    return None


def holding_probe(
    record: CircuitRecord, now: float, cfg: CircuitPolicy, *, probe: str
) -> CircuitRecord:
    """The record with ``probe`` holding a slot (expired slots dropped)."""
    live = tuple(p for p in record.probes if p[1] > now)
    return dataclasses.replace(
        record,
        version=record.version + 1,
        state="half_open",
        probes=(*live, (probe, now + cfg.probe_lease_s)),
        changed_at=now,
    )


def _verdict(record: CircuitRecord, cfg: CircuitPolicy, *, failed: bool) -> Verdict:
    """What one more probe outcome decides.

    The consecutive model reopens at the first failure and closes after
    ``CB_HALF_OPEN_SUCCESSES`` successes. The rate models take the failure
    rate over that many probes, and act as soon as the rest cannot change it.
    """
    successes = record.probe_successes + (not failed)
    failures = record.probe_failures + failed
    needed = cfg.half_open_successes
    if cfg.model == "consecutive":
        if failed:
            return "open"
        return "close" if successes >= needed else "continue"
    if failures / needed >= cfg.failure_rate:
        return "open"
    if (needed - successes) / needed < cfg.failure_rate:
        return "close"
    return "continue"


def probe_outcome(
    record: CircuitRecord,
    now: float,
    cfg: CircuitPolicy,
    *,
    probe: str,
    failed: bool | None,
    failure: tuple[str, str] | None,
) -> tuple[CircuitRecord | None, str | None]:
    """The record a half-open probe's outcome leads to (``None``: nothing changes), and why.

    Args:
        failed: ``None`` for an outcome that decides nothing (the probe was
            cancelled): its slot is freed.
    """
    if not any(p[0] == probe for p in record.probes):
        return None, None  # the lease ran out, or another probe decided first
    rest = tuple(p for p in record.probes if p[0] != probe)
    if failed is None:
        return dataclasses.replace(record, version=record.version + 1, probes=rest), None
    verdict = _verdict(record, cfg, failed=failed)
    if verdict == "open":
        reason = "half-open probe failed"
        if cfg.model != "consecutive" and cfg.half_open_successes > 1:
            reason = f"half-open probes: failure rate reached {cfg.failure_rate:.0%}"
        return opened(record, now, cfg, reason, failure), reason
    if verdict == "close":
        if cfg.half_open_successes == 1:
            return closed(record, now, cfg, slow_start=True), "half-open probe succeeded"
        return closed(record, now, cfg, slow_start=True), "half-open probes succeeded"
    return (
        dataclasses.replace(
            record,
            version=record.version + 1,
            probes=rest,
            probe_successes=record.probe_successes + (not failed),
            probe_failures=record.probe_failures + failed,
            changed_at=now,
        ),
        None,
    )


def with_vote(
    record: CircuitRecord, reporter: str, now: float, cfg: CircuitPolicy
) -> tuple[tuple[str, float], ...]:
    """The reporters after ``reporter`` reports a failure: the newest ``CB_QUORUM``, none stale.

    A report counts for one cooldown (``CB_COOLDOWN_S``), as long as the open
    that a process's own failures give it; the record never holds more than
    ``CB_QUORUM`` entries, all it takes to tell whether the quorum is met.
    """
    horizon = now - cfg.cooldown_s
    kept = tuple(r for r in record.reporters if r[0] != reporter and r[1] > horizon)
    return (*kept, (reporter, now))[-cfg.quorum :]


def _label(record: CircuitRecord, now: float) -> str:
    return record.override or effective_state(record, now)


def transition(
    record: CircuitRecord,
    now: float,
    cfg: CircuitPolicy,
    *,
    action: Literal["close", "half_open"],
    connector: str,
) -> CircuitRecord:
    """An operator's ``close`` or ``half_open``, or :class:`CircuitTransitionError` if senseless.

    * ``close``: from open, half-open or forced open; closes as a recovery
      does, slow start included.
    * ``half_open``: from open (cooldown running) or forced open; probing starts now.
    """
    label = _label(record, now)

    def refuse(hint: str) -> CircuitTransitionError:
        return CircuitTransitionError(connector, action=action, state=label, hint=hint)

    if label == "disabled":
        raise refuse("an operator disabled it; reset() returns it to automatic")
    if action == "close":
        if label == "closed":
            raise refuse(
                "nothing to close (disable() lets every call through without counting failures)"
            )
        return dataclasses.replace(closed(record, now, cfg, slow_start=True), override=None)
    if label == "closed":
        raise refuse("nothing to probe; it opens when calls fail, or force_open() opens it")
    if label == "half_open":
        raise refuse("it is probing already")
    return dataclasses.replace(
        record,
        version=record.version + 1,
        state="half_open",
        override=None,
        reopen_at=now,
        probes=(),
        probe_successes=0,
        probe_failures=0,
        reason=record.reason if record.override is None else "half-open by an operator",
        changed_at=now,
    )
