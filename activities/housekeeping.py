"""The housekeeping activity: remove read-model rows older than the retention (see store/retention.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from pydantic import Field
from temporalio import activity

from poolctl.domain.model import Message
from poolctl.settings import Settings
from poolctl.store.db import session_scope
from poolctl.store.retention import remove_older_than


class HousekeepingInput(Message):
    """`retention_days` None: the worker's setting (`POOLCTL_RETENTION_DAYS`)."""

    retention_days: float | None = Field(default=None, gt=0)


class HousekeepingResult(Message):
    cutoff: datetime
    removed: dict[str, int]


class HousekeepingActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name="clean_up_store")
    async def clean_up_store(self, inp: HousekeepingInput) -> HousekeepingResult:
        """Delete scaling events, decision records, balancer roll-ups and health transitions older than
        the retention. Idempotent (a retry removes what is left, nothing twice)."""
        days = inp.retention_days if inp.retention_days is not None else self.settings.retention_days
        cutoff = datetime.now(UTC) - timedelta(days=days)
        return await asyncio.to_thread(self._clean, cutoff)

    def _clean(self, cutoff: datetime) -> HousekeepingResult:
        with session_scope(self.settings.resolved_database_url) as s:
            counts = remove_older_than(s, cutoff)
        activity.logger.info("housekeeping removed %s (older than %s)", counts.as_dict(), cutoff.isoformat())
        return HousekeepingResult(cutoff=cutoff, removed=counts.as_dict())
