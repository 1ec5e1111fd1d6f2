"""Developer sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``demo``, ``bench``, ``docs``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (what CI runs)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff format and lint."""
    session.install("ruff")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples and benchmarks."""
    session.install("-e", ".[test]", "mypy", "nox")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """The main demo on the default JSONL store."""
    session.install("-e", ".")
    session.run("connector-resilience", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks beside the peer libraries; writes docs/benchmarks/."""
    session.install("-e", ".[all]", "-r", "benchmarks/requirements.txt")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with warnings as errors."""
    session.install("-e", ".[all]", "-r", "docs/requirements.txt")
    session.run("mkdocs", "build", "--strict")
