"""The built-in balancer's admin endpoint (loopback, bearer token): membership, drain, stats, /metrics.

PUT   /admin/members              {"members": [Member, ...]}  full desired list, idempotent -> SyncResult
GET   /admin/members              current members with live active_connections
PATCH /admin/members/{id}         {"state": ..., "weight": ...}  (like HAProxy `set server`)
POST  /admin/members/{id}/drain   no new requests; in-flight ones finish
GET   /admin/stats                BalancerStats as JSON
GET   /metrics                    Prometheus text format (no token: read-only counters)
GET   /healthz                    200 "ok"
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from poolctl.domain.balancer_errors import UnknownMemberError
from poolctl.domain.balancing import LATENCY_BUCKETS_S, BalancerStats, Member, MemberState, SyncResult

_MEMBERS = TypeAdapter(list[Member])


class AdminTarget(Protocol):
    """What the admin endpoint drives: `proxy.BalancerProxy`."""

    config: Any  # proxy.ProxyConfig: name, algorithm, sticky, token

    def members(self) -> list[Member]: ...
    def set_members(self, desired: Iterable[Member]) -> SyncResult: ...
    def set_member_state(
        self, server_id: str, state: MemberState | None = None, weight: int | None = None
    ) -> Member: ...
    def drain(self, server_id: str) -> Member: ...
    def snapshot(self) -> BalancerStats: ...


PROXY_KEY: web.AppKey[AdminTarget] = web.AppKey("proxy")
PUBLIC_PATHS = frozenset({"/metrics", "/healthz"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _token_middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            # a header that is not ASCII cannot be the token: 401, never an encoding error (500)
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="poolctl-balancer"'},
                )
        return await handler(request)

    return check


async def _get_members(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    return _json(
        {
            "balancer": proxy.config.name,
            "algorithm": proxy.config.algorithm,
            "sticky": proxy.config.sticky,
            "members": [m.model_dump(mode="json") for m in proxy.members()],
        }
    )


async def _put_members(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body is not JSON")
    raw = body.get("members") if isinstance(body, dict) else body
    if not isinstance(raw, list):
        return _error(400, 'expected {"members": [...]} or a JSON list of members')
    try:
        desired = _MEMBERS.validate_python(raw)
        result = proxy.set_members(desired)
    except ValidationError as e:
        return _error(400, f"invalid member list: {e}")
    except ValueError as e:
        return _error(400, str(e))
    return _json({**result.model_dump(), "members": [m.model_dump(mode="json") for m in proxy.members()]})


async def _patch_member(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    sid = request.match_info["server_id"]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body is not JSON")
    if not isinstance(body, dict) or not set(body) <= {"state", "weight"}:
        return _error(400, 'expected {"state": "in_rotation|draining|out", "weight": N}')
    try:
        state = MemberState(body["state"]) if "state" in body else None
        member = proxy.set_member_state(sid, state, body.get("weight"))
    except UnknownMemberError:
        return _error(404, f"server {sid!r} is not a member")
    except (ValueError, ValidationError) as e:
        return _error(400, str(e))
    return _json({"member": member.model_dump(mode="json")})


async def _drain_member(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    sid = request.match_info["server_id"]
    try:
        member = proxy.drain(sid)
    except UnknownMemberError:
        return _error(404, f"server {sid!r} is not a member")
    return _json({"member": member.model_dump(mode="json"), "active_connections": member.active_connections})


async def _get_stats(request: web.Request) -> web.Response:
    return _json(request.app[PROXY_KEY].snapshot().model_dump(mode="json"))


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(proxy: AdminTarget) -> str:
    """The balancer's statistics in Prometheus text exposition format 0.0.4."""
    snap = proxy.snapshot()
    lb = _label(snap.balancer)
    out = [
        "# HELP poolctl_lb_requests_total Requests received by the balancer.",
        "# TYPE poolctl_lb_requests_total counter",
        f'poolctl_lb_requests_total{{balancer="{lb}"}} {snap.requests}',
        "# HELP poolctl_lb_no_member_responses_total Requests answered 503 because no server was in rotation.",
        "# TYPE poolctl_lb_no_member_responses_total counter",
        f'poolctl_lb_no_member_responses_total{{balancer="{lb}"}} {snap.no_member_responses}',
        "# HELP poolctl_lb_server_responses_total Responses per server and status class.",
        "# TYPE poolctl_lb_server_responses_total counter",
    ]
    for s in snap.servers:
        sv = _label(s.server_id)
        for code, n in (
            ("2xx", s.responses_2xx),
            ("3xx", s.responses_3xx),
            ("4xx", s.responses_4xx),
            ("5xx", s.responses_5xx),
        ):
            out.append(
                f'poolctl_lb_server_responses_total{{balancer="{lb}",server="{sv}",code="{code}"}} {n}'
            )
    out += [
        "# HELP poolctl_lb_server_upstream_errors_total Requests a server did not answer.",
        "# TYPE poolctl_lb_server_upstream_errors_total counter",
    ]
    out += [
        f'poolctl_lb_server_upstream_errors_total{{balancer="{lb}",server="{_label(s.server_id)}"}} {s.upstream_errors}'
        for s in snap.servers
    ]
    out += [
        "# HELP poolctl_lb_server_active_connections In-flight requests per server.",
        "# TYPE poolctl_lb_server_active_connections gauge",
    ]
    out += [
        f'poolctl_lb_server_active_connections{{balancer="{lb}",server="{_label(s.server_id)}"}} {s.active_connections}'
        for s in snap.servers
    ]
    out += [
        "# HELP poolctl_lb_server_in_rotation 1 if the server receives new requests.",
        "# TYPE poolctl_lb_server_in_rotation gauge",
    ]
    out += [
        f'poolctl_lb_server_in_rotation{{balancer="{lb}",server="{_label(s.server_id)}",state="{_label(s.state)}"}} '
        f"{1 if s.state == MemberState.IN_ROTATION.value and s.weight > 0 else 0}"
        for s in snap.servers
    ]
    out += [
        "# HELP poolctl_lb_server_request_duration_seconds Time from pick to the last byte of the response.",
        "# TYPE poolctl_lb_server_request_duration_seconds histogram",
    ]
    for s in snap.servers:
        sv = _label(s.server_id)
        buckets = s.latency_buckets or [0] * (len(LATENCY_BUCKETS_S) + 1)
        for bound, n in zip(LATENCY_BUCKETS_S, buckets, strict=False):
            out.append(
                f'poolctl_lb_server_request_duration_seconds_bucket{{balancer="{lb}",server="{sv}",le="{bound}"}} {n}'
            )
        out.append(
            f'poolctl_lb_server_request_duration_seconds_bucket{{balancer="{lb}",server="{sv}",le="+Inf"}} {buckets[-1]}'
        )
        out.append(
            f'poolctl_lb_server_request_duration_seconds_sum{{balancer="{lb}",server="{sv}"}} {s.latency_sum_s}'
        )
        out.append(
            f'poolctl_lb_server_request_duration_seconds_count{{balancer="{lb}",server="{sv}"}} {buckets[-1]}'
        )
    return "\n".join(out) + "\n"


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=render_metrics(request.app[PROXY_KEY]).encode(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_admin_app(proxy: AdminTarget) -> web.Application:
    app = web.Application(middlewares=[_token_middleware(proxy.config.token)])
    app[PROXY_KEY] = proxy
    app.router.add_get("/admin/members", _get_members)
    app.router.add_put("/admin/members", _put_members)
    app.router.add_patch("/admin/members/{server_id}", _patch_member)
    app.router.add_post("/admin/members/{server_id}/drain", _drain_member)
    app.router.add_get("/admin/stats", _get_stats)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app
