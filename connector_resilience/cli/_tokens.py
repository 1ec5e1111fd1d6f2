"""``connector-resilience tokens``: each connector's token timing, never a secret."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TextIO

from connector_resilience.cli._common import format_time, open_context, print_json, table
from connector_resilience.oauth2 import token_statuses

__all__ = ["run_tokens"]


def run_tokens(args: argparse.Namespace, *, out: TextIO) -> int:
    """List stored tokens: expiry, whether a refresh is due, refresh token present, encrypted."""
    ctx = open_context(args)
    now = ctx.store.now()
    statuses = token_statuses(ctx.store, policy=ctx.policy, now=now)
    if ctx.json:
        print_json(
            {"store": ctx.store_name, "tokens": [dataclasses.asdict(s) for s in statuses]},
            out=out,
        )
        return 0
    out.write(f"store: {ctx.store_name}\n\n")
    if not statuses:
        out.write("no tokens in this store\n")
        return 0
    rows = [
        [
            s.connector,
            format_time(s.expires_at, now=now) if s.expires_at is not None else "unknown",
            "yes" if s.refresh_due else "no",
            "yes" if s.has_refresh_token else "no",
            "yes" if s.encrypted else "no",
            "ok" if s.readable else "unreadable",
        ]
        for s in statuses
    ]
    out.write(
        table(["CONNECTOR", "EXPIRES", "REFRESH DUE", "REFRESH TOKEN", "ENCRYPTED", "RECORD"], rows)
    )
    return 0
