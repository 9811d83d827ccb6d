"""Webhook notifications: what an operator configures (per pool or per team), the events poolctl sends,
and how a body is signed. Pure: the delivery is an activity (activities/webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from poolctl.domain.model import Message, StrictModel

SIGNATURE_HEADER = "X-Poolctl-Signature"
EVENT_HEADER = "X-Poolctl-Event"
DELIVERY_HEADER = "X-Poolctl-Delivery"


class EventType(StrEnum):
    """What a webhook can be told about."""

    SCALING_ACTION = "scaling_action"  # a scaling (up, down, replace) finished, with its outcome
    HEALTH_TRANSITION = "health_transition"  # a server turned healthy or unhealthy
    AUTO_HEAL = "auto_heal"  # auto-healing replaced servers, or stopped (pool degraded)
    POOL_ERROR = "pool_error"  # the pool entered `error` (a scaling failed its retries)


class WebhookSpec(StrictModel):
    """One receiver: `url` gets a JSON POST per event of `events`, signed with `secret`
    (`X-Poolctl-Signature: sha256=<hex HMAC-SHA256 of the body>`, as GitHub signs its webhooks)."""

    url: str = Field(max_length=2048, description="http(s) URL of the receiver")
    secret: str = Field(min_length=16, max_length=256, description="HMAC key; at least 16 characters")
    events: list[EventType] = Field(
        default_factory=lambda: list(EventType), description="which events; default every type"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=60, description="longest one delivery attempt may take")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v

    @field_validator("events")
    @classmethod
    def _some_events(cls, v: list[EventType]) -> list[EventType]:
        if not v:
            raise ValueError("name at least one event type (or leave `events` out for all)")
        return sorted(set(v), key=list(EventType).index)


class WebhookEvent(Message):
    """The JSON body of a delivery. `id` is stable for one event (receivers de-duplicate on it: a retry
    after a lost answer delivers the same id again)."""

    id: str
    type: EventType
    team: str
    pool: str
    at: datetime
    summary: str
    data: dict[str, Any] = Field(default_factory=dict)

    def body(self) -> bytes:
        """The exact bytes sent (and signed): compact JSON, keys sorted."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    """The `X-Poolctl-Signature` value for `body`: `sha256=` + hex HMAC-SHA256 (RFC 2104) keyed by `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: compare in constant time."""
    return hmac.compare_digest(signature(secret, body), header)


def receivers_for(webhooks: list[WebhookSpec], event: EventType) -> list[WebhookSpec]:
    """The receivers that asked for `event`."""
    return [w for w in webhooks if event in w.events]
