"""CloudWatch source: one metric per pool instance through `GetMetricData`, aggregated (average by default).

Each of the pool's EC2 instances is one `MetricStat` query (dimension `InstanceId` = the server id, or the
source's `dimension`), asking for the source's statistic over `period_s` in the last `window_s`; the
newest datapoint of each instance counts, instances without data are left out (and named in the error
if none has any). Credentials and region come from boto3's standard chain, like the `aws` provider.
"""

from __future__ import annotations

import asyncio
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions

from poolctl.activities.metrics.errors import MetricUnavailableError
from poolctl.activities.metrics.scrape import aggregate
from poolctl.domain.policy_spec import CloudWatchSource

MAX_QUERIES_PER_CALL = 500  # GetMetricData: at most 500 MetricDataQuery structures per call

_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


def cloudwatch_client(region: str | None, endpoint_url: str | None) -> Any:
    """A (cached) CloudWatch client; raises MetricUnavailableError when no region is configured."""
    key = (region, endpoint_url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3  # imported when first needed: a fifth of a second of every CLI start otherwise
            import botocore.config

            session = boto3.session.Session(region_name=region)
            if session.region_name is None:
                raise MetricUnavailableError(
                    "cloudwatch", "no AWS region configured (set AWS_REGION or POOLCTL_AWS_REGION)"
                )
            config = botocore.config.Config(
                retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20
            )
            client = session.client("cloudwatch", endpoint_url=endpoint_url, config=config)
            _clients[key] = client
        return client


def clear_cloudwatch_clients() -> None:
    """Forget cached clients (tests change credentials between cases)."""
    with _clients_lock:
        _clients.clear()


def label_of(source: CloudWatchSource) -> str:
    return f"cloudwatch {source.namespace}/{source.metric_name} {source.statistic}"


def metric_queries(source: CloudWatchSource, instance_ids: list[str]) -> list[dict[str, Any]]:
    """The `MetricDataQueries` for `instance_ids` (ids `m0`, `m1`, ... in their order)."""
    return [
        {
            "Id": f"m{i}",
            "MetricStat": {
                "Metric": {
                    "Namespace": source.namespace,
                    "MetricName": source.metric_name,
                    "Dimensions": [{"Name": source.dimension, "Value": iid}],
                },
                "Period": source.period_s,
                "Stat": source.statistic,
            },
            "ReturnData": True,
        }
        for i, iid in enumerate(instance_ids)
    ]


def read_cloudwatch_blocking(
    source: CloudWatchSource,
    instance_ids: list[str],
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    now: datetime | None = None,
) -> float:
    """The aggregate (source.aggregate) of each instance's newest datapoint. Blocking (boto3).

    Raises MetricUnavailableError when there are no instances, no instance has a datapoint in the
    window, or CloudWatch refuses or cannot be reached (the message names the AWS error code).
    """
    label = label_of(source)
    if not instance_ids:
        raise MetricUnavailableError(label, "the pool has no running instances to read")
    client = cloudwatch_client(region, endpoint_url)
    end = (now or datetime.now(UTC)) + timedelta(seconds=1)
    start = end - timedelta(seconds=source.effective_window_s)
    newest: dict[str, float] = {}
    for offset in range(0, len(instance_ids), MAX_QUERIES_PER_CALL):
        chunk = instance_ids[offset : offset + MAX_QUERIES_PER_CALL]
        kwargs: dict[str, Any] = {
            "MetricDataQueries": metric_queries(source, chunk),
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampDescending",
        }
        while True:
            try:
                page = client.get_metric_data(**kwargs)
            except botocore.exceptions.ClientError as e:
                err = e.response.get("Error", {})
                raise MetricUnavailableError(label, f"{err.get('Code')}: {err.get('Message')}") from e
            except botocore.exceptions.BotoCoreError as e:
                raise MetricUnavailableError(label, f"{type(e).__name__}: {e}") from e
            for result in page.get("MetricDataResults", []):
                values, stamps = result.get("Values") or [], result.get("Timestamps") or []
                if not values:
                    continue
                idx = max(range(len(values)), key=lambda j: stamps[j]) if stamps else 0
                iid = chunk[int(result["Id"][1:])]
                if iid not in newest:
                    newest[iid] = float(values[idx])
            token = page.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    if not newest:
        raise MetricUnavailableError(
            label,
            f"no datapoint in the last {source.effective_window_s}s for any of {len(instance_ids)} instance(s) "
            f"({', '.join(instance_ids[:5])}{', ...' if len(instance_ids) > 5 else ''})",
        )
    value = aggregate(list(newest.values()), source.aggregate)
    if not math.isfinite(value):
        raise MetricUnavailableError(label, f"value is {value}")
    return value


async def read_cloudwatch(
    source: CloudWatchSource, instance_ids: list[str], *, region: str | None, endpoint_url: str | None
) -> float:
    """`read_cloudwatch_blocking` in a thread (boto3 is synchronous), within `source.timeout_s`."""
    call = asyncio.to_thread(
        read_cloudwatch_blocking, source, instance_ids, region=region, endpoint_url=endpoint_url
    )
    try:
        return await asyncio.wait_for(call, source.timeout_s)
    except TimeoutError as e:
        raise MetricUnavailableError(label_of(source), f"no answer within {source.timeout_s}s") from e
