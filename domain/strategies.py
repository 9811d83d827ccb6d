"""Scaling strategies, the math only: threshold (the original system's), step (AWS step scaling) and
target tracking (Kubernetes HPA). Each turns (spec, the pool's `Census`, metric) into a raw count, its
formula and a reason code.

Servers that are not ready (booting, unhealthy, or inside `instance_warmup_s`) never feed the metric.
Target tracking follows HPA's replica calculator (a not-ready server counts as 0 % of target on a
scale-out and is left out otherwise; a ready server with no value counts as 100 % of target on a
scale-in and 0 % on a scale-out). Threshold and step follow AWS's warm-up rule: a scale-out adds to the
ready servers, so servers still warming up count toward it; they never scale in on partial data.
"""

from __future__ import annotations

import math

from poolctl.domain.decision import ReasonCode, fmt_number
from poolctl.domain.policy_spec import PolicySpec, Step
from poolctl.domain.readiness import Census

# Larger than any pool: bounds what a huge ratio asks for (before the pool's max_servers clamps it).
MAX_RECOMMENDATION = 1_000_000

Proposal = tuple[int, str, ReasonCode]


def ceil_count(x: float) -> int:
    """ceil(x) as a server count, bounded to [0, MAX_RECOMMENDATION] (an infinite ratio cannot overflow)."""
    return int(math.ceil(min(max(x, 0.0), MAX_RECOMMENDATION)))


def _additive(census: Census, change: int, head: str, reason: ReasonCode) -> Proposal:
    """Apply a change in capacity the AWS way: scale-out from the ready servers (warming ones count toward
    the change), scale-in from every server but never while a ready server's metric is missing."""
    current, ready = census.current, census.ready
    if change > 0:
        desired = ready + change
        if census.not_ready:
            formula = f"{head}: {ready} ready + {change} = {desired} ({census.not_ready} not ready left out)"
            if desired <= current:
                return (
                    current,
                    f"{formula}; the servers not ready yet cover it: hold {current}",
                    (ReasonCode.SERVERS_NOT_READY),
                )
            return desired, formula, reason
        return desired, f"{head}: {current} + {change} = {desired}", reason
    if change < 0:
        desired = max(0, current + change)
        formula = f"{head}: {current} - {-change} = {desired}"
        if census.missing:
            return (
                current,
                f"{formula}; {census.missing} ready server(s) gave no value: no scale-in on partial data, "
                f"hold {current}",
                ReasonCode.MISSING_SERVER_METRICS,
            )
        return desired, formula, reason
    return current, f"{head}: hold {current}", reason


