"""The dashboard, served by the real command and looked at in a real headless Chromium.

Debian's chromium is driven through Playwright's Python package (never a
downloaded browser). Without a browser the browser test is skipped on a
developer's machine and fails in CI (``CONNECTOR_RESILIENCE_CI=1``).
Nothing sleeps hoping for timing: every wait is for a condition, with a deadline.

Screenshots go to ``tests/artifacts/`` (git-ignored); with
``CONNECTOR_RESILIENCE_UPDATE_DOCS=1`` the JSONL run also refreshes
``docs/images/dashboard.png``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from connector_resilience import CircuitOpenError, Policy, resilient, testing
from connector_resilience.backends import CallRecord, close_all_stores, open_store
from connector_resilience.dashboard import DashboardState, time_series
from connector_resilience.metrics import flush_metrics
from tests._ops import ROOT, Connectors, cli_env, policy_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
DEADLINE_S = 30.0
# Read at import: conftest clears every CONNECTOR_* variable before each test runs.
IN_CI = os.environ.get("CONNECTOR_RESILIENCE_CI") == "1"
UPDATE_DOCS = os.environ.get("CONNECTOR_RESILIENCE_UPDATE_DOCS") == "1"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must run the dashboard test in a browser: {reason}")
    pytest.skip(reason)


@pytest.fixture
def page() -> Iterator[Any]:
    """A page in a fresh headless Chromium (Debian's), collecting the page's own errors."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    browser_path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if browser_path is None:
        _unavailable("no chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.set_default_timeout(DEADLINE_S * 1000)
            yield tab
            assert errors == [], f"the page raised: {errors}"
        finally:
            browser.close()


@contextmanager
def dashboard(url: str, *extra: str) -> Iterator[str]:
    """Run ``connector-resilience dashboard`` on a free 127.0.0.1 port; yield its URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector_resilience.cli",
            "--store",
            url,
            "dashboard",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--refresh",
            "0.5",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:  # readline would block the test; a thread hands lines over
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        try:
            first = lines.get(timeout=DEADLINE_S)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"the dashboard printed no URL: {proc.communicate()[1]}")
        assert first.startswith("dashboard on http://127.0.0.1:"), first
        yield first.split()[2]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def seed_history(
    url: str, *, steps: int = 50, step_s: float = 30.0, ends_ago_s: float = 60.0
) -> None:
    """Real decorated calls spread over the past (a fake wall clock, real durations).

    billing stays healthy with a wavy latency; search starts failing every
    other attempt three fifths in (degraded); inventory starts failing for good
    three quarters in, so its breaker opens (down).
    """
    policy: Policy = policy_for(url)
    attempts = {"search": 0}
    step = {"now": 0}

    @resilient("billing", policy=policy)
    def charge(cents: int) -> int:
        time.sleep((4 + 8 * (1 + math.sin(step["now"] / 4))) / 1000)
        return cents

    @resilient("search", policy=policy)
    def query(text: str) -> str:
        time.sleep(0.002)
        attempts["search"] += 1
        if step["now"] >= steps * 3 // 5 and attempts["search"] % 2:
            raise TimeoutError("search timed out")
        return text

    @resilient("inventory", policy=policy)
    def get_item(item: int) -> int:
        time.sleep(0.003)
        if step["now"] >= steps * 3 // 4:
            raise ConnectionError("inventory unreachable")
        return item

    start = time.time() - ends_ago_s - steps * step_s
    with testing.FakeClock(start=start) as clock:
        for i in range(steps):
            step["now"] = i
            for j in range(2):
                charge(j)
                query(f"q{j}")
                with contextlib.suppress(ConnectionError, CircuitOpenError):
                    get_item(j)  # failures and rejections are the point
            clock.advance(step_s)
        assert flush_metrics()
    testing.reset()  # forget breakers cached under the fake clock
    close_all_stores()


def _verdicts(tab: Any) -> dict[str, str]:
    rows = tab.query_selector_all("#connectors tbody tr")
    return {row.get_attribute("data-connector"): row.get_attribute("data-verdict") for row in rows}


def _calls(tab: Any, connector: str) -> int:
    return int(tab.inner_text(f'tr[data-connector="{connector}"] td[data-field="calls"]'))


def test_dashboard_in_a_browser_lists_verdicts_draws_charts_and_goes_live(
    page: Any, shared_store_url: str
) -> None:
    seed_history(shared_store_url)
    with dashboard(shared_store_url, "--window", "1800", "--stale-after", "30") as base:
        page.goto(base)
        page.wait_for_selector('#connectors tbody tr[data-connector="inventory"]')
        assert _verdicts(page) == {"billing": "healthy", "inventory": "down", "search": "degraded"}
        assert _calls(page, "billing") == 100
        assert page.get_attribute("#overall", "data-status") == "down"
        # The newest call is a minute old: older than --stale-after, so it says stale.
        page.wait_for_selector('#freshness[data-stale="true"]')
        assert "stale" in page.inner_text("#freshness")
        assert "stale" in (page.get_attribute('tr[data-connector="billing"]', "class") or "")

        # Charts: one panel per connector, latency lines drawn through the history.
        latency = page.get_attribute(
            '.panel[data-connector="billing"] svg.latency path[data-series="p95"]', "d"
        )
        assert latency is not None
        assert latency.count("L") >= 20  # a line through many buckets, not a lone dot
        errors = page.get_attribute(
            '.panel[data-connector="search"] svg.errors path[data-series="error_rate"]', "d"
        )
        assert errors is not None
        assert errors.startswith("M")
        assert page.query_selector_all('.panel[data-connector="inventory"] svg.breaker rect')

        # New calls now: the page follows without a reload and stops saying stale.
        Connectors(shared_store_url).run(billing=10, search=10, inventory=5)
        page.wait_for_function(
            """() => document.querySelector(
                'tr[data-connector="billing"] td[data-field="calls"]').textContent === "110" """
        )
        page.wait_for_selector('#freshness[data-stale="false"]')
        assert "live" in page.inner_text("#freshness")
        assert _verdicts(page) == {"billing": "healthy", "inventory": "down", "search": "degraded"}
        page.wait_for_selector(
            '.panel[data-connector="inventory"] svg.breaker rect[data-state="open"]'
        )
        assert page.inner_text('tr[data-connector="inventory"] td[data-field="breaker"]') == "open"

        ARTIFACTS.mkdir(exist_ok=True)
        backend = shared_store_url.partition(":")[0]
        shot = page.screenshot(path=str(ARTIFACTS / f"dashboard-{backend}.png"), full_page=True)
        assert len(shot) > 10_000
        if backend == "jsonl" and UPDATE_DOCS:
            (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
            (ROOT / "docs" / "images" / "dashboard.png").write_bytes(shot)


def test_healthz_and_metrics_follow_the_store(shared_store_url: str) -> None:
    Connectors(shared_store_url).run(billing=5, search=5, inventory=0)
    with dashboard(shared_store_url) as base:
        status, kind, body = _get(base + "healthz")
        assert (status, kind.split(";")[0]) == (200, "application/json")  # degraded still serves
        health = json.loads(body)
        assert health["status"] == "degraded"
        assert health["connectors"] == {"billing": "healthy", "search": "degraded"}

        status, kind, body = _get(base + "metrics")
        assert status == 200
        assert kind.startswith("text/plain")
        assert (
            'connector_resilience_store_health_status{connector="search",status="degraded"} 1.0'
            in body
        )
        assert 'connector_resilience_store_window_calls{connector="billing"} 5.0' in body

        Connectors(shared_store_url).run(billing=0, search=0, inventory=5)
        _until(lambda: _get(base + "healthz")[0] == 503, "/healthz to answer 503")
        assert json.loads(_get(base + "healthz")[2])["connectors"]["inventory"] == "down"
        _until(
            lambda: (
                'store_circuit_state{connector="inventory",state="open"} 1.0'
                in _get(base + "metrics")[2]
            ),
            "/metrics to show the open circuit",
        )

        status, kind, body = _get(base)
        assert status == 200
        assert '<script src="/static/dashboard.js"></script>' in body
        assert _get(base + "static/nothing.js")[0] == 404


def test_page_assets_ship_inside_the_package() -> None:
    # The wheel includes everything under the package folder: the page needs nothing else.
    folder = ROOT / "connector_resilience" / "dashboard" / "static"
    html = (folder / "index.html").read_text()
    for asset in ("/static/dashboard.js", "/static/dashboard.css"):
        assert asset in html
        assert (folder / asset.rpartition("/")[2]).is_file()
    for text in (
        html,
        (folder / "dashboard.js").read_text(),
        (folder / "dashboard.css").read_text(),
    ):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


def test_an_unreadable_store_makes_healthz_503_and_keeps_the_last_view(tmp_path: Path) -> None:
    url = f"jsonl://{tmp_path / 'state'}"
    Connectors(url).run(billing=3, search=0, inventory=0)
    store = open_store(url)
    state = DashboardState(store=store, policy=policy_for(url), window_s=600)
    state.refresh()
    assert state.health() == (200, state.health()[1])
    metrics = tmp_path / "state" / "metrics.jsonl"
    metrics.rename(tmp_path / "aside.jsonl")
    metrics.mkdir()  # a folder where the file should be: reads now fail
    state.refresh()
    code, body = state.health()
    assert code == 503
    assert "cannot read the store" in body["error"]
    overview = state.overview()
    assert overview["error"] == body["error"]
    assert [c["connector"] for c in overview["connectors"]] == ["billing"]  # the last good view


def test_time_series_leaves_gaps_where_there_were_no_calls() -> None:
    records = [
        CallRecord(ts=1.0, connector="a", operation="op", duration_ms=10.0, status="ok"),
        CallRecord(ts=2.0, connector="a", operation="op", duration_ms=30.0, status="error"),
        CallRecord(ts=9.5, connector="a", operation="op", duration_ms=5.0, status="ok"),
    ]
    points = time_series(records, start=0.0, end=10.0, buckets=5)
    assert [p["attempts"] for p in points] == [1, 1, 0, 0, 1]
    assert points[1]["error_rate"] == 1.0
    assert points[2]["p95_ms"] is None  # a gap, not a zero
    assert points[4]["t"] == 10.0
