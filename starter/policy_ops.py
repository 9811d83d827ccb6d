"""What the CLI does with policy workflows: start them on apply, update their specs, stop removed ones,
signal (pause / resume / toggle) and query them."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from poolctl import search_attributes as sa
from poolctl.domain.errors import NotFoundError
from poolctl.domain.evaluation import PolicyState
from poolctl.domain.names import policy_workflow_id, pool_key, pool_workflow_id
from poolctl.domain.policy_spec import PolicySpec
from poolctl.domain.policy_state import PolicyInput, PolicyStateView, policy_status
from poolctl.domain.pool_spec import PoolSpec
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.workflows.policy import PolicyWorkflow

SIGNALS = ("pause", "resume", "toggle", "pause_scale_in", "pause_scale_out")


@dataclass
class PolicySync:
    policy: str
    action: str  # started | updated | running | stopped


def policy_handle(client: Client, team: str, pool: str, policy: str) -> WorkflowHandle:
    return client.get_workflow_handle(policy_workflow_id(team, pool, policy))


async def _is_running(handle: WorkflowHandle) -> bool:
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return desc.status == WorkflowExecutionStatus.RUNNING


def stored_policy_names(settings: Settings, team: str, pool: str) -> set[str]:
    """The policies the store lists for a pool (call before writing a new spec to know what was there)."""
    with session_scope(settings.resolved_database_url) as s:
        row = inventory.find_pool(s, team, pool)
        return set() if row is None else {p.name for p in row.policies}


async def running_policy_names(client: Client, team: str, pool: str) -> set[str]:
    """Policy workflows of the pool that visibility lists as running (eventually consistent)."""
    query = (
        f'PoolId = "{pool_key(team, pool)}" AND WorkflowType = "PolicyWorkflow" '
        f'AND ExecutionStatus = "Running"'
    )
    prefix = policy_workflow_id(team, pool, "")
    names = set()
    try:
        async for wf in client.list_workflows(query):
            if wf.id.startswith(prefix):
                names.add(wf.id[len(prefix) :])
    except RPCError:
        pass  # a server without advanced visibility: the store's list has to do
    return names


async def start_policy(
    client: Client, settings: Settings, team: str, pool: str, spec: PolicySpec
) -> WorkflowHandle:
    return await client.start_workflow(
        PolicyWorkflow.run,
        PolicyInput(team=team, pool=pool, spec=spec, history_budget=settings.history_budget),
        id=policy_workflow_id(team, pool, spec.name),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.POOL_ID, pool_key(team, pool)),
                SearchAttributePair(sa.TEAM_ID, team),
                SearchAttributePair(sa.POLICY_ID, f"{team}/{pool}/{spec.name}"),
                SearchAttributePair(sa.POLICY_STATE, policy_status(spec, PolicyState())),
            ]
        ),
        static_summary=f"policy {spec.name} ({spec.type}) on pool {team}/{pool}",
    )


async def sync_policies(
    client: Client, settings: Settings, team: str, spec: PoolSpec, previous: set[str] | None = None
) -> list[PolicySync]:
    """Make the running policy workflows match `spec.policies`: start missing ones (idempotently), send
    `apply_spec` where the spec changed, stop those no longer in the spec and tell the pool to forget them.

    `previous` names policies known before this apply (from the store); running ones found through
    visibility are added to it.
    """
    out: list[PolicySync] = []
    wanted = {p.name: p for p in spec.policies}
    for name, pspec in wanted.items():
        handle = policy_handle(client, team, spec.name, name)
        was_running = await _is_running(handle)
        handle = await start_policy(client, settings, team, spec.name, pspec)
        action = "started"
        if was_running:
            action = "running"
            view: PolicyStateView = await handle.query(PolicyWorkflow.state)
            if view.spec != pspec.model_dump(mode="json", exclude_defaults=True):
                await handle.execute_update(PolicyWorkflow.apply_spec, pspec)
                action = "updated"
        out.append(PolicySync(name, action))
    known = set(previous or ()) | await running_policy_names(client, team, spec.name)
    for name in sorted(known - set(wanted)):
        if await stop_policy(client, team, spec.name, name, reason="policy removed from the spec"):
            out.append(PolicySync(name, "stopped"))
    return out


async def stop_policy(
    client: Client, team: str, pool: str, policy: str, *, reason: str, forget: bool = True
) -> bool:
    """Terminate a policy's workflow and (if `forget`) tell the pool its recommendation no longer counts."""
    stopped = False
    handle = policy_handle(client, team, pool, policy)
    try:
        await handle.terminate(reason=reason)
        stopped = True
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise
    if forget:
        try:
            await client.get_workflow_handle(pool_workflow_id(team, pool)).signal("forget_policy", policy)
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
    return stopped


async def stop_all_policies(client: Client, team: str, pool: str, known: set[str]) -> int:
    """Stop every policy workflow of a pool (used when the pool is deleted)."""
    names = set(known) | await running_policy_names(client, team, pool)
    n = 0
    for name in sorted(names):
        if await stop_policy(client, team, pool, name, reason="pool deleted", forget=False):
            n += 1
    return n


async def query_policy(client: Client, team: str, pool: str, policy: str) -> PolicyStateView:
    try:
        return await policy_handle(client, team, pool, policy).query(PolicyWorkflow.state)
    except RPCError as e:
        if e.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            raise NotFoundError(
                f"policy {policy!r} of pool {team}/{pool} has no running workflow (is it in the applied spec?)"
            ) from e
        raise


async def signal_policy(client: Client, team: str, pool: str, policy: str, signal: str) -> None:
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; one of {', '.join(SIGNALS)}")
    try:
        await policy_handle(client, team, pool, policy).signal(signal)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundError(
                f"policy {policy!r} of pool {team}/{pool} has no running workflow (is it in the applied spec?)"
            ) from e
        raise
