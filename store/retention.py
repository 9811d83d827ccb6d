"""Housekeeping of the read model: remove audit rows older than the retention (scaling events, policy
decision records, balancer roll-ups, and health transitions kept inside each health-check row)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Delete, delete, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from poolctl.store.models import BalancerStatsRollup, HealthCheck, PolicyDecision, ScalingEvent


@dataclass
class CleanupCounts:
    """Rows (or, for health transitions, list entries) removed by one clean-up."""

    scaling_events: int = 0
    policy_decisions: int = 0
    balancer_rollups: int = 0
    health_transitions: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _naive_utc(ts: datetime) -> datetime:
    """Columns are timezone-naive UTC on SQLite and aware on PostgreSQL: compare in UTC either way."""
    return ts.astimezone(UTC).replace(tzinfo=None)


def _older(ts: Any, cutoff: datetime) -> bool:
    if not isinstance(ts, str):
        return False
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return False
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when < cutoff


def remove_older_than(session: Session, cutoff: datetime) -> CleanupCounts:
    """Delete everything older than `cutoff` (aware UTC). Finished scaling events only: one still
    `running` is kept whatever its age. Idempotent: a second call removes nothing."""
    dialect_naive = session.get_bind().dialect.name == "sqlite"
    at = _naive_utc(cutoff) if dialect_naive else cutoff
    counts = CleanupCounts()
    counts.scaling_events = _deleted(
        session, delete(ScalingEvent).where(ScalingEvent.started_at < at, ScalingEvent.status != "running")
    )
    counts.policy_decisions = _deleted(session, delete(PolicyDecision).where(PolicyDecision.decided_at < at))
    counts.balancer_rollups = _deleted(
        session, delete(BalancerStatsRollup).where(BalancerStatsRollup.collected_at < at)
    )
    for row in session.scalars(select(HealthCheck).where(HealthCheck.transitions.is_not(None))):
        kept = _prune_transitions(row.transitions, cutoff)
        if kept is not None:
            counts.health_transitions += kept[1]
            row.transitions = kept[0]
    return counts


def _deleted(session: Session, stmt: Delete) -> int:
    result = session.execute(stmt)
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _prune_transitions(transitions: Any, cutoff: datetime) -> tuple[Any, int] | None:
    """The transitions JSON without entries older than `cutoff`, and how many went; None if unchanged."""
    items = transitions.get("items") if isinstance(transitions, dict) else transitions
    if not isinstance(items, list):
        return None
    kept = [t for t in items if not (isinstance(t, dict) and _older(t.get("at"), cutoff))]
    if len(kept) == len(items):
        return None
    removed = len(items) - len(kept)
    return ({**transitions, "items": kept} if isinstance(transitions, dict) else kept), removed
