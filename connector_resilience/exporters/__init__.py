"""Export call metrics to Prometheus and OpenTelemetry.

The optional client libraries are imported only when an exporter is created;
a missing one raises :class:`~connector_resilience.ConfigurationError` naming
the pip extra (``prometheus`` or ``otel``). Every series is listed in
docs/operations.md; the package ships a Grafana dashboard and Prometheus
alerting rules over them (:func:`grafana_dashboard`, :func:`prometheus_rules`).
"""

from __future__ import annotations

from connector_resilience.exporters._assets import grafana_dashboard, prometheus_rules
from connector_resilience.exporters._common import CIRCUIT_STATES, DURATION_BUCKETS_S
from connector_resilience.exporters.otel import OpenTelemetryMetrics
from connector_resilience.exporters.prometheus import (
    PrometheusCollector,
    PrometheusStoreCollector,
    store_view_families,
)

__all__ = [
    "CIRCUIT_STATES",
    "DURATION_BUCKETS_S",
    "OpenTelemetryMetrics",
    "PrometheusCollector",
    "PrometheusStoreCollector",
    "grafana_dashboard",
    "prometheus_rules",
    "store_view_families",
]
