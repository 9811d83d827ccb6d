"""The `static` provider: existing servers that poolctl does not start or stop (the original system's
servers added to a pool by hand). "Provision" registers an address, "terminate" deregisters it; the server
itself is never touched.

Options (``ProvisionRequest.options``): ``address`` (required), ``host:port`` as domain.addresses parses it
(`[IPv6]:port` for IPv6). As with every driver, the server id is derived from the idempotency key: a retried
registration returns the same server, a key whose server was deregistered stays deregistered (the pool
registers an address again under a new key); deregistering an unknown or deregistered server succeeds.

The durable registry is poolctl's store (the provisioning activity records every registered server there):
`describe` and `list_servers` read it, joined with what this process registered but has not recorded yet,
so drift detection after a worker restart sees the same servers (no false "gone")."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from poolctl.activities.providers.base import (
    ProviderConfigError,
    ProviderError,
    ProvisionRequest,
    ServerInfo,
    ServerState,
)
from poolctl.domain.addresses import parse_server_address
from poolctl.store.db import session_scope
from poolctl.store.models import Server, ServerPool, Team


class StaticProvider:
    """Registers existing servers by address (no process, no cloud call)."""

    name = "static"

    def __init__(self, database_url: str | None = None) -> None:
        self.database_url = database_url
        self._servers: dict[str, ServerInfo] = {}
        self._lock = threading.Lock()

    def _stored(self, pool: str | None, server_id: str | None = None) -> list[ServerInfo]:
        """Static servers the store lists (all states), by pool key or id. Blocking."""
        if self.database_url is None:
            return []
        q = select(Server, Team.name, ServerPool.name).join(ServerPool, Server.pool_id == ServerPool.id)
        q = q.join(Team, ServerPool.team_id == Team.id).where(Server.provider == self.name)
        if server_id is not None:
            q = q.where(Server.id == server_id)
        if pool is not None:
            team, _, name = pool.partition("/")
            q = q.where(Team.name == team, ServerPool.name == name)
        try:
            with session_scope(self.database_url) as s:
                return [
                    ServerInfo(
                        server_id=row.id,
                        provider=self.name,
                        pool=f"{team_name}/{pool_name}",
                        idempotency_key=row.idempotency_key,
                        host=row.host,
                        port=row.port,
                        state=ServerState.TERMINATED if row.state == "terminated" else ServerState.RUNNING,
                        created_at=row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC),
                        details={"static": True},
                    )
                    for row, team_name, pool_name in s.execute(q)
                ]
        except SQLAlchemyError as e:
            raise ProviderError(f"static provider: cannot read the store: {e}") from e

    def _merged(self, stored: list[ServerInfo], pool: str | None) -> list[ServerInfo]:
        out = {s.server_id: s for s in stored}
        with self._lock:
            for sid, info in self._servers.items():
                if (pool is None or info.pool == pool) and sid not in out:
                    out[sid] = info
        return list(out.values())

    @staticmethod
    def server_id_for(idempotency_key: str) -> str:
        """`static-` + 10 hex digits of SHA-256 over the idempotency key."""
        return "static-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:10]

    async def provision(self, request: ProvisionRequest) -> ServerInfo:
        unknown = set(request.options) - {"address"}
        if unknown:
            raise ProviderConfigError(f"static provider: unknown option(s) {', '.join(sorted(unknown))}")
        raw = request.options.get("address")
        if not isinstance(raw, str):
            raise ProviderConfigError("static provider: option 'address' (host:port) is required")
        try:
            host, port = parse_server_address(raw)
        except ValueError as e:
            raise ProviderConfigError(f"static provider: {e}") from None
        sid = self.server_id_for(request.idempotency_key)
        known = await self.describe(sid)  # registered before, here or by another worker
        if known is not None:
            return known
        with self._lock:
            info = self._servers.setdefault(sid, ServerInfo(
                server_id=sid,
                provider=self.name,
                pool=request.pool,
                idempotency_key=request.idempotency_key,
                host=host,
                port=port,
                state=ServerState.RUNNING,  # registered: its health check says whether it serves
                created_at=datetime.now(UTC),
                details={"static": True},
            ))  # fmt: skip
            return info

    async def terminate(self, server_id: str) -> ServerInfo | None:
        info = await self.describe(server_id)
        if info is None:
            return None
        gone = info.model_copy(update={"state": ServerState.TERMINATED})
        with self._lock:
            self._servers[server_id] = gone
        return gone

    async def describe(self, server_id: str) -> ServerInfo | None:
        with self._lock:
            mine = self._servers.get(server_id)
        if mine is not None:
            return mine
        stored = await asyncio.to_thread(self._stored, None, server_id)
        return stored[0] if stored else None

    async def list_servers(self, pool: str | None = None) -> list[ServerInfo]:
        return self._merged(await asyncio.to_thread(self._stored, pool), pool)
