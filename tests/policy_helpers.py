"""Helpers for the policy tests: pin the CPU of a pool's real local servers, read policy state and records."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from temporalio.client import Client

from poolctl.domain.policy_state import PolicyStateView
from poolctl.settings import Settings
from poolctl.starter import policy_ops
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.store.policy_decisions import list_policy_decisions


class CpuPinner:
    """Keeps every running server of a pool pinned at `cpu` through `POST /admin/load` (new servers too).

    A load driver, not a synchronisation: tests still wait for conditions with `eventually`.
    """

    def __init__(self, settings: Settings, pool: str, cpu: float | None):
        self.settings = settings
        self.pool = pool
        self.cpu = cpu
        self._pinned: dict[str, float | None] = {}
        self._task: asyncio.Task[None] | None = None

    def urls(self) -> list[tuple[str, str]]:
        with session_scope(self.settings.resolved_database_url) as s:
            if inventory.find_pool(s, self.settings.team, self.pool) is None:
                return []  # not applied yet (the pool's workflow writes it to the store)
            return [
                (r.id, f"http://{r.host}:{r.port}")
                for r in inventory.list_servers(s, self.settings.team, self.pool)
                if r.state == "running"
            ]

    async def pin_now(self, http: httpx.AsyncClient) -> None:
        for sid, url in await asyncio.to_thread(self.urls):
            cpu = self.cpu  # what this post sends: `set` may change self.cpu while it is in flight
            if self._pinned.get(sid, "unset") == cpu:
                continue
            with contextlib.suppress(httpx.HTTPError):
                r = await http.post(f"{url}/admin/load", json={"cpu_percent": cpu}, timeout=2)
                if r.status_code == 200:
                    self._pinned[sid] = cpu  # a later value is re-sent by the next pass

    async def set(self, cpu: float | None) -> None:
        self.cpu = cpu
        async with httpx.AsyncClient() as http:
            await self.pin_now(http)

    async def _loop(self) -> None:
        async with httpx.AsyncClient() as http:
            while True:
                await self.pin_now(http)
                await asyncio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CpuPinner]:
        self._task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def policy_state(client: Client, settings: Settings, pool: str, policy: str) -> PolicyStateView | None:
    try:
        return await policy_ops.query_policy(client, settings.team, pool, policy)
    except Exception:  # noqa: BLE001 - not started yet
        return None


def stored_decisions(settings: Settings, pool: str, policy: str | None = None) -> list[dict[str, Any]]:
    with session_scope(settings.resolved_database_url) as s:
        return [
            {
                "policy": r.policy_name,
                "at": r.decided_at,
                "current": r.current,
                "desired": r.desired,
                "direction": r.direction,
                "reason": r.reason,
                "metric": r.metric,
                "decision": r.decision,
            }
            for r in list_policy_decisions(s, settings.team, pool, policy, limit=200)
        ]


def events(settings: Settings, pool: str) -> list[Any]:
    with session_scope(settings.resolved_database_url) as s:
        return inventory.list_events(s, settings.team, pool)


@contextlib.asynccontextmanager
async def metric_server(values: dict[str, Any]) -> AsyncIterator[int]:
    """A real HTTP server on 127.0.0.1 answering `GET /{name}` with `{"v": values[name]()}` (an http_json
    source with `path: v`); yields its port."""
    from aiohttp import web

    def handler(name: str) -> Any:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response({"v": values[name]()})

        return answer

    app = web.Application()
    for name in values:
        app.router.add_get(f"/{name}", handler(name))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
