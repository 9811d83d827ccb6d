"""What the CLI does against Temporal: apply specs (update-with-start per pool), scale, delete, read status.

The CLI never writes the store and never calls a provider: every change is an update to the pool's
workflow, which owns the pool and mirrors it into the store. An interrupted command is re-run and
converges, because the workflow finishes whatever it accepted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from poolctl import search_attributes as sa
from poolctl.domain.errors import NotFoundError, PoolctlError, SpecError
from poolctl.domain.names import pool_key, pool_workflow_id
from poolctl.domain.pool_spec import PoolSpec, SpecDocument
from poolctl.domain.pool_state import (
    ApplyRequest,
    ApplyResult,
    PoolInput,
    PoolRuntime,
    PoolStatusView,
    ScaleAccepted,
    ScaleRequest,
)
from poolctl.domain.static_pool import ServerChangeRequest, ServerChangeResult
from poolctl.settings import Settings
from poolctl.starter.open_queries import query_open
from poolctl.store import queries
from poolctl.store.db import session_scope
from poolctl.temporal_client import clear_frames
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
        policy_lease_s=settings.policy_lease_s,
        error_retry_initial_s=settings.error_retry_initial_s,
        error_retry_max_s=settings.error_retry_max_s,
        drift_interval_s=settings.drift_interval_s,
    )


@dataclass
class ApplyOutcome:
    team: str
    pool: str
    action: str  # created | updated | unchanged
    changes: list[str] = field(default_factory=list)  # "server_weight 1 → 2"
    kept: list[str] = field(default_factory=list)  # "desired 6 kept (set by policy cpu-target)"
    desired: int = 0

    @property
    def workflow(self) -> str:
        return "started" if self.action == "created" else "running"


def start_operation(settings: Settings, team: str, spec: PoolSpec) -> WithStartWorkflowOperation:
    """Start the pool's workflow with `spec` unless one runs already (USE_EXISTING)."""
    return WithStartWorkflowOperation(
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


async def update_with_start(client: Client, update: Any, op: WithStartWorkflowOperation, *args: Any) -> Any:
    """`client.execute_update_with_start_workflow(update, *args, start_workflow_operation=op)`, and when it
    fails (a refusal, Temporal gone, the command's deadline cancelling it) the start's error that the SDK
    also parks in `op`'s handle future is taken out of it, frames cleared: left there, asyncio prints
    "Future exception was never retrieved" with a traceback when the command ends, and its frames keep the
    client alive past the loop (`poolctl.temporal_client.command_runtime`)."""
    try:
        return await client.execute_update_with_start_workflow(update, *args, start_workflow_operation=op)
    except BaseException:
        parked = op._workflow_handle  # the SDK's own future behind the public `op.workflow_handle()`
        if parked.done() and not parked.cancelled() and (error := parked.exception()) is not None:
            clear_frames(error)
        raise


async def refusal(client: Client, team: str, spec: PoolSpec) -> str | None:
    """What the pool's running workflow would refuse in `spec` ("field: message"), None if no workflow runs.

    A closed workflow (a deleted pool) still answers queries until Temporal's retention removes it; its
    answer is not asked for (`QueryRejectCondition.NOT_OPEN`): update-with-start starts a new run."""
    why: str | None = await query_open(
        pool_handle(client, team, spec.name), PoolWorkflow.apply_refusal, ApplyRequest(team=team, spec=spec)
    )
    return why


async def apply_pool(client: Client, settings: Settings, team: str, spec: PoolSpec) -> ApplyOutcome:
    """Send one pool's whole spec to its workflow (started with it if none runs): create-or-update in one
    call. The workflow writes the store and runs the policies; a refusal raises RequestRefused."""
    try:
        result: ApplyResult = await update_with_start(
            client,
            PoolWorkflow.apply,
            start_operation(settings, team, spec),
            ApplyRequest(team=team, spec=spec),
        )
    except WorkflowUpdateFailedError as e:
        raise RequestRefused(_failure_message(e)) from e
    return ApplyOutcome(team, spec.name, result.action, result.changes, result.kept, result.desired)


async def apply_documents(client: Client, settings: Settings, docs: list[SpecDocument]) -> list[ApplyOutcome]:
    """Apply every pool of `docs`. All-or-nothing for what can be checked up front: every running pool is
    asked first whether it would refuse its spec (e.g. a provider switch with live servers), and nothing
    is sent if one would; then each pool gets its spec by update-with-start."""
    problems = []
    for doc in docs:
        for i, spec in enumerate(doc.pools):
            why = await refusal(client, doc.team, spec)
            if why is not None:
                where, _, msg = why.partition(": ")
                problems.append((f"pools[{i}] ({spec.name}).{where}", msg))
    if problems:
        raise SpecError("", problems)
    return [await apply_pool(client, settings, doc.team, spec) for doc in docs for spec in doc.pools]


def _failure_message(e: WorkflowUpdateFailedError) -> str:
    cause = e.cause
    return getattr(cause, "message", None) or str(cause or e)


@contextmanager
def _refused_or_missing(missing: str) -> Iterator[None]:
    """An update's refusal becomes RequestRefused; a workflow that does not exist, NotFoundError."""
    try:
        yield
    except WorkflowUpdateFailedError as e:
        raise RequestRefused(_failure_message(e)) from e
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundError(missing) from e
        raise


async def is_running(client: Client, team: str, pool: str) -> bool:
    try:
        desc = await pool_handle(client, team, pool).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            clear_frames(e)  # handled: its frames must not keep the client alive (`starter.open_queries`)
            return False
        raise
    return desc.status == WorkflowExecutionStatus.RUNNING


def pool_handle(client: Client, team: str, pool: str) -> WorkflowHandle:
    return client.get_workflow_handle(pool_workflow_id(team, pool))


async def query_status(client: Client, team: str, pool: str) -> PoolStatusView | None:
    view: PoolStatusView | None = await query_open(pool_handle(client, team, pool), PoolWorkflow.status)
    return view


async def request_scale(client: Client, team: str, pool: str, desired: int, reason: str) -> ScaleAccepted:
    with _refused_or_missing(
        f"pool {pool!r} not found in team {team!r} (no running workflow: apply its spec first)"
    ):
        return await pool_handle(client, team, pool).execute_update(
            PoolWorkflow.scale, ScaleRequest(desired=desired, reason=reason, request_id=str(uuid.uuid4()))
        )


async def request_server_change(
    client: Client, team: str, pool: str, address: str, weight: int | None, *, adding: bool
) -> ServerChangeResult:
    """`poolctl server add/remove`: the static pool's `change_server` update (refused with RequestRefused
    when the pool is not static, the address is bad or, for remove, not a member)."""
    with _refused_or_missing(
        f"pool {pool!r} not found in team {team!r} (no running workflow: apply its spec first)"
    ):
        return await pool_handle(client, team, pool).execute_update(
            PoolWorkflow.change_server, ServerChangeRequest(address=address, weight=weight, remove=not adding)
        )


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


def stored_spec(settings: Settings, team: str, pool: str) -> PoolSpec | None:
    """The spec the store lists for a pool (the read model; None when the store does not know it)."""
    with session_scope(settings.resolved_database_url) as s:
        row = queries.find_pool(s, team, pool)
        return None if row is None or not row.spec else PoolSpec.model_validate(row.spec)


async def request_delete(client: Client, settings: Settings, team: str, pool: str) -> int:
    """Ask the pool's workflow to delete the pool (one update; idempotent). When the store lists the pool
    but no workflow runs, update-with-start starts one from the stored spec: it adopts the stored servers
    and deletes them. Returns how many servers the workflow will terminate."""
    spec = stored_spec(settings, team, pool)
    with _refused_or_missing(f"pool {pool!r} not found in team {team!r}"):
        if spec is not None:
            deleted: int = await update_with_start(
                client, PoolWorkflow.delete, start_operation(settings, team, spec)
            )
            return deleted
        return await pool_handle(client, team, pool).execute_update(PoolWorkflow.delete)


async def delete_pool(client: Client, settings: Settings, team: str, pool: str, timeout: float = 300) -> int:
    """Delete a pool through its workflow and wait until the workflow has finished the saga (policies
    stopped, servers terminated, pool removed from the store)."""
    removed = await request_delete(client, settings, team, pool)
    await asyncio.wait_for(pool_handle(client, team, pool).result(), timeout)
    return removed
