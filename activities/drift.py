"""Drift between a pool and its provider: servers the provider runs under the pool's tag that the pool
does not count (orphans) and members the provider no longer runs (gone); and adopting an orphan into the
store. `detect_pool_drift` is read-only."""

from __future__ import annotations

import asyncio
from datetime import datetime

from temporalio import activity

from poolctl.activities.providers.base import ProviderError, ServerInfo, ServerState
from poolctl.activities.providers.registry import get_provider
from poolctl.activities.provisioning import as_application_error, record_server_info
from poolctl.domain.model import Message
from poolctl.domain.names import pool_key
from poolctl.domain.pool_state import ServerRecord
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope


class DriftInput(Message):
    """`members`: the server ids the pool counts; None compares with the store's live servers instead."""

    team: str
    pool: str
    provider: str
    members: list[str] | None = None


class OrphanServer(Message):
    """An orphan as the provider describes it (enough to adopt it)."""

    server_id: str
    host: str
    port: int
    created_at: datetime
    running: bool
    idempotency_key: str


class PoolDrift(Message):
    """`orphans`: live at the provider (pending/running, tagged for the pool) but not counted by the pool;
    `gone`: counted by the pool but terminated at, or unknown to, the provider. Both sorted server ids;
    `orphan_servers` describes each orphan."""

    orphans: list[str]
    gone: list[str]
    orphan_servers: list[OrphanServer] = []

    @property
    def drifted(self) -> bool:
        return bool(self.orphans or self.gone)


def compare(counted: set[str], listed: list[ServerInfo]) -> PoolDrift:
    """Pure comparison of the server ids a pool counts with the provider's list of the pool's servers."""
    live = {s.server_id: s for s in listed if s.state is not ServerState.TERMINATED}
    orphans = sorted(set(live) - counted)
    return PoolDrift(
        orphans=orphans,
        gone=sorted(counted - set(live)),
        orphan_servers=[
            OrphanServer(
                server_id=sid,
                host=live[sid].host,
                port=live[sid].port,
                created_at=live[sid].created_at,
                running=live[sid].state is ServerState.RUNNING,
                idempotency_key=live[sid].idempotency_key,
            )
            for sid in orphans
        ],
    )


class AdoptInput(Message):
    team: str
    pool: str
    provider: str
    server: OrphanServer
    weight: int = 1


class DriftActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name="detect_pool_drift")
    async def detect_pool_drift(self, inp: DriftInput) -> PoolDrift:
        """Compare the pool's members (or, without them, its live servers in the store) with the provider's
        list by tag (`list_servers`). Provider errors: ProviderError (retryable) or a non-retryable type."""
        provider = get_provider(inp.provider, self.settings.state_dir, self.settings)
        try:
            listed = await provider.list_servers(pool_key(inp.team, inp.pool))
        except ProviderError as e:
            raise as_application_error(e) from e
        counted = (
            set(inp.members)
            if inp.members is not None
            else await asyncio.to_thread(self._store_live, inp.team, inp.pool)
        )
        return compare(counted, listed)

    def _store_live(self, team: str, pool: str) -> set[str]:
        with session_scope(self.settings.resolved_database_url) as s:
            return {r.id for r in inventory.list_servers(s, team, pool) if r.state != "terminated"}

    @activity.defn(name="adopt_server")
    async def adopt_server(self, inp: AdoptInput) -> ServerRecord:
        """Record an orphan as a running member of the pool in the store (idempotent); its pool record."""
        await asyncio.to_thread(self._record, inp)
        o = inp.server
        return ServerRecord(server_id=o.server_id, host=o.host, port=o.port, created_at=o.created_at)

    def _record(self, inp: AdoptInput) -> None:
        o = inp.server
        info = ServerInfo(
            server_id=o.server_id,
            provider=inp.provider,
            pool=pool_key(inp.team, inp.pool),
            idempotency_key=o.idempotency_key,
            host=o.host,
            port=o.port,
            state=ServerState.RUNNING,
            created_at=o.created_at,
        )
        record_server_info(self.settings.resolved_database_url, inp.team, inp.pool, info, weight=inp.weight)
