"""What the PoolWorkflow does for its members besides sizing: one HealthCheckWorkflow per server (started
and stopped with the server) and the balancers' membership (synced when the healthy set changes)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from poolctl import search_attributes as sa
    from poolctl.activities.balancer_activities import BalancerActivities, SyncBalancersInput
    from poolctl.domain.balancing import Member, members_for
    from poolctl.domain.health import HealthState
    from poolctl.domain.health_messages import HealthInput, HealthRuntime
    from poolctl.domain.names import health_workflow_id, pool_key
    from poolctl.domain.pool_spec import PoolSpec
    from poolctl.domain.pool_state import PoolRuntime, ServerRecord
    from poolctl.workflows.health_check import HealthCheckWorkflow
    from poolctl.workflows.retry_policies import SYNC_RETRY


def health_runtime(rt: PoolRuntime) -> HealthRuntime:
    return HealthRuntime(
        lease_s=rt.health_lease_s,
        heartbeat_timeout_s=rt.health_heartbeat_timeout_s,
        config_error_backoff_s=rt.health_config_error_backoff_s,
        history_budget=rt.history_budget,
    )


async def start_health_watches(
    team: str, spec: PoolSpec, servers: list[ServerRecord], rt: PoolRuntime
) -> None:
    """Start a HealthCheckWorkflow for every server that has none (abandoned children: they outlive the
    pool's runs across continue-as-new and end when the pool cancels them)."""
    check = spec.effective_health_check
    if check is None:
        return
    for server in servers:
        if server.watched:
            continue
        wf_id = health_workflow_id(team, spec.name, server.server_id)
        try:
            await workflow.start_child_workflow(
                HealthCheckWorkflow.run,
                HealthInput(
                    team=team,
                    pool=spec.name,
                    server_id=server.server_id,
                    host=server.host,
                    port=server.port,
                    server_started_at=server.created_at,
                    spec=check,
                    runtime=health_runtime(rt),
                ),
                id=wf_id,
                parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=f"{check.type} check of {server.server_id}",
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.POOL_ID, pool_key(team, spec.name)),
                        SearchAttributePair(sa.TEAM_ID, team),
                        SearchAttributePair(sa.SERVER_ID, server.server_id),
                        SearchAttributePair(sa.HEALTH_STATE, "initial"),
                    ]
                ),
            )
        except WorkflowAlreadyStartedError:
            pass  # already watched (e.g. started by an earlier run of this pool)
        server.watched = True


async def cancel_workflows(workflow_ids: list[str]) -> None:
    """Cancel workflows the pool started (health checks, policies); one already ended is fine."""
    for wf_id in workflow_ids:
        handle = workflow.get_external_workflow_handle(wf_id)
        try:
            await handle.cancel()
        except Exception as e:  # noqa: BLE001 - already ended or never started
            workflow.logger.info("%s not cancelled: %s", wf_id, e)


async def stop_health_watches(team: str, pool: str, server_ids: list[str]) -> None:
    """Cancel the HealthCheckWorkflows of removed servers (a missing one is fine)."""
    await cancel_workflows([health_workflow_id(team, pool, sid) for sid in server_ids])


async def update_health_specs(team: str, spec: PoolSpec, servers: list[ServerRecord]) -> None:
    """Tell running checks about a changed check spec; a removed check stops them (servers then count as
    healthy, as in a pool that never had a check)."""
    if spec.effective_health_check is None:
        await stop_health_watches(team, spec.name, [s.server_id for s in servers if s.watched])
        for server in servers:
            server.watched = False
            server.health = HealthState.HEALTHY
        return
    for server in servers:
        if server.watched:
            handle = workflow.get_external_workflow_handle(
                health_workflow_id(team, spec.name, server.server_id)
            )
            try:
                await handle.signal(HealthCheckWorkflow.update_spec, spec.effective_health_check)
            except Exception as e:  # noqa: BLE001
                workflow.logger.info("health workflow of %s not updated: %s", server.server_id, e)


def pool_members(spec: PoolSpec, servers: list[ServerRecord]) -> list[Member]:
    """The balancer members of the pool's servers: a server's own weight (static pools) wins over the
    pool's `server_weight`."""
    return members_for(
        servers,
        weights={s.server_id: s.weight for s in servers if s.weight is not None},
        default_weight=spec.server_weight,
        require_healthy=spec.effective_health_check is not None,
    )


def members_fingerprint(spec: PoolSpec, servers: list[ServerRecord]) -> str:
    members = pool_members(spec, servers)
    text = "|".join(f"{m.server_id}@{m.address}:{m.weight}:{m.state.value}" for m in members)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def sync_balancers(
    team: str, spec: PoolSpec, servers: list[ServerRecord], last: str | None
) -> str | None:
    """Push the pool's membership (healthy servers in rotation, draining ones draining) to its balancers
    when it changed since the last sync. Returns the new fingerprint."""
    if not spec.load_balancers:
        return last
    fp = members_fingerprint(spec, servers)
    if fp == last:
        return last
    members = pool_members(spec, servers)
    try:
        await workflow.execute_activity_method(
            BalancerActivities.sync_pool_balancers,
            SyncBalancersInput(team=team, pool=spec.name, members=members),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=SYNC_RETRY,
            summary=f"balancers: {sum(1 for m in members if m.state.value == 'in_rotation')} in rotation",
        )
    except ActivityError as e:
        # an unreachable balancer must not stall the pool: the next reconcile tries again
        workflow.logger.warning("balancer sync of %s/%s failed: %s", team, spec.name, e.cause or e)
        return None
    return fp
