"""poolctl's Temporal Schedules, created or updated idempotently by `poolctl dev up` and `poolctl apply`:
the balancer statistics roll-up (every `balancer_stats_interval_s`) and the weekly housekeeping clean-up
(every `housekeeping_interval_s`). Both skip a run while the previous one still runs (overlap SKIP)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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
from temporalio.service import RPCError, RPCStatusCode

from poolctl.activities.balancer_activities import RollupInput
from poolctl.activities.housekeeping import HousekeepingInput
from poolctl.settings import Settings
from poolctl.temporal_client import clear_frames
from poolctl.workflows.balancer_stats import BalancerStatsWorkflow
from poolctl.workflows.housekeeping import HousekeepingWorkflow


@dataclass(frozen=True)
class ScheduleKind:
    """One of poolctl's schedules: its id prefix, what it does, how often, and its workflow."""

    name: str
    what: str
    every_s: Callable[[Settings], float]
    workflow: Any
    arg: Callable[[Settings], Any]


BALANCER_STATS = ScheduleKind(
    name="balancer-stats",
    what="balancer statistics roll-up",
    every_s=lambda s: s.balancer_stats_interval_s,
    workflow=BalancerStatsWorkflow.run,
    arg=lambda s: RollupInput(),
)
HOUSEKEEPING = ScheduleKind(
    name="housekeeping",
    what="remove events, decisions, roll-ups and transitions older than the retention",
    every_s=lambda s: s.housekeeping_interval_s,
    workflow=HousekeepingWorkflow.run,
    arg=lambda s: HousekeepingInput(retention_days=s.retention_days),
)
KINDS = (BALANCER_STATS, HOUSEKEEPING)


def schedule_id(settings: Settings, kind: ScheduleKind = BALANCER_STATS) -> str:
    return f"{kind.name}/{settings.task_queue}"


def _schedule(settings: Settings, kind: ScheduleKind) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            kind.workflow,
            kind.arg(settings),
            id=f"{kind.name}-run/{settings.task_queue}",
            task_queue=settings.task_queue,
            static_summary=kind.what,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=kind.every_s(settings)))]),
        policy=SchedulePolicy(overlap=Overlap.SKIP),
    )


async def ensure_schedule(client: Client, settings: Settings, kind: ScheduleKind) -> ScheduleHandle:
    """Create the schedule, or bring an existing one to the configured interval and input. Idempotent."""
    sid = schedule_id(settings, kind)
    wanted = _schedule(settings, kind)
    try:
        return await client.create_schedule(sid, wanted)
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(sid)
        desc = await handle.describe()
        action = desc.schedule.action
        same = (
            [i.every for i in desc.schedule.spec.intervals] == [timedelta(seconds=kind.every_s(settings))]
            and desc.schedule.policy.overlap == Overlap.SKIP
            and isinstance(action, ScheduleActionStartWorkflow)
            and action.workflow == wanted.action.workflow  # type: ignore[attr-defined]
        )
        if not same or kind is HOUSEKEEPING:  # the retention travels in the input: always refresh it

            def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=wanted)

            await handle.update(update)
        return handle


async def ensure_stats_schedule(client: Client, settings: Settings) -> ScheduleHandle:
    return await ensure_schedule(client, settings, BALANCER_STATS)


async def ensure_schedules(client: Client, settings: Settings) -> list[ScheduleHandle]:
    """Both schedules, created or updated (`poolctl dev up`, `poolctl apply`)."""
    return [await ensure_schedule(client, settings, kind) for kind in KINDS]


@dataclass
class ScheduleView:
    id: str
    what: str
    every_s: float
    paused: bool
    next_run: datetime | None
    last_run: datetime | None
    exists: bool = True


async def list_schedules(client: Client, settings: Settings) -> list[ScheduleView]:
    """poolctl's schedules on this task queue with their next and last run (`poolctl schedules`)."""
    out = []
    for kind in KINDS:
        sid = schedule_id(settings, kind)
        try:
            desc = await client.get_schedule_handle(sid).describe()
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            clear_frames(e)  # handled: its frames must not keep the client alive (`starter.open_queries`)
            out.append(ScheduleView(sid, kind.what, kind.every_s(settings), False, None, None, exists=False))
            continue
        info = desc.info
        intervals = desc.schedule.spec.intervals
        out.append(
            ScheduleView(
                id=sid,
                what=kind.what,
                every_s=intervals[0].every.total_seconds() if intervals else 0.0,
                paused=desc.schedule.state.paused,
                next_run=info.next_action_times[0] if info.next_action_times else None,
                last_run=info.recent_actions[-1].started_at if info.recent_actions else None,
            )
        )
    return out
