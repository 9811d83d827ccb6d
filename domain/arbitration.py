"""The pool's verdict (`arbitrate`) over the latest recommendation of each of its policies, and the
pool's cooldowns (`CooldownState`). Pure and deterministic (time is an argument)::

    any scale-out vote?  -> largest wins
    all vote scale-in and no metric missing? -> the smallest reduction wins
    otherwise hold       -> clamp to pool (and schedule) min/max -> per-direction cooldown
"""

from __future__ import annotations

from datetime import datetime, timedelta

from poolctl.domain.decision import Decision, Direction, ReasonCode, Recommendation, Trail, require_aware
from poolctl.domain.model import Message
from poolctl.domain.policy_spec import DEFAULT_COOLDOWN_S


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
        require_aware(at, "at")

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
    require_aware(now, "now")
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
    trail: Trail
    if ups:
        winner = max(ups, key=lambda r: (r.desired, r.policy))
        raw, reason = winner.desired, winner.reason
        out_cd = winner.scale_out_cooldown_s
        formula = f"scale out, largest wins: max of [{listing}] = {raw} ({winner.policy})"
        trail = Trail(raw)
    elif downs and not holds:
        chosen = max(downs, key=lambda r: (r.desired, r.policy))
        raw, reason = chosen.desired, chosen.reason
        formula = f"scale in, all agree: highest of [{listing}] = {raw}"
        trail = Trail(raw)
    else:
        raw = current
        trail = Trail(current)
        if missing:
            reason = ReasonCode.METRIC_UNAVAILABLE
            others = [r for r in holds if not r.metric_missing]
            if downs and not others:
                # everyone with data wants to scale in: record what the missing metric stopped
                wanted = max(r.desired for r in downs)
                trail = Trail(wanted)
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
