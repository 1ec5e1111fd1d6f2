"""The documentation cannot rot: its code runs here.

* Every ```python block of docs/*.md and README.md runs, each page's blocks in
  order in one namespace, in a fresh folder with none of our settings in the
  environment, and with retry sleeps turned off (``testing.no_waits``). A block
  right after ``<!-- not-run -->`` is skipped; a block of any language right
  after ``<!-- write: NAME -->`` is written to the file NAME first (TOML and
  ``.env`` examples are real files that the next blocks read).
* A ```text block right after a Python block is that block's output: what the
  block prints must match it (``...`` matches anything, whitespace is
  normalised, as in doctests), unless ``<!-- output not checked -->`` stands
  between the two.
* A block may ``await`` at top level, as in ``python -m asyncio``; it then runs
  in an event loop of its own (``asyncio.run``).
* Functions named ``test_*`` that a page defines are then called, as pytest
  would: they may take ``monkeypatch`` and ``tmp_path``; ``async`` ones run
  under ``asyncio.run``.
* The ``>>>`` examples in the package's docstrings run as doctests.
* docs/configuration.md matches what docs/gen_config.py generates from the Policy.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import doctest
import importlib
import inspect
import io
import logging
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import connector_resilience
from connector_resilience import testing

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

_SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$')
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`]*)$")
_NOT_RUN = "<!-- not-run -->"
_UNCHECKED = "<!-- output not checked -->"
_CHECKER = doctest.OutputChecker()
_OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_WRITE = re.compile(r"^<!-- write: (?P<name>\S+) -->$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page.

    Attributes:
        lang: the fence's language (``python``, ``toml``...).
        text: the code, dedented.
        line: the page line of the code's first line (1-based).
        run: a Python block that runs.
        write_to: the file the block is written to, if marked so.
        output_of_previous: a ```text block that shows the output of the
            Python block just before it.
    """

    lang: str
    text: str
    line: int
    run: bool
    write_to: str | None
    output_of_previous: bool = False


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, with their markers applied."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    previous = ""
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, ticks = match["indent"], match["ticks"]
        info = match["info"].strip().split()
        lang = info[0].lower() if info else ""
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != ticks:
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        start = i - len(body) + 1  # 1-based line of the first code line
        body = _include_snippets(body)
        written = _WRITE.match(previous)
        out.append(
            Block(
                lang=lang,
                text="\n".join(body) + "\n",
                line=start,
                run=lang in ("python", "py") and previous != _NOT_RUN and written is None,
                write_to=written["name"] if written else None,
                output_of_previous=lang == "text" and previous == "" and bool(out) and out[-1].run,
            )
        )
        previous = ""
        i += 1
    return out


def _include_snippets(body: list[str]) -> list[str]:
    """Replace ``--8<-- "path"`` lines with that file, as pymdownx.snippets does for the site."""
    out: list[str] = []
    for line in body:
        match = _SNIPPET.match(line.strip())
        if match is None:
            out.append(line)
        else:
            out += (ROOT / match["path"]).read_text(encoding="utf-8").splitlines()
    return out


def _pages_with_code() -> list[Path]:
    return [p for p in PAGES if any(b.run or b.write_to for b in blocks_of(p))]


@pytest.fixture
def restored_environment() -> Iterator[None]:
    """Whatever a page sets in os.environ is undone afterwards."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.usefixtures("restored_environment")
@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_code_runs(page: Path) -> None:
    """Run a page's blocks in order, in one namespace (the conftest gives a fresh cwd)."""
    run_page(page)


