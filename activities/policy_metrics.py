"""Activities of the policy loop: read a policy's metric (for the members the pool told it) and record decisions.

`read_policy_metric` never raises for a metric source that is down: it answers `value=None` with the
error text, and the pure decision code applies the policy's `on_metric_error`.
"""

from __future__ import annotations

import asyncio

import httpx
from temporalio import activity

from poolctl.activities.metrics import MetricUnavailableError, read_metric
from poolctl.domain.health import HealthState
from poolctl.domain.names import policy_workflow_id
from poolctl.domain.policy_spec import ScrapeSource
from poolctl.domain.policy_state import DecisionRecord, MetricReading, MetricReadRequest
from poolctl.domain.pool_state import ServerLifecycle
from poolctl.settings import Settings
from poolctl.store.db import session_scope
from poolctl.store.policy_decisions import record_policy_decision
from poolctl.telemetry import POLICY_DECISIONS, POLICY_EVALUATIONS


class PolicyMetricActivities:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._http: httpx.AsyncClient | None = None

    @property
    def _url(self) -> str:
        return self.settings.resolved_database_url

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=100)
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @activity.defn(name="read_policy_metric")
    async def read_policy_metric(self, req: MetricReadRequest) -> MetricReading:
        """The pool's current and ready counts from the members the pool told its policy and, when
        `source` is given, the metric's value (a scrape reads the running members not known unhealthy)."""
        POLICY_EVALUATIONS.inc()
        current = len(req.servers)
        ready = sum(1 for s in req.servers if s.health is HealthState.HEALTHY)
        if req.source is None:
            return MetricReading(current=current, ready=ready)
        urls = [
            f"http://{s.host}:{s.port}"
            for s in req.servers
            if s.state is ServerLifecycle.RUNNING and s.health is not HealthState.UNHEALTHY
        ]
        needs_servers = isinstance(req.source, ScrapeSource)
        try:
            value = await read_metric(req.source, urls, self._client())
        except MetricUnavailableError as e:
            return MetricReading(value=None, error=str(e), current=current, ready=ready)
        except httpx.HTTPError as e:  # a driver let one through: still "unavailable", never a retry storm
            return MetricReading(value=None, error=f"{type(e).__name__}: {e}", current=current, ready=ready)
        return MetricReading(
            value=value, current=current, ready=ready, servers_read=len(urls) if needs_servers else 0
        )

    @activity.defn(name="record_policy_decision")
    async def record_policy_decision(self, rec: DecisionRecord) -> bool:
        """Write a decision record to the store (idempotent); False if the pool is gone from the store."""
        return await asyncio.to_thread(self._record, rec)

    def _record(self, rec: DecisionRecord) -> bool:
        d = rec.decision
        key = f"{policy_workflow_id(rec.team, rec.pool, rec.policy)}@{d.at.isoformat()}"
        POLICY_DECISIONS.labels(d.reason.value).inc()
        with session_scope(self._url) as s:
            return record_policy_decision(
                s,
                team=rec.team,
                pool=rec.pool,
                policy=rec.policy,
                record_key=key,
                decided_at=d.at,
                current=d.current,
                desired=d.desired,
                direction=d.direction.value,
                reason=d.reason.value,
                metric=d.metric,
                formula=d.formula,
                decision=d.model_dump(mode="json"),
            )
