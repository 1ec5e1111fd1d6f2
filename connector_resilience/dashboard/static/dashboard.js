// connector-resilience dashboard: polls /api/overview and draws the table and SVG charts.
// Vanilla JS, no dependencies, so the page works offline and ships inside the package.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WIDTH = 400;
  const PAD = { left: 44, right: 10, top: 8, bottom: 16 };
  // Tick spacings for the time axis, in seconds: the first that gives at most 5 ticks wins.
  const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

  let refreshMs = 2000;
  let staleAfterS = 60;
  let lastOkAt = null; // client clock (ms) of the last successful poll
  let latest = null;

  const $ = (selector) => document.querySelector(selector);

  function el(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== null) node.textContent = text;
    return node;
  }

  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

  const fmtMs = (v) => (v >= 100 ? `${v.toFixed(0)}ms` : v >= 10 ? `${v.toFixed(1)}ms` : `${v.toFixed(2)}ms`);
  const fmtPct = (v) => `${(v * 100).toFixed(1)}%`;
  const fmtClock = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
  const fmtHourMinute = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" });

  function fmtAge(seconds) {
    const s = Math.max(0, seconds);
    if (s >= 86400) return `${Math.round(s / 86400)}d`;
    if (s >= 3600) return `${Math.round(s / 3600)}h`;
    if (s >= 60) return `${Math.round(s / 60)}m`;
    return `${Math.round(s)}s`;
  }

  // Polling ------------------------------------------------------------------

  async function poll() {
    try {
      const response = await fetch("/api/overview", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      latest = await response.json();
      lastOkAt = Date.now();
      refreshMs = Math.max(250, (latest.refresh_s || 2) * 1000);
      staleAfterS = latest.stale_after_s || 60;
      render(latest);
      showError(latest.error);
    } catch (error) {
      showError(`cannot reach the dashboard server: ${error.message}`);
    } finally {
      updateFreshness();
      setTimeout(poll, refreshMs);
    }
  }

  function showError(message) {
    const box = $("#error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  // Stale when the server stopped answering, or when its newest call record is old.
  function updateFreshness() {
    const badge = $("#freshness");
    let stale = true;
    let text = "connecting";
    let why = "no answer from the dashboard server yet";
    if (lastOkAt !== null && latest) {
      const pollAge = (Date.now() - lastOkAt) / 1000;
      const newest = latest.last_call_at;
      const dataAge = newest == null ? null : latest.generated_at - newest + pollAge;
      if (pollAge > staleAfterS) {
        text = `stale: no update for ${fmtAge(pollAge)}`;
        why = "the dashboard server has not answered";
      } else if (dataAge === null) {
        text = "stale: no calls in the window";
        why = "the store has no call records in the window";
      } else if (dataAge > staleAfterS) {
        text = `stale: newest call ${fmtAge(dataAge)} ago`;
        why = `no connector has recorded a call for more than ${staleAfterS}s`;
      } else {
        stale = false;
        text = `live · updated ${fmtClock(latest.generated_at)}`;
        why = `newest call ${fmtAge(dataAge)} ago`;
      }
    }
    badge.textContent = text;
    badge.title = why;
    badge.className = `badge ${stale ? "stale" : "live"}`;
    badge.dataset.stale = String(stale);
  }

  // Table --------------------------------------------------------------------

  function render(data) {
    const overall = $("#overall");
    overall.textContent = data.status || "unknown";
    overall.className = `verdict ${data.status || ""}`;
    overall.dataset.status = data.status || "";
    $("#meta").textContent = data.store
      ? `store ${data.store} · window ${fmtAge(data.window_s)} · refresh ${data.refresh_s}s`
      : "";
    $("#empty").hidden = data.connectors.length > 0;
    renderTable(data);
    renderCharts(data);
  }

  // "healthy" with no attempts in the window says nothing: show that there is no data.
  const shownVerdict = (c) => (c.attempts === 0 && c.status === "healthy" ? "no data" : c.status);

  function renderTable(data) {
    const body = $("#connectors tbody");
    const rows = data.connectors.map((c) => {
      const age = c.last_call_at == null ? null : data.generated_at - c.last_call_at;
      const stale = age === null || age > data.stale_after_s;
      const row = el("tr", { "data-connector": c.connector, "data-verdict": c.status });
      if (stale) row.classList.add("stale");
      const noData = c.attempts === 0;
      const shown = shownVerdict(c);
      const verdict = el("td", { "data-field": "verdict" });
      verdict.append(el("span", { class: `verdict ${shown.replace(" ", "-")}` }, shown));
      if (c.reasons.length) verdict.append(" ", el("span", { class: "reasons" }, c.reasons.join("; ")));
      const breaker = `${c.circuit_state.replace("_", "-")}${c.circuit_override ? " (forced)" : ""}`;
      const number = (field, text) =>
        el("td", { class: noData ? "num no-data" : "num", "data-field": field }, noData ? "-" : text);
      row.append(
        el("td", { "data-field": "connector" }, c.connector),
        verdict,
        el("td", { class: "num", "data-field": "calls" }, String(c.total_calls)),
        number("error_rate", fmtPct(c.error_rate)),
        number("attempt_error_rate", fmtPct(c.attempt_error_rate)),
        number("p50", fmtMs(c.p50_ms)),
        number("p95", fmtMs(c.p95_ms)),
        number("p99", fmtMs(c.p99_ms)),
        el("td", { class: `state-${c.circuit_state}`, "data-field": "breaker" }, breaker),
        el("td", { "data-field": "since" }, c.circuit_since ? fmtClock(c.circuit_since) : "-"),
        el("td", { class: "last-call", "data-field": "last_call" }, age === null ? "none in window" : `${fmtAge(age)} ago`),
      );
      return row;
    });
    body.replaceChildren(...rows);
  }

  // Charts -------------------------------------------------------------------

  function renderCharts(data) {
    const section = $("#charts");
    const end = data.generated_at;
    const panels = data.connectors.map((c) => {
      // The server charts from the first call in the window (a short history fills the width).
      const start = c.series_start ?? data.generated_at - data.window_s;
      const panel = el("div", { class: "panel", "data-connector": c.connector });
      const title = el("h2", {}, c.connector);
      const shown = shownVerdict(c);
      title.append(el("span", { class: `verdict ${shown.replace(" ", "-")}` }, shown));
      panel.append(
        title,
        chartTitle("latency", [["p50", "var(--p50)"], ["p95", "var(--p95)"], ["p99", "var(--p99)"]]),
        lineChart(c.series, ["p50_ms", "p95_ms", "p99_ms"], ["p50", "p95", "p99"], start, end, fmtMs, "latency"),
        chartTitle("attempts failed", [["share", "var(--err)"]]),
        lineChart(c.series, ["error_rate"], ["error_rate"], start, end, fmtPct, "errors", 0.1),
        chartTitle("breaker", [["closed", "var(--closed)"], ["half-open", "var(--half_open)"], ["open", "var(--open)"], ["not seen", "var(--unknown)"]], "state at each refresh since the dashboard started, and the current state since it began"),
        stateChart(c.states, start, end),
      );
      return panel;
    });
    section.replaceChildren(...panels);
  }

  function chartTitle(text, keys, explanation = "") {
    const title = el("div", { class: "chart-title", title: explanation }, text);
    for (const [name, color] of keys) {
      const key = el("span", { class: "key" });
      const swatch = el("i");
      swatch.style.background = color;
      key.append(swatch, name);
      title.append(key);
    }
    return title;
  }

  function frame(height) {
    const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img" });
    chart.classList.add("chart");
    return chart;
  }

  // Round times between start and end, at most five, for the time axis.
  function timeTicks(start, end) {
    const span = Math.max(1, end - start);
    const step = TIME_STEPS.find((s) => span / s <= 5) || Math.ceil(span / 5 / 86400) * 86400;
    const ticks = [];
    for (let t = Math.ceil(start / step) * step; t <= end; t += step) ticks.push(t);
    return { ticks, label: step >= 60 ? fmtHourMinute : fmtClock };
  }

  function timeAxis(chart, height, x, start, end) {
    const { ticks, label } = timeTicks(start, end);
    for (const t of ticks) {
      const px = x(t);
      // Labels near an edge are anchored on it, so that none is cut off.
      const anchor = px > WIDTH - 30 ? "end" : px < PAD.left + 20 ? "start" : "middle";
      chart.append(
        svg("line", { class: "tick", x1: px, y1: height - PAD.bottom, x2: px, y2: height - PAD.bottom + 3 }),
        svg("text", { class: "time-tick", x: px, y: height - 3, "text-anchor": anchor }, label(t)),
      );
    }
  }

  function lineChart(series, keys, classes, start, end, fmt, kind, floor = 0) {
    const height = 110;
    const chart = frame(height);
    chart.classList.add(kind);
    let max = floor;
    for (const point of series) for (const key of keys) if (point[key] != null) max = Math.max(max, point[key]);
    if (max <= 0) max = 1;
    const x = (t) => PAD.left + ((t - start) / (end - start)) * (WIDTH - PAD.left - PAD.right);
    const y = (v) => height - PAD.bottom - (v / max) * (height - PAD.top - PAD.bottom);
    chart.append(
      svg("line", { class: "axis", x1: PAD.left, y1: height - PAD.bottom, x2: WIDTH - PAD.right, y2: height - PAD.bottom }),
      svg("line", { class: "axis", x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: height - PAD.bottom }),
    );
    // Values at 0, a half and the top, with light grid lines across.
    for (const share of [0, 0.5, 1]) {
      const py = y(max * share);
      if (share > 0) chart.append(svg("line", { class: "grid", x1: PAD.left, y1: py, x2: WIDTH - PAD.right, y2: py }));
      chart.append(svg("text", { class: "value-tick", x: PAD.left - 4, y: py + 3, "text-anchor": "end" }, fmt(max * share)));
    }
    timeAxis(chart, height, x, start, end);
    keys.forEach((key, i) => {
      let d = "";
      let penDown = false;
      const dots = [];
      for (const point of series) {
        const value = point[key];
        if (value == null) {
          penDown = false; // no attempts in this bucket: leave a gap
          continue;
        }
        const px = x(point.t).toFixed(1);
        const py = y(value).toFixed(1);
        d += `${penDown ? "L" : "M"}${px},${py} `;
        penDown = true;
        dots.push(svg("circle", { cx: px, cy: py, r: 1.8, class: `dot ${classes[i]}` }));
      }
      const path = svg("path", { d: d.trim(), "data-series": classes[i] });
      path.classList.add("series", classes[i]);
      chart.append(path, ...dots);
    });
    return chart;
  }

  function stateChart(states, start, end) {
    const height = 34;
    const chart = frame(height);
    chart.classList.add("breaker");
    const x = (t) => PAD.left + ((Math.max(t, start) - start) / (end - start)) * (WIDTH - PAD.left - PAD.right);
    const band = { y: 4, height: 14 };
    const first = states.length ? states[0].t : end;
    if (first > start) {
      const unknown = svg("rect", { x: x(start), width: Math.max(0, x(first) - x(start)), ...band });
      unknown.classList.add("state-unknown");
      unknown.append(svg("title", {}, "not seen: the dashboard was not running"));
      chart.append(unknown);
    }
    states.forEach((entry, i) => {
      const until = i + 1 < states.length ? states[i + 1].t : end;
      const base = entry.state.split(" ")[0];
      const rect = svg("rect", { x: x(entry.t), width: Math.max(1, x(until) - x(entry.t)), "data-state": base, ...band });
      rect.classList.add(`state-${base}`);
      rect.append(svg("title", {}, `${entry.state} from ${fmtClock(entry.t)}`));
      chart.append(rect);
    });
    timeAxis(chart, height, x, start, end);
    return chart;
  }

  setInterval(updateFreshness, 1000);
  poll();
})();
