"""The dashboard on a phone-sized screen, with a short history, in a real headless Chromium.

Issue 19, item 9: at 400 px nothing is cut off (the table scrolls sideways,
the charts fit); a few minutes of history in the default hour's window fills
the chart's width instead of a sliver at the right edge; the axes carry
ticks between their ends. Item 8: a connector with no calls in the window
shows "no data" and dashes, not "healthy" and 0.00ms, under the same column
names as the CLI's.
"""

from __future__ import annotations

import re
import time
from typing import Any

from connector_resilience.backends import CallRecord, close_all_stores, open_store
from connector_resilience.cli._health import ATTEMPTS_FAILED, CALLS_FAILED
from tests._ops import ROOT
from tests.test_dashboard import dashboard, page, seed_history  # noqa: F401 - fixture

WIDTH = 400
PLOT_LEFT, PLOT_RIGHT = 44, 390  # the charts' plot area, in viewBox units (dashboard.js PAD)


def _first_x(path: str) -> float:
    match = re.match(r"M([\d.]+),", path)
    assert match, path
    return float(match.group(1))


def test_a_phone_sized_page_with_a_short_history(page: Any, tmp_path: Any) -> None:  # noqa: F811
    url = f"sqlite:///{tmp_path / 'state.db'}"
    seed_history(url, steps=12, step_s=15.0, ends_ago_s=5.0)  # three minutes, just now
    old = time.time() - 7200  # a connector whose only call is outside the hour's window
    open_store(url).append_calls([CallRecord(old, "idle", "ping", 5.0, "ok", None, 1, True, None)])
    close_all_stores()

    page.set_viewport_size({"width": WIDTH, "height": 900})
    with dashboard(url) as base:
        page.goto(base)
        page.wait_for_selector(
            '.panel[data-connector="billing"] svg.latency path[data-series="p95"]'
        )

        # Nothing wider than the screen: the table scrolls inside its own box.
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
        wrap = page.evaluate(
            "(() => { const w = document.querySelector('.table-wrap');"
            " return [w.scrollWidth, w.clientWidth]; })()"
        )
        assert wrap[0] > wrap[1]  # wider than the box, and reachable by scrolling
        right = page.evaluate(
            "(() => { document.querySelector('.table-wrap').scrollLeft = 1e6;"
            ' return document.querySelector(\'tr[data-connector="billing"]'
            ' td[data-field="last_call"]\').getBoundingClientRect().right; })()'
        )
        assert right <= WIDTH + 0.5  # the last column scrolls into view
        # One evaluation: the page redraws its charts at every refresh.
        charts = page.evaluate(
            "[...document.querySelectorAll('svg.chart')].map((c) => {"
            " const r = c.getBoundingClientRect(); return [r.left, r.right]; })"
        )
        assert len(charts) == 3 * 4  # billing, search, inventory, idle: three charts each
        assert all(left >= 0 and right <= WIDTH for left, right in charts), charts

        # A short history fills the chart: the line starts near the left edge.
        latency = page.get_attribute(
            '.panel[data-connector="billing"] svg.latency path[data-series="p95"]', "d"
        )
        assert latency is not None
        assert _first_x(latency) < PLOT_LEFT + 0.2 * (PLOT_RIGHT - PLOT_LEFT)
        assert latency.count("L") >= 3  # a line through the buckets, not lone dots

        # Axes: round times between the ends, and three value ticks.
        for kind in ("latency", "errors"):
            selector = f'.panel[data-connector="billing"] svg.{kind}'
            times = page.query_selector_all(f"{selector} text.time-tick")
            assert len(times) >= 3, kind
            assert len(page.query_selector_all(f"{selector} text.value-tick")) == 3
        labels = [
            t.text_content() or "" for t in page.query_selector_all("svg.latency text.time-tick")
        ]
        assert all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", label) for label in labels), labels

        # No calls in the window: "no data" and dashes, not "healthy" and 0.00ms.
        idle = 'tr[data-connector="idle"]'
        assert page.inner_text(f'{idle} td[data-field="verdict"]') == "no data"
        assert page.inner_text(f'{idle} td[data-field="p95"]') == "-"
        assert page.inner_text(f'{idle} td[data-field="error_rate"]') == "-"

        # The same column names as `connector-resilience health`.
        headers = [h.inner_text().strip().upper() for h in page.query_selector_all("thead th")]
        assert CALLS_FAILED in headers
        assert ATTEMPTS_FAILED in headers
        assert headers[:3] == ["CONNECTOR", "VERDICT", "CALLS"]
        (ROOT / "tests" / "artifacts").mkdir(exist_ok=True)
        page.screenshot(
            path=str(ROOT / "tests" / "artifacts" / "dashboard-400px.png"), full_page=True
        )
