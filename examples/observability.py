"""Traces and Prometheus metrics of a flaky connector, printed instead of shipped.

Needs the extras ``otel`` and ``prometheus`` plus the OpenTelemetry SDK
(``pip install 'connector-resilience[otel,prometheus]' opentelemetry-sdk``).
A real service would export spans over OTLP and serve the registry on /metrics.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from connector_resilience import Policy, flush_metrics, resilient, testing
from connector_resilience.exporters import PrometheusCollector

# The application configures OpenTelemetry once, before the first call.
spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(provider)

policy = Policy(store={"url": "memory://observability"}, retry={"base_ms": 10, "jitter_pct": 0})
registry = CollectorRegistry()
registry.register(PrometheusCollector(policy=policy))

attempts: list[str] = []


@resilient("inventory", policy=policy)
def stock(item: str) -> int:
    """Fails on its first attempt, then answers: a call a retry saves."""
    attempts.append(item)
    if len(attempts) == 1:
        raise ConnectionError("inventory is restarting")
    return 42


with testing.no_waits():  # the example needs no real backoff sleep
    print("stock:", stock("widget"))
flush_metrics()

for span in sorted(spans.get_finished_spans(), key=lambda s: s.start_time or 0):
    attributes = dict(span.attributes or {})
    print(
        f"span {span.name!r}: attempt={attributes.get('connector_resilience.attempt', '-')}"
        f" wait_s={attributes.get('connector_resilience.retry.wait_s', '-')}"
        f" error.type={attributes.get('error.type', '-')}"
        f" events={[e.name for e in span.events]}"
    )
text = generate_latest(registry).decode()
for line in text.splitlines():
    if line.startswith("connector_resilience_calls_total"):
        print(line)  # outcome="success", retried="true": saved by the retry
assert 'retried="true"' in text
