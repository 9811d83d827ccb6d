"""The pool <-> balancer integration end to end (issue 5, "Pool integration"): a pool of real local servers
with an HTTP health check and one built-in load balancer, a real `BalancerProxy` running in this process on
the ports the spec declares, the real worker and dev server. Traffic goes through the proxy the whole time.

- after apply, traffic reaches every server, and no server before it was seen healthy;
- a scale-out adds the new server once it is healthy, and traffic reaches it;
- a scale-in drains the victim first (an in-flight slow request on it completes with 200), then terminates
  it; no request sent after the drain reaches it;
- a health transition takes a server out of rotation within about one probe interval (times the
  threshold) and back in when it is healthy again;
- weights from the pool spec (`server_weight`) reach the balancer, also when the spec changes;
- `poolctl lb stats` reports exactly the traffic that went through the proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import select
from temporalio.client import Client

from poolctl.balancer.credentials import balancer_token
from poolctl.balancer.proxy import BalancerProxy
from poolctl.domain.capacity import pick_victims
from poolctl.domain.pool_spec import TerminationPolicy
from poolctl.domain.pool_state import ServerRecord
from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.store.models import HealthCheck, Server
from tests.backends import in_process_balancer
from tests.helpers import apply_yaml, eventually, pool_view, settled

pytestmark = pytest.mark.temporal

INTERVAL = 1.0
UNHEALTHY_THRESHOLD = 2
SLOW_MS = 3000
T = TypeVar("T")


def spec_yaml(lb_port: int, admin_port: int, *, desired: int, weight: int) -> str:
    return f"""
pools:
  - name: web
    provider: local
    min_servers: 1
    max_servers: 6
    desired_servers: {desired}
    auto_healing: false
    server_weight: {weight}
    termination_policy: oldest_first
    health_check:
      type: http
      path: /health
      interval: {INTERVAL}
      timeout: 0.5
      jitter: 0
      healthy_threshold: 2
      unhealthy_threshold: {UNHEALTHY_THRESHOLD}
    load_balancers:
      - name: front
        port: {lb_port}
        admin_port: {admin_port}
        algorithm: weighted
        drain_timeout_s: 20
"""


@dataclass
class Hit:
    started: float
    ended: float
    status: int
    server: str | None  # the body (server id) of a 200


@dataclass
class Traffic:
    """Every request the test sends through the proxy, with wall-clock times (comparable with the
    health transitions the probe activity records in the store)."""

    url: str
    http: httpx.AsyncClient
    hits: list[Hit] = field(default_factory=list)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def get(self) -> Hit:
        started = time.time()
        r = await self.http.get(self.url + "/")
        hit = Hit(started, time.time(), r.status_code, r.text.strip() if r.status_code == 200 else None)
        self.hits.append(hit)
        return hit

    async def spread(self, n: int, *, until: set[str] | None = None) -> set[str]:
        """n sequential requests (or, with `until`, as many as it takes for all of those servers to answer,
        at most n), all of which must succeed: the servers that answered."""
        seen: set[str] = set()
        for _ in range(n):
            hit = await self.get()
            assert hit.status == 200 and hit.server, hit
            seen.add(hit.server)
            if until is not None and seen >= until:
                break
        return seen

    async def background(self, stop: asyncio.Event) -> None:
        """A steady trickle of requests for the whole test (pausable)."""
        self.running.set()
        while not stop.is_set():
            if not self.running.is_set():
                self.idle.set()
                await self.running.wait()
                self.idle.clear()
            await self.get()
            await asyncio.sleep(0.03)

    async def pause(self) -> None:
        self.running.clear()
        await asyncio.wait_for(self.idle.wait(), 10)


@dataclass
class Membership:
    """The proxy's membership as it changes over time (polled in-process, cheaply)."""

    proxy: BalancerProxy
    changes: list[tuple[float, dict[str, tuple[str, int]]]] = field(default_factory=list)

    def now(self) -> dict[str, tuple[str, int]]:
        return {m.server_id: (m.state.value, m.weight) for m in self.proxy.members()}

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            cur = self.now()
            if not self.changes or self.changes[-1][1] != cur:
                self.changes.append((time.time(), cur))
            await asyncio.sleep(0.02)

    def first_seen(self, server_id: str, state: str, after: float = 0.0) -> float | None:
        for t, members in self.changes:
            if t >= after and members.get(server_id, ("", 0))[0] == state:
                return t
        return None

    def in_rotation(self) -> set[str]:
        """As last recorded (so that `first_seen` knows of whatever this returns)."""
        last = self.changes[-1][1] if self.changes else {}
        return {sid for sid, (state, _) in last.items() if state == "in_rotation"}


def as_utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def became_healthy_at(settings: Settings, server_id: str) -> float:
    """When the probe loop first saw the server healthy (the transition recorded in the store)."""
    with session_scope(settings.resolved_database_url) as s:
        row = s.scalar(select(HealthCheck).where(HealthCheck.server_id == server_id))
        assert row is not None, server_id
        items = (row.transitions or {}).get("items", [])
    at = next(datetime.fromisoformat(t["at"]) for t in items if t["to_state"] == "healthy")
    return as_utc(at).timestamp()


