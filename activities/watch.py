"""The probe loop of one check on one server, run inside one long-lived heartbeating activity.

See DESIGN.md "What a loop costs": one Temporal activity per probe cannot carry a fleet, so
`watch_target` probes at the check's interval, folds results into the consecutive counters
(`poolctl.domain.health.observe`), heartbeats its progress (a retried activity resumes from
it) and **returns only** on a state transition, on a configuration error, or at the end of a
bounded lease (`lease_s`). History then grows with transitions, not with probes.

Schedule: probe k of a watch is due at `base + k * interval + jitter_k`, where `jitter_k` is
drawn in `[0, spec.jitter_seconds]` (deterministic per check and slot). Lateness never
accumulates: each probe is placed from `base`, not from the previous probe's end; if a whole
slot was missed (a stalled loop, a worker that was down), the loop skips to the current slot
instead of bursting. Times are epoch seconds from `clock` (wall clock), so a retried activity
on another worker can continue the same schedule from its heartbeat.

`watch_target` is plain async code with injected `heartbeat`, `probe`, `clock` and `sleep`,
testable without Temporal; `watch_target_activity` is the thin `@activity.defn` wrapper.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, ValidationError
from temporalio import activity

from poolctl.activities.heartbeats import activity_pacer
from poolctl.activities.kill_points import kill_point
from poolctl.domain.health import HealthState, HealthStatus, ProbeResult, Transition, observe
from poolctl.domain.health_messages import WatchProgress
from poolctl.domain.health_spec import HealthCheckSpec
from poolctl.domain.model import Message
from poolctl.telemetry import PROBES

ProbeFn = Callable[[HealthCheckSpec, str, int | None], Awaitable[ProbeResult]]
HeartbeatFn = Callable[["WatchProgress"], Any]
ClockFn = Callable[[], float]
SleepFn = Callable[[float], Awaitable[Any]]

DEFAULT_LEASE_S = 3600.0
DEFAULT_HEARTBEAT_EVERY_S = 10.0


class WatchParams(Message):
    """Input of one watch. The workflow passes the status it knows (state and counters) so a new
    watch after a transition continues the counters, and `next_probe_at` from the previous
    outcome so the probe schedule stays regular across watches."""

    check_id: str = Field(description="e.g. the HealthCheckWorkflow id health/{team}/{pool}/{server}")
    host: str
    port: int | None = Field(default=None, description="the server's port; spec.port overrides it")
    spec: HealthCheckSpec
    status: HealthStatus = Field(default_factory=HealthStatus)
    server_started_at: datetime | None = Field(default=None, description="start of the grace period")
    lease_s: float = Field(default=DEFAULT_LEASE_S, gt=0, description="return (lease_end) after this long")
    heartbeat_every_s: float = Field(
        default=DEFAULT_HEARTBEAT_EVERY_S,
        gt=0,
        description="heartbeat at least this often, even between probes",
    )
    next_probe_at: float | None = Field(
        default=None,
        description="epoch seconds of the first probe (e.g. the previous outcome's next_probe_at)",
    )
    first_probe_delay: float | None = Field(
        default=None,
        ge=0,
        description="seconds until the first probe when next_probe_at is unset; "
        "None = random in [0, interval), spreading a fleet started at once (as HAProxy does)",
    )


class WatchOutcome(Message):
    reason: Literal["transition", "config_error", "lease_end"]
    status: HealthStatus
    transition: Transition | None = None
    last_result: ProbeResult | None = None
    config_error: str | None = None
    probes: int = 0
    skipped_slots: int = 0
    next_probe_at: float | None = None


def _jitter(check_id: str, slot: int, max_jitter: float) -> float:
    if max_jitter <= 0:
        return 0.0
    return random.Random(f"{check_id}:{slot}").uniform(0.0, max_jitter)


def _scheduled(params: WatchParams, base: float, slot: int) -> float:
    return base + slot * params.spec.interval + _jitter(params.check_id, slot, params.spec.jitter_seconds)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def watch_target(
    params: WatchParams,
    *,
    heartbeat: HeartbeatFn,
    resume_from: WatchProgress | None,
    probe: ProbeFn,
    clock: ClockFn = time.time,
    sleep: SleepFn = asyncio.sleep,
) -> WatchOutcome:
    """Probe until a transition, a config error or the lease ends. See the module docstring."""
    spec = params.spec
    interval = spec.interval
    if resume_from is not None:
        progress = resume_from.model_copy(deep=True)
    else:
        now = clock()
        if params.next_probe_at is not None:
            first = params.next_probe_at
        elif params.first_probe_delay is not None:
            first = now + params.first_probe_delay
        else:
            first = now + random.Random(params.check_id).uniform(0.0, interval)
        # Slot 0's jitter is already part of `first`: the anchor is `first` minus that jitter.
        base = first - _jitter(params.check_id, 0, spec.jitter_seconds)
        progress = WatchProgress(
            status=params.status, lease_started_at=now, base=base, slot=0, next_probe_at=first
        )
    lease_end = progress.lease_started_at + params.lease_s

    def outcome(reason: Literal["transition", "config_error", "lease_end"], **kw: Any) -> WatchOutcome:
        return WatchOutcome(
            reason=reason,
            status=progress.status,
            last_result=progress.status.last_result,
            probes=progress.probes,
            skipped_slots=progress.skipped_slots,
            next_probe_at=progress.next_probe_at,
            **kw,
        )

    while True:
        # Wait for the next probe (or the lease end), heartbeating at least every heartbeat_every_s.
        while True:
            now = clock()
            wake = min(progress.next_probe_at, lease_end)
            if now >= wake:
                break
            await sleep(min(wake - now, params.heartbeat_every_s))
            if clock() < wake:
                heartbeat(progress)
        if clock() >= lease_end and progress.next_probe_at >= lease_end:
            heartbeat(progress)
            return outcome("lease_end")

        scheduled = progress.next_probe_at
        started = clock()
        result = await probe(spec, params.host, params.port)
        done = clock()
        status, transition = observe(progress.status, result, _utc(started), spec, params.server_started_at)

        # Advance the schedule from the anchor; skip slots that passed entirely.
        slot = progress.slot + 1
        skipped = 0
        current = math.floor((done - progress.base) / interval)
        if current > slot:
            skipped = current - slot
            slot = current
        progress = progress.model_copy(
            update={
                "status": status,
                "slot": slot,
                "next_probe_at": _scheduled(params, progress.base, slot),
                "probes": progress.probes + 1,
                "skipped_slots": progress.skipped_slots + skipped,
                "last_scheduled_at": scheduled,
                "last_started_at": started,
            }
        )
        heartbeat(progress)

        if result.config_error:
            return outcome("config_error", config_error=result.error)
        if transition is not None:
            return outcome("transition", transition=transition)
        if done >= lease_end:
            return outcome("lease_end")


# ---------------------------------------------------------------------------- activity


def _resume_progress(details: Any) -> WatchProgress | None:
    """Heartbeat details come back as plain JSON on retry: re-validate them."""
    if not details:
        return None
    raw = details[0]
    if isinstance(raw, WatchProgress):
        return raw
    try:
        return WatchProgress.model_validate(raw)
    except ValidationError as e:
        activity.logger.warning("ignoring unreadable heartbeat details: %s", e)
        return None


@activity.defn(name="watch_target")
async def watch_target_activity(params: WatchParams) -> WatchOutcome:
    """Temporal activity: run `watch_target` with the worker's shared Prober.

    Call it with a `heartbeat_timeout` (see the module's report / README) so a dead worker is
    noticed and the retry resumes from the last heartbeat. Cancellation (and worker shutdown)
    arrive as `CancelledError` through the sleeps; the last progress is heartbeated and the
    error re-raised so Temporal records the cancellation (or retries elsewhere on shutdown).
    """
    from poolctl.activities.probes import get_prober

    kill_point("waiting_for_health")
    info = activity.info()
    resume = _resume_progress(info.heartbeat_details)
    last: list[WatchProgress] = []
    # One heartbeat reaches the server per 0.8 x heartbeat timeout (the pace the SDK's own throttle kept
    # before the worker lowered it for the policy loops: activities/heartbeats.py); the newest progress
    # wins and is encoded only when sent, so recording one after every probe costs nothing.
    pacer = activity_pacer(params.heartbeat_every_s)

    def beat(progress: WatchProgress) -> None:
        last[:] = [progress]
        pacer.beat(progress)

    prober = get_prober()

    async def counted_probe(spec: HealthCheckSpec, host: str, port: int | None) -> ProbeResult:
        result = await prober.probe(spec, host, port)
        PROBES.labels("success" if result.ok else "failure").inc()
        return result

    try:
        return await watch_target(params, heartbeat=beat, resume_from=resume, probe=counted_probe)
    except BaseException:  # cancelled, worker shutdown, a fault: the retry resumes from this progress
        if last:
            pacer.now(last[0])
        raise
    finally:
        pacer.close()


__all__ = [
    "HealthState",
    "WatchOutcome",
    "WatchParams",
    "WatchProgress",
    "watch_target",
    "watch_target_activity",
]
