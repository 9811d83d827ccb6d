"""The built-in data plane: an asyncio HTTP/1.1 reverse proxy that balances with `domain.balancing`.

One `BalancerProxy` owns a listener (optionally TLS) served by the asyncio protocol in `http1.py` (llhttp
framing, client keep-alive, pooled keep-alive upstream connections, streamed bodies), the selection state,
the per-server statistics, the timeouts and limits, and (see `admin.py`) a token-protected admin listener.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from poolctl.balancer.admin import make_admin_app
from poolctl.balancer.http1 import LINGER_S, ClientConn, UpstreamPool
from poolctl.balancer.stats import ProxyStats
from poolctl.domain.addresses import is_loopback_host
from poolctl.domain.balancer_errors import UnknownMemberError
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import (
    BalancerStats,
    Balancing,
    Member,
    MemberState,
    SyncResult,
    diff_members,
)

log = logging.getLogger("poolctl.balancer")


__all__ = [
    "BalancerProxy",
    "ProxyConfig",
    "ProxyStats",
    "UnknownMemberError",
    "run_proxy",
    "serve_until_signalled",
]


@dataclass
class ProxyConfig:
    """Everything a built-in balancer needs. Port 0 binds a free port (see `BalancerProxy.port`)."""

    name: str = "builtin"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int | None = 9080  # None: no admin listener (membership only via the Python API)
    token: str = ""
    algorithm: str = "round_robin"
    sticky: bool = False
    sticky_cookie: str = "POOLCTL_SRV"
    drain_sticky: str = "keep"  # sticky clients of a draining member: keep | move
    slow_start_s: float = 0.0  # a member entering rotation ramps up to its weight over this time
    certfile: str | None = None
    keyfile: str | None = None
    members: list[Member] = field(default_factory=list)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0  # longest silence from a server in the middle of an exchange (504)
    keepalive_timeout_s: float = 75.0  # idle client connections are closed after this
    upstream_idle_timeout_s: float = 30.0  # idle pooled server connections are closed after this
    max_buffered_body: int = 1 << 20  # unused: bodies always stream (kept for callers that set it)
    allow_remote_admin: bool = False
    # limits as HAProxy and nginx have them (see LoadBalancerSpec for the names and where they come from)
    request_head_timeout_s: float = 10.0  # the whole request head, from its first byte (or accept): else 408
    client_send_timeout_s: float = 60.0  # a client that reads nothing of its response for this long is cut
    max_client_connections: int = 10_000  # more concurrent client connections get 503 and are closed
    sticky_secret: str = ""  # keys the sticky cookie (default: the admin token; neither: random per process)

    @classmethod
    def from_spec(cls, spec: LoadBalancerSpec, token: str, members: Sequence[Member] = ()) -> ProxyConfig:
        return cls(
            name=spec.name,
            listen_host=spec.ip_address,
            listen_port=spec.port,
            admin_port=spec.effective_admin_port,
            token=token,
            algorithm=spec.algorithm,
            sticky=spec.sticky_sessions,
            sticky_cookie=spec.sticky_cookie,
            drain_sticky=spec.drain_sticky,
            slow_start_s=spec.slow_start_s,
            certfile=spec.ssl_certificate if spec.ssl_enabled else None,
            keyfile=spec.ssl_key if spec.ssl_enabled else None,
            members=list(members),
            request_head_timeout_s=spec.request_head_timeout_s,
            client_send_timeout_s=spec.client_send_timeout_s,
            max_client_connections=spec.max_client_connections,
        )


def _sticky_key(config: ProxyConfig) -> bytes:
    """The key of the sticky cookie's HMAC: derived from the balancer's secret and name."""
    secret = config.sticky_secret or config.token
    if not secret:
        return secrets.token_bytes(32)
    return hmac.new(
        secret.encode(), b"poolctl-sticky-cookie:" + config.name.encode(), hashlib.sha256
    ).digest()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class BalancerProxy:
    """A running built-in balancer. Use as `async with BalancerProxy(config) as proxy:` or start()/stop()."""

    def __init__(self, config: ProxyConfig) -> None:
        if config.admin_port is not None:
            if not config.token:
                raise ValueError("an admin listener needs a token (--token or POOLCTL_BALANCER_TOKEN)")
            if not config.allow_remote_admin and not is_loopback_host(config.admin_host):
                raise ValueError(
                    f"the admin listener must bind a loopback address, not {config.admin_host!r}"
                )
        if bool(config.certfile) != bool(config.keyfile):
            raise ValueError("TLS needs both a certificate and a key")
        self.config = config
        self.balancing = Balancing(
            config.algorithm,
            config.members,
            sticky=config.sticky,
            sticky_key=_sticky_key(config),
            drain_sticky=config.drain_sticky,
            slow_start_s=config.slow_start_s,
            now=time.monotonic(),
        )
        self.stats = ProxyStats()
        self.ssl_context: ssl.SSLContext | None = None
        if config.certfile and config.keyfile:
            self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl_context.load_cert_chain(config.certfile, config.keyfile)
        self.scheme = "https" if self.ssl_context else "http"
        self._pool = UpstreamPool(config.connect_timeout_s, config.upstream_idle_timeout_s)
        self._clients: set[ClientConn] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._runners: list[web.AppRunner] = []
        # precomputed bytes for the hot path
        self._sticky = config.sticky
        self._cookie_name = config.sticky_cookie.encode()
        self._proto_line = b"X-Forwarded-Proto: " + self.scheme.encode()
        self._cookie_attrs = b"; Path=/; HttpOnly; SameSite=Lax" + (b"; Secure" if self.ssl_context else b"")
        self._cookie_lines: dict[str, bytes] = {}
        self.port = 0
        self.admin_port: int | None = None
        self._closed = asyncio.Event()

    # --- membership (also what the admin endpoint calls) -----------------------------------------------

    def members(self) -> list[Member]:
        """Current members with their live active connection counts, ordered by server id."""
        act = self.stats.active
        return [
            m.model_copy(update={"active_connections": act.get(m.server_id, 0)})
            for m in sorted(self.balancing.members.values(), key=lambda m: m.server_id)
        ]

    def set_members(self, desired: Iterable[Member]) -> SyncResult:
        """Replace the whole membership (idempotent). Removed members finish their in-flight requests."""
        desired = list(desired)
        ids = [m.server_id for m in desired]
        if len(set(ids)) != len(ids):
            raise ValueError("a server_id appears twice in the member list")
        result = diff_members(self.balancing.members.values(), desired)
        if result.changed:
            self.balancing.set_members(
                (m.model_copy(update={"active_connections": 0}) for m in desired), time.monotonic()
            )
            self._pool.close_addresses({m.address for m in desired})
            log.info(
                "balancer %s members: +%s -%s ~%s",
                self.config.name,
                result.added,
                result.removed,
                result.updated,
            )
        return result

    def set_member_state(
        self, server_id: str, state: MemberState | None = None, weight: int | None = None
    ) -> Member:
        members = dict(self.balancing.members)
        if server_id not in members:
            raise UnknownMemberError(server_id)
        update: dict[str, Any] = {}
        if state is not None:
            update["state"] = MemberState(state)
        if weight is not None:
            update["weight"] = weight
        members[server_id] = Member.model_validate({**members[server_id].model_dump(), **update})
        self.set_members(members.values())
        return self.members_by_id()[server_id]

    def drain(self, server_id: str) -> Member:
        """Stop new requests to a member; in-flight ones finish. Poll `active_connections` for zero."""
        return self.set_member_state(server_id, MemberState.DRAINING)

    def members_by_id(self) -> dict[str, Member]:
        return {m.server_id: m for m in self.members()}

    def active_connections(self, server_id: str) -> int:
        return self.stats.active.get(server_id, 0)

    def snapshot(self) -> BalancerStats:
        members = self.balancing.members
        ids = sorted(set(members) | set(self.stats.counters))
        return BalancerStats(
            balancer=self.config.name,
            driver="builtin",
            algorithm=self.config.algorithm,
            requests=self.stats.requests,
            no_member_responses=self.stats.no_member,
            servers=[self.stats.server(sid, members.get(sid)) for sid in ids],
        )

    # --- lifecycle --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.config.listen_host}:{self.port}"

    @property
    def admin_url(self) -> str | None:
        return None if self.admin_port is None else f"http://{self.config.admin_host}:{self.admin_port}"

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._pool.clock = loop.time()
        sock = _bind(cfg.listen_host, cfg.listen_port)
        self.port = sock.getsockname()[1]
        self._server = await loop.create_server(
            lambda: ClientConn(self), sock=sock, ssl=self.ssl_context, backlog=1024
        )
        self._sweeper = loop.create_task(self._sweep())
        if cfg.admin_port is not None:
            asock = _bind(cfg.admin_host, cfg.admin_port)
            self.admin_port = asock.getsockname()[1]
            runner = web.AppRunner(
                make_admin_app(self), access_log=None, handle_signals=False, shutdown_timeout=5.0
            )
            await runner.setup()
            self._runners.append(runner)
            await web.SockSite(runner, asock).start()
        log.info("balancer %s listening on %s (admin %s)", cfg.name, self.url, self.admin_url)

    async def _sweep(self) -> None:
        """Refresh the coarse clock; move slow start ramps on; enforce the read, send, request-head, keep-alive and pool idle timeouts."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        read_s, send_s, head_s, idle_s = (
            cfg.read_timeout_s,
            cfg.client_send_timeout_s,
            cfg.request_head_timeout_s,
            cfg.keepalive_timeout_s,
        )
        interval = max(0.01, min(1.0, read_s / 4, idle_s / 4, head_s / 4, send_s / 4))
        if cfg.slow_start_s > 0:  # at least 20 steps per ramp (HAProxy steps once a second)
            interval = min(interval, max(0.05, cfg.slow_start_s / 20))
        while True:
            await asyncio.sleep(interval)
            now = self._pool.clock = loop.time()
            try:
                if self.balancing.ramping:
                    self.balancing.advance(time.monotonic())
                for c in list(self._clients):
                    if c.linger_since:
                        if now - c.linger_since > LINGER_S and c.transport is not None:
                            c.transport.close()
                    elif c.busy:
                        if c.wpaused:
                            if now - c.wpaused_since > send_s:
                                c.send_timeout()
                        else:
                            up = c.up
                            if up is not None and now - up.last > read_s:
                                c.up_timeout()
                    elif c.head_started:
                        if now - c.head_started > head_s:
                            c.head_timeout()
                    elif now - c.last > idle_s:
                        c.idle_close()
                self._pool.sweep(now)
            except Exception:  # never let one bad connection stop the timeouts
                log.exception("balancer %s: sweeper", cfg.name)

    def _set_cookie_line(self, token: str) -> bytes:
        line = self._cookie_lines.get(token)
        if line is None:
            if len(self._cookie_lines) > 4096:
                self._cookie_lines.clear()
            line = self._cookie_lines[token] = (
                b"Set-Cookie: " + self._cookie_name + b"=" + token.encode() + self._cookie_attrs
            )
        return line

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (up to `grace_s`), then close everything."""
        if self._server is not None:
            self._server.close()
            for c in list(self._clients):
                c.idle_close()
            for _ in range(max(1, int(grace_s / 0.02))):  # poll: in-flight exchanges end on their own
                if not any(c.busy for c in self._clients):
                    break
                await asyncio.sleep(0.02)
            for c in list(self._clients):
                if c.transport is not None:
                    c.transport.abort()
            self._server = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._pool.close_all()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> BalancerProxy:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def run_proxy(config: ProxyConfig, stop: asyncio.Event | None = None) -> None:
    """Run a balancer until `stop` is set (or forever), then shut it down cleanly."""
    proxy = BalancerProxy(config)
    await proxy.start()
    try:
        if stop is None:
            await proxy.wait_closed()
        else:
            await stop.wait()
    finally:
        await proxy.stop()


async def serve_until_signalled(config: ProxyConfig, banner_extra: str = "") -> None:
    """Run one proxy until SIGINT/SIGTERM. Prints one line on stdout first, `listening <url> admin <url>`,
    so a parent process can learn the bound ports (port 0 = any free port)."""
    import signal

    proxy = BalancerProxy(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await proxy.start()
    print(f"listening {proxy.url} admin {proxy.admin_url}{banner_extra}", flush=True)
    try:
        await stop.wait()
    finally:
        await proxy.stop()
