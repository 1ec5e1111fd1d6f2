"""The store conformance suite, run against a backend of your own.

This module is what docs/stores.md tells a backend author to write: import the
suite's tests, and override the ``store_url`` fixture (and ``shared_store_url``,
for a backend that several processes can share) to name your backend. Here the
backend is the ``dict://`` store of examples/custom_store.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.test_store_conformance import *  # noqa: F403 - the suite's tests run here too

_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_store.py"


def _register_dict_backend() -> None:
    """Import examples/custom_store.py, which registers ``dict://``."""
    spec = importlib.util.spec_from_file_location("custom_store_example", _EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


_register_dict_backend()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh ``dict://`` store per test."""
    return f"dict://{tmp_path.name}"


# dict:// lives in one process: the cross-process tests do not apply to it, so
# they are not collected here (a shared backend keeps them and overrides
# ``shared_store_url`` as well).
del test_metrics_from_four_processes_are_exact  # noqa: F821
del test_circuit_compare_and_set_across_processes  # noqa: F821
del test_sigkill_mid_write_loses_nothing_acknowledged  # noqa: F821

# LimitStore is optional: dict:// leaves it out, so its rate limits, bulkheads and
# retry budgets are per process even with *_SCOPE=store (with a warning).
del test_every_backend_can_share_load_control  # noqa: F821
del test_retry_budget_allows_the_ratio_of_calls_plus_the_floor  # noqa: F821
del test_retry_budget_ratio_zero_allows_no_retry  # noqa: F821
del test_retry_budget_forgets_calls_and_retries_past_the_window  # noqa: F821
del test_token_bucket_burst_then_refusal_with_the_time_a_token_is_due  # noqa: F821
del test_token_reservations_queue_each_waiter_at_its_own_time  # noqa: F821
del test_pause_stops_tokens_until_it_ends  # noqa: F821
del test_leases_cap_holders_and_free_a_slot_on_release  # noqa: F821
del test_a_lease_whose_holder_never_returns_ends_by_itself  # noqa: F821
del test_tokens_taken_from_threads_never_exceed_the_bucket  # noqa: F821
del test_load_control_is_atomic_across_processes  # noqa: F821
