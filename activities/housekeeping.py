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
    """`retention_days` None: the worker's setting (`POOLCTL_RETENTION_DAYS`). A value may only lengthen the
    worker's retention, never shorten it: a housekeeping workflow has no team, so anyone who can reach
    Temporal could start one (docs/security.md#teams)."""

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
        the retention: the input's, when it is longer than the worker's `retention_days`, else the worker's
        (a start naming 1e-9 days must not wipe every team's history). Idempotent (a retry removes what is
        left, nothing twice)."""
        days = max(inp.retention_days or 0.0, self.settings.retention_days)
        cutoff = datetime.now(UTC) - timedelta(days=days)
        return await asyncio.to_thread(self._clean, cutoff)

    def _clean(self, cutoff: datetime) -> HousekeepingResult:
        with session_scope(self.settings.resolved_database_url) as s:
            counts = remove_older_than(s, cutoff)
        activity.logger.info("housekeeping removed %s (older than %s)", counts.as_dict(), cutoff.isoformat())
        return HousekeepingResult(cutoff=cutoff, removed=counts.as_dict())