def threshold_recommendation(spec: PolicySpec, census: Census, metric: float) -> Proposal:
    """The original system's rule: out by scale_up_by at >= threshold_up, in by scale_down_by at <= threshold_down."""
    assert spec.threshold_up is not None and spec.threshold_down is not None
    name = spec.metric or "metric"
    if metric >= spec.threshold_up:
        head = (
            f"{name}={fmt_number(metric)} >= threshold_up={fmt_number(spec.threshold_up)}, "
            f"scale_up_by {spec.scale_up_by}"
        )
        return _additive(census, spec.scale_up_by, head, ReasonCode.SCALE_OUT_THRESHOLD)
    if metric <= spec.threshold_down:
        head = (
            f"{name}={fmt_number(metric)} <= threshold_down={fmt_number(spec.threshold_down)}, "
            f"scale_down_by {spec.scale_down_by}"
        )
        return _additive(
            census, -min(spec.scale_down_by, census.current), head, ReasonCode.SCALE_IN_THRESHOLD
        )
    return (
        census.current,
        f"threshold_down={fmt_number(spec.threshold_down)} < {name}={fmt_number(metric)} < "
        f"threshold_up={fmt_number(spec.threshold_up)}: hold {census.current}",
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


def step_recommendation(spec: PolicySpec, census: Census, metric: float) -> Proposal:
    """AWS step scaling: the step whose bounds contain metric - threshold gives the adjustment."""
    assert spec.threshold is not None and spec.steps is not None
    current = census.current
    name = spec.metric or "metric"
    diff = metric - spec.threshold
    head = f"{name} - threshold = {fmt_number(metric)} - {fmt_number(spec.threshold)} = {diff:+g}"
    step = find_step(spec.steps, diff)
    if step is None:
        side = "above" if diff >= 0 else "below"
        return current, f"{head}: no step {side} the threshold, hold {current}", ReasonCode.WITHIN_THRESHOLDS
    lo = "-inf" if step.lower_bound is None else fmt_number(step.lower_bound)
    hi = "+inf" if step.upper_bound is None else fmt_number(step.upper_bound)
    where = f"{head} in step [{lo}, {hi})" if diff >= 0 else f"{head} in step ({lo}, {hi}]"
    if spec.adjustment_type == "exact_capacity":
        desired = int(step.adjustment)
        formula = f"{where}: exact_capacity {desired}"
        if desired < current and census.missing:
            return _additive(census, desired - current, formula, ReasonCode.STEP_ADJUSTMENT)
        return desired, formula, ReasonCode.STEP_ADJUSTMENT
    if spec.adjustment_type == "change_in_capacity":
        change = int(step.adjustment)
        formula = f"{where}: change_in_capacity {change:+d}"
    else:
        # a scale-out is a share of the ready servers (AWS leaves warming instances out)
        base = census.ready if step.adjustment > 0 else current
        change = percent_change(base, step.adjustment, spec.min_adjustment_magnitude)
        formula = f"{where}: {step.adjustment:+g}% of {base} -> {change:+d}"
        if spec.min_adjustment_magnitude is not None:
            formula += f" (min magnitude {spec.min_adjustment_magnitude})"
    return _additive(census, max(change, -current), formula, ReasonCode.STEP_ADJUSTMENT)


def _within(spec: PolicySpec, ratio: float) -> bool:
    return 1.0 - spec.tolerance_down <= ratio <= 1.0 + spec.tolerance_up


def target_tracking_recommendation(spec: PolicySpec, census: Census, metric: float) -> Proposal:
    """Kubernetes HPA: ratio = metric/target; inside the tolerance band hold, else ceil(ready * ratio).

    With per-server values (`census.values`, a scrape's average) and servers that are not ready or gave
    no value, HPA's replica calculator: fill in the missing servers (100 % of target when the ratio says
    scale in, 0 % when it says scale out) and, on a scale-out, the not-ready servers at 0 %; recompute
    the ratio over them all; hold if it is now within tolerance or points the other way.
    """
    assert spec.target is not None
    target = spec.target
    current = census.current
    name = spec.metric or "metric"
    ratio = metric / target
    head = f"ratio = {name}/target = {fmt_number(metric)}/{fmt_number(target)} = {ratio:.3f}"
    band = f"[{1 - spec.tolerance_down:g}, {1 + spec.tolerance_up:g}]"
    rebalance_not_ready = census.not_ready > 0 and ratio > 1.0
    if census.values is not None and (census.missing or rebalance_not_ready):
        values = list(census.values)
        notes = []
        if census.missing:
            fill = target if ratio < 1.0 else 0.0
            values += [fill] * census.missing
            notes.append(f"{census.missing} without a value at {fmt_number(fill)}")
        if rebalance_not_ready:
            values += [0.0] * census.not_ready
            notes.append(f"{census.not_ready} not ready at 0")
        new_ratio = sum(values) / len(values) / target
        head += f"; with {', '.join(notes)}: ratio over {len(values)} servers = {new_ratio:.3f}"
        if _within(spec, new_ratio):
            return current, f"{head}, within {band}: hold {current}", ReasonCode.WITHIN_TOLERANCE
        if (ratio < 1.0) != (new_ratio < 1.0):
            return current, f"{head}, the other way: hold {current}", ReasonCode.WITHIN_TOLERANCE
        desired = ceil_count(new_ratio * len(values))
        if (new_ratio < 1.0 and desired > current) or (new_ratio > 1.0 and desired < current):
            return (
                current,
                f"{head}; ceil = {desired} points the other way: hold {current}",
                (ReasonCode.WITHIN_TOLERANCE),
            )
        formula = f"{head}; desired = ceil({len(values)} x {new_ratio:.3f}) = {desired}"
        return desired, formula, ReasonCode.TARGET_TRACKING
    if _within(spec, ratio):
        return (
            current,
            f"{head}, within {band} (tolerance -{spec.tolerance_down:g}/+{spec.tolerance_up:g}): hold {current}",
            ReasonCode.WITHIN_TOLERANCE,
        )
    desired = ceil_count(census.ready * ratio)
    if census.not_ready:
        formula = f"{head}; desired = ceil({census.ready} ready x {ratio:.3f}) = {desired}"
        if ratio > 1.0 and desired <= current:
            return (
                current,
                f"{formula}; the servers not ready yet cover it: hold {current}",
                (ReasonCode.SERVERS_NOT_READY),
            )
        return desired, formula, ReasonCode.TARGET_TRACKING
    return desired, f"{head}; desired = ceil({current} x {ratio:.3f}) = {desired}", ReasonCode.TARGET_TRACKING
