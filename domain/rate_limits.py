"""Rate limits per direction (Kubernetes HPA `behavior`): how far a policy may move the pool within each
policy's period, computed from the count at the start of the period. Pure: `now` is always passed in.

The count at the start of a period is HPA's: the current count minus the servers added within the period
(for a scale-up limit), or plus the servers removed within it (for a scale-down limit). The pool's count
changes are observed by the policy at each evaluation (`observe_count`), whoever made them.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from poolctl.domain.decision import fmt_number
from poolctl.domain.model import Message
from poolctl.domain.policy_spec import Behavior, RatePolicy, ScalingRules

# Bound on the count changes carried in PolicyState (they ride through continue-as-new).
MAX_COUNT_CHANGES = 64


class CountChange(Message):
    """The pool's count moved by `delta` servers, as seen by the evaluation at `at`."""

    at: datetime
    delta: int


def longest_period_s(behavior: Behavior | None) -> float:
    if behavior is None:
        return 0.0
    rules = [r for r in (behavior.scale_up, behavior.scale_down) if r is not None]
    return max((p.period_s for r in rules for p in r.policies), default=0.0)


def observe_count(
    changes: list[CountChange],
    last_count: int | None,
    last_at: datetime | None,
    current: int,
    now: datetime,
    keep_s: float,
) -> list[CountChange]:
    """`changes` with the move from `last_count` (seen at `last_at`) to `current` added, and those older
    than `keep_s` dropped. The move is dated at `last_at`, the earliest it can have happened (the pool acts
    on a recommendation right after the evaluation that made it), so a period ends as HPA's would."""
    horizon = now - timedelta(seconds=keep_s)
    kept = [c for c in changes if c.at > horizon and c.at <= now] if keep_s > 0 else []
    if keep_s > 0 and last_count is not None and current != last_count:
        at = last_at if last_at is not None and last_at > horizon else now
        kept.append(CountChange(at=at, delta=current - last_count))
    return kept[-MAX_COUNT_CHANGES:]


def _moved_within(changes: list[CountChange], now: datetime, period_s: float, up: bool) -> int:
    horizon = now - timedelta(seconds=period_s)
    return sum(
        abs(c.delta)
        for c in changes
        if c.at > horizon and c.at <= now and (c.delta > 0) == up and c.delta != 0
    )


def _proposal(policy: RatePolicy, start: int, up: bool) -> int:
    if policy.type == "servers":
        return start + int(policy.value) if up else start - int(policy.value)
    if up:
        return math.ceil(start * (1 + policy.value / 100.0))
    return int(start * (1 - policy.value / 100.0))  # HPA truncates a scale-down proposal


def scale_limit(
    rules: ScalingRules | None, *, current: int, changes: list[CountChange], now: datetime, up: bool
) -> tuple[int, str] | None:
    """The furthest the pool may go in one direction now (never past `current` the other way), and why;
    None when these rules set no limit.

    For each rate policy: start = the count at the start of its period; `servers` allows start ± value,
    `percent` start x (1 ± value/100) (rounded up for a scale-up, down for a scale-down, as HPA).
    `select_policy: max` takes the largest change, `min` the smallest, `disabled` none at all.
    """
    if rules is None:
        return None
    word = "scale-up" if up else "scale-down"
    if rules.select_policy == "disabled":
        return current, f"{word} disabled (behavior select_policy: disabled)"
    if not rules.policies:
        return None
    parts = []
    proposals = []
    for p in rules.policies:
        moved = _moved_within(changes, now, p.period_s, up)
        start = current - moved if up else current + moved
        proposal = _proposal(p, start, up)
        proposals.append(proposal)
        unit = "" if p.type == "servers" else "%"
        parts.append(
            f"{p.type} {fmt_number(p.value)}{unit}/{fmt_number(p.period_s)}s from {start} -> {proposal}"
        )
    # for a scale-up the largest change is the largest count; for a scale-down, the smallest count
    largest_change = max(proposals) if up else min(proposals)
    smallest_change = min(proposals) if up else max(proposals)
    limit = largest_change if rules.select_policy == "max" else smallest_change
    limit = max(limit, current) if up else min(limit, current)
    return limit, f"{word} limit {limit} (select_policy {rules.select_policy} of: {'; '.join(parts)})"
