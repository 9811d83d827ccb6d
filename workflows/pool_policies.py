"""What the PoolWorkflow does for its scaling policies: start, update and stop one PolicyWorkflow per
policy in its spec, and tell them the pool's membership (their `current` and ready counts come from it).

Policies are child workflows with ParentClosePolicy.ABANDON: a pool continues-as-new regularly, and
TERMINATE (or REQUEST_CANCEL) would end every policy at each of those run boundaries. The pool stops a
policy explicitly instead (cancel through an external handle) when the policy leaves the spec or the
pool is deleted. Starting is idempotent by id (`policy/{team}/{pool}/{policy}`): a policy already
running (left by an earlier run or an interrupted apply) gets the spec by signal instead."""

from __future__ import annotations

import hashlib

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from poolctl import search_attributes as sa
    from poolctl.domain.evaluation import PolicyState
    from poolctl.domain.names import policy_workflow_id, pool_key
    from poolctl.domain.policy_spec import PolicySpec
    from poolctl.domain.policy_state import PolicyInput, policy_status
    from poolctl.domain.pool_spec import PoolSpec
    from poolctl.domain.pool_state import PoolMembers, PoolRuntime, ServerRecord
    from poolctl.workflows.policy import PolicyWorkflow
    from poolctl.workflows.pool_members import cancel_workflows


def members_view(servers: list[ServerRecord]) -> PoolMembers:
    return PoolMembers(servers=[s.model_copy() for s in servers])


def members_view_fingerprint(servers: list[ServerRecord]) -> str:
    """Changes when a member joins or leaves, or its health or lifecycle state changes."""
    text = "|".join(f"{s.server_id}:{s.health.value}:{s.state.value}" for s in servers)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def _start(
    team: str, pool: str, spec: PolicySpec, servers: list[ServerRecord], runtime: PoolRuntime
) -> bool:
    """Start the policy's workflow; False when one already runs under its id."""
    try:
        await workflow.start_child_workflow(
            PolicyWorkflow.run,
            PolicyInput(
                team=team,
                pool=pool,
                spec=spec,
                members=list(servers),
                history_budget=runtime.history_budget,
                lease_s=runtime.policy_lease_s,
            ),
            id=policy_workflow_id(team, pool, spec.name),
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary=f"policy {spec.name} ({spec.type}) on pool {team}/{pool}",
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.POOL_ID, pool_key(team, pool)),
                    SearchAttributePair(sa.TEAM_ID, team),
                    SearchAttributePair(sa.POLICY_ID, f"{team}/{pool}/{spec.name}"),
                    SearchAttributePair(sa.POLICY_STATE, policy_status(spec, PolicyState())),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        return False
    return True


async def _send_spec(
    team: str, pool: str, spec: PolicySpec, servers: list[ServerRecord], runtime: PoolRuntime
) -> None:
    """Give a running policy its spec (and the membership); start it again if it is gone."""
    handle = workflow.get_external_workflow_handle(policy_workflow_id(team, pool, spec.name))
    try:
        await handle.signal(PolicyWorkflow.update_spec, spec)
        await handle.signal(PolicyWorkflow.pool_members, members_view(servers))
    except Exception as e:  # noqa: BLE001 - it ended (terminated by hand?): start a new one
        workflow.logger.info("policy %s not signalled (%s): starting it", spec.name, e)
        await _start(team, pool, spec, servers, runtime)


async def sync_policies(
    team: str,
    spec: PoolSpec,
    started: dict[str, PolicySpec],
    servers: list[ServerRecord],
    runtime: PoolRuntime,
) -> dict[str, PolicySpec]:
    """Make the pool's policy workflows match `spec.policies`: stop removed ones, start new ones, send a
    changed spec to the others. `started` maps the policies this pool runs to the spec last sent; the
    returned map replaces it."""
    wanted = {p.name: p for p in spec.policies}
    await stop_policies(team, spec.name, sorted(set(started) - set(wanted)))
    out: dict[str, PolicySpec] = {}
    for name, pspec in wanted.items():
        if name not in started:
            if not await _start(team, spec.name, pspec, servers, runtime):
                await _send_spec(team, spec.name, pspec, servers, runtime)
        elif started[name] != pspec:
            await _send_spec(team, spec.name, pspec, servers, runtime)
        out[name] = pspec
    return out


async def stop_policies(team: str, pool: str, names: list[str]) -> None:
    """Cancel the named policies' workflows (one already ended is fine)."""
    await cancel_workflows([policy_workflow_id(team, pool, name) for name in names])


async def tell_members(team: str, pool: str, names: list[str], servers: list[ServerRecord]) -> None:
    """Signal the pool's membership view to each of its policies (best effort: the next change re-sends)."""
    view = members_view(servers)
    for name in names:
        handle = workflow.get_external_workflow_handle(policy_workflow_id(team, pool, name))
        try:
            await handle.signal(PolicyWorkflow.pool_members, view)
        except Exception as e:  # noqa: BLE001 - a policy that ended is restarted on the next spec change
            workflow.logger.info("policy %s not told the membership: %s", name, e)
