"""``connector-resilience tokens``: timing and shape of stored tokens, never a secret."""

from __future__ import annotations

import json
import time

from connector_resilience import Policy
from connector_resilience.oauth2 import save_token
from tests._ops import run_cli

ACCESS = "at-very-secret-value"
REFRESH = "rt-very-secret-value"


def test_tokens_lists_expiry_and_refresh_due_without_secrets(shared_store_url: str) -> None:
    policy = Policy(store={"url": shared_store_url})
    now = time.time()
    save_token(
        "crm",
        {"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": now + 3600},
        policy=policy,
    )
    save_token("billing", {"access_token": ACCESS + "2", "expires_at": now + 60}, policy=policy)

    human = run_cli("--store", shared_store_url, "tokens")
    assert human.returncode == 0, human.stderr
    rows = {line.split()[0]: line.split() for line in human.stdout.splitlines()[3:] if line}
    assert rows["crm"][-4:] == ["no", "yes", "no", "ok"]  # not due, has refresh token
    assert rows["billing"][-4:] == ["yes", "no", "no", "ok"]  # inside the 300 s window

    machine = run_cli("--store", shared_store_url, "--json", "tokens")
    assert machine.returncode == 0, machine.stderr
    tokens = {t["connector"]: t for t in json.loads(machine.stdout)["tokens"]}
    assert tokens["crm"]["refresh_due"] is False
    assert tokens["crm"]["has_refresh_token"] is True
    assert tokens["billing"]["refresh_due"] is True
    assert tokens["billing"]["seconds_left"] < 61

    for output in (human, machine):
        assert ACCESS not in output.stdout + output.stderr
        assert REFRESH not in output.stdout + output.stderr
