"""The built-in data plane: an asyncio HTTP/1.1 reverse proxy that balances with `domain.balancing`.

One `BalancerProxy` owns a listener (optionally TLS), a pooled keep-alive upstream session, the
selection state, per-server statistics, and (see `admin.py`) a token-protected admin listener.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import (
    LATENCY_BUCKETS_S,
    BalancerStats,
    Balancing,
    Member,
    MemberState,
    NoHealthyMember,
    ServerStats,
    SyncResult,
    diff_members,
)

log = logging.getLogger("poolctl.balancer")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_CHUNK = 64 * 1024


class UnknownMemberError(KeyError):
    """The named server is not a member of this balancer."""


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
    certfile: str | None = None
    keyfile: str | None = None
    members: list[Member] = field(default_factory=list)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0
    max_buffered_body: int = 1 << 20  # bodies up to this size are read whole (faster); larger ones stream
    allow_remote_admin: bool = False

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
            certfile=spec.ssl_certificate if spec.ssl_enabled else None,
            keyfile=spec.ssl_key if spec.ssl_enabled else None,
            members=list(members),
        )


class _Counters:
    __slots__ = ("requests", "by_class", "errors", "latency_sum", "buckets")

    def __init__(self) -> None:
        self.requests = 0
        self.by_class = [0, 0, 0, 0, 0, 0]  # index = status // 100
        self.errors = 0
        self.latency_sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # non-cumulative; last = +Inf


class ProxyStats:
    """Live per-server counters. `active` (in-flight requests by server id) is what least_connections reads."""

    def __init__(self) -> None:
        self.counters: dict[str, _Counters] = {}
        self.active: dict[str, int] = {}
        self.requests = 0
        self.no_member = 0

    def begin(self, server_id: str) -> None:
        self.requests += 1
        c = self.counters.get(server_id)
        if c is None:
            c = self.counters[server_id] = _Counters()
        c.requests += 1
        self.active[server_id] = self.active.get(server_id, 0) + 1

    def end(self, server_id: str, status: int | None, latency_s: float) -> None:
        self.active[server_id] -= 1
        c = self.counters[server_id]
        if status is None:
            c.errors += 1
        else:
            c.by_class[min(status // 100, 5)] += 1
        c.latency_sum += latency_s
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if latency_s <= bound:
                c.buckets[i] += 1
                break
        else:
            c.buckets[-1] += 1

    def server(self, server_id: str, member: Member | None) -> ServerStats:
        c = self.counters.get(server_id) or _Counters()
        cumulative, running = [], 0
        for n in c.buckets:
            running += n
            cumulative.append(running)
        return ServerStats(
            server_id=server_id,
            address=member.address if member else "",
            state=member.state.value if member else "removed",
            weight=member.weight if member else 0,
            requests=c.requests,
            responses_2xx=c.by_class[2] + c.by_class[1],
            responses_3xx=c.by_class[3],
            responses_4xx=c.by_class[4],
            responses_5xx=c.by_class[5],
            upstream_errors=c.errors,
            active_connections=self.active.get(server_id, 0),
            latency_sum_s=c.latency_sum,
            latency_buckets=cumulative,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def _forward_headers(headers: Any) -> CIMultiDict[str]:
    """Copy headers minus hop-by-hop ones (and those the Connection header names)."""
    drop = HOP_BY_HOP
    conn = headers.get("Connection")
    if conn:
        drop = drop | {t.strip().lower() for t in conn.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in drop:
            out.add(k, v)
    return out


class BalancerProxy:
    """A running built-in balancer. Use as `async with BalancerProxy(config) as proxy:` or start()/stop()."""

    def __init__(self, config: ProxyConfig) -> None:
        if config.admin_port is not None:
            if not config.token:
                raise ValueError("an admin listener needs a token (--token or POOLCTL_BALANCER_TOKEN)")
            if not config.allow_remote_admin and not _is_loopback(config.admin_host):
                raise ValueError(
                    f"the admin listener must bind a loopback address, not {config.admin_host!r}"
                )
        if bool(config.certfile) != bool(config.keyfile):
            raise ValueError("TLS needs both a certificate and a key")
        self.config = config
        self.balancing = Balancing(config.algorithm, config.members, sticky=config.sticky)
        self.stats = ProxyStats()
        self.ssl_context: ssl.SSLContext | None = None
        if config.certfile and config.keyfile:
            self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl_context.load_cert_chain(config.certfile, config.keyfile)
        self.scheme = "https" if self.ssl_context else "http"
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self._base_urls: dict[str, str] = {}
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
            self.balancing.set_members(m.model_copy(update={"active_connections": 0}) for m in desired)
            self._base_urls = {m.server_id: f"http://{m.address}" for m in desired}
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
        from poolctl.balancer.admin import make_admin_app

        cfg = self.config
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30.0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout_s, sock_read=cfg.read_timeout_s
            ),
        )
        self._base_urls = {m.server_id: f"http://{m.address}" for m in self.balancing.members.values()}
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        sock = _bind(cfg.listen_host, cfg.listen_port)
        self.port = sock.getsockname()[1]
        await self._serve(app, sock, self.ssl_context)
        if cfg.admin_port is not None:
            asock = _bind(cfg.admin_host, cfg.admin_port)
            self.admin_port = asock.getsockname()[1]
            await self._serve(make_admin_app(self), asock, None)
        log.info("balancer %s listening on %s (admin %s)", cfg.name, self.url, self.admin_url)

    async def _serve(self, app: web.Application, sock: socket.socket, ctx: ssl.SSLContext | None) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        self._runners.append(runner)
        await web.SockSite(runner, sock, ssl_context=ctx).start()

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
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

    # --- the data path ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        cookie = request.cookies.get(cfg.sticky_cookie) if cfg.sticky else None
        client_ip = request.remote or ""
        try:
            pick = self.balancing.pick(client_ip, cookie, self.stats.active)
        except NoHealthyMember:
            self.stats.requests += 1
            self.stats.no_member += 1
            return web.Response(
                status=502,
                text=f"502 Bad Gateway: load balancer {cfg.name!r} has no server in rotation\n",
                headers={"Retry-After": "1"},
            )
        member = pick.member
        sid = member.server_id
        assert self._session is not None
        headers = _forward_headers(request.headers)
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
        headers["X-Forwarded-Proto"] = self.scheme
        if "Host" in request.headers:
            headers["X-Forwarded-Host"] = request.headers["Host"]
        data: Any = None
        if request.body_exists:
            n = request.content_length
            if n is not None and n <= cfg.max_buffered_body:
                data = await request.read()
            else:
                data = request.content.iter_chunked(_CHUNK)
        base = self._base_urls.get(sid) or f"http://{member.address}"
        url = URL(base + request.raw_path, encoded=True)
        status: int | None = None
        streaming: web.StreamResponse | None = None
        started = time.perf_counter()
        self.stats.begin(sid)
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            ) as up:
                resp_headers = _forward_headers(up.headers)
                bodyless = request.method == "HEAD" or up.status in (204, 304) or up.status < 200
                length = up.content_length
                if not bodyless:
                    resp_headers.popall("Content-Length", None)
                if not bodyless and length is not None and length <= cfg.max_buffered_body:
                    body = await up.read()
                    resp: web.StreamResponse = web.Response(status=up.status, headers=resp_headers, body=body)
                    if "Content-Type" not in up.headers:
                        resp.headers.popall("Content-Type", None)
                    self._set_cookie(resp, pick.set_cookie)
                    status = up.status
                    return resp
                streaming = web.StreamResponse(status=up.status, reason=up.reason, headers=resp_headers)
                if not bodyless and length is not None:
                    streaming.content_length = length
                self._set_cookie(streaming, pick.set_cookie)
                await streaming.prepare(request)
                if not bodyless:
                    async for chunk in up.content.iter_chunked(_CHUNK):
                        await streaming.write(chunk)
                await streaming.write_eof()
                status = up.status
                return streaming
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            if streaming is not None and streaming.prepared:
                # the status line is gone already: all we can do is cut the client's connection
                log.warning("balancer %s: server %s failed mid-response: %r", cfg.name, sid, e)
                raise
            log.warning("balancer %s: server %s (%s) failed: %r", cfg.name, sid, member.address, e)
            gateway = 504 if isinstance(e, TimeoutError) else 502
            return web.Response(
                status=gateway,
                text=f"{gateway} {'Gateway Timeout' if gateway == 504 else 'Bad Gateway'}: "
                f"server {sid} did not answer load balancer {cfg.name!r}\n",
            )
        finally:
            self.stats.end(sid, status, time.perf_counter() - started)

    def _set_cookie(self, resp: web.StreamResponse, value: str | None) -> None:
        if value is not None:
            resp.set_cookie(
                self.config.sticky_cookie,
                value,
                path="/",
                httponly=True,
                samesite="Lax",
                secure=self.ssl_context is not None,
            )


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
