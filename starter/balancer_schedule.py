"""The Temporal Schedule that rolls balancer statistics up into the store (created idempotently by
`poolctl dev up` and `poolctl apply`)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.client import ScheduleOverlapPolicy as Overlap

from poolctl.activities.balancer_activities import RollupInput
from poolctl.settings import Settings
from poolctl.workflows.balancer_stats import BalancerStatsWorkflow


def schedule_id(settings: Settings) -> str:
    return f"balancer-stats/{settings.task_queue}"


def _schedule(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            BalancerStatsWorkflow.run,
            RollupInput(),
            id=f"balancer-stats-rollup/{settings.task_queue}",
            task_queue=settings.task_queue,
            static_summary="balancer statistics roll-up",
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.balancer_stats_interval_s))]
        ),
        policy=SchedulePolicy(overlap=Overlap.SKIP),
    )


async def ensure_stats_schedule(client: Client, settings: Settings) -> ScheduleHandle:
    """Create the schedule, or bring an existing one to the configured interval. Idempotent."""
    sid = schedule_id(settings)
    try:
        return await client.create_schedule(sid, _schedule(settings))
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(sid)
        every = timedelta(seconds=settings.balancer_stats_interval_s)
        desc = await handle.describe()
        intervals = desc.schedule.spec.intervals
        if [i.every for i in intervals] != [every] or desc.schedule.policy.overlap != Overlap.SKIP:

            def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=_schedule(settings))

            await handle.update(update)
        return handle
