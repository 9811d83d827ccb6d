"""One policy's evaluation (`evaluate_policy`): its state between evaluations, the stages, pause/resume.

Pure and deterministic (time is an argument) so workflows can call it. A policy evaluation goes through
these stages, each of which may clamp the value::

    paused? -> schedule window | metric (missing -> on_metric_error) -> strategy math (raw)
      -> scale-in stabilization -> paused direction -> policy min/max -> max_step -> dry_run
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field

from poolctl.domain.decision import Decision, Direction, ReasonCode, Trail, fmt_number, require_aware
from poolctl.domain.model import Message
from poolctl.domain.policy_spec import PolicySpec
from poolctl.domain.schedule import schedule_window_active
from poolctl.domain.strategies import (
    step_recommendation,
    target_tracking_recommendation,
    threshold_recommendation,
)

# Bound on the stabilization history carried in PolicyState (it rides through continue-as-new).
MAX_HISTORY = 64


class HistoryPoint(Message):
    at: datetime
    desired: int


class PolicyState(Message):
    """What a policy carries from one evaluation to the next (and through continue-as-new).

    `history` holds raw recommendations inside the stabilization window, reduced to the ones that can
    still be the window's maximum and capped at MAX_HISTORY entries (merging only ever lengthens how
    long a high value is remembered, so the cap errs on the side of not scaling in).
    """

    paused: bool = False
    scale_in_paused: bool = False
    scale_out_paused: bool = False
    history: list[HistoryPoint] = Field(default_factory=list)
    last_metric: float | None = None
    last_metric_at: datetime | None = None
    last_decision: Decision | None = None
    evaluations: int = 0
    # first evaluation since start or resume: no scale-in before a whole stabilization window has passed
    observing_since: datetime | None = None


def _stabilize(
    history: list[HistoryPoint], now: datetime, window_s: float, raw: int
) -> tuple[list[HistoryPoint], int]:
    """Add `raw` to the window and return (new history, highest recommendation in the window)."""
    horizon = now - timedelta(seconds=window_s)
    kept = [h for h in history if h.at > horizon and h.at <= now]
    # Monotone queue: an older point no higher than a newer one can never be the maximum again.
    while kept and kept[-1].desired <= raw:
        kept.pop()
    kept.append(HistoryPoint(at=now, desired=raw))
    while len(kept) > MAX_HISTORY:
        # merge the two oldest: keep the higher (older) value until the later time
        a, b = kept[0], kept[1]
        kept[0:2] = [HistoryPoint(at=b.at, desired=max(a.desired, b.desired))]
    return kept, max(h.desired for h in kept)


def _decision(
    spec: PolicySpec,
    *,
    current: int,
    metric: float | None,
    now: datetime,
    formula: str,
    raw: int,
    trail: Trail,
    reason: ReasonCode,
    **extra: Any,
) -> Decision:
    final = trail.value
    primary = trail.clamps[-1].reason if trail.clamps else reason
    return Decision(
        policy=spec.name,
        at=now,
        current=current,
        metric=metric,
        metric_name=spec.metric,
        formula=formula,
        raw=raw,
        clamps=trail.clamps,
        desired=final,
        direction=Direction.of(current, final),
        reason=primary,
        dry_run=spec.dry_run,
        scale_out_cooldown_s=spec.scale_out_cooldown_s,
        scale_in_cooldown_s=spec.scale_in_cooldown_s,
        **extra,
    )


def _evaluate_schedule(spec: PolicySpec, *, current: int, now: datetime, state: PolicyState) -> Decision:
    assert spec.schedule is not None
    sched = spec.schedule
    active, start, end = schedule_window_active(sched, now)
    span = f"{start.isoformat() if start else '?'} .. {end.isoformat() if end else '?'}"
    if not active:
        trail = Trail(current)
        return _decision(
            spec,
            current=current,
            metric=None,
            now=now,
            formula=f"schedule {sched.cron!r} ({sched.timezone}) inactive; next window {span}",
            raw=current,
            trail=trail,
            reason=ReasonCode.SCHEDULE_INACTIVE,
            abstain=True,
        )
    sets = ", ".join(
        f"{k}={v}"
        for k, v in (
            ("min", sched.min_servers),
            ("max", sched.max_servers),
            ("desired", sched.desired_servers),
        )
        if v is not None
    )
    formula = f"schedule {sched.cron!r} ({sched.timezone}) active {span}: sets {sets}"
    raw = current if sched.desired_servers is None else sched.desired_servers
    trail = Trail(raw)
    if spec.max_step is not None and abs(raw - current) > spec.max_step:
        trail.clamp(
            ReasonCode.MAX_STEP_LIMITED,
            current + spec.max_step if raw > current else current - spec.max_step,
            f"max_step {spec.max_step}",
        )
    extra: dict[str, Any] = {"floor": sched.min_servers, "ceiling": sched.max_servers}
    if sched.desired_servers is None:
        extra["abstain"] = True
    if spec.dry_run:
        trail.clamp(ReasonCode.DRY_RUN, current, "dry run: the pool is not asked to change")
        extra.update(abstain=True, floor=None, ceiling=None)
    return _decision(
        spec,
        current=current,
        metric=None,
        now=now,
        formula=formula,
        raw=raw,
        trail=trail,
        reason=ReasonCode.SCHEDULE_ACTIVE,
        **extra,
    )


def evaluate_policy(
    spec: PolicySpec, *, current: int, metric: float | None, now: datetime, state: PolicyState
) -> tuple[Decision, PolicyState]:
    """Evaluate one policy at `now` against the pool's `current` count and the metric just read.

    `metric` is None when the source could not be read; NaN and infinities count as unavailable too.
    Returns the decision (send `decision.as_recommendation()` to the pool) and the next state.
    """
    require_aware(now, "now")
    if current < 0:
        raise ValueError(f"current must be >= 0, got {current}")
    if metric is not None and not math.isfinite(metric):
        metric = None
    next_state = state.model_copy(update={"evaluations": state.evaluations + 1})
    if metric is not None:
        next_state.last_metric, next_state.last_metric_at = metric, now

    if not spec.is_active or state.paused:
        why = "policy is not active (is_active: false)" if not spec.is_active else "policy is paused"
        decision = _decision(
            spec,
            current=current,
            metric=metric,
            now=now,
            formula=why,
            raw=current,
            trail=Trail(current),
            reason=ReasonCode.PAUSED,
            abstain=True,
        )
        next_state.last_decision = decision
        return decision, next_state

    if spec.type == "schedule":
        decision = _evaluate_schedule(spec, current=current, now=now, state=state)
        next_state.last_decision = decision
        return decision, next_state

    extra: dict[str, Any] = {}
    if metric is None:
        if spec.on_metric_error == "fallback":
            assert spec.fallback_servers is not None
            raw = spec.fallback_servers
            formula = f"{spec.metric} unavailable: on_metric_error fallback to {raw} servers"
            reason = ReasonCode.FALLBACK_CAPACITY
        else:
            ignore = spec.on_metric_error == "ignore"
            formula = f"{spec.metric} unavailable: on_metric_error {spec.on_metric_error}" + (
                " (the policy abstains)" if ignore else f", hold {current} and block scale-in"
            )
            decision = _decision(
                spec,
                current=current,
                metric=None,
                now=now,
                formula=formula,
                raw=current,
                trail=Trail(current),
                reason=ReasonCode.METRIC_UNAVAILABLE,
                metric_missing=True,
                abstain=ignore,
            )
            if not ignore:
                # remember the hold, so scale-in waits a full window after the data comes back
                next_state.history, _ = _stabilize(state.history, now, spec.stabilization_window_s, current)
            next_state.last_decision = decision
            return decision, next_state
    elif spec.strategy == "threshold":
        raw, formula, reason = threshold_recommendation(spec, current, metric)
    elif spec.strategy == "step":
        raw, formula, reason = step_recommendation(spec, current, metric)
    elif spec.strategy == "target_tracking":
        raw, formula, reason = target_tracking_recommendation(spec, current, metric)
    else:  # pragma: no cover - the spec validator always sets a strategy on metric policies
        raise ValueError(f"policy {spec.name!r} has no strategy")

    trail = Trail(raw)
    if spec.stabilization_window_s > 0:
        window = timedelta(seconds=spec.stabilization_window_s)
        next_state.history, highest = _stabilize(state.history, now, spec.stabilization_window_s, raw)
        since = state.observing_since or now
        next_state.observing_since = since
        if raw < current and now < since + window:
            trail.clamp(
                ReasonCode.SCALE_IN_STABILIZED,
                current,
                f"observing since {since.isoformat()}: no scale-in before a full "
                f"{fmt_number(spec.stabilization_window_s)} s window",
            )
        elif raw < current:
            trail.clamp(
                ReasonCode.SCALE_IN_STABILIZED,
                min(current, highest),
                f"highest recommendation in the last {fmt_number(spec.stabilization_window_s)} s is {highest}",
            )
    if state.scale_in_paused and trail.value < current:
        trail.clamp(ReasonCode.SCALE_IN_PAUSED, current, "scale-in is paused on this policy")
        extra["abstain"] = True  # it does not stop other policies from scaling in
    if state.scale_out_paused and trail.value > current:
        trail.clamp(ReasonCode.SCALE_OUT_PAUSED, current, "scale-out is paused on this policy")
    # per-policy limits bound how far this policy moves the pool; they never turn its wish around
    if spec.max_servers is not None and trail.value > max(current, spec.max_servers):
        trail.clamp(
            ReasonCode.AT_MAX_SERVERS,
            max(current, spec.max_servers),
            f"policy max_servers {spec.max_servers}",
        )
    if spec.min_servers is not None and trail.value < min(current, spec.min_servers):
        trail.clamp(
            ReasonCode.AT_MIN_SERVERS,
            min(current, spec.min_servers),
            f"policy min_servers {spec.min_servers}",
        )
    if spec.max_step is not None and abs(trail.value - current) > spec.max_step:
        limited = current + spec.max_step if trail.value > current else current - spec.max_step
        trail.clamp(ReasonCode.MAX_STEP_LIMITED, limited, f"max_step {spec.max_step}")
    if spec.dry_run:
        trail.clamp(ReasonCode.DRY_RUN, current, "dry run: the pool is not asked to change")
        extra["abstain"] = True
    decision = _decision(
        spec,
        current=current,
        metric=metric,
        now=now,
        formula=formula,
        raw=raw,
        trail=trail,
        reason=reason,
        **extra,
    )
    next_state.last_decision = decision
    return decision, next_state


def pause(state: PolicyState, *, scale_in: bool = True, scale_out: bool = True) -> PolicyState:
    """Signal handlers' helper: `pause` (both), `pause_scale_in` (scale_out=False), `pause_scale_out`."""
    if scale_in and scale_out:
        return state.model_copy(update={"paused": True})
    return state.model_copy(
        update={
            "scale_in_paused": state.scale_in_paused or scale_in,
            "scale_out_paused": state.scale_out_paused or scale_out,
        }
    )


def resume(state: PolicyState) -> PolicyState:
    """`resume` clears every pause flag."""
    return state.model_copy(
        update={"paused": False, "scale_in_paused": False, "scale_out_paused": False, "observing_since": None}
    )


def toggle(state: PolicyState) -> PolicyState:
    """`toggle` flips the whole-policy pause."""
    return resume(state) if state.paused else state.model_copy(update={"paused": True})


# --- the pool -------------------------------------------------------------------------------------
