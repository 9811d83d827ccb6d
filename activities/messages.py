"""Inputs of the provisioning and inventory activities (plain models shared with workflows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from poolctl.domain.model import Message
from poolctl.domain.pool_spec import PoolSpec


class ProvisionInput(Message):
    team: str
    pool: str
    provider: str
    options: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    weight: int = 1


class TerminateInput(Message):
    team: str
    pool: str
    provider: str
    server_id: str


class EventStart(Message):
    team: str
    pool: str
    event_key: str
    direction: str
    from_count: int
    to_count: int
    cause: str
    policy_name: str | None = None
    decision: dict[str, Any] | None = None
    started_at: datetime


class EventFinish(Message):
    event_key: str
    status: str
    error: str | None = None
    servers: dict[str, Any] | None = None
    finished_at: datetime


class PoolStatusUpdate(Message):
    team: str
    pool: str
    status: str
    reason: str | None = None
    desired: int | None = None


class PoolRef(Message):
    team: str
    pool: str


class PoolSpecRecord(Message):
    """`store_pool_spec`'s input: the spec a pool's workflow accepted, to mirror into the store."""

    team: str
    spec: PoolSpec
    desired: int | None = None
