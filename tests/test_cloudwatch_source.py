"""The CloudWatch metric source against a real moto server: put_metric_data, then GetMetricData averaged over
a pool's instances; missing data; the source spec's validation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from pydantic import ValidationError

from poolctl.activities.metrics import MetricUnavailableError
from poolctl.activities.metrics.cloudwatch import clear_cloudwatch_clients, read_cloudwatch
from poolctl.domain.errors import SpecError
from poolctl.domain.policy_spec import CloudWatchSource
from poolctl.starter.specfile import parse_spec
from tests.moto_server import REGION


def put(endpoint: str, metric: str, values: dict[str, list[float]], at: datetime | None = None) -> None:
    cw = boto3.client("cloudwatch", endpoint_url=endpoint, region_name=REGION)
    at = at or datetime.now(UTC)
    cw.put_metric_data(
        Namespace="Poolctl/Test",
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                "Value": v,
                "Timestamp": at,
            }
            for iid, vs in values.items()
            for v in vs
        ],
    )


def source(name: str, **kw: object) -> CloudWatchSource:
    return CloudWatchSource.model_validate(
        {"kind": "cloudwatch", "namespace": "Poolctl/Test", "metric_name": name, **kw}
    )


async def test_average_over_the_pools_instances(aws_endpoint: str) -> None:
    clear_cloudwatch_clients()
    metric = f"cpu-{uuid.uuid4().hex[:6]}"
    put(aws_endpoint, metric, {"i-a": [40.0, 50.0], "i-b": [60.0], "i-other": [99.0]})
    read = lambda src, ids: read_cloudwatch(src, ids, region=REGION, endpoint_url=aws_endpoint)  # noqa: E731
    # Average per instance over the period (45 and 60), then the average over the pool's instances;
    # an instance without data (i-new) is left out, an instance of another pool (i-other) never read
    assert await read(source(metric), ["i-a", "i-b", "i-new"]) == pytest.approx(52.5)
    assert await read(source(metric, statistic="Maximum"), ["i-a", "i-b"]) == pytest.approx(55.0)
    assert await read(source(metric, statistic="Maximum", aggregate="max"), ["i-a", "i-b"]) == 60.0
    assert await read(source(metric, statistic="SampleCount", aggregate="sum"), ["i-a", "i-b"]) == 3.0

    with pytest.raises(MetricUnavailableError, match=r"no datapoint in the last 180s .*i-new"):
        await read(source(metric), ["i-new"])
    with pytest.raises(MetricUnavailableError, match="no running instances"):
        await read(source(metric), [])


async def test_datapoints_older_than_the_window_do_not_count(aws_endpoint: str) -> None:
    clear_cloudwatch_clients()
    metric = f"old-{uuid.uuid4().hex[:6]}"
    put(aws_endpoint, metric, {"i-a": [10.0]}, at=datetime.now(UTC) - timedelta(minutes=30))
    put(aws_endpoint, metric, {"i-b": [30.0]})
    read = lambda src: read_cloudwatch(src, ["i-a", "i-b"], region=REGION, endpoint_url=aws_endpoint)  # noqa: E731
    assert await read(source(metric, window_s=300)) == 30.0
    assert await read(source(metric, period_s=60, window_s=3600)) == pytest.approx(20.0)


def test_source_spec_is_validated_naming_the_field() -> None:
    assert source("m").effective_window_s == 180 and source("m", period_s=300).effective_window_s == 900
    for bad, field in (
        ({"period_s": 61}, "period_s"),
        ({"statistic": "Avg"}, "statistic"),
        ({"period_s": 120, "window_s": 60}, "window_s"),
        ({"namespace": ""}, "namespace"),
        ({"metric": "x"}, "metric"),
    ):
        with pytest.raises(ValidationError, match=field):
            source("m", **bad)
    spec = """
pools:
  - name: web
    provider: aws
    provider_options: {image_id: ami-12345678}
    policies:
      - name: cpu
        type: cpu
        target: 50
        strategy: target_tracking
        source: {kind: cloudwatch, metric_name: CPUUtilization, period_s: 45}
"""
    with pytest.raises(SpecError, match=r"period_s"):
        parse_spec(spec, "bad.yaml")
    ok = parse_spec(spec.replace("period_s: 45", "period_s: 300"), "ok.yaml")
    assert isinstance(ok.pools[0].policies[0].source, CloudWatchSource)
