"""Slow start: the effective weight of a server that just entered rotation, ramping up to its weight.

The rule is HAProxy's `slowstart` (nginx: `slow_start`): for `slow_start_s` after a server enters rotation
(added, or back from unhealthy or maintenance) its weight grows linearly from a small value to the full
weight, so a cold server is not handed a full share at once. Weights are in `WEIGHT_SCALE` units (HAProxy's
BE_WEIGHT_SCALE) so a ramp of weight 1 still has steps. Pure: the caller gives the elapsed time.
"""

from __future__ import annotations

import math

WEIGHT_SCALE = 16
"""Effective weights are `weight * WEIGHT_SCALE` at full speed (HAProxy scales user weights by 16 too)."""

MIN_FRACTION = 1 / WEIGHT_SCALE
"""Where a ramp starts: 1/16 of the weight (never 0, so the server starts receiving at once, as HAProxy's)."""


def ramp_fraction(elapsed_s: float, slow_start_s: float) -> float:
    """The share of its weight a server gets `elapsed_s` seconds after it entered rotation: linear from
    MIN_FRACTION at 0 to 1 at `slow_start_s` and after; 1 when `slow_start_s` is 0 (no slow start).
    A negative elapsed time (a clock that went back) counts as 0."""
    if slow_start_s <= 0 or elapsed_s >= slow_start_s:
        return 1.0
    return max(MIN_FRACTION, max(elapsed_s, 0.0) / slow_start_s)


def slow_start_weight(weight: int, elapsed_s: float, slow_start_s: float) -> int:
    """The effective weight, in WEIGHT_SCALE units: `ceil(weight * WEIGHT_SCALE * ramp_fraction)`.

    0 for weight 0 (a server that should get nothing still gets nothing), at least 1 otherwise, never more
    than `weight * WEIGHT_SCALE`, non-decreasing in `elapsed_s`, and exactly the full weight once
    `elapsed_s >= slow_start_s`."""
    if weight <= 0:
        return 0
    full = weight * WEIGHT_SCALE
    fraction = ramp_fraction(elapsed_s, slow_start_s)
    if fraction >= 1.0:
        return full
    return min(full, max(1, math.ceil(full * fraction)))


def ramp_ends_at(entered_at_s: float, slow_start_s: float) -> float:
    """When a server that entered rotation at `entered_at_s` reaches its full weight."""
    return entered_at_s + max(slow_start_s, 0.0)
