"""Activities that write the audit record and pool status to the database, and read the pool's servers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio import activity

from poolctl.activities.messages import EventFinish, EventStart, PoolRef, PoolSpecRecord, PoolStatusUpdate
from poolctl.domain.errors import NotFoundError
from poolctl.domain.health import HealthState
from poolctl.domain.pool_state import ServerRecord
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.telemetry import SCALING_ACTIONS


class InventoryActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def _url(self) -> str:
        return self.settings.resolved_database_url

    @activity.defn(name="record_event_started")
    async def record_event_started(self, ev: EventStart) -> None:
        await asyncio.to_thread(self._record_event_started, ev)

    def _record_event_started(self, ev: EventStart) -> None:
        with session_scope(self._url) as s:
            try:
                inventory.start_scaling_event(s, **ev.model_dump())
            except NotFoundError:
                activity.logger.warning(
                    "pool %s/%s is not in the store; event %s not recorded", ev.team, ev.pool, ev.event_key
                )

    @activity.defn(name="record_event_finished")
    async def record_event_finished(self, ev: EventFinish) -> None:
        await asyncio.to_thread(self._record_event_finished, ev)

    def _record_event_finished(self, ev: EventFinish) -> None:
        with session_scope(self._url) as s:
            inventory.finish_scaling_event(s, **ev.model_dump())
        SCALING_ACTIONS.labels(ev.status).inc()

    @activity.defn(name="update_pool_status")
    async def update_pool_status(self, upd: PoolStatusUpdate) -> None:
        await asyncio.to_thread(self._update_pool_status, upd)

    def _update_pool_status(self, upd: PoolStatusUpdate) -> None:
        with session_scope(self._url) as s:
            inventory.set_pool_status(s, upd.team, upd.pool, upd.status, upd.reason)
            if upd.desired is not None:
                inventory.set_pool_desired(s, upd.team, upd.pool, upd.desired)

    @activity.defn(name="store_pool_spec")
    async def store_pool_spec(self, rec: PoolSpecRecord) -> str:
        """Upsert the pool's row, policies and balancers from the spec its workflow accepted (idempotent:
        keyed by team and pool name, a repeat writes the same values). Returns created|updated|unchanged."""
        return await asyncio.to_thread(self._store_pool_spec, rec)

    def _store_pool_spec(self, rec: PoolSpecRecord) -> str:
        with session_scope(self._url) as s:
            return inventory.store_pool_spec(s, rec.team, rec.spec, rec.desired).action

    @activity.defn(name="forget_pool")
    async def forget_pool(self, ref: PoolRef) -> bool:
        """Remove a deleted pool from the store (idempotent: False when it is already gone)."""
        return await asyncio.to_thread(self._forget_pool, ref)

    def _forget_pool(self, ref: PoolRef) -> bool:
        with session_scope(self._url) as s:
            return inventory.forget_pool(s, ref.team, ref.pool)

    @activity.defn(name="load_pool_servers")
    async def load_pool_servers(self, ref: PoolRef) -> list[ServerRecord]:
        """The running servers the store knows for a pool (a new pool workflow adopts them)."""
        return await asyncio.to_thread(self._load_pool_servers, ref)

    def _load_pool_servers(self, ref: PoolRef) -> list[ServerRecord]:
        with session_scope(self._url) as s:
            try:
                rows = inventory.list_servers(s, ref.team, ref.pool)
            except NotFoundError:
                return []
            return [
                ServerRecord(
                    server_id=r.id,
                    host=r.host,
                    port=r.port,
                    created_at=_aware(r.created_at),
                    health=HealthState(r.health),
                )
                for r in rows
            ]


def _aware(ts: datetime) -> datetime:
    """SQLite returns naive datetimes; everything poolctl stores is UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