def test_getting_started_runs_twice_in_a_row_in_one_folder(tmp_path: Path) -> None:
    """A newcomer runs the tutorial again, or after the demo: each keeps its own state."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONNECTOR_", "RETRY_", "CB_", "OAUTH", "CIRCUIT_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    page = ROOT / "docs" / "getting-started.md"
    command = [sys.executable, "-m", "tests.test_docs", str(page)]
    demo = [sys.executable, "-m", "connector_resilience.cli", "demo", "--seconds", "1"]
    for run in (command, demo, command):
        result = subprocess.run(
            run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"{run}:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "tutorial-state" / "metrics.1s.jsonl").is_file()  # aggregated rows
    assert (tmp_path / "logs" / "connector-demo" / "metrics.1s.jsonl").is_file()


def test_getting_started_installs_from_a_checkout() -> None:
    """Until a release exists, the first command a newcomer copies must work."""
    page = ROOT / "docs" / "getting-started.md"
    install = next(b for b in blocks_of(page) if b.lang == "bash")
    commands = [line.split("#")[0].strip() for line in install.text.splitlines()]
    assert "pip install -e ." in commands
    assert not any(c.startswith("pip install connector-resilience") for c in commands)
    assert "Once a release exists, `pip install connector-resilience`" in page.read_text()


def run_page(page: Path) -> None:
    """Run ``page``'s blocks in order, in one namespace, checking the outputs it shows."""
    name = f"_docs_{page.stem.replace('-', '_')}"
    module = types.ModuleType(name)
    module.__file__ = str(page)
    sys.modules[name] = module  # dataclasses and pydantic look their module up
    testing.reset()
    root = logging.getLogger()
    saved_logging = (root.level, list(root.handlers))  # a page may call basicConfig
    try:
        with testing.no_waits():
            printed = ""
            for block in blocks_of(page):
                if block.write_to is not None:
                    Path(block.write_to).write_text(block.text, encoding="utf-8")
                elif block.run:
                    # Pad so that a traceback's line numbers are the page's own.
                    source = "\n" * (block.line - 1) + block.text
                    code = compile(
                        source,
                        str(page.relative_to(ROOT)),
                        "exec",
                        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                    )
                    with contextlib.redirect_stdout(io.StringIO()) as out:
                        # A block with a top-level ``await`` evaluates to a coroutine.
                        awaitable = eval(code, module.__dict__)  # running the docs is the point
                        if inspect.iscoroutine(awaitable):
                            asyncio.run(awaitable)
                    printed = out.getvalue()
                    sys.stdout.write(printed)
                elif block.output_of_previous:
                    assert _CHECKER.check_output(block.text, printed, _OUTPUT_FLAGS), (
                        f"{page.name}:{block.line}: the block above printed\n{printed}\n"
                        f"but the page shows\n{block.text}"
                    )
            _run_page_tests(module)
    finally:
        sys.modules.pop(name, None)
        root.setLevel(saved_logging[0])
        root.handlers[:] = saved_logging[1]
        testing.reset()


def _run_page_tests(module: types.ModuleType) -> None:
    """Call the ``test_*`` functions a page defined, with the fixtures they name."""
    for attr, fn in list(vars(module).items()):
        if not (attr.startswith("test_") and inspect.isfunction(fn)):
            continue
        if fn.__module__ != module.__name__:
            continue  # imported, not defined on the page
        with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as tmp:
            fixtures: dict[str, object] = {"monkeypatch": patch, "tmp_path": Path(tmp)}
            params = inspect.signature(fn).parameters
            unknown = set(params) - set(fixtures)
            assert not unknown, f"{attr}() asks for fixtures the docs runner lacks: {unknown}"
            result = fn(**{p: fixtures[p] for p in params})
            if inspect.iscoroutine(result):
                asyncio.run(result)


def test_marker_parsing() -> None:
    """Markers skip, write and uncheck blocks; indented (tabbed) blocks are dedented."""
    page = Path("page.md")
    page.write_text(
        "text\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n"
        "<!-- not-run -->\n```python\nb = 2\n```\n\n"
        "<!-- write: policy.toml -->\n```toml\n[retry]\n```\n\n"
        '=== "Tab"\n\n    ```python\n    c = 3\n    ```\n\n'
        "<!-- output not checked -->\n```text\n4\n```\n",
        encoding="utf-8",
    )
    blocks = blocks_of(page)
    assert [(b.lang, b.run, b.write_to, b.line, b.output_of_previous) for b in blocks] == [
        ("python", True, None, 4, False),
        ("text", False, None, 8, True),
        ("python", False, None, 13, False),
        ("toml", False, "policy.toml", 18, False),
        ("python", True, None, 24, False),
        ("text", False, None, 29, False),
    ]
    assert blocks[4].text == "c = 3\n"


def test_every_page_is_in_the_nav() -> None:
    """A page missing from mkdocs.yml's nav would not be found by readers."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_configuration_page_is_current() -> None:
    """docs/configuration.md lists exactly the Policy's settings, as generated."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_config.py"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found: list[doctest.DocTest] = []
    for info in pkgutil.walk_packages(connector_resilience.__path__, "connector_resilience."):
        module = importlib.import_module(info.name)
        found += [t for t in finder.find(module) if t.examples]
    found += [t for t in finder.find(connector_resilience) if t.examples]
    return sorted(found, key=lambda t: t.name)


_DOCTESTS = _doctests()


def test_docstrings_have_examples() -> None:
    """The public docstrings keep their >>> examples (and this test finds them)."""
    assert len(_DOCTESTS) >= 4, [t.name for t in _DOCTESTS]


@pytest.mark.parametrize("test", _DOCTESTS, ids=lambda t: t.name)
def test_docstring_examples(test: doctest.DocTest) -> None:
    """Each docstring's >>> examples give the output they show."""
    testing.reset()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    with testing.no_waits():
        result = runner.run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)


if __name__ == "__main__":  # python -m tests.test_docs PAGE: run one page as a reader would
    run_page(Path(sys.argv[1]).resolve())
