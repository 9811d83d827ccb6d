"""Scaling decisions: one policy's recommendation (`evaluate_policy`) and the pool's verdict (`arbitrate`).

Pure and deterministic (time is an argument) so workflows can call it. Every result is a `Decision`:
a record of the inputs, the formula applied, each clamp with its reason code, and the outcome.

A policy evaluation goes through these stages, each of which may clamp the value::

    paused? -> schedule window | metric (missing -> on_metric_error) -> strategy math (raw)
      -> scale-in stabilization -> paused direction -> policy min/max -> max_step -> dry_run

The pool then arbitrates over the latest recommendation of every policy::

    any scale-out vote?  -> largest wins
    all vote scale-in and no metric missing? -> the smallest reduction wins
    otherwise hold       -> clamp to pool (and schedule) min/max -> per-direction cooldown
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import Field

from poolctl.domain.model import Message
from poolctl.domain.policy_spec import DEFAULT_COOLDOWN_S, PolicySpec, Step
from poolctl.domain.schedule import schedule_window_active

# Bound on the stabilization history carried in PolicyState (it rides through continue-as-new).
MAX_HISTORY = 64


class ReasonCode(StrEnum):
    """Why a decision came out as it did (names in the style of the Kubernetes HPA conditions)."""

    SCALE_OUT_THRESHOLD = "ScaleOutThreshold"
    SCALE_IN_THRESHOLD = "ScaleInThreshold"
    STEP_ADJUSTMENT = "StepAdjustment"
    TARGET_TRACKING = "TargetTracking"
    WITHIN_TOLERANCE = "WithinTolerance"
    WITHIN_THRESHOLDS = "WithinThresholds"
    SCALE_IN_STABILIZED = "ScaleInStabilized"
    COOLDOWN_ACTIVE = "CooldownActive"
    AT_MAX_SERVERS = "AtMaxServers"
    AT_MIN_SERVERS = "AtMinServers"
    MAX_STEP_LIMITED = "MaxStepLimited"
    METRIC_UNAVAILABLE = "MetricUnavailable"
    FALLBACK_CAPACITY = "FallbackCapacity"
    DRY_RUN = "DryRun"
    PAUSED = "Paused"
    SCALE_IN_PAUSED = "ScaleInPaused"
    SCALE_OUT_PAUSED = "ScaleOutPaused"
    SCHEDULE_ACTIVE = "ScheduleActive"
    SCHEDULE_INACTIVE = "ScheduleInactive"
    NO_RECOMMENDATION = "NoRecommendation"


_DIRECTION_RANK = {"down": -1, "none": 0, "up": 1}


class Direction(StrEnum):
    """Direction of a change, ordered by risk: DOWN < NONE < UP, so "safest wins" is `min(...)`."""

    DOWN = "down"
    NONE = "none"
    UP = "up"

    @property
    def rank(self) -> int:
        return _DIRECTION_RANK[self.value]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Direction):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Direction):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Direction):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Direction):
            return NotImplemented
        return self.rank >= other.rank

    __hash__ = StrEnum.__hash__

    @staticmethod
    def of(current: int, desired: int) -> Direction:
        if desired > current:
            return Direction.UP
        if desired < current:
            return Direction.DOWN
        return Direction.NONE


class Clamp(Message):
    """One stage that changed the value: from `before` to `after`, and why."""

    reason: ReasonCode
    before: int
    after: int
    detail: str = ""


class Recommendation(Message):
    """A policy's latest wish, as the pool keeps it (one per policy) and passes it to `arbitrate`.

    The vote is read by direction, so a recommendation that has gone stale (the pool moved since)
    never turns into the opposite wish: UP votes `desired` only if above the pool's current count,
    DOWN votes `desired` only if below it, NONE votes "keep the current count".
    `abstain` recommendations take no part in the vote (paused, dry run, schedule with no desired
    count, on_metric_error: ignore); `floor`/`ceiling` (schedule min/max) apply even then.
    """

    policy: str
    at: datetime
    desired: int
    direction: Direction
    reason: ReasonCode
    metric: float | None = None
    metric_missing: bool = False
    abstain: bool = False
    floor: int | None = None
    ceiling: int | None = None
    scale_out_cooldown_s: float = DEFAULT_COOLDOWN_S
    scale_in_cooldown_s: float = DEFAULT_COOLDOWN_S


class Decision(Message):
    """The record of one decision: inputs, formula, raw value, clamps, result and primary reason.

    `policy` is the policy's name for `evaluate_policy`, None for the pool's `arbitrate`.
    `scale_out_cooldown_s`/`scale_in_cooldown_s` are the cooldowns to start if the pool acts on it.
    """

    policy: str | None = None
    at: datetime
    current: int
    metric: float | None = None
    metric_name: str | None = None
    inputs: list[Recommendation] = Field(default_factory=list)
    formula: str
    raw: int
    clamps: list[Clamp] = Field(default_factory=list)
    desired: int
    direction: Direction
    reason: ReasonCode
    metric_missing: bool = False
    abstain: bool = False
    dry_run: bool = False
    floor: int | None = None
    ceiling: int | None = None
    scale_out_cooldown_s: float = DEFAULT_COOLDOWN_S
    scale_in_cooldown_s: float = DEFAULT_COOLDOWN_S

    def as_recommendation(self) -> Recommendation:
        """What the policy sends to its pool."""
        if self.policy is None:
            raise ValueError("a pool decision is not a policy recommendation")
        return Recommendation(
            policy=self.policy,
            at=self.at,
            desired=self.desired,
            direction=self.direction,
            reason=self.reason,
            metric=self.metric,
            metric_missing=self.metric_missing,
            abstain=self.abstain,
            floor=self.floor,
            ceiling=self.ceiling,
            scale_out_cooldown_s=self.scale_out_cooldown_s,
            scale_in_cooldown_s=self.scale_in_cooldown_s,
        )

    def explain(self) -> str:
        """One line for people: result, reason, formula and clamps."""
        parts = [
            f"{self.current} -> {self.desired} ({self.direction.value}, {self.reason.value})",
            self.formula,
        ]
        parts += [
            f"{c.reason.value}: {c.before} -> {c.after}{' (' + c.detail + ')' if c.detail else ''}"
            for c in self.clamps
        ]
        return "; ".join(parts)


def same_recommendation(a: Recommendation | None, b: Recommendation) -> bool:
    """True when `b` tells the pool nothing new compared with `a` (so the policy need not signal)."""
    if a is None:
        return False
    keys = ("desired", "direction", "metric_missing", "abstain", "floor", "ceiling", "reason")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


# --- state carried between evaluations ------------------------------------------------------------


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


class CooldownState(Message):
    """The pool's cooldowns, durable because the pool workflow carries this model.

    After a scale-out, scale-out waits `scale_out_cooldown_s` and scale-in waits `scale_in_cooldown_s`;
    after a scale-in, scale-in waits `scale_in_cooldown_s` (a scale-out is never held up by a scale-in).
    """

    last_scale_out_at: datetime | None = None
    last_scale_in_at: datetime | None = None
    scale_out_blocked_until: datetime | None = None
    scale_in_blocked_until: datetime | None = None

    def blocked_until(self, direction: Direction) -> datetime | None:
        if direction is Direction.UP:
            return self.scale_out_blocked_until
        if direction is Direction.DOWN:
            return self.scale_in_blocked_until
        return None

    def blocks(self, direction: Direction, now: datetime) -> bool:
        until = self.blocked_until(direction)
        return until is not None and now < until

    def remaining_s(self, direction: Direction, now: datetime) -> float:
        until = self.blocked_until(direction)
        return max(0.0, (until - now).total_seconds()) if until is not None else 0.0

    def after_scaling(
        self, direction: Direction, at: datetime, *, scale_out_cooldown_s: float, scale_in_cooldown_s: float
    ) -> CooldownState:
        """The state after the pool scaled in `direction` at `at` (call it when the pool acts)."""
        _require_aware(at, "at")

        def later(a: datetime | None, b: datetime) -> datetime:
            return b if a is None or b > a else a

        if direction is Direction.UP:
            return self.model_copy(
                update={
                    "last_scale_out_at": at,
                    "scale_out_blocked_until": later(
                        self.scale_out_blocked_until, at + timedelta(seconds=scale_out_cooldown_s)
                    ),
                    "scale_in_blocked_until": later(
                        self.scale_in_blocked_until, at + timedelta(seconds=scale_in_cooldown_s)
                    ),
                }
            )
        if direction is Direction.DOWN:
            return self.model_copy(
                update={
                    "last_scale_in_at": at,
                    "scale_in_blocked_until": later(
                        self.scale_in_blocked_until, at + timedelta(seconds=scale_in_cooldown_s)
                    ),
                }
            )
        return self

    def after_decision(self, decision: Decision, at: datetime | None = None) -> CooldownState:
        """Start the cooldowns `decision` asks for, at `at` (default: the decision's own time)."""
        return self.after_scaling(
            decision.direction,
            decision.at if at is None else at,
            scale_out_cooldown_s=decision.scale_out_cooldown_s,
            scale_in_cooldown_s=decision.scale_in_cooldown_s,
        )


# --- helpers --------------------------------------------------------------------------------------


def _require_aware(at: datetime, name: str) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {at!r}")


def _fmt(x: float) -> str:
    return f"{x:g}"


class _Trail:
    """Collects the clamps of one decision."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.clamps: list[Clamp] = []

    def clamp(self, reason: ReasonCode, after: int, detail: str = "") -> None:
        if after != self.value:
            self.clamps.append(Clamp(reason=reason, before=self.value, after=after, detail=detail))
            self.value = after


# --- strategies (the math) ------------------------------------------------------------------------


def threshold_recommendation(spec: PolicySpec, current: int, metric: float) -> tuple[int, str, ReasonCode]:
    """The original system's rule: out by scale_up_by at >= threshold_up, in by scale_down_by at <= threshold_down."""
    assert spec.threshold_up is not None and spec.threshold_down is not None
    name = spec.metric or "metric"
    if metric >= spec.threshold_up:
        desired = current + spec.scale_up_by
        return (
            desired,
            f"{name}={_fmt(metric)} >= threshold_up={_fmt(spec.threshold_up)}: "
            f"{current} + scale_up_by {spec.scale_up_by} = {desired}",
            ReasonCode.SCALE_OUT_THRESHOLD,
        )
    if metric <= spec.threshold_down:
        desired = max(0, current - spec.scale_down_by)
        return (
            desired,
            f"{name}={_fmt(metric)} <= threshold_down={_fmt(spec.threshold_down)}: "
            f"{current} - scale_down_by {spec.scale_down_by} = {desired}",
            ReasonCode.SCALE_IN_THRESHOLD,
        )
    return (
        current,
        f"threshold_down={_fmt(spec.threshold_down)} < {name}={_fmt(metric)} < "
        f"threshold_up={_fmt(spec.threshold_up)}: hold {current}",
        ReasonCode.WITHIN_THRESHOLDS,
    )


def find_step(steps: list[Step], diff: float) -> Step | None:
    """The step containing `diff` (metric - threshold), with AWS's edge rules (see `Step`)."""
    for s in steps:
        if diff >= 0:
            if s.lower <= diff < s.upper:
                return s
        elif s.lower < diff <= s.upper:
            return s
    return None


def percent_change(current: int, percent: float, min_magnitude: int | None) -> int:
    """AWS PercentChangeInCapacity: round toward zero but never to zero, then apply the minimum magnitude."""
    change = current * percent / 100.0
    if change == 0:
        return 0
    if 0 < change < 1:
        n = 1
    elif -1 < change < 0:
        n = -1
    else:
        n = int(math.trunc(change))
    if min_magnitude is not None and abs(n) < min_magnitude:
        n = min_magnitude if n > 0 else -min_magnitude
    return n


def step_recommendation(spec: PolicySpec, current: int, metric: float) -> tuple[int, str, ReasonCode]:
    """AWS step scaling: the step whose bounds contain metric - threshold gives the adjustment."""
    assert spec.threshold is not None and spec.steps is not None
    name = spec.metric or "metric"
    diff = metric - spec.threshold
    head = f"{name} - threshold = {_fmt(metric)} - {_fmt(spec.threshold)} = {diff:+g}"
    step = find_step(spec.steps, diff)
    if step is None:
        return current, f"{head}: in no step, hold {current}", ReasonCode.WITHIN_THRESHOLDS
    lo = "-inf" if step.lower_bound is None else _fmt(step.lower_bound)
    hi = "+inf" if step.upper_bound is None else _fmt(step.upper_bound)
    where = f"{head} in step [{lo}, {hi})" if diff >= 0 else f"{head} in step ({lo}, {hi}]"
    if spec.adjustment_type == "exact_capacity":
        desired = int(step.adjustment)
        return desired, f"{where}: exact_capacity {desired}", ReasonCode.STEP_ADJUSTMENT
    if spec.adjustment_type == "change_in_capacity":
        change = int(step.adjustment)
        formula = f"{where}: change_in_capacity {change:+d}"
    else:
        change = percent_change(current, step.adjustment, spec.min_adjustment_magnitude)
        formula = f"{where}: {step.adjustment:+g}% of {current} -> {change:+d}"
        if spec.min_adjustment_magnitude is not None:
            formula += f" (min magnitude {spec.min_adjustment_magnitude})"
    desired = max(0, current + change)
    return desired, f"{formula}: {current} -> {desired}", ReasonCode.STEP_ADJUSTMENT


def target_tracking_recommendation(
    spec: PolicySpec, current: int, metric: float
) -> tuple[int, str, ReasonCode]:
    """Kubernetes HPA: ratio = metric/target; inside the tolerance band hold, else ceil(current * ratio).

    From zero servers there is nothing to multiply: a ratio above the band asks for ceil(ratio) servers
    (the metric is read as load in units of one server at target), otherwise zero stays zero.
    """
    assert spec.target is not None
    name = spec.metric or "metric"
    ratio = metric / spec.target
    head = f"ratio = {name}/target = {_fmt(metric)}/{_fmt(spec.target)} = {ratio:.3f}"
    lo, hi = 1.0 - spec.tolerance_down, 1.0 + spec.tolerance_up
    if lo <= ratio <= hi:
        return (
            current,
            f"{head}, within [{lo:g}, {hi:g}] (tolerance -{spec.tolerance_down:g}/+{spec.tolerance_up:g}): hold {current}",
            ReasonCode.WITHIN_TOLERANCE,
        )
    if current == 0:
        desired = math.ceil(ratio) if ratio > hi else 0
        return desired, f"{head}; from 0 servers: ceil({ratio:.3f}) = {desired}", ReasonCode.TARGET_TRACKING
    desired = math.ceil(current * ratio)
    return desired, f"{head}; desired = ceil({current} x {ratio:.3f}) = {desired}", ReasonCode.TARGET_TRACKING


# --- one policy -----------------------------------------------------------------------------------


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
    trail: _Trail,
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
        trail = _Trail(current)
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
    trail = _Trail(raw)
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
    _require_aware(now, "now")
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
            trail=_Trail(current),
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
                trail=_Trail(current),
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

    trail = _Trail(raw)
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
                f"{_fmt(spec.stabilization_window_s)} s window",
            )
        elif raw < current:
            trail.clamp(
                ReasonCode.SCALE_IN_STABILIZED,
                min(current, highest),
                f"highest recommendation in the last {_fmt(spec.stabilization_window_s)} s is {highest}",
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


def _vote(r: Recommendation, current: int) -> Direction:
    """How a recommendation votes against the pool's current count (see `Recommendation`)."""
    if r.direction is Direction.UP and r.desired > current:
        return Direction.UP
    if r.direction is Direction.DOWN and r.desired < current and not r.metric_missing:
        return Direction.DOWN
    return Direction.NONE


def arbitrate(
    recommendations: list[Recommendation],
    *,
    current: int,
    pool_min: int,
    pool_max: int,
    now: datetime,
    cooldowns: CooldownState,
) -> Decision:
    """The pool's verdict over the latest recommendation of each policy.

    Scale out if any voting policy asks (the largest wins); scale in only when every voting policy asks
    to and no metric is missing (to the highest of their counts); clamp to the pool's min/max narrowed
    by active schedules' floor/ceiling (a ceiling wins over a floor); then hold a change the cooldown of
    its direction forbids. Bringing the pool back inside its bounds is never held by a cooldown.
    """
    _require_aware(now, "now")
    if pool_min > pool_max:
        raise ValueError(f"pool_min ({pool_min}) is greater than pool_max ({pool_max})")
    voters = [r for r in recommendations if not r.abstain]
    missing = [r for r in voters if r.metric_missing]
    votes = {id(r): _vote(r, current) for r in voters}
    ups = [r for r in voters if votes[id(r)] is Direction.UP]
    downs = [r for r in voters if votes[id(r)] is Direction.DOWN]
    holds = [r for r in voters if votes[id(r)] is Direction.NONE]

    def vote(r: Recommendation) -> str:
        return f"{r.policy}->{'hold' if votes[id(r)] is Direction.NONE else r.desired} ({r.reason.value})"

    listing = ", ".join(vote(r) for r in voters) or "no voting policy"
    out_cd = DEFAULT_COOLDOWN_S
    in_cd = max((r.scale_in_cooldown_s for r in voters), default=DEFAULT_COOLDOWN_S)
    trail: _Trail
    if ups:
        winner = max(ups, key=lambda r: (r.desired, r.policy))
        raw, reason = winner.desired, winner.reason
        out_cd = winner.scale_out_cooldown_s
        formula = f"scale out, largest wins: max of [{listing}] = {raw} ({winner.policy})"
        trail = _Trail(raw)
    elif downs and not holds:
        chosen = max(downs, key=lambda r: (r.desired, r.policy))
        raw, reason = chosen.desired, chosen.reason
        formula = f"scale in, all agree: highest of [{listing}] = {raw}"
        trail = _Trail(raw)
    else:
        raw = current
        trail = _Trail(current)
        if missing:
            reason = ReasonCode.METRIC_UNAVAILABLE
            others = [r for r in holds if not r.metric_missing]
            if downs and not others:
                # everyone with data wants to scale in: record what the missing metric stopped
                wanted = max(r.desired for r in downs)
                trail = _Trail(wanted)
                trail.clamp(
                    ReasonCode.METRIC_UNAVAILABLE,
                    current,
                    "no scale-in while a metric is missing: " + ", ".join(r.policy for r in missing),
                )
                raw = wanted
        elif holds:
            reason = holds[0].reason
        else:
            reason = ReasonCode.NO_RECOMMENDATION
        formula = f"hold: [{listing}]"

    floors = [r.floor for r in recommendations if r.floor is not None]
    ceilings = [r.ceiling for r in recommendations if r.ceiling is not None]
    hi = min([pool_max, *ceilings])
    hi = max(hi, pool_min)
    lo = min(max([pool_min, *floors]), hi)
    if floors or ceilings:
        formula += f"; bounds [{lo}, {hi}] (pool [{pool_min}, {pool_max}], schedules)"
    if trail.value > hi:
        trail.clamp(ReasonCode.AT_MAX_SERVERS, hi, f"max_servers {hi}")
    elif trail.value < lo:
        trail.clamp(ReasonCode.AT_MIN_SERVERS, lo, f"min_servers {lo}")

    direction = Direction.of(current, trail.value)
    if cooldowns.blocks(direction, now):
        held = min(max(current, lo), hi)
        until = cooldowns.blocked_until(direction)
        assert until is not None
        trail.clamp(
            ReasonCode.COOLDOWN_ACTIVE,
            held,
            f"scale-{'out' if direction is Direction.UP else 'in'} cooldown until {until.isoformat()} "
            f"({cooldowns.remaining_s(direction, now):.0f} s left)",
        )
    final = trail.value
    return Decision(
        policy=None,
        at=now,
        current=current,
        inputs=list(recommendations),
        formula=formula,
        raw=raw,
        clamps=trail.clamps,
        desired=final,
        direction=Direction.of(current, final),
        reason=trail.clamps[-1].reason if trail.clamps else reason,
        metric_missing=bool(missing),
        floor=lo,
        ceiling=hi,
        scale_out_cooldown_s=out_cd,
        scale_in_cooldown_s=in_cd,
    )
