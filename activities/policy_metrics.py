"""Activities of the policy loop: read a policy's metric (for the members the pool told it, with their
readiness) and record decisions.

`read_policy_metric` never raises for a metric source that is down: it answers `value=None` with the
error text, and the pure decision code applies the policy's `on_metric_error`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
from temporalio import activity

from poolctl.activities.metrics import MetricUnavailableError, read_metric
from poolctl.activities.metrics.scrape import scrape_servers
from poolctl.domain.names import policy_workflow_id
from poolctl.domain.policy_spec import ScrapeSource
from poolctl.domain.policy_state import DecisionRecord, MetricReading, MetricReadRequest
from poolctl.domain.pool_state import ServerRecord
from poolctl.domain.readiness import ServerSample, aggregate, sample_server
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
        """`read` as an activity of its own (the evaluation loop, `activities/policy_loop.py`, calls `read`)."""
        return await self.read(req)

    async def read(self, req: MetricReadRequest) -> MetricReading:
        """The pool's members (as the pool told its policy) with their readiness and, when `source` is
        given, the metric's value. A scrape reads each ready member on its own (the decision code
        aggregates them); a member that does not answer is a sample without a value, never a failed read.
        """
        POLICY_EVALUATIONS.inc()
        now = datetime.now(UTC)
        members = list(req.servers)
        samples = [
            sample_server(
                m.server_id,
                created_at=m.created_at,
                health=str(m.health.value if hasattr(m.health, "value") else m.health),
                now=now,
                instance_warmup_s=req.instance_warmup_s,
            )
            for m in members
        ]
        current = len(members)
        ready = sum(1 for s in samples if s.ready)
        if req.source is None:
            return MetricReading(current=current, ready=ready, servers=samples)
        if isinstance(req.source, ScrapeSource):
            return await self._scrape(req.source, members, samples)
        try:
            value = await read_metric(
                req.source,
                [],
                self._client(),
                # a cloudwatch source reads every member not known unhealthy (its datapoints lag anyway)
                server_ids=[
                    m.server_id for m in members if str(getattr(m.health, "value", m.health)) != "unhealthy"
                ],
                aws_region=self.settings.aws_region,
                aws_endpoint_url=self.settings.aws_endpoint_url,
            )
        except MetricUnavailableError as e:
            return MetricReading(value=None, error=str(e), current=current, ready=ready, servers=samples)
        except httpx.HTTPError as e:  # a driver let one through: still "unavailable", never a retry storm
            return MetricReading(
                value=None, error=f"{type(e).__name__}: {e}", current=current, ready=ready, servers=samples
            )
        return MetricReading(value=value, current=current, ready=ready, servers=samples)

    async def _scrape(
        self, source: ScrapeSource, members: list[ServerRecord], samples: list[ServerSample]
    ) -> MetricReading:
        """Scrape the ready members; the answer's `value` is their aggregate (for display: the decision
        code recomputes it from `servers`)."""
        assert source.metric is not None
        ready = [(m, s) for m, s in zip(members, samples, strict=True) if s.ready]
        results = await scrape_servers(
            source.metric,
            [f"http://{m.host}:{m.port}" for m, _ in ready],
            self._client(),
            path=source.path,
            timeout_s=source.timeout_s,
        )
        by_id = {}
        for (_, sample), result in zip(ready, results, strict=True):
            if isinstance(result, float):
                by_id[sample.server_id] = sample.model_copy(update={"value": result})
            else:
                by_id[sample.server_id] = sample.model_copy(update={"error": str(result)})
        read = [by_id.get(s.server_id, s) for s in samples]
        values = [s.value for s in read if s.value is not None]
        errors = [s.error for s in read if s.error]
        error = None
        if errors:
            error = (
                f"scrape {source.metric}: {len(errors)} of {len(ready)} ready servers did not answer: "
                + ("; ".join(errors))
            )
        elif not ready:
            error = f"scrape {source.metric}: no ready server to scrape"
        return MetricReading(
            value=aggregate(values, source.aggregate) if values else None,
            error=error,
            current=len(samples),
            ready=len(ready),
            servers_read=len(values),
            servers=read,
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
