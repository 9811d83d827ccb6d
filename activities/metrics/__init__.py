"""Metric source drivers (I/O): read one number for a policy from scrape, Prometheus, a JSON document or CloudWatch."""

from __future__ import annotations

import httpx

from poolctl.activities.metrics.cloudwatch import read_cloudwatch
from poolctl.activities.metrics.errors import METRIC_UNAVAILABLE_ERROR, MetricUnavailableError, usable_value
from poolctl.activities.metrics.http_json import read_http_json
from poolctl.activities.metrics.prometheus import query_prometheus
from poolctl.activities.metrics.scrape import scrape_metric
from poolctl.domain.policy_spec import (
    CloudWatchSource,
    HttpJsonSource,
    MetricSource,
    PrometheusSource,
    ScrapeSource,
)

__all__ = ["METRIC_UNAVAILABLE_ERROR", "MetricUnavailableError", "read_metric"]


async def read_metric(
    source_spec: MetricSource,
    server_urls: list[str],
    client: httpx.AsyncClient,
    *,
    server_ids: list[str] | None = None,
    aws_region: str | None = None,
    aws_endpoint_url: str | None = None,
) -> float:
    """The current value from `source_spec`; `server_urls` (base URLs) are the servers a scrape reads,
    `server_ids` (EC2 instance ids) the ones a CloudWatch source reads, in `aws_region` (default: the AWS
    configuration) through `aws_endpoint_url` (default: AWS's).

    Raises MetricUnavailableError, with a message naming the source, on any failure, and for a value no
    policy may scale on (NaN, infinite, negative: errors.usable_value).
    """
    return usable_value(
        source_spec.kind,
        await _read(source_spec, server_urls, client, server_ids, aws_region, aws_endpoint_url),
    )


async def _read(
    source_spec: MetricSource,
    server_urls: list[str],
    client: httpx.AsyncClient,
    server_ids: list[str] | None,
    aws_region: str | None,
    aws_endpoint_url: str | None,
) -> float:
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
    if isinstance(source_spec, CloudWatchSource):
        return await read_cloudwatch(
            source_spec, list(server_ids or []), region=aws_region, endpoint_url=aws_endpoint_url
        )
    raise MetricUnavailableError("metric source", f"unknown source {source_spec!r}")
