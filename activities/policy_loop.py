"""A policy's evaluation loop, run inside one long-lived heartbeating activity (`policy_loop`).

See DESIGN.md "What a loop costs": one workflow timer and metric read per evaluation costs ~7 history
events, so thousands of policies do not fit one worker. `run_policy_loop` evaluates at the policy's
`evaluation_interval` (metric read with `PolicyMetricActivities.read`, then the pure
`domain.evaluation.evaluate_policy`), heartbeats its state (`PolicyLoopProgress`: a retried activity
resumes from it), and **returns only** when a decision's recommendation differs from the one the
workflow last sent, at its first evaluation after the lease (`lease_s`), or when it is cancelled (the
workflow restarts it after a signal; the loop then returns its state as its result, so nothing is lost).
History grows with decisions, not with evaluations — as `watch_target` does for probes.

Heartbeats (`activities.heartbeats.HeartbeatPacer`): one is sent `loop_precheck_s` before each evaluation,
so its reply brings a cancellation the workflow asked for since the last one (a pause, resume, new spec,
new members) before the evaluation, not after: a change takes effect within one interval. Beats between
evaluations are held and replaced by that check; a changed decision is sent at once (a retry returns it).

Schedule: evaluation k is due at `first + k * interval` (lateness never accumulates; a whole missed
slot is skipped, not burst). `first` is the workflow's `next_evaluation_at`, so a restarted loop keeps
the grid; a signal that changed the policy (`evaluate_now`) evaluates at once and re-anchors it.
Times come from `clock` (the wall clock: this is an activity), so a retry on another worker continues.

`run_policy_loop` is plain async code with injected `heartbeat`, `read`, `clock`, `sleep` and `evaluate`,
testable without Temporal; `PolicyLoopActivities.policy_loop` is the thin `@activity.defn` wrapper.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

from pydantic import ValidationError
from temporalio import activity

from poolctl.activities.heartbeats import activity_pacer
from poolctl.activities.policy_metrics import PolicyMetricActivities
from poolctl.domain.decision import Decision, same_recommendation
from poolctl.domain.evaluation import Evaluate, evaluate_or_hold, evaluate_policy
from poolctl.domain.policy_state import (
    MetricReading,
    MetricReadRequest,
    PolicyLoopOutcome,
    PolicyLoopParams,
    PolicyLoopProgress,
    loop_precheck_s,
)

ReadFn = Callable[[MetricReadRequest], Awaitable[MetricReading]]
HeartbeatFn = Callable[[PolicyLoopProgress], Any]
ClockFn = Callable[[], datetime]
SleepFn = Callable[[float], Awaitable[Any]]

# A read slower than its source's timeout plus this is abandoned (the metric counts as unavailable).
READ_GRACE_S = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def read_request(params: PolicyLoopParams) -> MetricReadRequest:
    spec = params.spec
    return MetricReadRequest(
        team=params.team,
        pool=params.pool,
        source=spec.source if spec.is_metric_policy else None,
        servers=params.members,
        instance_warmup_s=spec.instance_warmup_s,
    )


def read_limit_s(params: PolicyLoopParams) -> float:
    """Longest one read may take before the loop counts the metric as unavailable."""
    source = params.spec.source if params.spec.is_metric_policy else None
    return (source.timeout_s if source is not None else 0.0) + READ_GRACE_S


def _next_slot(scheduled: datetime, interval_s: float, done: datetime) -> datetime:
    """The first slot of the grid `scheduled + k * interval` after `done` (k >= 1)."""
    late = (done - scheduled).total_seconds()
    k = max(1, math.floor(late / interval_s) + 1)
    return scheduled + timedelta(seconds=k * interval_s)


async def _read_with_heartbeats(
    params: PolicyLoopParams, read: ReadFn, beat: Callable[[], None]
) -> MetricReading:
    """`read`, heartbeating while it runs; a read that fails or takes too long is an unavailable metric."""
    task = asyncio.ensure_future(read(read_request(params)))
    deadline = asyncio.get_running_loop().time() + read_limit_s(params)
    try:
        while not task.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                task.cancel()
                return MetricReading(
                    value=None,
                    error=f"metric read took longer than {read_limit_s(params):g} s",
                    current=len(params.members),
                )
            await asyncio.wait({task}, timeout=min(left, params.heartbeat_every_s))
            if not task.done():
                beat()
        return task.result()
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - a fault of the reader: the metric is unavailable this time
        return MetricReading(
            value=None, error=f"metric read failed: {type(e).__name__}: {e}", current=len(params.members)
        )
    finally:
        if not task.done():
            task.cancel()


async def run_policy_loop(
    params: PolicyLoopParams,
    *,
    heartbeat: HeartbeatFn,
    resume_from: PolicyLoopProgress | None,
    read: ReadFn,
    clock: ClockFn = utc_now,
    sleep: SleepFn = asyncio.sleep,
    evaluate: Evaluate = evaluate_policy,
    heartbeat_now: HeartbeatFn | None = None,
) -> PolicyLoopOutcome:
    """Evaluate until a changed recommendation, the lease end or cancellation. See the module docstring.

    `heartbeat` is paced (`HeartbeatPacer.beat`: it may be held); `heartbeat_now` sends at once (default:
    `heartbeat`): `loop_precheck_s` before each evaluation, so the reply brings a pending cancellation
    before the evaluation rather than after it, and with a decision about to be returned."""
    spec = params.spec
    interval = spec.evaluation_interval
    precheck_s = loop_precheck_s(interval)
    send_now = heartbeat_now or heartbeat
    if resume_from is not None:
        progress = resume_from.model_copy(deep=True)
    else:
        now = clock()
        first = now if params.evaluate_now or params.next_evaluation_at is None else params.next_evaluation_at
        progress = PolicyLoopProgress(
            evaluation=params.evaluation,
            current=params.current,
            last_error=params.last_error,
            lease_started_at=now,
            next_evaluation_at=first,
        )
    lease_end = progress.lease_started_at + timedelta(seconds=params.lease_s)

    def outcome(
        reason: Literal["decision", "lease_end", "cancelled"], decision: Decision | None
    ) -> PolicyLoopOutcome:
        return PolicyLoopOutcome(
            reason=reason,
            evaluation=progress.evaluation,
            current=progress.current,
            last_error=progress.last_error,
            next_evaluation_at=progress.next_evaluation_at,
            decision=decision,
            evaluations=progress.evaluations,
        )

    try:
        if progress.pending is not None:  # a retry after the decision was heartbeated: return it now
            return outcome("decision", progress.pending)
        while True:
            # wait for the check before the next evaluation, beating at least every heartbeat_every_s
            while True:
                left = (progress.next_evaluation_at - clock()).total_seconds() - precheck_s
                if left <= 0:
                    break
                await sleep(min(left, params.heartbeat_every_s))
                if (progress.next_evaluation_at - clock()).total_seconds() > precheck_s:
                    heartbeat(progress)
            # the check: this heartbeat's reply brings a cancellation the workflow asked for since the last
            # one (a pause, resume, new spec, new members): the loop then returns before evaluating
            send_now(progress)
            left = (progress.next_evaluation_at - clock()).total_seconds()
            if left > 0:
                await sleep(left)
            scheduled = progress.next_evaluation_at
            reading = await _read_with_heartbeats(params, read, partial(heartbeat, progress))
            now = clock()
            decision, state, error = evaluate_or_hold(
                spec,
                current=reading.current,
                metric=reading.value,
                now=now,
                state=progress.evaluation,
                servers=reading.servers,
                evaluate=evaluate,
            )
            changed = not same_recommendation(params.last_sent, decision.as_recommendation())
            progress = progress.model_copy(
                update={
                    "evaluation": state,
                    "current": reading.current,
                    "last_error": error or reading.error,
                    "next_evaluation_at": _next_slot(scheduled, interval, now),
                    "evaluations": progress.evaluations + 1,
                    "pending": decision if changed else None,
                }
            )
            if changed:
                send_now(progress)  # a retry returns the pending decision at once
                return outcome("decision", decision)
            heartbeat(progress)  # held by the pacer: the next check sends it
            if now >= lease_end:
                return outcome("lease_end", decision)
    except asyncio.CancelledError:
        # the workflow restarts the loop (a signal changed the policy) or the worker stops: hand the state
        # back as the result, so the next loop continues from it
        return outcome("cancelled", progress.evaluation.last_decision)


# ---------------------------------------------------------------------------- activity


def resume_progress(details: Any) -> PolicyLoopProgress | None:
    """Heartbeat details (on retry, or in a cancellation's details) come back as plain JSON: re-validate."""
    if not details:
        return None
    raw = details[0]
    if isinstance(raw, PolicyLoopProgress):
        return raw
    try:
        return PolicyLoopProgress.model_validate(raw)
    except ValidationError:
        return None  # an earlier version's heartbeat: start from the state the workflow passed


class PolicyLoopActivities:
    """The `policy_loop` activity, reading metrics with the worker's `PolicyMetricActivities`.

    `evaluate` is the decision code (`evaluate_policy`; a fault test gives a second driver)."""

    def __init__(self, metrics: PolicyMetricActivities, evaluate: Evaluate = evaluate_policy) -> None:
        self.metrics = metrics
        self.evaluate = evaluate

    @activity.defn(name="policy_loop")
    async def policy_loop(self, params: PolicyLoopParams) -> PolicyLoopOutcome:
        """Temporal activity: `run_policy_loop`. Call it with a heartbeat timeout (a dead worker is noticed
        and the retry resumes from the last heartbeat) and cancellation type WAIT_CANCELLATION_COMPLETED
        (a cancelled loop returns its state as its result)."""

        pacer = activity_pacer(params.heartbeat_every_s)
        loop = asyncio.ensure_future(
            run_policy_loop(
                params,
                heartbeat=pacer.beat,
                heartbeat_now=pacer.now,
                resume_from=resume_progress(activity.info().heartbeat_details),
                read=self.metrics.read,
                evaluate=self.evaluate,
            )
        )
        # a stopping worker hands the state back at once (rather than after its graceful-shutdown timeout):
        # the workflow starts the next loop, which another (or the restarted) worker picks up
        shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
        try:
            await asyncio.wait({loop, shutdown}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the workflow asked: the loop returns its state
        finally:
            shutdown.cancel()
        if not loop.done():
            loop.cancel()
        try:
            return await loop
        finally:
            pacer.close()
