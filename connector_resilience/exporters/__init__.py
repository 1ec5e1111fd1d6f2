"""Export call metrics to Prometheus and OpenTelemetry.

The optional client libraries are imported only when an exporter is created;
a missing one raises :class:`~connector_resilience.ConfigurationError` naming
the pip extra (``prometheus`` or ``otel``). Metric names are listed in the
modules' docs and in docs/operations.md.
"""

from __future__ import annotations

from connector_resilience.exporters._common import DURATION_BUCKETS_S
from connector_resilience.exporters.otel import OpenTelemetryMetrics
from connector_resilience.exporters.prometheus import (
    PrometheusCollector,
    PrometheusStoreCollector,
    store_view_families,
)

__all__ = [
    "DURATION_BUCKETS_S",
    "OpenTelemetryMetrics",
    "PrometheusCollector",
    "PrometheusStoreCollector",
    "store_view_families",
]
