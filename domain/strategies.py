"""Scaling strategies, the math only: threshold (the original system's), step (AWS step scaling) and
target tracking (Kubernetes HPA). Each turns (spec, current count, metric) into a raw count and its formula."""

from __future__ import annotations

import math

from poolctl.domain.decision import ReasonCode, fmt_number
from poolctl.domain.policy_spec import PolicySpec, Step


def threshold_recommendation(spec: PolicySpec, current: int, metric: float) -> tuple[int, str, ReasonCode]:
    """The original system's rule: out by scale_up_by at >= threshold_up, in by scale_down_by at <= threshold_down."""
    assert spec.threshold_up is not None and spec.threshold_down is not None
    name = spec.metric or "metric"
    if metric >= spec.threshold_up:
        desired = current + spec.scale_up_by
        return (
            desired,
            f"{name}={fmt_number(metric)} >= threshold_up={fmt_number(spec.threshold_up)}: "
            f"{current} + scale_up_by {spec.scale_up_by} = {desired}",
            ReasonCode.SCALE_OUT_THRESHOLD,
        )
    if metric <= spec.threshold_down:
        desired = max(0, current - spec.scale_down_by)
        return (
            desired,
            f"{name}={fmt_number(metric)} <= threshold_down={fmt_number(spec.threshold_down)}: "
            f"{current} - scale_down_by {spec.scale_down_by} = {desired}",
            ReasonCode.SCALE_IN_THRESHOLD,
        )
    return (
        current,
        f"threshold_down={fmt_number(spec.threshold_down)} < {name}={fmt_number(metric)} < "
        f"threshold_up={fmt_number(spec.threshold_up)}: hold {current}",
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
    head = f"{name} - threshold = {fmt_number(metric)} - {fmt_number(spec.threshold)} = {diff:+g}"
    step = find_step(spec.steps, diff)
    if step is None:
        return current, f"{head}: in no step, hold {current}", ReasonCode.WITHIN_THRESHOLDS
    lo = "-inf" if step.lower_bound is None else fmt_number(step.lower_bound)
    hi = "+inf" if step.upper_bound is None else fmt_number(step.upper_bound)
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
    head = f"ratio = {name}/target = {fmt_number(metric)}/{fmt_number(spec.target)} = {ratio:.3f}"
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
