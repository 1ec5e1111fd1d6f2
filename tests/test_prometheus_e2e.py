"""A real Prometheus scrapes a test service and the dashboard; every documented query is checked.

One scenario for the module (one Prometheus start): decorated calls with known
outcomes run twice, once before Prometheus starts (so every series exists from
its first scrape) and once while it scrapes every second. Each PromQL query in
docs/, each shipped alerting rule and each panel of the shipped Grafana
dashboard is then evaluated at one instant, and its answer is compared with
what the known counts give under PromQL's own ``rate()`` arithmetic (computed
here from the same samples, so the comparison is exact). ``promtool`` checks
every endpoint we serve and the shipped rules.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from connector_resilience import CircuitBreaker, CircuitOpenError, Policy, resilient, testing
from connector_resilience.backends import open_store
from connector_resilience.dashboard import DashboardState, create_app
from connector_resilience.exporters import (
    OpenTelemetryMetrics,
    PrometheusCollector,
    grafana_dashboard,
    prometheus_rules,
)
from connector_resilience.metrics import flush_metrics
from connector_resilience.metrics.overview import read_view
from tests._ops import ROOT
from tests.prometheus_server import Prometheus, prometheus, promtool, until

pytestmark = pytest.mark.timeout(120)

RANGE_S = 300.0  # the [5m] of the documented queries
Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


class Response:
    """What an HTTP client returns, as far as the engine looks (its status)."""

    def __init__(self, status: int) -> None:
        self.status = status


class Scenario:
    """Eight connectors with known outcomes (per round):

    * billing: 10 calls, all succeed;
    * search: 4 calls, each fails once (TimeoutError) and its retry succeeds;
    * github (HTTP labels): 3 calls answering 200; 503 then 200; 503 then 503;
    * inventory: 3 calls, each failing twice; an operator disabled its breaker;
    * ledger: 2 calls, refused: an operator forced its breaker open;
    * payments: every call fails; its breaker opens in the first round after
      3 failed calls, then refuses 2 calls per round;
    * archive: 2 successful calls in the first round, none in the second;
    * reports: 3 calls, each failing; its retry budget (``RETRY_BUDGET_RATIO=0``)
      refuses each retry.
    """

    def __init__(self, url: str) -> None:
        policy = Policy(
            store={"url": url},
            retry={"max_attempts": 2, "base_ms": 1, "cap_ms": 2, "jitter_pct": 0.0},
            circuit={"failures_to_open": 3, "cooldown_s": 600, "half_open_prob": 1.0},
        )
        self.policy = policy
        self.round = 0
        search_attempts = 0
        github_answers: list[int] = []

        @resilient("billing", policy=policy)
        def charge() -> None:
            pass

        @resilient("search", policy=policy)
        def query() -> None:
            nonlocal search_attempts
            search_attempts += 1
            if search_attempts % 2:
                raise TimeoutError("slow")

        @resilient(
            "github",
            policy=policy,
            labels={"method": "GET", "host": "api.example.test", "port": "443"},
            retry_on_result=lambda r: r.status == 503,
        )
        def fetch() -> Response:
            return Response(github_answers.pop(0))

        @resilient("inventory", policy=policy)
        def get_item() -> None:
            raise ConnectionError("unreachable")

        @resilient("ledger", policy=policy)
        def post() -> None:
            pass

        @resilient("payments", policy=policy)
        def pay() -> None:
            raise ConnectionError("unreachable")

        @resilient("archive", policy=policy)
        def read() -> None:
            pass

        no_retries = Policy(
            store={"url": url},
            retry={"max_attempts": 2, "base_ms": 1},
            circuit={"failures_to_open": 1000},
            limits={"budget_ratio": 0.0},
        )

        @resilient("reports", policy=no_retries)
        def report() -> None:
            raise ConnectionError("unreachable")

        self.calls = {"charge": charge, "query": query, "get_item": get_item, "post": post}
        self.fetch, self.pay, self.read, self.report = fetch, pay, read, report
        self.github_answers = github_answers
        CircuitBreaker("inventory", policy=policy).disable()
        CircuitBreaker("ledger", policy=policy).force_open(reason="maintenance")

    def run_round(self) -> None:
        self.round += 1
        with testing.no_waits():
            for _ in range(10):
                self.calls["charge"]()
            for _ in range(4):
                self.calls["query"]()
            self.github_answers.extend([200, 503, 200, 503, 503])
            for _ in range(3):
                self.fetch()
            for _ in range(3):
                with pytest.raises(ConnectionError):
                    self.calls["get_item"]()
            for _ in range(2):
                with pytest.raises(CircuitOpenError):
                    self.calls["post"]()
            if self.round == 1:
                for _ in range(3):
                    with pytest.raises(ConnectionError):
                        self.pay()
                for _ in range(2):
                    self.read()
            for _ in range(2):
                with pytest.raises(CircuitOpenError):
                    self.pay()
            for _ in range(3):
                with pytest.raises(ConnectionError):
                    self.report()
        assert flush_metrics()


def _samples(text: str, prefix: str = "connector_resilience_") -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(prefix):
            for s in family.samples:
                out[s.name, frozenset((k, v) for k, v in s.labels.items() if v)] = s.value
    return out


@dataclass
class Rates:
    """PromQL's ``rate(x[5m])`` at one instant, from a series' first and last sample.

    Every series of one target shares its scrape times (first ``t1``, last
    ``tn``, ``n`` samples; milliseconds, as Prometheus keeps them), so only the
    first and last values differ per series.
    """

    first: Samples
    last: Samples
    t1: int
    tn: int
    n: int
    at: int

    def rate(self, key: tuple[str, Labels]) -> float:
        # Prometheus 2.x's extrapolatedRate, for a counter without resets.
        v1, vn = self.first[key], self.last[key]
        result = vn - v1
        to_start = (self.t1 - (self.at - int(RANGE_S * 1000))) / 1000
        to_end = (self.at - self.tn) / 1000
        sampled = (self.tn - self.t1) / 1000
        average = sampled / (self.n - 1)
        if result > 0 and v1 >= 0:
            to_start = min(to_start, sampled * (v1 / result))
        threshold = average * 1.1
        interval = sampled
        interval += to_start if to_start < threshold else average / 2
        interval += to_end if to_end < threshold else average / 2
        return result * (interval / sampled) / RANGE_S

    def sum_by(
        self,
        name: str,
        by: tuple[str, ...],
        where: Callable[[Mapping[str, str]], bool] = lambda labels: True,
    ) -> dict[tuple[str, ...], float]:
        """``sum by (by) (rate(name{where}[5m]))``."""
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for key in self.last:
            labels = dict(key[1])
            if key[0] == name and where(labels):
                out[tuple(labels.get(b, "") for b in by)] += self.rate(key)
        return dict(out)


def _ratio(
    top: dict[tuple[str, ...], float], bottom: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    """PromQL's ``a / b``: groups present on both sides; 0/0 is NaN."""
    return {
        k: (top[k] / bottom[k] if bottom[k] else (math.nan if top[k] == 0 else math.inf))
        for k in top
        if k in bottom
    }


