"""What the CLI does against Temporal and the store: apply specs, scale, delete, read status."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from poolctl import search_attributes as sa
from poolctl.domain.errors import NotFoundError, PoolctlError, SpecError
from poolctl.domain.names import health_workflow_id, pool_key, pool_workflow_id
from poolctl.domain.pool_spec import PoolSpec, SpecDocument, provider_change_refusal
from poolctl.domain.pool_state import PoolInput, PoolRuntime, PoolStatusView, ScaleAccepted, ScaleRequest
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.workflows.pool import PoolWorkflow


class RequestRefused(PoolctlError):
    """A workflow refused a request (its validator said why)."""


def runtime_from(settings: Settings) -> PoolRuntime:
    return PoolRuntime(
        scale_attempts=settings.scale_attempts,
        reconcile_interval_s=settings.reconcile_interval_s,
        retry_initial_interval_s=settings.retry_initial_interval_s,
        activity_timeout_s=settings.activity_timeout_s,
        history_budget=settings.history_budget,
        health_lease_s=settings.health_lease_s,
        health_heartbeat_timeout_s=settings.health_heartbeat_timeout_s,
    )


@dataclass
class ApplyOutcome:
    team: str
    pool: str
    action: str
    changed_fields: list[str]
    workflow: str  # started | updated | running


async def start_pool_workflow(
    client: Client, settings: Settings, team: str, spec: PoolSpec
) -> WorkflowHandle:
    return await client.start_workflow(
        PoolWorkflow.run,
        PoolInput(team=team, spec=spec, runtime=runtime_from(settings)),
        id=pool_workflow_id(team, spec.name),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.POOL_ID, pool_key(team, spec.name)),
                SearchAttributePair(sa.TEAM_ID, team),
                SearchAttributePair(sa.POOL_STATE, "active"),
            ]
        ),
        static_summary=f"pool {team}/{spec.name}",
    )


async def apply_documents(client: Client, settings: Settings, docs: list[SpecDocument]) -> list[ApplyOutcome]:
    """Write all specs in one transaction, then start/update each pool's workflow idempotently."""
    from poolctl.starter import policy_ops

    previous = {
        (doc.team, p.name): policy_ops.stored_policy_names(settings, doc.team, p.name)
        for doc in docs
        for p in doc.pools
    }
    with session_scope(settings.resolved_database_url) as s:
        refuse_provider_changes(s, docs)
        changes = [c for doc in docs for c in inventory.apply_document(s, doc)]
    specs = {(doc.team, p.name): p for doc in docs for p in doc.pools}
    outcomes = []
    for change in changes:
        spec = specs[(change.team, change.pool)]
        was_running = await is_running(client, change.team, change.pool)
        handle = await start_pool_workflow(client, settings, change.team, spec)
        wf = "running" if was_running else "started"
        if change.action == "updated" and was_running:
            await _update(handle, "apply_spec", spec)
            wf = "updated"
        await policy_ops.sync_policies(
            client, settings, change.team, spec, previous[(change.team, change.pool)]
        )
        outcomes.append(ApplyOutcome(change.team, change.pool, change.action, change.changed_fields, wf))
    return outcomes


async def is_running(client: Client, team: str, pool: str) -> bool:
    try:
        desc = await pool_handle(client, team, pool).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return desc.status == WorkflowExecutionStatus.RUNNING


async def _update(handle: WorkflowHandle, name: str, arg: object, result_type: type | None = None) -> object:
    try:
        return await handle.execute_update(name, arg, result_type=result_type)
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        msg = getattr(cause, "message", None) or str(cause or e)
        raise RequestRefused(msg) from e


def pool_handle(client: Client, team: str, pool: str) -> WorkflowHandle:
    return client.get_workflow_handle(pool_workflow_id(team, pool))


async def query_status(client: Client, team: str, pool: str) -> PoolStatusView | None:
    try:
        return await pool_handle(client, team, pool).query(PoolWorkflow.status)
    except RPCError as e:
        if e.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            return None
        raise


async def request_scale(client: Client, team: str, pool: str, desired: int, reason: str) -> ScaleAccepted:
    handle = pool_handle(client, team, pool)
    try:
        result = await _update(
            handle,
            "scale",
            ScaleRequest(desired=desired, reason=reason, request_id=str(uuid.uuid4())),
            ScaleAccepted,
        )
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundError(f"pool {pool!r} has no running workflow (apply its spec first)") from e
        raise
    assert isinstance(result, ScaleAccepted)
    return result


async def wait_settled(
    client: Client,
    team: str,
    pool: str,
    *,
    timeout: float,
    after_seq: int = -1,
    on_progress: Callable[[PoolStatusView], None] | None = None,
) -> PoolStatusView | None:
    """Poll the pool until it is at its desired size and not scaling (or in error), or the timeout passes."""
    deadline = time.monotonic() + timeout
    view = None
    while time.monotonic() < deadline:
        view = await query_status(client, team, pool)
        if view is not None:
            if on_progress:
                on_progress(view)
            settled = not view.scaling and view.current == view.desired and view.seq > after_seq
            if view.status.value == "error" or (settled and view.status.value in ("active", "paused")):
                return view
            if not view.scaling and view.current == view.desired and after_seq >= 0 and view.seq == after_seq:
                return view
        await asyncio.sleep(0.5)
    return view


async def delete_pool(client: Client, settings: Settings, team: str, pool: str, timeout: float = 300) -> int:
    """Terminate the pool's servers through its workflow, wait for it to end, then remove it from the store."""
    from poolctl.starter import policy_ops

    await policy_ops.stop_all_policies(
        client, team, pool, policy_ops.stored_policy_names(settings, team, pool)
    )
    handle = pool_handle(client, team, pool)
    removed = 0
    try:
        removed = int(await _update(handle, "delete", None, int))  # type: ignore[arg-type]
        await asyncio.wait_for(handle.result(), timeout)
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise
        removed = await _terminate_orphans(client, settings, team, pool)
    with session_scope(settings.resolved_database_url) as s:
        inventory.delete_pool(s, team, pool)
    return removed


def refuse_provider_changes(session: Any, docs: list[SpecDocument]) -> None:
    """A pool with live servers cannot switch provider (its servers could not be terminated through the
    new one): refuse the whole apply before anything is written."""
    problems = []
    for doc in docs:
        for i, spec in enumerate(doc.pools):
            row = inventory.find_pool(session, doc.team, spec.name)
            if row is None or row.provider == spec.provider:
                continue
            live = inventory.list_servers(session, doc.team, spec.name)
            if live:
                problems.append(
                    (
                        f"pools[{i}] ({spec.name}).provider",
                        provider_change_refusal(row.provider, spec.provider, len(live)),
                    )
                )
    if problems:
        raise SpecError("", problems)


async def _terminate_orphans(client: Client, settings: Settings, team: str, pool: str) -> int:
    """No workflow runs for the pool: terminate whatever servers the store still lists, directly, and
    stop their health checks (abandoned children of the pool's workflow)."""
    from poolctl.activities.providers.registry import get_provider

    with session_scope(settings.resolved_database_url) as s:
        rows = [(r.id, r.provider) for r in inventory.list_servers(s, team, pool)]
    for server_id, provider in rows:
        try:
            await client.get_workflow_handle(health_workflow_id(team, pool, server_id)).cancel()
        except RPCError:
            pass  # never started, or already ended
        await get_provider(provider, settings.state_dir).terminate(server_id)
        with session_scope(settings.resolved_database_url) as s:
            inventory.mark_server_terminated(s, server_id)
    return len(rows)
