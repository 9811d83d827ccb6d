"""One policy's evaluation (`evaluate_policy`): its state between evaluations, the stages, pause/resume.

Pure and deterministic (time is an argument) so workflows can call it. A policy evaluation goes through
these stages, each of which may clamp the value::

    paused? -> schedule window | no server ready yet? | metric (missing -> on_metric_error)
      -> zero servers (activation_threshold) | strategy math on the ready servers (raw)
      -> scale-in stabilization -> scale-up stabilization -> rate limits (behavior)
      -> paused direction -> policy min/max -> max_step -> dry_run
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from poolctl.domain.decision import Decision, Direction, ReasonCode, Trail, fmt_number, require_aware
from poolctl.domain.model import Message
from poolctl.domain.policy_spec import PolicySpec, ScrapeSource
from poolctl.domain.rate_limits import CountChange, longest_period_s, observe_count, scale_limit
from poolctl.domain.readiness import Census, ServerSample, aggregate
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
    # raw recommendations in the scale-up stabilization window (the ones that can still be its minimum)
    up_history: list[HistoryPoint] = Field(default_factory=list)
    # the pool's count at the last evaluation, and its moves within the longest rate-limit period
    last_current: int | None = None
    last_current_at: datetime | None = None
    count_changes: list[CountChange] = Field(default_factory=list)


def _stabilize(
    history: list[HistoryPoint],
    now: datetime,
    window_s: float,
    raw: int,
    keep: Literal["highest", "lowest"] = "highest",
) -> tuple[list[HistoryPoint], int]:
    """Add `raw` to the window and return (new history, highest (or lowest) recommendation in the window)."""
    pick = max if keep == "highest" else min
    horizon = now - timedelta(seconds=window_s)
    kept = [h for h in history if h.at > horizon and h.at <= now]
    # Monotone queue: an older point that a newer one beats (or equals) can never be the extreme again.
    while kept and pick(kept[-1].desired, raw) == raw:
        kept.pop()
    kept.append(HistoryPoint(at=now, desired=raw))
    while len(kept) > MAX_HISTORY:
        # merge the two oldest: keep the extreme (older) value until the later time
        a, b = kept[0], kept[1]
        kept[0:2] = [HistoryPoint(at=b.at, desired=pick(a.desired, b.desired))]
    return kept, pick(h.desired for h in kept)


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


def _hold(
    spec: PolicySpec,
    *,
    current: int,
    metric: float | None,
    now: datetime,
    formula: str,
    reason: ReasonCode,
    **extra: Any,
) -> Decision:
    return _decision(
        spec,
        current=current,
        metric=metric,
        now=now,
        formula=formula,
        raw=current,
        trail=Trail(current),
        reason=reason,
        **extra,
    )


def _census(
    spec: PolicySpec, current: int, metric: float | None, servers: Sequence[ServerSample] | None
) -> tuple[Census, float | None, str]:
    """Who stands behind the metric, the metric itself (aggregated here over the ready servers for a
    per-server source), and a note on the servers for the formula."""
    if servers is None:
        return Census.everyone_ready(current), metric, ""
    source = spec.source if isinstance(spec.source, ScrapeSource) else None
    census = Census.of(
        current, servers, source is not None, keep_values=source is not None and source.aggregate == "avg"
    )
    note = ""
    if census.not_ready:
        why = sorted({s.not_ready_reason for s in servers if not s.ready and s.not_ready_reason})
        note = f"{census.ready} of {current} servers ready ({census.not_ready} not: {', '.join(why) or 'not ready'})"
    if source is not None:
        values = [s.value for s in servers if s.ready and s.value is not None]
        metric = aggregate(values, source.aggregate) if values else None
        if census.missing:
            note = (note + "; " if note else "") + f"{census.missing} ready server(s) gave no value"
    return census, metric, note


def _from_zero(spec: PolicySpec, metric: float) -> tuple[int, str, ReasonCode]:
    """From zero servers (KEDA activation): at or below `activation_threshold` stay at zero; above it ask
    for at least one server. Target tracking then applies its formula as from one server, threshold and
    step add their adjustment to zero."""
    act = fmt_number(spec.activation_threshold)
    if metric <= spec.activation_threshold:
        return (
            0,
            f"0 servers, {spec.metric}={fmt_number(metric)} <= activation_threshold {act}: stay at 0",
            (ReasonCode.BELOW_ACTIVATION_THRESHOLD),
        )
    head = f"0 servers, {spec.metric}={fmt_number(metric)} > activation_threshold {act}: at least 1"
    if spec.strategy == "target_tracking":
        raw, formula, _ = target_tracking_recommendation(spec, Census.everyone_ready(1), metric)
        head += "; from 1 server: "
    elif spec.strategy == "threshold":
        raw, formula, _ = threshold_recommendation(spec, Census.everyone_ready(0), metric)
        head += "; "
    else:
        raw, formula, _ = step_recommendation(spec, Census.everyone_ready(0), metric)
        head += "; "
    desired = max(1, raw)
    return desired, f"{head}{formula} -> {desired}", ReasonCode.SCALE_FROM_ZERO


def evaluate_policy(
    spec: PolicySpec,
    *,
    current: int,
    metric: float | None,
    now: datetime,
    state: PolicyState,
    servers: Sequence[ServerSample] | None = None,
) -> tuple[Decision, PolicyState]:
    """Evaluate one policy at `now` against the pool's `current` count and the metric just read.

    `metric` is the pool-level value, None when the source could not be read; NaN and infinities count
    as unavailable too. `servers` are the pool's servers with their readiness (`domain.readiness`) and,
    for a scrape source, their own values: the metric is then the source's aggregate over the ready
    servers. Without `servers` every counted server is taken as ready.
    Returns the decision (send `decision.as_recommendation()` to the pool) and the next state.
    """
    require_aware(now, "now")
    if current < 0:
        raise ValueError(f"current must be >= 0, got {current}")
    census, metric, servers_note = _census(spec, current, metric, servers)
    if metric is not None and not math.isfinite(metric):
        metric = None
    next_state = state.model_copy(
        update={
            "evaluations": state.evaluations + 1,
            "count_changes": observe_count(
                state.count_changes,
                state.last_current,
                state.last_current_at,
                current,
                now,
                longest_period_s(spec.behavior),
            ),
            "last_current": current,
            "last_current_at": now,
        }
    )
    if metric is not None:
        next_state.last_metric, next_state.last_metric_at = metric, now

    def done(decision: Decision) -> tuple[Decision, PolicyState]:
        next_state.last_decision = decision
        return decision, next_state

    paused = paused_decision(spec, state, current=current, metric=metric, now=now)
    if paused is not None:
        return done(paused)

    if spec.type == "schedule":
        return done(_evaluate_schedule(spec, current=current, now=now, state=state))

    per_server = servers is not None and isinstance(spec.source, ScrapeSource)
    if current > 0 and census.ready == 0 and (per_server or metric is not None):
        formula = f"no server is ready yet: {servers_note}; hold {current}"
        return done(
            _hold(
                spec,
                current=current,
                metric=metric,
                now=now,
                formula=formula,
                reason=ReasonCode.SERVERS_NOT_READY,
            )
        )

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
            if servers_note:
                formula += f" ({servers_note})"
            decision = _hold(
                spec,
                current=current,
                metric=None,
                now=now,
                formula=formula,
                reason=ReasonCode.METRIC_UNAVAILABLE,
                metric_missing=True,
                abstain=ignore,
            )
            if not ignore:
                # remember the hold, so scale-in waits a full window after the data comes back
                next_state.history, _ = _stabilize(state.history, now, spec.stabilization_window_s, current)
            return done(decision)
    elif current == 0:
        raw, formula, reason = _from_zero(spec, metric)
    elif spec.strategy == "threshold":
        raw, formula, reason = threshold_recommendation(spec, census, metric)
    elif spec.strategy == "step":
        raw, formula, reason = step_recommendation(spec, census, metric)
    elif spec.strategy == "target_tracking":
        raw, formula, reason = target_tracking_recommendation(spec, census, metric)
    else:  # pragma: no cover - the spec validator always sets a strategy on metric policies
        raise ValueError(f"policy {spec.name!r} has no strategy")
    if servers_note:
        formula = f"{servers_note}; {formula}"

    trail = Trail(raw)
    _stabilize_down(spec, state, next_state, trail, current=current, now=now, raw=raw)
    _stabilize_up(spec, state, next_state, trail, current=current, now=now, raw=raw)
    _limit_rate(spec, next_state, trail, current=current, now=now)
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
    return done(decision)


def _stabilize_down(
    spec: PolicySpec,
    state: PolicyState,
    next_state: PolicyState,
    trail: Trail,
    *,
    current: int,
    now: datetime,
    raw: int,
) -> None:
    """Scale-in stabilization: no lower than the highest recommendation in the window (HPA scaleDown)."""
    if spec.stabilization_window_s <= 0:
        return
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


def _stabilize_up(
    spec: PolicySpec,
    state: PolicyState,
    next_state: PolicyState,
    trail: Trail,
    *,
    current: int,
    now: datetime,
    raw: int,
) -> None:
    """Scale-up stabilization: no higher than the lowest recommendation in the window (HPA scaleUp)."""
    window_s = spec.scale_up_stabilization_window_s
    if window_s <= 0:
        next_state.up_history = []
        return
    next_state.up_history, lowest = _stabilize(state.up_history, now, window_s, raw, keep="lowest")
    if trail.value > current and lowest < trail.value:
        trail.clamp(
            ReasonCode.SCALE_UP_STABILIZED,
            max(current, lowest),
            f"lowest recommendation in the last {fmt_number(window_s)} s is {lowest}",
        )


def _limit_rate(
    spec: PolicySpec, next_state: PolicyState, trail: Trail, *, current: int, now: datetime
) -> None:
    """HPA `behavior` rate limits on the stabilized value (`domain.rate_limits`)."""
    if spec.behavior is None or trail.value == current:
        return
    up = trail.value > current
    rules = spec.behavior.scale_up if up else spec.behavior.scale_down
    limit = scale_limit(rules, current=current, changes=next_state.count_changes, now=now, up=up)
    if limit is None:
        return
    value, detail = limit
    if up and trail.value > value:
        trail.clamp(ReasonCode.SCALE_UP_LIMIT, value, detail)
    elif not up and trail.value < value:
        trail.clamp(ReasonCode.SCALE_DOWN_LIMIT, value, detail)


def paused_decision(
    spec: PolicySpec, state: PolicyState, *, current: int, now: datetime, metric: float | None = None
) -> Decision | None:
    """The decision of a policy that is fully paused (`pause`, or `is_active: false`): hold `current` and
    abstain (reason Paused), needing no metric; None when it is not fully paused (a scale-in or scale-out
    pause alone still evaluates). The workflow sends it the moment a pause arrives, without waiting for
    its evaluation loop (workflows/policy.py); `evaluate_policy` returns the same for a paused policy."""
    if spec.is_active and not state.paused:
        return None
    why = "policy is not active (is_active: false)" if not spec.is_active else "policy is paused"
    return _hold(
        spec, current=current, metric=metric, now=now, formula=why, reason=ReasonCode.PAUSED, abstain=True
    )


def evaluation_error_decision(
    spec: PolicySpec, *, current: int, now: datetime, error: BaseException
) -> Decision:
    """The decision recorded when the decision code itself raised: hold (a vote that blocks scale-in),
    with reason `EvaluationError` and the message, so the policy's loop goes on."""
    return _hold(
        spec,
        current=current,
        metric=None,
        now=now,
        formula=f"evaluation failed: {type(error).__name__}: {error}; hold {current}",
        reason=ReasonCode.EVALUATION_ERROR,
    )


Evaluate = Callable[..., tuple[Decision, PolicyState]]


def evaluate_or_hold(
    spec: PolicySpec,
    *,
    current: int,
    metric: float | None,
    now: datetime,
    state: PolicyState,
    servers: Sequence[ServerSample] | None = None,
    evaluate: Evaluate = evaluate_policy,
) -> tuple[Decision, PolicyState, str | None]:
    """`evaluate_policy` that never raises: a fault of the decision code becomes a held decision with
    reason EvaluationError (`evaluation_error_decision`), counted as an evaluation, so a policy's loop
    goes on. Returns (decision, next state, the error text or None). `evaluate` is the decision code
    (a test passes a faulty one)."""
    try:
        decision, next_state = evaluate(
            spec, current=current, metric=metric, now=now, state=state, servers=servers
        )
    except Exception as e:  # noqa: BLE001 - any fault of the decision code, recorded and held
        decision = evaluation_error_decision(spec, current=current, now=now, error=e)
        held = state.model_copy(update={"evaluations": state.evaluations + 1, "last_decision": decision})
        return decision, held, decision.formula
    return decision, next_state, None


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
