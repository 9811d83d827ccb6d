"""ScalePoolWorkflow: one scaling action — provision or terminate N servers with retries, and record the event."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from poolctl.activities.balancer_activities import BalancerActivities, DrainInput
    from poolctl.activities.inventory import InventoryActivities
    from poolctl.activities.messages import EventFinish, EventStart, ProvisionInput, TerminateInput
    from poolctl.activities.provisioning import ProvisioningActivities
    from poolctl.domain.pool_state import ScaleAction, ScaleInput, ScaleResult, ServerRecord
    from poolctl.workflows.retry_policies import BOOKKEEPING_RETRY, DRAIN_RETRY, provider_retry


def failure_text(err: BaseException) -> str:
    """The root cause of an activity failure, readable."""
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    if isinstance(cause, ApplicationError) and cause.type:
        return f"{cause.type}: {cause.message}"
    return str(cause)


@workflow.defn
class ScalePoolWorkflow:
    @workflow.run
    async def run(self, inp: ScaleInput) -> ScaleResult:
        # the event key carries the pool chain's epoch: a re-created pool workflow restarts `seq` at 1
        event_key = f"{workflow.info().workflow_id}@{inp.epoch}"
        await workflow.execute_activity_method(
            InventoryActivities.record_event_started,
            EventStart(
                team=inp.team,
                pool=inp.pool,
                event_key=event_key,
                direction=inp.direction,
                from_count=inp.from_count,
                to_count=inp.to_count,
                cause=inp.cause,
                policy_name=inp.policy_name,
                decision=inp.decision,
                started_at=workflow.now(),
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"record start of scale {inp.direction} {inp.from_count}->{inp.to_count}",
        )
        if inp.direction is ScaleAction.UP:
            result = await self._scale_up(inp)
        elif inp.direction is ScaleAction.DOWN:
            result = await self._scale_down(inp)
        else:  # replace: launch the replacements first, then drain and terminate the old servers
            result = await self._scale_up(inp)
            if result.status == "succeeded":
                removed = await self._scale_down(inp)
                result.removed, result.error, result.status = removed.removed, removed.error, removed.status
        await workflow.execute_activity_method(
            InventoryActivities.record_event_finished,
            EventFinish(
                event_key=event_key,
                status=result.status,
                error=result.error,
                servers={"added": [s.server_id for s in result.added], "removed": result.removed},
                finished_at=workflow.now(),
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"record {result.status}",
        )
        return result

    async def _scale_up(self, inp: ScaleInput) -> ScaleResult:
        wf_id = workflow.info().workflow_id

        async def one(i: int) -> ServerRecord:
            return await workflow.execute_activity_method(
                ProvisioningActivities.provision_server,
                ProvisionInput(
                    team=inp.team,
                    pool=inp.pool,
                    provider=inp.provider,
                    options=inp.provider_options,
                    idempotency_key=f"{wf_id}/{inp.epoch}/{i}",
                    weight=inp.weight,
                ),
                start_to_close_timeout=timedelta(seconds=inp.runtime.activity_timeout_s),
                retry_policy=provider_retry(inp.runtime),
                summary=f"provision server {i + 1}/{inp.count} ({inp.provider})",
            )

        outcomes = await asyncio.gather(*(one(i) for i in range(inp.count)), return_exceptions=True)
        return _collect(outcomes, added=True)

    async def _scale_down(self, inp: ScaleInput) -> ScaleResult:
        async def one(victim: ServerRecord) -> str:
            if inp.drain:
                await _drain_best_effort(inp, victim)
            return await workflow.execute_activity_method(
                ProvisioningActivities.terminate_server,
                TerminateInput(
                    team=inp.team, pool=inp.pool, provider=inp.provider, server_id=victim.server_id
                ),
                start_to_close_timeout=timedelta(seconds=inp.runtime.activity_timeout_s),
                retry_policy=provider_retry(inp.runtime),
                summary=f"terminate {victim.server_id}",
            )

        outcomes = await asyncio.gather(*(one(v) for v in inp.victims), return_exceptions=True)
        return _collect(outcomes, added=False)


async def _drain_best_effort(inp: ScaleInput, victim: ServerRecord) -> None:
    """Drain a victim from the pool's balancers before it is terminated. Best effort: a balancer that
    cannot be reached (or a drain that outlasts its timeout) must not keep the server alive forever."""
    try:
        await workflow.execute_activity_method(
            BalancerActivities.drain_server,
            DrainInput(
                team=inp.team, pool=inp.pool, server_id=victim.server_id, timeout_s=inp.drain_timeout_s
            ),
            start_to_close_timeout=timedelta(seconds=inp.drain_timeout_s + 60),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=DRAIN_RETRY,
            summary=f"drain {victim.server_id} from the balancers",
        )
    except ActivityError as e:
        workflow.logger.warning(
            "drain of %s failed, terminating anyway: %s", victim.server_id, failure_text(e)
        )


def _collect(outcomes: Sequence[object], *, added: bool) -> ScaleResult:
    result = ScaleResult()
    errors: list[str] = []
    for o in outcomes:
        if isinstance(o, BaseException):
            if not isinstance(o, ActivityError | ApplicationError):
                raise o
            errors.append(failure_text(o))
        elif added:
            assert isinstance(o, ServerRecord)
            result.added.append(o)
        else:
            assert isinstance(o, str)
            result.removed.append(o)
    if errors:
        done = len(result.added) + len(result.removed)
        result.status = "partial" if done else "failed"
        unique = sorted(set(errors))
        result.error = f"{len(errors)} of {len(outcomes)} failed: " + "; ".join(unique)
    return result
