"""The webhook events a pool sends (scaling actions, health transitions, auto-healing, pool errors), built
from what the PoolWorkflow saw. Pure: ids are derived from the pool's chain (`epoch`) and the event, so a
replayed workflow builds the same id and a receiver can de-duplicate on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from poolctl.domain.health_messages import ServerHealthChange
from poolctl.domain.notifications import EventType, WebhookEvent
from poolctl.domain.pool_state import EventSummary


def _event(
    team: str,
    pool: str,
    epoch: str,
    kind: EventType,
    key: str,
    at: datetime,
    summary: str,
    data: dict[str, Any],
) -> WebhookEvent:
    return WebhookEvent(
        id=f"{team}/{pool}/{epoch}/{kind.value}/{key}",
        type=kind,
        team=team,
        pool=pool,
        at=at,
        summary=summary,
        data=data,
    )


def scaling_event(team: str, pool: str, epoch: str, event: EventSummary, at: datetime) -> WebhookEvent:
    """`scaling_action`: one ScalePoolWorkflow finished (status succeeded / partial / failed)."""
    text = f"scale {event.direction} #{event.seq} {event.from_count} -> {event.to_count} {event.status}"
    if event.error:
        text += f": {event.error}"
    return _event(
        team,
        pool,
        epoch,
        EventType.SCALING_ACTION,
        f"{event.seq}",
        at,
        text,
        {
            "seq": event.seq,
            "direction": event.direction,
            "from_count": event.from_count,
            "to_count": event.to_count,
            "cause": event.cause,
            "status": event.status,
            "error": event.error,
        },
    )


def pool_error_event(team: str, pool: str, epoch: str, seq: int, reason: str, at: datetime) -> WebhookEvent:
    """`pool_error`: the pool entered `error` (after scaling action `seq`); it waits for an operator."""
    return _event(
        team, pool, epoch, EventType.POOL_ERROR, f"{seq}", at, f"pool {pool} is in error: {reason}",
        {"seq": seq, "status": "error", "reason": reason},
    )  # fmt: skip


def health_event(team: str, pool: str, epoch: str, change: ServerHealthChange) -> WebhookEvent:
    """`health_transition`: a member turned healthy or unhealthy (as its HealthCheckWorkflow saw it)."""
    return _event(
        team,
        pool,
        epoch,
        EventType.HEALTH_TRANSITION,
        f"{change.server_id}/{change.at.isoformat()}",
        change.at,
        f"server {change.server_id} is {change.state.value}"
        + (f": {change.reason}" if change.reason else ""),
        {"server_id": change.server_id, "state": change.state.value, "reason": change.reason},
    )


HealAction = Literal["replaced", "degraded", "out_of_rotation", "back_in_rotation"]


def heal_event(
    team: str,
    pool: str,
    epoch: str,
    at: datetime,
    *,
    action: HealAction,
    key: str,
    status: str,
    reason: str,
    servers: list[str] | None = None,
) -> WebhookEvent:
    """`auto_heal`: auto-healing replaced servers (`replaced`, with the scaling's status), stopped (`degraded`,
    more than half the pool unhealthy), or, on a pool poolctl does not provision (static), took a server out
    of rotation or put it back. `key` makes the id unique within the pool's chain (a scaling seq, or a
    server and time)."""
    names = ", ".join(servers or [])
    summary = {
        "replaced": f"auto-healing replaced {names}: {status}",
        "degraded": f"auto-healing stopped: {reason}",
        "out_of_rotation": f"auto-healing took {names} out of rotation: {reason}",
        "back_in_rotation": f"{names} back in rotation: {reason}",
    }[action]
    return _event(
        team, pool, epoch, EventType.AUTO_HEAL, f"{action}/{key}", at, summary,
        {"action": action, "servers": servers or [], "status": status, "reason": reason},
    )  # fmt: skip
