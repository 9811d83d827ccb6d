"""Activities of the policy loop: read a policy's metric (with the pool's server count) and record decisions.

`read_policy_metric` never raises for a metric source that is down: it answers `value=None` with the
error text, and the pure decision code applies the policy's `on_metric_error`.
"""

from __future__ import annotations

import asyncio

import httpx
from temporalio import activity

from poolctl.activities.metrics import MetricUnavailableError, read_metric
from poolctl.domain.errors import NotFoundError
from poolctl.domain.names import policy_workflow_id
from poolctl.domain.policy_spec import ScrapeSource
from poolctl.domain.policy_state import DecisionRecord, MetricReading, MetricReadRequest
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.store.policy_decisions import record_policy_decision
from poolctl.telemetry import POLICY_DECISIONS, POLICY_EVALUATIONS

# Servers that count in the pool's size; of those, a scrape reads the running ones not known unhealthy.
_COUNTED_STATES = ("pending", "running")


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
        """The pool's current size from the store and, when `source` is given, the metric's value."""
        POLICY_EVALUATIONS.inc()
        try:
            current, urls = await asyncio.to_thread(self._servers, req.team, req.pool)
        except NotFoundError as e:
            return MetricReading(value=None, error=str(e), current=0)
        if req.source is None:
            return MetricReading(current=current)
        needs_servers = isinstance(req.source, ScrapeSource)
        try:
            value = await read_metric(req.source, urls, self._client())
        except MetricUnavailableError as e:
            return MetricReading(value=None, error=str(e), current=current)
        except httpx.HTTPError as e:  # a driver let one through: still "unavailable", never a retry storm
            return MetricReading(value=None, error=f"{type(e).__name__}: {e}", current=current)
        return MetricReading(value=value, current=current, servers_read=len(urls) if needs_servers else 0)

    def _servers(self, team: str, pool: str) -> tuple[int, list[str]]:
        with session_scope(self._url) as s:
            rows = inventory.list_servers(s, team, pool)
            counted = [r for r in rows if r.state in _COUNTED_STATES]
            urls = [
                f"http://{r.host}:{r.port}"
                for r in counted
                if r.state == "running" and r.health != "unhealthy"
            ]
            return len(counted), urls

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
