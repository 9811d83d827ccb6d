"""An in-memory provider for tests of failure handling (no process, no file, no network)."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Any

from poolctl.activities.providers.base import (
    ProviderConfigError,
    ProviderError,
    ProviderQuotaError,
    ProvisionRequest,
    ServerInfo,
    ServerState,
)

KNOWN_OPTIONS = {"fail_provision", "fail_terminate", "quota", "fail_times", "delay_s", "api_token", "ports"}


class FakeProvider:
    """A FAKE provider driver: it keeps servers in memory only and starts nothing real.

    It exists to test failure handling behind the real Provider interface. Servers it
    "creates" have host 127.0.0.1 and port 0 and serve nothing. Same idempotency rules as a
    real driver (same key -> same server; terminating terminated/unknown servers succeeds).

    Options (``ProvisionRequest.options``; the terminate options are remembered per server):

    - ``fail_provision: true`` — every provision call raises ``ProviderError`` (retryable).
    - ``fail_times: N`` — the first N provision calls for a key raise ``ProviderError``, then it works.
    - ``fail_terminate: true`` — terminating a server provisioned with it raises ``ProviderError``.
    - ``quota: N`` — at most N running servers in the pool, else ``ProviderQuotaError``.
    - ``delay_s: X`` — each provision takes X seconds (to test timeouts/cancellation).
    - ``ports: [P, ...]`` — servers get host 127.0.0.1 and the first of these ports that no running server
      of the pool has (benches point them at one process listening on many ports); when every port is
      taken, ``ProviderQuotaError``. Without it a server's port is 0 (it serves nothing).
    - ``api_token: S`` — a stand-in for a cloud credential: required by nothing, kept (in memory only) in
      ``api_tokens`` by pool, so tests can check that a secret reached the driver intact while it
      never appeared in workflow history.

    ``calls`` counts calls by kind (``provision``, ``terminate``) for assertions.
    """

    name = "fake"

    def __init__(self) -> None:
        self.servers: dict[str, ServerInfo] = {}
        self.calls: dict[str, int] = {"provision": 0, "terminate": 0}
        self._failures: dict[str, int] = {}
        self._fail_terminate: set[str] = set()
        self.api_tokens: dict[str, str] = {}

    @staticmethod
    def server_id_for(idempotency_key: str) -> str:
        return "fake-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:10]

    def reset(self) -> None:
        self.servers.clear()
        self._failures.clear()
        self._fail_terminate.clear()
        self.api_tokens.clear()
        self.calls = {"provision": 0, "terminate": 0}

    async def provision(self, request: ProvisionRequest) -> ServerInfo:
        self.calls["provision"] += 1
        opts: dict[str, Any] = request.options
        unknown = set(opts) - KNOWN_OPTIONS
        if unknown:
            raise ProviderConfigError(f"fake provider: unknown option(s) {', '.join(sorted(unknown))}")
        if "api_token" in opts:
            self.api_tokens[request.pool] = str(opts["api_token"])
        if opts.get("delay_s"):
            await asyncio.sleep(float(opts["delay_s"]))
        if opts.get("fail_provision"):
            raise ProviderError(f"fake provider: provisioning failed (fail_provision) for {request.pool}")
        key = request.idempotency_key
        fail_times = int(opts.get("fail_times") or 0)
        if self._failures.get(key, 0) < fail_times:
            self._failures[key] = self._failures.get(key, 0) + 1
            raise ProviderError(f"fake provider: provisioning failed ({self._failures[key]}/{fail_times})")
        sid = self.server_id_for(key)
        existing = self.servers.get(sid)
        if existing is not None:
            return existing
        quota = opts.get("quota")
        if quota is not None:
            running = [
                s for s in self.servers.values() if s.pool == request.pool and s.state == ServerState.RUNNING
            ]
            if len(running) >= int(quota):
                raise ProviderQuotaError(f"fake provider: pool {request.pool} is at its quota of {quota}")
        info = ServerInfo(
            server_id=sid,
            provider=self.name,
            pool=request.pool,
            idempotency_key=key,
            host="127.0.0.1",
            port=self._free_port(request.pool, opts.get("ports")),
            state=ServerState.RUNNING,
            created_at=datetime.now(UTC),
            details={"fake": True},
        )
        self.servers[sid] = info
        if opts.get("fail_terminate"):
            self._fail_terminate.add(sid)
        return info

    def _free_port(self, pool: str, ports: Any) -> int:
        if not ports:
            return 0
        taken = {s.port for s in self.servers.values() if s.pool == pool and s.state == ServerState.RUNNING}
        for port in ports:
            if int(port) not in taken:
                return int(port)
        raise ProviderQuotaError(f"fake provider: every one of the {len(ports)} ports of {pool} is in use")

    async def terminate(self, server_id: str) -> ServerInfo | None:
        self.calls["terminate"] += 1
        info = self.servers.get(server_id)
        if info is None:
            return None
        if server_id in self._fail_terminate:
            raise ProviderError(f"fake provider: terminating {server_id} failed (fail_terminate)")
        if info.state != ServerState.TERMINATED:
            info = info.model_copy(update={"state": ServerState.TERMINATED})
            self.servers[server_id] = info
        return info

    async def describe(self, server_id: str) -> ServerInfo | None:
        return self.servers.get(server_id)

    async def list_servers(self, pool: str | None = None) -> list[ServerInfo]:
        return [s for s in self.servers.values() if pool is None or s.pool == pool]
