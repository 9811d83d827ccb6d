"""An exception from the decision code never wedges a running policy (real Temporal dev server).

The fault is injected by `tests/faulty_policy.py`: the real evaluation loop activity with decision code that
raises twice, on a worker of its own with the real PolicyWorkflow.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from poolctl.activities.policy_loop import PolicyLoopActivities
from poolctl.activities.policy_metrics import PolicyMetricActivities
from poolctl.domain.decision import ReasonCode
from poolctl.domain.names import policy_workflow_id
from poolctl.domain.policy_spec import PolicySpec
from poolctl.domain.policy_state import PolicyInput
from poolctl.settings import Settings
from poolctl.team_auth import load_team_keys
from poolctl.team_interceptor import TeamAuthInterceptor
from poolctl.workflows.policy import PolicyWorkflow
from tests.faulty_policy import INJECTED_FAULT, evaluate_with_injected_fault
from tests.helpers import apply_yaml, eventually, settled
from tests.policy_helpers import metric_server, policy_state, stored_decisions

pytestmark = [pytest.mark.temporal, pytest.mark.slow]


async def _async(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


async def test_policy_survives_an_evaluation_error_injected_by_a_second_loop_driver(
    client: Client, settings: Settings, worker
) -> None:
    pool_spec = """
pools:
  - name: web
    provider: fake
    min_servers: 1
    max_servers: 4
    desired_servers: 2
"""
    faulty_queue = f"{settings.task_queue}-faulty-{uuid.uuid4().hex[:4]}"
    metrics = PolicyMetricActivities(settings)
    async with AsyncExitStack() as stack:
        port = await stack.enter_async_context(metric_server({"load": lambda: 50}))
        stack.push_async_callback(metrics.aclose)
        spec = PolicySpec.model_validate(
            {
                "name": "steady",
                "type": "custom",
                "source": {"kind": "http_json", "url": f"http://127.0.0.1:{port}/load", "path": "v"},
                "target": 50,
                "evaluation_interval": 1,
            }
        )
        await apply_yaml(client, settings, pool_spec)
        view = await settled(client, settings, "web", 2)
        await stack.enter_async_context(
            Worker(
                client,
                task_queue=faulty_queue,
                workflows=[PolicyWorkflow],
                activities=[
                    PolicyLoopActivities(metrics, evaluate=evaluate_with_injected_fault).policy_loop,
                    metrics.record_policy_decision,
                ],
                interceptors=[TeamAuthInterceptor(load_team_keys(settings))],
            )
        )
        handle = await client.start_workflow(
            PolicyWorkflow.run,
            PolicyInput(team=settings.team, pool="web", spec=spec, members=view.servers),
            id=policy_workflow_id(settings.team, "web", "steady"),
            task_queue=faulty_queue,
        )
        stack.push_async_callback(handle.terminate)
        # the loop goes on past the faults: a decision after them is recorded
        records = await eventually(
            lambda: _async(stored_decisions, settings, "web", "steady"),
            lambda rs: (
                [r["reason"] for r in reversed(rs)]
                == ["WithinTolerance", "EvaluationError", "WithinTolerance"]
            ),
            timeout=60,
        )
        error = next(r for r in records if r["reason"] == "EvaluationError")
        assert error["desired"] == error["current"] == 2 and error["direction"] == "none"
        assert f"RuntimeError: {INJECTED_FAULT}" in error["decision"]["formula"]
        state = await eventually(
            lambda: policy_state(client, settings, "web", "steady"),
            lambda s: s is not None and s.evaluations >= 5,
        )
        assert state is not None
        assert [d.reason for d in state.decisions] == [
            ReasonCode.WITHIN_TOLERANCE,
            ReasonCode.EVALUATION_ERROR,
            ReasonCode.WITHIN_TOLERANCE,
        ]
        description = await handle.describe()
        assert description.status is not None and description.status.name == "RUNNING"
