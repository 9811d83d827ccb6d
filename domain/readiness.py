"""Which servers' metrics count: a server's readiness (health and `instance_warmup_s`, as AWS names it) and
the per-server samples a metric read hands to the decision code. Pure: `now` is always passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from poolctl.domain.model import Message

# Health values as the pool and the store record them; a server without a health check is "healthy".
READY_HEALTH = "healthy"


def server_readiness(
    *, created_at: datetime, health: str, now: datetime, instance_warmup_s: float
) -> tuple[bool, str]:
    """Whether a server's metrics count at `now`, and if not, why (for the decision's formula).

    Ready = its health check passed (`health == "healthy"`; "initial" is still booting, "unhealthy" is
    out of rotation) and `instance_warmup_s` has passed since it was created (AWS instance warm-up).
    """
    if health != READY_HEALTH:
        return False, "booting" if health == "initial" else health
    warm_at = created_at + timedelta(seconds=instance_warmup_s)
    if now < warm_at:
        return False, f"warming up until {warm_at.isoformat()}"
    return True, ""


class ServerSample(Message):
    """One pool server in a metric read: its readiness and, for a per-server source (scrape), its value.

    `value` is None for a server that was not read (not ready) or that gave no value (`error` says why):
    a ready server without a value is a *missing* server in the HPA replica calculator's terms.
    """

    server_id: str
    created_at: datetime
    health: str = READY_HEALTH
    ready: bool = True
    not_ready_reason: str = ""
    value: float | None = None
    error: str | None = None


def sample_server(
    server_id: str,
    *,
    created_at: datetime,
    health: str,
    now: datetime,
    instance_warmup_s: float,
    value: float | None = None,
    error: str | None = None,
) -> ServerSample:
    """A `ServerSample` with its readiness at `now` (the one rule the live read and `simulate` share)."""
    ready, why = server_readiness(
        created_at=created_at, health=health, now=now, instance_warmup_s=instance_warmup_s
    )
    return ServerSample(
        server_id=server_id,
        created_at=created_at,
        health=health,
        ready=ready,
        not_ready_reason=why,
        value=value if ready else None,
        error=error,
    )


@dataclass(frozen=True)
class Census:
    """What a strategy knows about the pool behind a metric value.

    `current` counts every server; `ready` the ones whose metrics count; `missing` the ready ones that
    gave no value (per-server sources only); `values` the ready servers' values for a per-server source
    (None when the metric is one pool-level number, e.g. Prometheus or http_json).
    """

    current: int
    ready: int
    missing: int = 0
    values: tuple[float, ...] | None = None

    @property
    def not_ready(self) -> int:
        return self.current - self.ready

    @staticmethod
    def everyone_ready(current: int) -> Census:
        """No readiness information: every counted server is taken as ready (the pre-readiness model)."""
        return Census(current=current, ready=current)

    @staticmethod
    def of(current: int, samples: Sequence[ServerSample], per_server: bool, keep_values: bool) -> Census:
        """`per_server`: the samples carry the metric (scrape); `keep_values`: the strategy may use each
        server's value (an average, which HPA's replica calculator rebalances)."""
        ready = [s for s in samples if s.ready]
        if not per_server:
            return Census(current=current, ready=min(current, len(ready)))
        values = tuple(s.value for s in ready if s.value is not None)
        return Census(
            current=current,
            ready=min(current, len(ready)),
            missing=len(ready) - len(values),
            values=values if keep_values else None,
        )


def aggregate(values: Sequence[float], how: str) -> float:
    """avg / max / min / sum of a non-empty list (the scrape source's `aggregate`)."""
    if not values:
        raise ValueError("no values to aggregate")
    if how == "avg":
        return sum(values) / len(values)
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    if how == "sum":
        return sum(values)
    raise ValueError(f"unknown aggregate {how!r}")
