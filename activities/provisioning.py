"""Activities that create and remove servers through a provider driver, and record them in the inventory."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.exceptions import ApplicationError

from poolctl.activities.kill_points import kill_point
from poolctl.activities.messages import ProvisionInput, TerminateInput
from poolctl.activities.providers.base import (
    ProviderConfigError,
    ProviderError,
    ProviderQuotaError,
    ProvisionRequest,
    ServerInfo,
    ServerState,
)
from poolctl.activities.providers.registry import get_provider
from poolctl.domain import errors
from poolctl.domain.names import pool_key
from poolctl.domain.pool_state import ServerRecord
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope


def as_application_error(e: ProviderError) -> ApplicationError:
    """A provider error as Temporal sees it: quota and config errors are non-retryable types."""
    if isinstance(e, ProviderQuotaError):
        return ApplicationError(str(e), type=errors.PROVIDER_QUOTA_ERROR, non_retryable=True)
    if isinstance(e, ProviderConfigError):
        return ApplicationError(str(e), type=errors.PROVIDER_CONFIG_ERROR, non_retryable=True)
    return ApplicationError(str(e), type=errors.PROVIDER_ERROR)


def record_server_info(database_url: str, team: str, pool: str, info: ServerInfo, *, weight: int) -> None:
    """Record a server as its provider describes it, as a member of `team/pool` (idempotent upsert)."""
    with session_scope(database_url) as s:
        inventory.record_server(
            s,
            team=team,
            pool=pool,
            server_id=info.server_id,
            provider=info.provider,
            idempotency_key=info.idempotency_key,
            host=info.host,
            port=info.port,
            state=info.state.value,
            created_at=info.created_at,
            weight=weight,
        )


class ProvisioningActivities:
    """Provision/terminate servers. Both are idempotent: same key -> same server; terminating twice succeeds."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name="provision_server")
    async def provision_server(self, inp: ProvisionInput) -> ServerRecord:
        kill_point("before_provision")
        provider = get_provider(inp.provider, self.settings.state_dir, self.settings)
        request = ProvisionRequest(
            pool=pool_key(inp.team, inp.pool), idempotency_key=inp.idempotency_key, options=inp.options
        )
        try:
            info = await provider.provision(request)
        except ProviderError as e:
            raise as_application_error(e) from e
        kill_point("after_provider_call")
        await asyncio.to_thread(self._record, inp, info)
        activity.logger.info(
            "server %s (%s) at %s: %s", info.server_id, inp.provider, info.address, info.state.value
        )
        if info.state is ServerState.TERMINATED:
            raise ApplicationError(
                f"server {info.server_id} for key {inp.idempotency_key} was already terminated",
                type=errors.PROVIDER_ERROR,
                non_retryable=True,
            )
        return ServerRecord(
            server_id=info.server_id, host=info.host, port=info.port, created_at=info.created_at
        )

    def _record(self, inp: ProvisionInput, info: ServerInfo) -> None:
        record_server_info(self.settings.resolved_database_url, inp.team, inp.pool, info, weight=inp.weight)

    @activity.defn(name="terminate_server")
    async def terminate_server(self, inp: TerminateInput) -> str:
        kill_point("terminating")
        provider = get_provider(inp.provider, self.settings.state_dir, self.settings)
        try:
            await provider.terminate(inp.server_id)
        except ProviderError as e:
            raise as_application_error(e) from e
        kill_point("after_terminate")
        await asyncio.to_thread(self._mark_terminated, inp.server_id)
        activity.logger.info("server %s (%s) terminated", inp.server_id, inp.provider)
        return inp.server_id

    def _mark_terminated(self, server_id: str) -> None:
        with session_scope(self.settings.resolved_database_url) as s:
            inventory.mark_server_terminated(s, server_id)
