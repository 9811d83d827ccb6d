"""The health state machine, uptime from transitions, pool summaries and auto-healing plans.

Pure and deterministic: no I/O, no clock (callers pass `now`), so workflows may import it.

States: a new server is `initial`; it becomes `healthy` after exactly `healthy_threshold`
consecutive successes and `unhealthy` after exactly `unhealthy_threshold` consecutive
failures (HAProxy's rise/fall). During the grace period (from the server's start) failures
are counted and recorded but never make the server unhealthy. A probe that could not run
because of the worker's own configuration (`config_error`) says nothing about the target:
it leaves state and counters unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import Field

from poolctl.domain.health_spec import HealthCheckSpec
from poolctl.domain.model import Message

HEAL_BATCH_FRACTION = 0.10


class HealthState(StrEnum):
    INITIAL = "initial"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class ProbeResult(Message):
    """The result of one probe. `ok` False with `config_error` True means the probe could not run
    because of the worker's configuration (no ICMP permission, bad CA file): not the target's fault."""

    ok: bool
    latency_ms: float | None = None
    status_code: int | None = None
    error: str | None = None
    config_error: bool = False


class HealthStatus(Message):
    """State and consecutive counters of one check on one server (what a watch heartbeats)."""

    state: HealthState = HealthState.INITIAL
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    last_result: ProbeResult | None = None
    last_probe_at: datetime | None = None
    last_transition_at: datetime | None = None


class Transition(Message):
    """A state change, the only thing recorded in workflow history and the store."""

    from_state: HealthState
    to_state: HealthState
    at: datetime
    consecutive: int = Field(description="the consecutive successes/failures that caused it")
    reason: str = ""


def in_grace(spec: HealthCheckSpec, started_at: datetime | None, now: datetime) -> bool:
    """True while the server is inside its grace period (counted from its start)."""
    if started_at is None or spec.grace_period <= 0:
        return False
    return now < started_at + timedelta(seconds=spec.grace_period)


def observe(
    state: HealthStatus,
    result: ProbeResult,
    now: datetime,
    spec: HealthCheckSpec,
    started_at: datetime | None = None,
) -> tuple[HealthStatus, Transition | None]:
    """Fold one probe result into the status. Returns the new status and the transition, if any."""
    if result.config_error:
        return state.model_copy(update={"last_result": result, "last_probe_at": now}), None

    if result.ok:
        successes, failures = state.consecutive_successes + 1, 0
    else:
        successes, failures = 0, state.consecutive_failures + 1

    new_state = state.state
    transition: Transition | None = None
    if result.ok and state.state != HealthState.HEALTHY and successes >= spec.healthy_threshold:
        new_state = HealthState.HEALTHY
        transition = Transition(
            from_state=state.state,
            to_state=new_state,
            at=now,
            consecutive=successes,
            reason=f"{successes} consecutive successful probes (healthy_threshold {spec.healthy_threshold})",
        )
    elif (
        not result.ok
        and state.state != HealthState.UNHEALTHY
        and failures >= spec.unhealthy_threshold
        and not in_grace(spec, started_at, now)
    ):
        new_state = HealthState.UNHEALTHY
        transition = Transition(
            from_state=state.state,
            to_state=new_state,
            at=now,
            consecutive=failures,
            reason=(
                f"{failures} consecutive failed probes (unhealthy_threshold {spec.unhealthy_threshold})"
                + (f"; last error: {result.error}" if result.error else "")
            ),
        )

    updated = HealthStatus(
        state=new_state,
        consecutive_successes=successes,
        consecutive_failures=failures,
        last_result=result,
        last_probe_at=now,
        last_transition_at=now if transition else state.last_transition_at,
    )
    return updated, transition


# --------------------------------------------------------------------------- uptime


def uptime_percent(
    transitions: Sequence[Transition],
    *,
    window_start: datetime,
    window_end: datetime,
    state_before: HealthState | None = None,
) -> float | None:
    """Percentage of the window the server was healthy, from its transitions (not per-probe data).

    `transitions` may include ones before the window (the latest of them gives the state at
    `window_start`); otherwise `state_before` (default: the first transition's `from_state`,
    else `initial`) is the state at `window_start`. Time spent `initial` (booting, unknown)
    is left out of the denominator: uptime = healthy / (healthy + unhealthy).
    Returns None when the window holds no known (healthy or unhealthy) time.
    """
    if window_end <= window_start:
        return None
    ordered = sorted(transitions, key=lambda t: t.at)
    current = state_before
    if current is None:
        current = ordered[0].from_state if ordered else HealthState.INITIAL
    for t in ordered:
        if t.at <= window_start:
            current = t.to_state
    healthy = unhealthy = 0.0
    cursor = window_start
    for t in ordered:
        if t.at <= window_start:
            continue
        if t.at >= window_end:
            break
        span = (t.at - cursor).total_seconds()
        if current == HealthState.HEALTHY:
            healthy += span
        elif current == HealthState.UNHEALTHY:
            unhealthy += span
        cursor, current = t.at, t.to_state
    span = (window_end - cursor).total_seconds()
    if current == HealthState.HEALTHY:
        healthy += span
    elif current == HealthState.UNHEALTHY:
        unhealthy += span
    known = healthy + unhealthy
    if known <= 0:
        return None
    return 100.0 * healthy / known


# --------------------------------------------------------------------------- pool summary


class PoolHealthSummary(Message):
    healthy: int = 0
    unhealthy: int = 0
    initial: int = 0

    @property
    def total(self) -> int:
        return self.healthy + self.unhealthy + self.initial


def _state_of(x: HealthState | HealthStatus | MemberHealth) -> HealthState:
    return x if isinstance(x, HealthState) else x.state


def summarize(members: Iterable[HealthState | HealthStatus | MemberHealth]) -> PoolHealthSummary:
    """Count servers per state."""
    counts = {s: 0 for s in HealthState}
    for m in members:
        counts[_state_of(m)] += 1
    return PoolHealthSummary(
        healthy=counts[HealthState.HEALTHY],
        unhealthy=counts[HealthState.UNHEALTHY],
        initial=counts[HealthState.INITIAL],
    )


# --------------------------------------------------------------------------- auto-healing


class MemberHealth(Message):
    """What the PoolWorkflow knows about one member for healing decisions."""

    server_id: str
    state: HealthState = HealthState.INITIAL
    unhealthy_since: datetime | None = None


class HealingPlan(Message):
    """What to do now. `replace` lists servers to replace (launch-before-terminate), oldest
    unhealthy first. `status` is `degraded` when healing stopped because too much of the pool is
    unhealthy (a shared cause is likely), with `reason` saying why."""

    status: Literal["ok", "healing", "degraded"]
    replace: list[str] = Field(default_factory=list)
    reason: str = ""
    batch_limit: int = 0
    unhealthy: int = 0
    in_flight: int = 0
    waiting: list[str] = Field(
        default_factory=list, description="unhealthy, not replaced yet (batch full or too recent)"
    )


def heal_batch_limit(pool_size: int) -> int:
    """At most 10% of the pool (rounded down), at least one, replaced at a time."""
    return max(1, int(pool_size * HEAL_BATCH_FRACTION))


def plan_healing(
    members_health: Mapping[str, HealthState | HealthStatus | MemberHealth] | Sequence[MemberHealth],
    pool_size: int,
    *,
    in_flight: Iterable[str] = (),
    now: datetime | None = None,
    replace_after: float = 0.0,
) -> HealingPlan:
    """Decide which unhealthy servers to replace now.

    - `pool_size`: the pool's desired size (the denominator of both rules).
    - `in_flight`: servers whose replacement is already running; they count against the batch
      limit and are not planned again.
    - `replace_after`: seconds a server must have stayed unhealthy before it is replaced
      (needs `now` and `unhealthy_since`; members without `unhealthy_since` qualify at once).
    - More than half of `pool_size` unhealthy -> no replacement, status `degraded`.
    """
    members: list[MemberHealth] = []
    if isinstance(members_health, Mapping):
        for sid, h in members_health.items():
            if isinstance(h, MemberHealth):
                members.append(h)
            else:
                members.append(MemberHealth(server_id=sid, state=_state_of(h)))
    else:
        members = list(members_health)

    busy = set(in_flight)
    unhealthy = [m for m in members if m.state == HealthState.UNHEALTHY]
    limit = heal_batch_limit(pool_size)
    n_in_flight = len(busy)
    if pool_size <= 0:
        return HealingPlan(status="ok", reason="pool is empty", batch_limit=limit, unhealthy=len(unhealthy))
    if 2 * len(unhealthy) > pool_size:
        return HealingPlan(
            status="degraded",
            reason=(
                f"{len(unhealthy)} of {pool_size} servers are unhealthy (more than half): "
                "likely a shared cause, so auto-healing stopped replacing servers"
            ),
            batch_limit=limit,
            unhealthy=len(unhealthy),
            in_flight=n_in_flight,
            waiting=sorted(m.server_id for m in unhealthy if m.server_id not in busy),
        )

    candidates = [m for m in unhealthy if m.server_id not in busy]
    if replace_after > 0 and now is not None:
        due = [
            m
            for m in candidates
            if m.unhealthy_since is None or (now - m.unhealthy_since).total_seconds() >= replace_after
        ]
    else:
        due = list(candidates)
    # Longest unhealthy first; members with no known start first of all; ties by id.
    unknown = sorted((m for m in due if m.unhealthy_since is None), key=lambda m: m.server_id)
    known = [m for m in due if m.unhealthy_since is not None]
    known.sort(key=lambda m: (m.unhealthy_since, m.server_id))  # type: ignore[arg-type,return-value]
    due = unknown + known
    room = max(0, limit - n_in_flight)
    chosen = [m.server_id for m in due[:room]]
    waiting = sorted(m.server_id for m in candidates if m.server_id not in chosen)
    if chosen:
        reason = f"replacing {len(chosen)} unhealthy server(s) (batch limit {limit}, {n_in_flight} in flight)"
    elif candidates:
        reason = (
            f"{len(candidates)} unhealthy server(s) waiting (batch limit {limit}, {n_in_flight} in flight)"
        )
    else:
        reason = "no unhealthy servers" if not n_in_flight else f"{n_in_flight} replacement(s) in flight"
    return HealingPlan(
        status="healing" if (chosen or n_in_flight or candidates) else "ok",
        replace=chosen,
        reason=reason,
        batch_limit=limit,
        unhealthy=len(unhealthy),
        in_flight=n_in_flight,
        waiting=waiting,
    )
