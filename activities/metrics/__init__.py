"""Metric source drivers (I/O): read one number for a policy from scrape, Prometheus or a JSON document."""

from __future__ import annotations

import httpx

from poolctl.activities.metrics.errors import METRIC_UNAVAILABLE_ERROR, MetricUnavailableError
from poolctl.activities.metrics.http_json import read_http_json
from poolctl.activities.metrics.prometheus import query_prometheus
from poolctl.activities.metrics.scrape import scrape_metric
from poolctl.domain.policy_spec import HttpJsonSource, MetricSource, PrometheusSource, ScrapeSource

__all__ = ["METRIC_UNAVAILABLE_ERROR", "MetricUnavailableError", "read_metric"]


async def read_metric(source_spec: MetricSource, server_urls: list[str], client: httpx.AsyncClient) -> float:
    """The current value from `source_spec`; `server_urls` (base URLs) are the servers a scrape reads.

    Raises MetricUnavailableError, with a message naming the source, on any failure.
    """
    if isinstance(source_spec, ScrapeSource):
        if source_spec.metric is None:
            raise MetricUnavailableError("scrape", "the scrape source names no metric")
        return await scrape_metric(
            source_spec.metric,
            server_urls,
            client,
            aggregate_by=source_spec.aggregate,
            path=source_spec.path,
            timeout_s=source_spec.timeout_s,
        )
    if isinstance(source_spec, PrometheusSource):
        return await query_prometheus(
            source_spec.url, source_spec.query, client, timeout_s=source_spec.timeout_s
        )
    if isinstance(source_spec, HttpJsonSource):
        return await read_http_json(
            source_spec.url, source_spec.path, client, timeout_s=source_spec.timeout_s
        )
    raise MetricUnavailableError("metric source", f"unknown source {source_spec!r}")
