"""Test backends for balancer tests: tiny HTTP servers that answer with their own id, port helpers, and a
built-in balancer run inside the test's process."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from aiohttp import web

from poolctl.balancer.credentials import balancer_token
from poolctl.balancer.proxy import BalancerProxy, ProxyConfig
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import Member, MemberState
from poolctl.settings import Settings


class Backend:
    """A tiny HTTP server that answers with its own id; `/slow` waits until `release` is set."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.in_flight = 0  # `/slow` requests waiting for `release`
        self.seen_headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _any(self, request: web.Request) -> web.Response:
        self.seen_headers.append(dict(request.headers))
        body = await request.read()
        return web.Response(text=f"{self.server_id} {request.method} {request.path_qs} {len(body)}")

    async def _slow(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.slow_started.set()
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return web.Response(text=f"{self.server_id} slow done")

    async def _big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked, no Content-Length
        await resp.prepare(request)
        for i in range(48):
            await resp.write(bytes([65 + i % 26]) * 65536)
        await resp.write_eof()
        return resp

    async def start(self) -> None:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/big", self._big)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    def member(self, weight: int = 1, state: MemberState = MemberState.IN_ROTATION) -> Member:
        return Member(server_id=self.server_id, address=f"127.0.0.1:{self.port}", weight=weight, state=state)


async def who(client: httpx.AsyncClient, url: str, n: int) -> list[str]:
    out = []
    for _ in range(n):
        r = await client.get(url + "/hello")
        assert r.status_code == 200, r.text
        out.append(r.text.split()[0])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def in_process_balancer(settings: Settings, name: str = "front") -> AsyncIterator[BalancerProxy]:
    """The built-in balancer `name` (weighted) on two free ports, running in this process with the admin
    token the worker of `settings` uses; a pool spec declares it with the proxy's `port`/`admin_port`."""
    lb_port, admin_port = free_port(), free_port()
    spec = LoadBalancerSpec(name=name, port=lb_port, admin_port=admin_port, algorithm="weighted")
    proxy = BalancerProxy(ProxyConfig.from_spec(spec, balancer_token(settings)))
    await proxy.start()
    assert (proxy.port, proxy.admin_port) == (lb_port, admin_port)
    try:
        yield proxy
    finally:
        await proxy.stop(grace_s=1)
