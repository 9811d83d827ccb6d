"""Adding and removing policies by re-applying the pool's spec: a removed policy's workflow stops and the
pool forgets its recommendation; deleting the pool stops the rest."""

from __future__ import annotations

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from poolctl.domain.names import policy_workflow_id
from poolctl.settings import Settings
from poolctl.starter import pool_ops
from tests.helpers import apply_yaml, eventually, pool_view, settled

pytestmark = pytest.mark.temporal

BASE = """
pools:
  - name: web
    provider: fake
    min_servers: 1
    max_servers: 6
    desired_servers: 2
    policies:
{policies}
"""
KEEP = """      - name: keep
        type: custom
        strategy: threshold
        source: {kind: http_json, url: "http://127.0.0.1:9/none", path: value}
        threshold_up: 80
        threshold_down: 20
        evaluation_interval: 1
"""
DROP = KEEP.replace("name: keep", "name: drop")


async def status(client: Client, settings: Settings, policy: str) -> WorkflowExecutionStatus | None:
    desc = await client.get_workflow_handle(policy_workflow_id(settings.team, "web", policy)).describe()
    return desc.status


async def test_removed_policy_stops_and_the_pool_forgets_it(client: Client, settings: Settings, worker):
    await apply_yaml(client, settings, BASE.format(policies=KEEP + DROP))
    await settled(client, settings, "web", 2)
    # both policies report (their metric source is down: hold, MetricUnavailable)
    view = await eventually(
        lambda: pool_view(client, settings, "web"),
        lambda v: v is not None and {r.policy for r in v.recommendations} == {"keep", "drop"},
    )
    assert all(r.metric_missing for r in view.recommendations)

    await apply_yaml(client, settings, BASE.format(policies=KEEP))
    assert await status(client, settings, "drop") != WorkflowExecutionStatus.RUNNING
    assert await status(client, settings, "keep") == WorkflowExecutionStatus.RUNNING
    view = await eventually(
        lambda: pool_view(client, settings, "web"),
        lambda v: v is not None and [r.policy for r in v.recommendations] == ["keep"],
    )

    await pool_ops.delete_pool(client, settings, settings.team, "web")
    assert await status(client, settings, "keep") != WorkflowExecutionStatus.RUNNING
