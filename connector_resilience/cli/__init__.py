"""The ``connector-resilience`` command (installed as a console script).

``connector-resilience --help`` lists the commands: ``demo``, ``health``,
``circuits``, ``circuit``, ``tokens``, ``compact``, ``export`` and ``dashboard``.
``python -m connector_resilience.cli`` runs the same :func:`main`.
"""

from __future__ import annotations

from connector_resilience.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
