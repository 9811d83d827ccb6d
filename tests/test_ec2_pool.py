"""A pool on the `aws` provider end to end: real Temporal dev server, real worker, EC2 and CloudWatch APIs
served by a real moto server. A moto instance has no machine behind it, so the pool has no health check
to wait on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import boto3
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from poolctl.activities.drift import DriftActivities, DriftInput
from poolctl.activities.policy_metrics import PolicyMetricActivities
from poolctl.activities.providers.base import ProvisionRequest
from poolctl.activities.providers.registry import get_provider
from poolctl.domain.names import pool_key
from poolctl.domain.policy_spec import CloudWatchSource
from poolctl.domain.policy_state import MetricReadRequest
from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.store.db import migrate
from poolctl.worker import build_worker
from tests.helpers import apply_yaml, settled
from tests.moto_server import REGION

pytestmark = pytest.mark.temporal


@pytest.fixture
async def ec2_worker(client: Client, settings: Settings, aws_endpoint: str) -> AsyncIterator[Settings]:
    """A worker whose settings point the aws provider at the moto server."""
    s = settings.model_copy(update={"aws_endpoint_url": aws_endpoint, "aws_region": REGION})
    migrate(s.resolved_database_url)
    async with build_worker(client, s):
        yield s


def states(endpoint: str, pool: str) -> dict[str, str]:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION)
    found = ec2.describe_instances(Filters=[{"Name": "tag:poolctl:pool-key", "Values": [pool]}])
    return {i["InstanceId"]: i["State"]["Name"] for r in found["Reservations"] for i in r["Instances"]}


async def test_pool_on_ec2_scales_out_and_in(
    client: Client, ec2_worker: Settings, aws_endpoint: str, moto_ami: str
) -> None:
    settings = ec2_worker
    spec = f"""
pools:
  - name: fleet
    provider: aws
    provider_options: {{image_id: {moto_ami}, instance_type: t3.micro, port: 8080}}
    min_servers: 0
    max_servers: 4
    desired_servers: 2
"""
    await apply_yaml(client, settings, spec)
    view = await settled(client, settings, "fleet", 2, timeout=120)
    key = pool_key(settings.team, "fleet")
    assert all(s.server_id.startswith("i-") and s.port == 8080 for s in view.servers)
    assert states(aws_endpoint, key) == {s.server_id: "running" for s in view.servers}

    await pool_ops.request_scale(client, settings.team, "fleet", 3, "test out")
    view = await settled(client, settings, "fleet", 3, timeout=120)
    assert sorted(states(aws_endpoint, key).values()) == ["running"] * 3

    # the CloudWatch source reads the pool's instances through the real policy-metric activity
    cw = boto3.client("cloudwatch", endpoint_url=aws_endpoint, region_name=REGION)
    cw.put_metric_data(
        Namespace="AWS/EC2",
        MetricData=[
            {
                "MetricName": "CPUUtilization",
                "Dimensions": [{"Name": "InstanceId", "Value": s.server_id}],
                "Value": v,
            }
            for s, v in zip(view.servers, (10.0, 20.0, 60.0), strict=True)
        ],
    )
    source = CloudWatchSource(kind="cloudwatch", metric_name="CPUUtilization", period_s=60)
    reading = await ActivityEnvironment().run(
        PolicyMetricActivities(settings).read_policy_metric,
        MetricReadRequest(team=settings.team, pool="fleet", source=source, servers=view.servers),
    )
    assert (reading.value, reading.current, reading.error) == (30.0, 3, None)

    await pool_ops.request_scale(client, settings.team, "fleet", 1, "test in")
    view = await settled(client, settings, "fleet", 1, timeout=120)
    ec2_states = states(aws_endpoint, key)
    assert [i for i, st in ec2_states.items() if st == "running"] == [view.servers[0].server_id]
    assert sorted(ec2_states.values()) == ["running", "terminated", "terminated"]
    provider = get_provider("aws", settings.state_dir, settings)
    listed = await provider.list_servers(key)
    assert {s.server_id for s in listed if s.state.value == "running"} == {view.servers[0].server_id}

    # drift by tag: none now; then an instance tagged for the pool that the store does not know (an
    # orphan) and the pool's server terminated behind poolctl's back (gone)
    detect = DriftActivities(settings).detect_pool_drift
    drift_in = DriftInput(team=settings.team, pool="fleet", provider="aws")
    assert not (await ActivityEnvironment().run(detect, drift_in)).drifted
    orphan = await provider.provision(
        ProvisionRequest(pool=key, idempotency_key="outside-poolctl", options={"image_id": moto_ami})
    )
    boto3.client("ec2", endpoint_url=aws_endpoint, region_name=REGION).terminate_instances(
        InstanceIds=[view.servers[0].server_id]
    )
    drift = await ActivityEnvironment().run(detect, drift_in)
    assert (drift.orphans, drift.gone) == ([orphan.server_id], [view.servers[0].server_id])
