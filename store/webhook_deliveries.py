"""The record of webhook delivery attempts (one row per attempt: when, where, what came back)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from poolctl.store.models import WebhookDelivery


def record_attempt(
    session: Session,
    *,
    event_id: str,
    event_type: str,
    team: str,
    pool: str,
    url: str,
    attempt: int,
    outcome: str,
    status_code: int | None,
    error: str | None,
    at: datetime,
) -> None:
    """Write one attempt; the same (event, url, attempt) twice is kept once (an activity retried after
    its commit went through)."""
    exists = session.scalar(
        select(WebhookDelivery.id).where(
            WebhookDelivery.event_id == event_id,
            WebhookDelivery.url == url,
            WebhookDelivery.attempt == attempt,
        )
    )
    if exists is not None:
        return
    session.add(
        WebhookDelivery(
            event_id=event_id, event_type=event_type, team=team, pool=pool, url=url, attempt=attempt,
            outcome=outcome, status_code=status_code, error=error, attempted_at=at,
        )
    )  # fmt: skip


def list_deliveries(
    session: Session, *, event_id: str | None = None, pool: str | None = None
) -> list[WebhookDelivery]:
    q = select(WebhookDelivery).order_by(WebhookDelivery.attempted_at, WebhookDelivery.id)
    if event_id is not None:
        q = q.where(WebhookDelivery.event_id == event_id)
    if pool is not None:
        q = q.where(WebhookDelivery.pool == pool)
    return list(session.scalars(q))
