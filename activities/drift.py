"""Drift between the store and the provider for one pool: servers the provider runs that poolctl does not
know (orphans) and servers poolctl counts that the provider no longer runs (gone). Read-only."""

from __future__ import annotations

import asyncio

from temporalio import activity

from poolctl.activities.providers.base import ProviderError, ServerState
from poolctl.activities.providers.registry import get_provider
from poolctl.activities.provisioning import as_application_error
from poolctl.domain.model import Message
from poolctl.domain.names import pool_key
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope


class DriftInput(Message):
    team: str
    pool: str
    provider: str


class PoolDrift(Message):
    """`orphans`: live at the provider (pending/running, tagged for the pool) but not live in the store;
    `gone`: live in the store but terminated at, or unknown to, the provider. Both sorted server ids."""

    orphans: list[str]
    gone: list[str]

    @property
    def drifted(self) -> bool:
        return bool(self.orphans or self.gone)


def compare(store_live: set[str], provider_state: dict[str, ServerState]) -> PoolDrift:
    """Pure comparison of the store's live server ids with the provider's view (id -> state)."""
    provider_live = {sid for sid, st in provider_state.items() if st is not ServerState.TERMINATED}
    return PoolDrift(orphans=sorted(provider_live - store_live), gone=sorted(store_live - provider_live))


class DriftActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name="detect_pool_drift")
    async def detect_pool_drift(self, inp: DriftInput) -> PoolDrift:
        """Compare the pool's live servers in the store with the provider's list by tag (`list_servers`)."""
        provider = get_provider(inp.provider, self.settings.state_dir, self.settings)
        try:
            listed = await provider.list_servers(pool_key(inp.team, inp.pool))
        except ProviderError as e:
            raise as_application_error(e) from e
        store_live = await asyncio.to_thread(self._store_live, inp.team, inp.pool)
        return compare(store_live, {s.server_id: s.state for s in listed})

    def _store_live(self, team: str, pool: str) -> set[str]:
        with session_scope(self.settings.resolved_database_url) as s:
            return {r.id for r in inventory.list_servers(s, team, pool) if r.state != "terminated"}
