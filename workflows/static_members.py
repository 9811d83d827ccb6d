"""What the PoolWorkflow does for a static pool (provider: static) instead of provisioning: register the
addresses it should hold through the static provider driver, change their weights, and, for healing,
record the servers that leave rotation (unhealthy) and come back (healthy). Deregistering goes through a
scale-in (ScalePoolWorkflow drains, then deregisters), which the pool starts itself."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from poolctl.activities.messages import ProvisionInput
    from poolctl.activities.provisioning import ProvisioningActivities
    from poolctl.domain.addresses import format_server_address
    from poolctl.domain.health import HealthState
    from poolctl.domain.pool_spec import PoolSpec
    from poolctl.domain.pool_state import EventNote, PoolRuntime, PoolState, ServerRecord
    from poolctl.domain.static_pool import (
        STATIC_PROVIDER,
        Member,
        MembershipPlan,
        RotationChange,
        plan_membership,
        rotation_changes,
    )
    from poolctl.workflows.retry_policies import provider_retry
    from poolctl.workflows.scale_pool import failure_text


def membership_plan(state: PoolState) -> MembershipPlan:
    members = [
        Member(server_id=s.server_id, host=s.host, port=s.port, weight=s.weight) for s in state.servers
    ]
    return plan_membership(state.static.registered, members)


async def _register(
    team: str, spec: PoolSpec, rt: PoolRuntime, address: str, weight: int, key: str
) -> ServerRecord:
    record = await workflow.execute_activity_method(
        ProvisioningActivities.provision_server,
        ProvisionInput(
            team=team,
            pool=spec.name,
            provider=STATIC_PROVIDER,
            options={"address": address},
            idempotency_key=key,
            weight=weight,
        ),
        start_to_close_timeout=timedelta(seconds=rt.activity_timeout_s),
        retry_policy=provider_retry(rt),
        summary=f"register {address} (weight {weight})",
    )
    record.weight = weight
    return record


async def register_servers(
    team: str, spec: PoolSpec, state: PoolState, rt: PoolRuntime, plan: MembershipPlan
) -> list[EventNote]:
    """Register `plan.to_register` and apply `plan.reweight` (the store's weight too: registering again
    under the same key refreshes it). Updates `state`; returns the events to record, each with the pool's
    size around its own change."""
    notes: list[EventNote] = []
    for address, weight in plan.to_register.items():
        state.static.registrations += 1
        key = f"static/{team}/{spec.name}@{state.epoch}/{state.static.registrations}/{address}"
        n = len(state.servers)
        try:
            record = await _register(team, spec, rt, address, weight, key)
        except ActivityError as e:  # only a bad address gets here (validated before): drop it, say why
            state.static.registered.pop(address, None)
            why = f"server add {address} refused: {failure_text(e)}"
            notes.append(EventNote("register", why, "failed", n, n))
            continue
        if spec.effective_health_check is None:
            record.health = HealthState.HEALTHY  # without a check, a registered server is in rotation
        state.static.keys[address] = key
        state.servers.append(record)
        notes.append(EventNote("register", f"server add {address} (weight {weight})", "succeeded", n, n + 1))
    by_id = {s.server_id: s for s in state.servers}
    for server_id, weight in plan.reweight.items():
        server = by_id[server_id]
        address = format_server_address(server.host, server.port)
        known = state.static.keys.get(address)
        if known is not None:
            await _register(team, spec, rt, address, weight, known)
        before = server.weight
        server.weight = weight
        if before is not None:
            n = len(state.servers)
            why = f"server {address} weight {before} -> {weight}"
            notes.append(EventNote("reweight", why, "succeeded", n, n))
    return notes


def rotation_notes(state: PoolState) -> list[RotationChange]:
    """Healing on a static pool: which servers left rotation (unhealthy) or came back since the last
    look; updates `state.static.out_of_rotation`. The balancers follow health on their own."""
    changes, now = rotation_changes(
        [(s.server_id, s.health) for s in state.servers], state.static.out_of_rotation
    )
    state.static.out_of_rotation = now
    return changes
