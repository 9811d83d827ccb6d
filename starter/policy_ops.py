"""What the CLI does with policy workflows: signal them (pause / resume / toggle ...) and query them.
Starting, updating and stopping them is the pool workflow's job (workflows/pool_policies.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from poolctl.domain.errors import NotFoundError
from poolctl.domain.names import policy_workflow_id
from poolctl.domain.policy_state import PolicyLoopProgress, PolicyStateView
from poolctl.starter.heartbeats import pending_heartbeat
from poolctl.starter.open_queries import query_open
from poolctl.store import queries
from poolctl.store.db import session_scope
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


def why_not_running(database_url: str, team: str, pool: str, policy: str) -> NotFoundError:
    """Why a policy has no running workflow, as the store knows it: the pool does not exist, the pool has no
    such policy, or (the store lists both) the policy's workflow is not running."""
    with session_scope(database_url) as s:
        row = queries.find_pool(s, team, pool)
        if row is None:
            return NotFoundError(f"pool {pool!r} not found in team {team!r}")
        names = sorted(p.name for p in row.policies)
    if policy not in names:
        return NotFoundError(
            f"pool {team}/{pool} has no policy {policy!r} (its policies: {', '.join(names) or 'none'})"
        )
    return _not_running(team, pool, policy)


async def query_policy(client: Client, team: str, pool: str, policy: str) -> PolicyStateView:
    """The policy workflow's `state`, with the running evaluation loop's last heartbeat (newer counters,
    last metric and decision, next evaluation time) laid over it."""
    view: PolicyStateView | None = await query_open(
        policy_handle(client, team, pool, policy), PolicyWorkflow.view
    )
    if view is None:
        raise _not_running(team, pool, policy)
    raw = await pending_heartbeat(client, policy_workflow_id(team, pool, policy), "policy_loop")
    if raw is None:
        return view
    try:
        return view.with_progress(PolicyLoopProgress.model_validate(raw))
    except ValidationError:
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


def _took_effect(signal: str, before: PolicyStateView) -> Callable[[PolicyStateView], bool]:
    """Does a state answer show `signal` applied (to the state `before` it was sent)?"""
    return {
        "pause": lambda v: v.paused,
        "resume": lambda v: not (v.paused or v.scale_in_paused or v.scale_out_paused),
        "toggle": lambda v: v.paused != before.paused,
        "pause_scale_in": lambda v: v.scale_in_paused or v.paused,
        "pause_scale_out": lambda v: v.scale_out_paused or v.paused,
    }[signal]


async def signal_and_read(
    client: Client, team: str, pool: str, policy: str, signal: str, *, poll_s: float = 0.2
) -> PolicyStateView:
    """Send `signal` and return the policy's state once it shows the signal applied (queried again every
    `poll_s` seconds; the caller bounds the wait, e.g. with `starter.waiting.for_worker`). Raises
    NotFoundError when the policy has no running workflow."""
    before = await query_policy(client, team, pool, policy)
    await signal_policy(client, team, pool, policy, signal)
    applied = _took_effect(signal, before)
    while True:
        view = await query_policy(client, team, pool, policy)
        if applied(view):
            return view
        await asyncio.sleep(poll_s)  # another query: the workflow answers, it does not notify


def pause_state(view: PolicyStateView) -> str:
    """The policy's state in words: `active`, `dry_run`, `paused (scale-in and scale-out)`,
    `active (scale-in paused)`, ... (a paused policy asks the pool for nothing in either direction)."""
    if view.paused or view.status == "paused":
        return "paused (scale-in and scale-out)"
    held = [d for d, on in (("scale-in", view.scale_in_paused), ("scale-out", view.scale_out_paused)) if on]
    return f"{view.status} ({' and '.join(held)} paused)" if held else view.status
