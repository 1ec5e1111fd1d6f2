"""An aiohttp.web service that calls a connector and exposes /healthz and /metrics.

The service's own endpoint (/quote) calls an upstream pricing API through
``@resilient``; ``/healthz`` answers 200 or 503 from the connector's health
verdict, and ``/metrics`` is Prometheus text from a ``PrometheusCollector``.
Everything runs on 127.0.0.1: the upstream is a small flaky server started
here, and the example scrapes its own endpoints to show what you would see.

Run: python examples/health_service.py   (needs the aiohttp and prometheus extras)
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from connector_resilience import CircuitOpenError, Policy, flush_metrics, resilient
from connector_resilience.exporters import PrometheusCollector
from connector_resilience.metrics import health_report

POLICY = Policy(
    store={"url": "memory://health-service"},
    retry={"base_ms": 20, "cap_ms": 100},
    circuit={"failures_to_open": 3, "cooldown_s": 30},
)


class PricingAPI:
    """The connector: one upstream service, one name for metrics and the breaker."""

    connector_name = "pricing"

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    @resilient(policy=POLICY, retry_on=(aiohttp.ClientError,))
    async def price(self, sku: str) -> float:
        """The current price of ``sku``; 5xx answers raise and are retried."""
        async with self.session.get(f"{self.base_url}/price/{sku}") as response:
            response.raise_for_status()
            body = await response.json()
            return float(body["price"])


def service_app(pricing: PricingAPI, registry: CollectorRegistry) -> web.Application:
    """The service: /quote does the work, /healthz and /metrics are for operators."""

    async def quote(request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        try:
            return web.json_response({"sku": sku, "price": await pricing.price(sku)})
        except CircuitOpenError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        except aiohttp.ClientError:
            return web.json_response({"error": "pricing is failing"}, status=502)

    async def healthz(request: web.Request) -> web.Response:
        # A store read: off the loop, so a slow store never stalls the service.
        report = await asyncio.to_thread(health_report, "pricing", policy=POLICY)
        status = 503 if report.status.value == "down" else 200
        return web.json_response(report.as_dict(), status=status)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.add_routes(
        [
            web.get("/quote/{sku}", quote),
            web.get("/healthz", healthz),
            web.get("/metrics", metrics),
        ]
    )
    return app


def upstream_app() -> web.Application:
    """A pricing API that fails every third request with a 503."""
    counter = itertools.count(1)

    async def price(request: web.Request) -> web.Response:
        if next(counter) % 3 == 0:
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"price": 9.99})

    app = web.Application()
    app.add_routes([web.get("/price/{sku}", price)])
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start ``app`` on a free 127.0.0.1 port; return its runner and base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def main() -> None:
    """Start the upstream and the service, make a few requests, show what operators see."""
    registry = CollectorRegistry()
    collector = PrometheusCollector(policy=POLICY)
    registry.register(collector)
    upstream, upstream_url = await serve(upstream_app())
    async with aiohttp.ClientSession() as session:
        service, service_url = await serve(service_app(PricingAPI(session, upstream_url), registry))
        try:
            for sku in ("apple", "pear", "plum", "fig", "kiwi", "lime"):
                async with session.get(f"{service_url}/quote/{sku}") as response:
                    print(f"GET /quote/{sku}: {response.status} {await response.json()}")
            async with session.get(f"{service_url}/healthz") as response:
                health = await response.json()
                print(f"GET /healthz: {response.status} status={health['status']}")
                assert response.status == 200
            # The collector counts what the background writer stored; flush it first.
            await asyncio.to_thread(flush_metrics)
            async with session.get(f"{service_url}/metrics") as response:
                text = await response.text()
            lines = [line for line in text.splitlines() if "pricing" in line and "_total" in line]
            print("GET /metrics (excerpt):")
            for line in lines:
                print(f"  {line}")
            assert any(line.startswith("connector_resilience_calls_total") for line in lines)
        finally:
            await service.cleanup()
            await upstream.cleanup()
            collector.close()


if __name__ == "__main__":
    asyncio.run(main())
