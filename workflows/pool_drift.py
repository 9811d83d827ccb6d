"""Drift reconcile for the PoolWorkflow: every `drift_interval_s` it compares its members with the
provider's list by tag (the `detect_pool_drift` activity), forgets members the provider no longer runs
(the normal reconcile then replaces them — this is how a pool *without* a health check notices a server
killed by hand) and adopts or terminates orphans by the spec's `orphan_policy` (domain.drift)."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from poolctl.activities.drift import AdoptInput, DriftActivities, DriftInput, PoolDrift
    from poolctl.activities.messages import TerminateInput
    from poolctl.activities.provisioning import ProvisioningActivities
    from poolctl.domain.drift import DriftPlan, drift_due, plan_drift
    from poolctl.domain.health import HealthState
    from poolctl.domain.pool_spec import PoolSpec
    from poolctl.domain.pool_state import EventNote, PoolRuntime, PoolState
    from poolctl.workflows.pool_members import stop_health_watches
    from poolctl.workflows.retry_policies import BOOKKEEPING_RETRY, SYNC_RETRY, provider_retry
    from poolctl.workflows.scale_pool import failure_text


def drift_wake_s(state: PoolState, runtime: PoolRuntime, now: datetime) -> float | None:
    """Seconds until the next drift check, or None when checks are off."""
    if runtime.drift_interval_s <= 0 or state.drift_checked_at is None:
        return None
    return max((state.drift_checked_at - now).total_seconds() + runtime.drift_interval_s, 0.0)


async def reconcile_drift(
    team: str, spec: PoolSpec, state: PoolState, runtime: PoolRuntime
) -> list[EventNote]:
    """Check for drift if due, and act on it: `state.servers` loses gone members and gains adopted
    orphans. Returns what was done, one note per server (with the pool's size around that server's change).
    A failed check is logged and tried next time."""
    now = workflow.now()
    if state.drift_checked_at is None:  # the first check comes one interval after the pool starts
        state.drift_checked_at = now
    if not drift_due(state.drift_checked_at.timestamp(), now.timestamp(), runtime.drift_interval_s):
        return []
    state.drift_checked_at = now
    try:
        drift: PoolDrift = await workflow.execute_activity_method(
            DriftActivities.detect_pool_drift,
            DriftInput(
                team=team,
                pool=spec.name,
                provider=spec.provider,
                members=[s.server_id for s in state.servers],
            ),
            start_to_close_timeout=timedelta(seconds=runtime.activity_timeout_s),
            retry_policy=SYNC_RETRY,
            summary="drift: compare members with the provider's list",
        )
    except ActivityError as e:
        workflow.logger.warning("drift check of %s/%s failed: %s", team, spec.name, failure_text(e))
        return []
    if not drift.drifted:
        return []
    plan = plan_drift({o.server_id: o.running for o in drift.orphan_servers}, drift.gone, spec.orphan_policy)
    return await _act(team, spec, state, runtime, drift, plan)


async def _act(
    team: str, spec: PoolSpec, state: PoolState, runtime: PoolRuntime, drift: PoolDrift, plan: DriftPlan
) -> list[EventNote]:
    notes: list[EventNote] = []
    for sid in plan.forget:
        # the provider no longer runs it: terminate (idempotent: the provider's record and the store agree
        # it is gone) and forget it; the reconcile that follows launches its replacement
        ok = await _terminate(team, spec, runtime, sid)
        n = len(state.servers)
        state.servers = [s for s in state.servers if s.server_id != sid]
        await stop_health_watches(team, spec.name, [sid])
        why = f"drift: member {sid} no longer runs at the provider; forgotten"
        notes.append(EventNote("drift", why, "succeeded" if ok else "partial", n, len(state.servers)))
    for sid in plan.terminate:  # not a member: the pool's size does not change
        ok = await _terminate(team, spec, runtime, sid)
        n = len(state.servers)
        why = f"drift: orphan {sid} terminated (orphan_policy terminate)"
        notes.append(EventNote("drift", why, "succeeded" if ok else "failed", n, n))
    orphans = {o.server_id: o for o in drift.orphan_servers}
    for sid in plan.adopt:
        record = await workflow.execute_activity_method(
            DriftActivities.adopt_server,
            AdoptInput(
                team=team,
                pool=spec.name,
                provider=spec.provider,
                server=orphans[sid],
                weight=spec.server_weight,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"drift: adopt orphan {sid}",
        )
        if spec.effective_health_check is None:
            record.health = HealthState.HEALTHY  # as for a new server of a pool without a check
        n = len(state.servers)
        state.servers.append(record)
        notes.append(
            EventNote("drift", f"drift: orphan {sid} adopted (orphan_policy adopt)", "succeeded", n, n + 1)
        )
    return notes


async def _terminate(team: str, spec: PoolSpec, runtime: PoolRuntime, server_id: str) -> bool:
    try:
        await workflow.execute_activity_method(
            ProvisioningActivities.terminate_server,
            TerminateInput(team=team, pool=spec.name, provider=spec.provider, server_id=server_id),
            start_to_close_timeout=timedelta(seconds=runtime.activity_timeout_s),
            retry_policy=provider_retry(runtime),
            summary=f"drift: terminate {server_id}",
        )
    except ActivityError as e:
        workflow.logger.warning("drift: terminating %s failed: %s", server_id, failure_text(e))
        return False
    return True
