"""The Grafana dashboard and Prometheus alerting rules shipped inside the package."""

from __future__ import annotations

from importlib import resources

__all__ = ["grafana_dashboard", "prometheus_rules"]


def _read(name: str) -> str:
    return (resources.files(__package__) / "assets" / name).read_text(encoding="utf-8")


def grafana_dashboard() -> str:
    """The Grafana dashboard (JSON text, Prometheus data source chosen at import).

    Example::

        python -c "from connector_resilience.exporters import grafana_dashboard as g; print(g())" \\
            > connector-resilience.json
    """
    return _read("grafana-dashboard.json")


def prometheus_rules() -> str:
    """The Prometheus alerting rules file (YAML text) over the exporters' series.

    Example::

        python -c "from connector_resilience.exporters import prometheus_rules as r; print(r())" \\
            > /etc/prometheus/rules/connector-resilience.yml
    """
    return _read("prometheus-rules.yml")
