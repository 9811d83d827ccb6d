"""The decision vocabulary: reason codes, `Direction`, and the `Decision` / `Recommendation` records.

Every decision (one policy's in `domain.evaluation`, the pool's in `domain.arbitration`) is a `Decision`:
the inputs, the formula applied, each clamp with its reason code (HPA condition names), and the outcome.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from poolctl.domain.model import Message
from poolctl.domain.policy_spec import DEFAULT_COOLDOWN_S


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
    SCALE_UP_STABILIZED = "ScaleUpStabilized"
    SCALE_UP_LIMIT = "ScaleUpLimit"
    SCALE_DOWN_LIMIT = "ScaleDownLimit"
    SERVERS_NOT_READY = "ServersNotReady"
    MISSING_SERVER_METRICS = "MissingServerMetrics"
    BELOW_ACTIVATION_THRESHOLD = "BelowActivationThreshold"
    SCALE_FROM_ZERO = "ScaleFromZero"
    EVALUATION_ERROR = "EvaluationError"


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


# --- helpers shared by the decision modules ------------------------------------------------------


def require_aware(at: datetime, name: str) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {at!r}")


def fmt_number(x: float) -> str:
    return f"{x:g}"


class Trail:
    """Collects the clamps of one decision."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.clamps: list[Clamp] = []

    def clamp(self, reason: ReasonCode, after: int, detail: str = "") -> None:
        if after != self.value:
            self.clamps.append(Clamp(reason=reason, before=self.value, after=after, detail=detail))
            self.value = after
