"""Policy decision records: every decision that changed a policy's recommendation (for `poolctl policy show`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from poolctl.store.inventory import find_pool, get_pool
from poolctl.store.models import PolicyDecision


def record_policy_decision(
    session: Session,
    *,
    team: str,
    pool: str,
    policy: str,
    record_key: str,
    decided_at: datetime,
    current: int,
    desired: int,
    direction: str,
    reason: str,
    metric: float | None,
    formula: str,
    decision: dict[str, Any],
) -> bool:
    """Insert one decision (idempotent on `record_key`). False when the pool is no longer in the store."""
    pool_row = find_pool(session, team, pool)
    if pool_row is None:
        return False
    if session.scalar(select(PolicyDecision.id).where(PolicyDecision.record_key == record_key)) is not None:
        return True
    session.add(
        PolicyDecision(
            pool_id=pool_row.id,
            policy_name=policy,
            decided_at=decided_at,
            current=current,
            desired=desired,
            direction=direction,
            reason=reason,
            metric=metric,
            formula=formula,
            decision=decision,
            record_key=record_key,
        )
    )
    return True


def list_policy_decisions(
    session: Session, team: str, pool: str, policy: str | None = None, limit: int = 20
) -> list[PolicyDecision]:
    """The newest decisions first (of one policy, or of every policy of the pool)."""
    pool_row = get_pool(session, team, pool)
    q = select(PolicyDecision).where(PolicyDecision.pool_id == pool_row.id)
    if policy is not None:
        q = q.where(PolicyDecision.policy_name == policy)
    q = q.order_by(PolicyDecision.decided_at.desc(), PolicyDecision.id.desc()).limit(limit)
    return list(session.scalars(q))
