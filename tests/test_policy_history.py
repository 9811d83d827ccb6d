"""A policy's history grows with decisions, not with evaluations (real Temporal dev server): with a steady
metric, N more evaluations add no history events to its PolicyWorkflow; a pause takes effect (and is
recorded) at once, and the live counters of `poolctl policy show` come from the loop's heartbeat."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from temporalio.client import Client

from poolctl.domain.names import policy_workflow_id
from poolctl.settings import Settings
from poolctl.starter import policy_ops
from tests.helpers import apply_yaml, eventually, settled
from tests.policy_helpers import metric_server, policy_state

pytestmark = [pytest.mark.temporal, pytest.mark.slow]

SPEC = """
pools:
  - name: web
    provider: fake
    min_servers: 1
    max_servers: 4
    desired_servers: 2
    policies:
      - name: steady
        type: custom
        source: {{kind: http_json, url: "http://127.0.0.1:{port}/load", path: v}}
        target: 50
        evaluation_interval: 1
"""
EVALUATIONS = 8


async def history_length(client: Client, workflow_id: str) -> int:
    return len([e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()])


async def test_steady_metric_adds_no_history_over_many_evaluations(
    client: Client, settings: Settings, worker
):
    async with AsyncExitStack() as stack:
        port = await stack.enter_async_context(metric_server({"load": lambda: 50}))
        await apply_yaml(client, settings, SPEC.format(port=port))
        await settled(client, settings, "web", 2)
        wf_id = policy_workflow_id(settings.team, "web", "steady")
        # the first decision (within tolerance) is sent and recorded; after it the loop only heartbeats
        state = await eventually(
            lambda: policy_state(client, settings, "web", "steady"),
            lambda s: s is not None and s.live and s.last_reason == "WithinTolerance" and s.evaluations >= 2,
        )
        assert state is not None
        before = await history_length(client, wf_id)
        n = state.evaluations
        later = await eventually(
            lambda: policy_state(client, settings, "web", "steady"),
            lambda s: s is not None and s.evaluations >= n + EVALUATIONS,
            timeout=60,
        )
        assert later is not None and later.last_metric == 50 and later.next_evaluation_at is not None
        assert await history_length(client, wf_id) == before, f"history grew over {EVALUATIONS} evaluations"

        # a pause restarts the loop, which evaluates at once: a decision, and history grows by that only
        await policy_ops.signal_policy(client, settings.team, "web", "steady", "pause")
        paused = await eventually(
            lambda: policy_state(client, settings, "web", "steady"),
            lambda s: s is not None and s.last_reason == "Paused",
            timeout=20,
        )
        assert paused is not None
        # the next loop runs (it evaluated since the decision was handled): history is still again
        m = paused.evaluations
        await eventually(
            lambda: policy_state(client, settings, "web", "steady"),
            lambda s: s is not None and s.live and s.evaluations >= m + 2,
            timeout=60,
        )
        paused_len = await history_length(client, wf_id)
        assert paused_len - before < 40
        await eventually(
            lambda: policy_state(client, settings, "web", "steady"),
            lambda s: s is not None and s.evaluations >= m + 2 + EVALUATIONS // 2,
            timeout=60,
        )
        assert await history_length(client, wf_id) == paused_len
