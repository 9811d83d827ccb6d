"""The worker's Prometheus endpoint: poolctl's own counters (prometheus-client) and the Temporal SDK's
runtime metrics, served together as one text page on 127.0.0.1:`worker_metrics_port`/metrics.

Counters are incremented by activities (they run in the worker process):

    poolctl_policy_evaluations_total                 one per metric read of a policy evaluation
    poolctl_policy_decisions_total{reason}           decision records written (by HPA-style reason code)
    poolctl_scaling_actions_total{outcome}           scaling events finished (succeeded|failed|partial|held)
    poolctl_probes_total{result}                     health probes (success|failure)
    poolctl_webhook_deliveries_total{outcome}        notification deliveries (delivered|failed)
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import httpx
from prometheus_client import CollectorRegistry, Counter, generate_latest
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

if TYPE_CHECKING:
    from aiohttp import web

REGISTRY = CollectorRegistry(auto_describe=True)
POLICY_EVALUATIONS = Counter(
    "poolctl_policy_evaluations", "Metric reads of policy evaluations.", registry=REGISTRY
)
POLICY_DECISIONS = Counter(
    "poolctl_policy_decisions",
    "Policy decision records written, by reason code.",
    ["reason"],
    registry=REGISTRY,
)
SCALING_ACTIONS = Counter(
    "poolctl_scaling_actions", "Scaling actions finished, by outcome.", ["outcome"], registry=REGISTRY
)
PROBES = Counter("poolctl_probes", "Health probes, by result.", ["result"], registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter(
    "poolctl_webhook_deliveries", "Notification deliveries, by outcome.", ["outcome"], registry=REGISTRY
)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerMetrics:
    """Owns the SDK runtime (its Prometheus exporter on a private loopback port) and the public endpoint.

    Use: `m = WorkerMetrics(port)`; pass `m.runtime` to `Client.connect`; `await m.start()`; `await
    m.stop()`. Port 0 disables the endpoint (the SDK runtime is then the default one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._sdk_address = f"127.0.0.1:{_free_loopback_port()}" if port else ""
        self.runtime: Runtime | None = (
            Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=self._sdk_address)))
            if port
            else None
        )
        self._runner: web.AppRunner | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    async def _page(self, request: web.Request) -> web.Response:
        text = generate_latest(REGISTRY).decode()
        if self._http is not None:
            try:
                sdk = await self._http.get(f"http://{self._sdk_address}/metrics", timeout=2.0)
                text += sdk.text
            except httpx.HTTPError as e:
                text += f"# temporal SDK metrics unavailable: {type(e).__name__}\n"
        from aiohttp import web

        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def start(self) -> None:
        if not self.port:
            return
        from aiohttp import web  # imported when serving: the CLI imports this module for its counters

        self._http = httpx.AsyncClient()
        app = web.Application()
        app.router.add_get("/metrics", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