def _quantile(q: float, buckets: dict[float, float]) -> float:
    """PromQL's histogram_quantile over one group's (upper bound -> cumulative rate)."""
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    start, count = 0.0, counts[b]
    if b > 0:
        start, count, rank = bounds[b - 1], count - counts[b - 1], rank - counts[b - 1]
    return start + (bounds[b] - start) * (rank / count)


def _p95(rates: Rates, where: Callable[[Mapping[str, str]], bool] = lambda _: True) -> Any:
    by_le = rates.sum_by(
        "connector_resilience_call_duration_seconds_bucket", ("connector", "le"), where
    )
    groups: dict[tuple[str, ...], dict[float, float]] = defaultdict(dict)
    for (connector, le), value in by_le.items():
        groups[(connector,)][float(le)] = value
    return {k: _quantile(0.95, v) for k, v in groups.items()}


@dataclass
class Result:
    """What one module's scenario measured."""

    prometheus: Prometheus
    at: float
    rates: Rates
    store_view: Any
    texts: dict[str, str] = field(default_factory=dict)
    answers: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def _serve_dashboard(state: DashboardState) -> Iterator[int]:
    """The dashboard's aiohttp app on 127.0.0.1 in a thread of its own; yields its port."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(state), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    server = site._server
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _documented_queries() -> list[str]:
    """Every ```promql block in docs/."""
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        found += [
            " ".join(q.split()) for q in re.findall(r"```promql\n(.*?)```", page.read_text(), re.S)
        ]
    return found


def _dashboard_exprs() -> list[str]:
    board = json.loads(grafana_dashboard())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace('=~"$connector"', '=~".+"')


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Result]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    folder = tmp_path_factory.mktemp("prometheus")
    url = f"sqlite:///{folder / 'state.db'}"
    scenario = Scenario(url)
    registry = CollectorRegistry()
    collector = PrometheusCollector(store=url, policy=scenario.policy)
    registry.register(collector)
    otel_registry = CollectorRegistry()
    reader = PrometheusMetricReader(disable_target_info=True, registry=otel_registry)
    provider = MeterProvider(metric_readers=[reader])
    telemetry = OpenTelemetryMetrics(meter_provider=provider, store=url, policy=scenario.policy)
    service, service_thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    state = DashboardState(
        store=open_store(url), policy=scenario.policy, window_s=3600, refresh_s=0.3
    )
    rules_file = folder / "rules.yml"
    rules_file.write_text(prometheus_rules())
    try:
        scenario.run_round()  # every series exists before the first scrape
        first = _samples(generate_latest(registry).decode())
        with (
            _serve_dashboard(state) as dashboard_port,
            prometheus(
                folder,
                targets={
                    "service": f"127.0.0.1:{service.server_port}",
                    "dashboard": f"127.0.0.1:{dashboard_port}",
                },
                rule_files=[rules_file],
            ) as server,
        ):
            billing = 'connector_resilience_calls_total{connector="billing"}'
            until(
                lambda: bool(server.vector(f"count_over_time({billing}[5m]) >= 2")),
                "two scrapes of the first round",
            )
            scenario.run_round()
            last = _samples(generate_latest(registry).decode())
            total = sum(v for k, v in last.items() if k[0] == "connector_resilience_calls_total")
            until(
                lambda: server.vector("sum(connector_resilience_calls_total)") == [({}, total)],
                "a scrape of the second round",
            )
            calls = 'connector_resilience_store_window_calls{connector="billing"}'
            until(lambda: [v for _, v in server.vector(calls)] == [20.0], "the dashboard's view")
            # The dashboard refreshes its view on its own clock and may have read
            # the store while the second round was being written: wait until it
            # holds every connector's second round, not billing's alone, so that
            # the verdicts it exports are the ones the store gives now.
            stored = read_view(store=state.store, policy=state.policy, window_s=3600)
            settled = {c.connector: float(c.summary.attempts) for c in stored.connectors}
            attempts = "connector_resilience_store_window_attempts"
            until(
                lambda: {m["connector"]: v for m, v in server.vector(attempts)} == settled,
                "the dashboard's view of every connector",
            )
            stamps = server.vector(
                "timestamp(connector_resilience_calls_total{connector='billing'})"
                " or timestamp(connector_resilience_store_window_calls{connector='billing'})"
            )
            at = max(v for _, v in stamps)
            samples = server.query(f"{billing}[5m]", at=at)["result"][0]["values"]
            rates = Rates(
                first, last, _ms(samples[0][0]), _ms(samples[-1][0]), len(samples), _ms(at)
            )
            out = Result(
                server, at, rates, read_view(store=state.store, policy=state.policy, window_s=3600)
            )
            for expr in {*_documented_queries(), *map(_grafana_to_promql, _dashboard_exprs())}:
                out.answers[expr] = server.vector(expr, at=at)
            rules = yaml.safe_load(prometheus_rules())["groups"][0]["rules"]
            for rule in rules:
                expr = " ".join(rule["expr"].split())
                out.answers[expr] = server.vector(expr, at=at)
            until(
                lambda: all(
                    r["lastEvaluation"] > "2000"
                    for g in server.api("rules")["groups"]
                    for r in g["rules"]
                ),
                "every rule to be evaluated",
            )
            out.rules = [r for g in server.api("rules")["groups"] for r in g["rules"]]
            out.texts = {
                "service": generate_latest(registry).decode(),
                "dashboard": _get(f"http://127.0.0.1:{dashboard_port}/metrics"),
                "opentelemetry": generate_latest(otel_registry).decode(),
            }
            yield out
    finally:
        telemetry.close()
        provider.shutdown()
        collector.close()
        service.shutdown()
        service.server_close()
        service_thread.join(timeout=10)


def _ms(seconds: float) -> int:
    """A Prometheus API timestamp (seconds, 3 decimals) as its integer milliseconds."""
    return round(seconds * 1000)


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def _by(answer: list[tuple[dict[str, str], float]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(m.get(label, "") for label in labels): v for m, v in answer}


def _same(got: Mapping[Any, float], expected: Mapping[Any, float]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


#: Every query of docs/operations.md, by a short name (whitespace as the docs' blocks, joined).
QUERIES = {
    "error ratio": (
        'sum by (connector) (rate(connector_resilience_calls_total{outcome="error"}[5m]))'
        " / sum by (connector) (rate(connector_resilience_calls_total[5m]))"
    ),
    "saved by a retry": (
        "sum by (connector)"
        ' (rate(connector_resilience_calls_total{outcome="success",retried="true"}[5m]))'
        " / sum by (connector) (rate(connector_resilience_calls_total[5m]))"
    ),
    "calls per second": "sum by (connector) (rate(connector_resilience_calls_total[5m]))",
    "retries per call": (
        "sum by (connector) (rate(connector_resilience_retries_total[5m]))"
        " / sum by (connector) (rate(connector_resilience_calls_total[5m]))"
    ),
    "rejected per second": (
        "sum by (connector) (rate(connector_resilience_rejected_calls_total[5m]))"
    ),
    "p95": (
        "histogram_quantile(0.95, sum by (connector, le)"
        " (rate(connector_resilience_call_duration_seconds_bucket[5m])))"
    ),
    "5xx by host": (
        "sum by (server_address) (rate(connector_resilience_call_duration_seconds_count"
        '{http_response_status_code=~"5.."}[5m]))'
        " / sum by (server_address) (rate(connector_resilience_call_duration_seconds_count"
        '{http_response_status_code!=""}[5m]))'
    ),
    "open": 'max by (connector) (connector_resilience_circuit_state{state="open"}) == 1',
    "forced": (
        "max by (connector, state)"
        ' (connector_resilience_circuit_state{state=~"forced_open|disabled"}) == 1'
    ),
    "not healthy": 'connector_resilience_store_health_status{status!="healthy"} == 1',
    "failed share": (
        "connector_resilience_store_window_failed_calls / connector_resilience_store_window_calls"
    ),
    "silent": "time() - connector_resilience_store_last_call_timestamp_seconds > 600",
}


def _expected(r: Result, name: str) -> tuple[tuple[str, ...], dict[tuple[str, ...], float]]:
    """A documented query's expected answer: the labels it groups by, and the values."""
    calls = "connector_resilience_calls_total"
    count = "connector_resilience_call_duration_seconds_count"
    rates = r.rates
    by: tuple[str, ...] = ("connector",)
    every = rates.sum_by(calls, by)
    if name == "error ratio":
        return by, _ratio(rates.sum_by(calls, by, lambda x: x["outcome"] == "error"), every)
    if name == "saved by a retry":
        saved = rates.sum_by(
            calls, by, lambda x: x["outcome"] == "success" and x["retried"] == "true"
        )
        return by, _ratio(saved, every)
    if name == "calls per second":
        return by, every
    if name == "retries per call":
        return by, _ratio(rates.sum_by("connector_resilience_retries_total", by), every)
    if name == "rejected per second":
        return by, rates.sum_by("connector_resilience_rejected_calls_total", by)
    if name == "p95":
        return by, _p95(rates)
    if name == "5xx by host":
        host = ("server_address",)
        code = "http_response_status_code"
        bad = rates.sum_by(count, host, lambda x: x.get(code, "").startswith("5"))
        return host, _ratio(bad, rates.sum_by(count, host, lambda x: code in x))
    if name == "open":
        return by, {("payments",): 1.0}
    if name == "forced":
        return ("connector", "state"), {
            ("inventory", "disabled"): 1.0,
            ("ledger", "forced_open"): 1.0,
        }
    view = r.store_view.connectors
    if name == "not healthy":
        return ("connector", "status"), {
            (c.connector, c.status.value): 1.0 for c in view if c.status.value != "healthy"
        }
    if name == "failed share":
        return by, {
            (c.connector,): c.summary.errors / c.summary.total_calls
            if c.summary.total_calls
            else math.nan
            for c in view
        }
    assert name == "silent"
    return by, {}


def test_every_documented_query_is_checked_here() -> None:
    assert sorted(_documented_queries()) == sorted(QUERIES.values())


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_a_documented_query_answers_the_known_counts(result: Result, name: str) -> None:
    labels, expected = _expected(result, name)
    _same(_by(result.answers[QUERIES[name]], *labels), expected)


def test_the_scenario_gives_the_figures_a_reader_would_expect(result: Result) -> None:
    # The same answers in plain numbers (the rate arithmetic cancels in ratios).
    errors = _by(result.answers[QUERIES["error ratio"]], "connector")
    assert errors[("github",)] == pytest.approx(1 / 3)
    assert errors[("inventory",)] == 1
    assert math.isnan(errors[("payments",)])  # no call ran in 5m: every one was refused
    assert ("billing",) not in errors  # no failed call, so no error series to divide
    saved = _by(result.answers[QUERIES["saved by a retry"]], "connector")
    assert saved == {("search",): pytest.approx(1.0), ("github",): pytest.approx(1 / 3)}


def test_the_shipped_rules_load_evaluate_and_fire_for_the_right_connectors(result: Result) -> None:
    assert {r["name"]: r["health"] for r in result.rules} == {
        "ConnectorCircuitOpen": "ok",
        "ConnectorCircuitForced": "ok",
        "ConnectorErrorRatioHigh": "ok",
        "ConnectorLatencyP95High": "ok",
        "ConnectorRetryBudgetExhausted": "ok",
        "ConnectorNoCalls": "ok",
    }
    rules = {
        r["alert"]: " ".join(r["expr"].split())
        for r in yaml.safe_load(prometheus_rules())["groups"][0]["rules"]
    }
    firing = {name: sorted(_by(result.answers[expr], "connector")) for name, expr in rules.items()}
    slow = sorted(k for k, v in _p95(result.rates).items() if v > 2)
    assert firing == {
        "ConnectorCircuitOpen": [("payments",)],
        "ConnectorCircuitForced": [("inventory",), ("ledger",)],
        "ConnectorErrorRatioHigh": [("github",), ("inventory",), ("reports",)],
        "ConnectorLatencyP95High": slow,
        "ConnectorRetryBudgetExhausted": [("reports",)],
        "ConnectorNoCalls": [("archive",)],
    }


def test_every_dashboard_panel_query_returns_series(result: Result) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 8
    for expr in exprs:
        assert result.answers[_grafana_to_promql(expr)], expr


@pytest.mark.parametrize("endpoint", ["service", "dashboard", "opentelemetry"])
def test_promtool_accepts_every_endpoint_we_serve(result: Result, endpoint: str) -> None:
    checked = promtool("check", "metrics", stdin=result.texts[endpoint])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "connector_resilience_" in result.texts[endpoint]


def test_promtool_accepts_the_shipped_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(prometheus_rules())
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