async def admin_post(server: ServerRecord, path: str, body: dict[str, object]) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://{server.host}:{server.port}{path}", json=body)
        r.raise_for_status()


@pytest.fixture
async def front(settings: Settings) -> AsyncIterator[BalancerProxy]:
    """The built-in balancer the spec declares, running in this process on the ports it declares."""
    async with in_process_balancer(settings) as proxy:
        yield proxy


async def test_pool_drives_its_balancer(client: Client, settings: Settings, worker, front: BalancerProxy):
    lb_port, admin_port = front.port, front.admin_port
    assert admin_port is not None
    members = Membership(front)
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=30) as http:
        traffic = Traffic(front.url, http)
        bg = [
            asyncio.create_task(members.watch(stop)),
            asyncio.create_task(traffic.background(stop)),
        ]
        try:
            await _scenario(client, settings, front, members, traffic, http, lb_port, admin_port)
        finally:
            stop.set()
            traffic.running.set()
            await asyncio.gather(*bg)

    # nothing was lost: once traffic flowed, every request through the proxy succeeded (scale-out,
    # drain + scale-in, a server out of and back into rotation) ...
    first_ok = next(i for i, h in enumerate(traffic.hits) if h.status == 200)
    assert [h for h in traffic.hits[first_ok:] if h.status != 200] == []
    # ... and before anything was healthy the balancer said so (503, nobody in rotation)
    assert {h.status for h in traffic.hits[:first_ok]} <= {503}
    # no server answered a request before the probe loop had seen it healthy
    answered = {h.server for h in traffic.hits if h.server}
    for sid in answered:
        healthy_at = became_healthy_at(settings, sid)
        early = [h for h in traffic.hits if h.server == sid and h.ended < healthy_at]
        assert early == [], f"{sid} got traffic before it was healthy"

    # `poolctl lb stats` (a subprocess: the proxy runs in this event loop) reports exactly this traffic
    env = {**os.environ, "POOLCTL_STATE_DIR": str(settings.state_dir),
           "POOLCTL_DATABASE_URL": settings.resolved_database_url}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poolctl.starter.cli", "lb", "stats", "front", "--pool", "web", "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    live = json.loads(out)["live"]
    assert live["requests"] == len(traffic.hits)
    assert live["no_member_responses"] == first_ok
    by_server = Counter(h.server for h in traffic.hits if h.server)
    assert {s["server_id"]: s["requests"] for s in live["servers"]} == dict(by_server)
    assert {s["server_id"]: s["2xx"] for s in live["servers"]} == dict(by_server)
    assert sum(s["share"] for s in live["servers"]) == pytest.approx(1.0)
    assert live["success_rate"] == pytest.approx((len(traffic.hits) - first_ok) / len(traffic.hits))

    # the balancer restarts (`poolctl balancer serve`, as `poolctl dev up` runs it): it starts from the store
    # in line with the pool (the healthy servers, the spec's current weight) without waiting for a change
    view = await pool_view(client, settings, "web")
    assert view is not None
    await front.stop(grace_s=1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poolctl.starter.cli", "balancer", "serve", "--team", settings.team,
        "--pool", "web", "--name", "front", "--no-uvloop",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def restarted() -> dict[str, tuple[str, int]] | None:
                try:
                    r = await http.get(
                        f"http://127.0.0.1:{front.admin_port}/admin/members",
                        headers={"Authorization": f"Bearer {balancer_token(settings)}"},
                    )
                except httpx.TransportError:
                    return None
                return {m["server_id"]: (m["state"], m["weight"]) for m in r.json()["members"]}

            got = await eventually(restarted, lambda m: m is not None, timeout=120)  # a process start
            assert got == {s.server_id: ("in_rotation", 5) for s in view.servers}
            seen = await Traffic(front.url, http).spread(40, until=set(got))
            assert seen == set(got)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def _scenario(
    client: Client,
    settings: Settings,
    front: BalancerProxy,
    members: Membership,
    traffic: Traffic,
    http: httpx.AsyncClient,
    lb_port: int,
    admin_port: int,
) -> None:
    async def current(value: T) -> T:
        return value

    async def admin_members() -> dict[str, dict]:
        r = await http.get(
            f"http://127.0.0.1:{admin_port}/admin/members",
            headers={"Authorization": f"Bearer {balancer_token(settings)}"},
        )
        r.raise_for_status()
        return {m["server_id"]: m for m in r.json()["members"]}

    async def rotation() -> set[str]:
        return members.in_rotation()

    # 1. apply: every server reaches the balancer, in rotation once healthy, with the spec's weight
    await apply_yaml(client, settings, spec_yaml(lb_port, admin_port, desired=3, weight=2))
    v = await settled(client, settings, "web", 3)
    first = {s.server_id for s in v.servers}
    servers = {s.server_id: s for s in v.servers}
    await eventually(rotation, lambda r: r == first, timeout=30)
    for sid in first:
        went_in = members.first_seen(sid, "in_rotation")
        assert went_in is not None and went_in >= became_healthy_at(settings, sid)
    assert await traffic.spread(40, until=first) == first
    on_admin = await admin_members()
    assert set(on_admin) == first
    assert {m["weight"] for m in on_admin.values()} == {2}
    assert {m["address"] for m in on_admin.values()} == {f"{s.host}:{s.port}" for s in v.servers}

    # 2. scale-out: the new server joins once healthy and takes traffic
    await pool_ops.request_scale(client, settings.team, "web", 4, "test: scale out")
    v = await settled(client, settings, "web", 4)
    [new] = [s for s in v.servers if s.server_id not in first]
    servers[new.server_id] = new
    await eventually(rotation, lambda r: new.server_id in r, timeout=30)
    went_in = members.first_seen(new.server_id, "in_rotation")
    assert went_in is not None and went_in >= became_healthy_at(settings, new.server_id)
    four = first | {new.server_id}
    assert await traffic.spread(40, until=four) == four
    assert (await admin_members())[new.server_id]["weight"] == 2

    # 3. scale-in: the victim (the pool's own choice) is drained first, its in-flight request completes,
    #    and only then is it terminated
    v = await pool_view(client, settings, "web")
    assert v is not None
    [victim] = pick_victims(v.servers, 1, TerminationPolicy.OLDEST_FIRST)
    await traffic.pause()  # so that the requests held on the victim are ours
    await admin_post(victim, "/admin/slow", {"delay_ms": SLOW_MS})
    held: list[asyncio.Task[Hit]] = []
    while front.active_connections(victim.server_id) == 0:
        assert len(held) < 8, "no request reached the victim"
        held.append(asyncio.create_task(traffic.get()))
        await asyncio.sleep(0.02)
    traffic.running.set()
    await pool_ops.request_scale(client, settings.team, "web", 3, "test: scale in")
    await eventually(
        lambda: current(members.now().get(victim.server_id)),
        lambda m: m is not None and m[0] == "draining",
        timeout=30,
        interval=0.05,
    )
    drained_at = time.time()
    assert front.active_connections(victim.server_id) >= 1, "the drain started after the request ended"
    assert not all(t.done() for t in held)
    assert victim.server_id not in await traffic.spread(8)
    done = await asyncio.gather(*held)
    slow = [h for h in done if h.server == victim.server_id]
    assert len(slow) == 1 and slow[0].status == 200 and slow[0].ended - slow[0].started >= SLOW_MS / 1000
    v = await settled(client, settings, "web", 3)
    left = {s.server_id for s in v.servers}
    assert left == four - {victim.server_id}
    await eventually(lambda: current(members.now()), lambda m: victim.server_id not in m, timeout=30)
    with session_scope(settings.resolved_database_url) as s:
        row = s.get(Server, victim.server_id)
        assert row is not None and row.state == "terminated" and row.terminated_at is not None
        terminated_at = as_utc(row.terminated_at).timestamp()
        [down] = [e for e in inventory.list_events(s, settings.team, "web") if e.direction == "down"]
        assert down.status == "succeeded" and down.servers["removed"] == [victim.server_id]
    assert terminated_at >= slow[0].ended - 0.05, "terminated before its in-flight request finished"
    with pytest.raises(httpx.TransportError):
        await http.get(f"http://{victim.host}:{victim.port}/", timeout=2)
    assert [h for h in traffic.hits if h.started > drained_at and h.server == victim.server_id] == []
    assert victim.server_id not in await traffic.spread(9)

    # 4. a health transition: out of rotation, back in once healthy again (how fast is a figure that
    #    bench/health_e2e.py measures; a test on a busy machine only asserts that it happens)
    sick = servers[sorted(left)[0]]
    await admin_post(sick, "/admin/health", {"healthy": False})
    await eventually(
        lambda: current(members.now()[sick.server_id][0]), lambda st: st == "out", timeout=60, interval=0.05
    )
    assert await traffic.spread(12) == left - {sick.server_id}
    assert (await admin_members())[sick.server_id]["state"] == "out"
    await admin_post(sick, "/admin/health", {"healthy": True})
    await eventually(rotation, lambda r: r == left, timeout=60, interval=0.05)
    assert await traffic.spread(40, until=left) == left

    # 5. a changed server_weight reaches the balancer (same servers, only the weight changes)
    await apply_yaml(client, settings, spec_yaml(lb_port, admin_port, desired=3, weight=5))
    on_admin = await eventually(admin_members, lambda m: {x["weight"] for x in m.values()} == {5}, timeout=30)
    assert set(on_admin) == left and {x["state"] for x in on_admin.values()} == {"in_rotation"}
    assert {m.server_id: m.weight for m in front.members()} == dict.fromkeys(left, 5)
