"""Pool capacity math: clamping to bounds, planning a scaling step, and choosing scale-in victims."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from poolctl.domain.decision import Direction
from poolctl.domain.pool_spec import TerminationPolicy


@dataclass(frozen=True)
class ScalePlan:
    direction: Direction
    count: int
    target: int


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def plan_scale(current: int, target: int) -> ScalePlan:
    """What a pool at `current` servers must do to reach `target`."""
    if target > current:
        return ScalePlan(Direction.UP, target - current, target)
    if target < current:
        return ScalePlan(Direction.DOWN, current - target, target)
    return ScalePlan(Direction.NONE, 0, target)


class _Aged(Protocol):
    @property
    def server_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def health(self) -> str: ...


T = TypeVar("T", bound=_Aged)


def pick_victims(servers: Sequence[T], count: int, policy: TerminationPolicy) -> list[T]:
    """Servers a scale-in removes: unhealthy first, then initial (not yet serving), then by the termination policy."""
    if count <= 0:
        return []
    health_rank = {"unhealthy": 0, "initial": 1, "healthy": 2}

    def key(s: T) -> tuple[int, float, str]:
        age = s.created_at.timestamp()
        by_age = age if policy is TerminationPolicy.OLDEST_FIRST else -age
        return (health_rank.get(s.health, 1), by_age, s.server_id)

    return sorted(servers, key=key)[:count]
