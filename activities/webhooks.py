"""The webhook delivery activity: POST one signed event to one receiver, record the attempt, and raise
for a retry when the receiver did not take it (Temporal retries with backoff; see workflows/notify.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from poolctl.domain.model import Message
from poolctl.domain.notifications import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookEvent,
    WebhookSpec,
    signature,
)
from poolctl.settings import Settings
from poolctl.store.db import session_scope
from poolctl.store.webhook_deliveries import record_attempt
from poolctl.telemetry import WEBHOOK_DELIVERIES

WEBHOOK_UNDELIVERED = "WebhookUndelivered"  # retryable: the receiver is down or answered 5xx/408/429
WEBHOOK_REJECTED = "WebhookRejected"  # not retryable: the receiver refused it (4xx)


class DeliveryInput(Message):
    webhook: WebhookSpec
    event: WebhookEvent


class WebhookActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, inp: DeliveryInput) -> int:
        """POST `inp.event` to `inp.webhook.url` with `X-Poolctl-Signature`. Returns the status code.

        Raises `ApplicationError` type `WebhookUndelivered` (retryable) on a connection error, a timeout,
        5xx, 408 or 429; type `WebhookRejected` (non-retryable) on another 4xx. Every attempt is recorded
        (table `webhook_deliveries`) and counted (`poolctl_webhook_deliveries_total{outcome}`)."""
        attempt = activity.info().attempt
        body = inp.event.body()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(inp.webhook.secret, body),
            EVENT_HEADER: inp.event.type.value,
            DELIVERY_HEADER: inp.event.id,
            "User-Agent": "poolctl-webhook/1",
        }
        status: int | None = None
        error: str | None = None
        try:
            async with httpx.AsyncClient(timeout=inp.webhook.timeout_s, follow_redirects=False) as http:
                resp = await http.post(inp.webhook.url, content=body, headers=headers)
            status = resp.status_code
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        delivered = status is not None and 200 <= status < 300
        await asyncio.to_thread(
            self._record, inp, attempt, "delivered" if delivered else "failed", status, error
        )
        WEBHOOK_DELIVERIES.labels("delivered" if delivered else "failed").inc()
        if delivered:
            assert status is not None
            return status
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            raise ApplicationError(
                f"{inp.webhook.url} refused event {inp.event.id}: HTTP {status}",
                type=WEBHOOK_REJECTED,
                non_retryable=True,
            )
        raise ApplicationError(
            f"{inp.webhook.url} did not take event {inp.event.id}: {error or f'HTTP {status}'}",
            type=WEBHOOK_UNDELIVERED,
        )

    def _record(
        self, inp: DeliveryInput, attempt: int, outcome: str, status: int | None, error: str | None
    ) -> None:
        with session_scope(self.settings.resolved_database_url) as s:
            record_attempt(
                s, event_id=inp.event.id, event_type=inp.event.type.value, team=inp.event.team,
                pool=inp.event.pool, url=inp.webhook.url, attempt=attempt, outcome=outcome,
                status_code=status, error=error, at=datetime.now(UTC),
            )  # fmt: skip
