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
