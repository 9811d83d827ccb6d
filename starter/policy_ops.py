"""What the CLI does with policy workflows: signal them (pause / resume / toggle ...) and query them.
Starting, updating and stopping them is the pool workflow's job (workflows/pool_policies.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from poolctl.domain.errors import NotFoundError
from poolctl.domain.names import policy_workflow_id
from poolctl.domain.policy_state import PolicyStateView
from poolctl.starter.open_queries import query_open
from poolctl.workflows.policy import PolicyWorkflow

SIGNALS: dict[str, Callable[[Any], None]] = {
    "pause": PolicyWorkflow.pause,
    "resume": PolicyWorkflow.resume,
    "toggle": PolicyWorkflow.toggle,
    "pause_scale_in": PolicyWorkflow.pause_scale_in,
    "pause_scale_out": PolicyWorkflow.pause_scale_out,
}


def policy_handle(client: Client, team: str, pool: str, policy: str) -> WorkflowHandle:
    return client.get_workflow_handle(policy_workflow_id(team, pool, policy))


def _not_running(team: str, pool: str, policy: str) -> NotFoundError:
    return NotFoundError(
        f"policy {policy!r} of pool {team}/{pool} has no running workflow (is it in the applied spec?)"
    )


async def query_policy(client: Client, team: str, pool: str, policy: str) -> PolicyStateView:
    view: PolicyStateView | None = await query_open(
        policy_handle(client, team, pool, policy), PolicyWorkflow.state
    )
    if view is None:
        raise _not_running(team, pool, policy)
    return view


async def signal_policy(client: Client, team: str, pool: str, policy: str, signal: str) -> None:
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; one of {', '.join(SIGNALS)}")
    try:
        await policy_handle(client, team, pool, policy).signal(SIGNALS[signal])
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise _not_running(team, pool, policy) from e
        raise
