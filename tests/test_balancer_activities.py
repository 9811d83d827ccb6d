"""Pool integration building blocks against a real built-in proxy: sync a pool's balancers, drain a server,
roll statistics up (directly and through the Temporal Schedule on the dev server), and `poolctl lb stats`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from poolctl.activities.balancer_activities import (
    BalancerActivities,
    DrainInput,
    RollupInput,
    SyncBalancersInput,
)
from poolctl.balancer.credentials import balancer_token, token_path
from poolctl.balancer.proxy import BalancerProxy, ProxyConfig
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import MemberState, members_for
from poolctl.domain.pool_spec import PoolSpec, SpecDocument
from poolctl.settings import Settings
from poolctl.starter.schedules import ensure_stats_schedule, schedule_id
from poolctl.store import balancer_stats as store
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.store.models import Server
from tests.backends import Backend, free_port, who


def store_pool(settings: Settings, backends: list[Backend], **lb: object) -> LoadBalancerSpec:
    """A pool `web` with one builtin balancer `front`, and the backends recorded as its servers."""
    spec = LoadBalancerSpec.model_validate(
        {"name": "front", "port": free_port(), "admin_port": free_port(), "drain_timeout_s": 5,
         # the fake servers are never probed: no health check derived from the balancer's settings
         "health_check_enabled": False, **lb}
    )  # fmt: skip
    doc = SpecDocument(
        team=settings.team, pools=[PoolSpec(name="web", provider="fake", load_balancers=[spec])]
    )
    with session_scope(settings.resolved_database_url) as s:
        inventory.apply_document(s, doc)
        for i, b in enumerate(backends):
            inventory.record_server(
                s, team=settings.team, pool="web", server_id=b.server_id, provider="fake",
                idempotency_key=f"k{i}", host="127.0.0.1", port=b.port, state="running",
                created_at=datetime.now(UTC), weight=i + 1,
            )  # fmt: skip
    return spec


async def start_proxy(settings: Settings, spec: LoadBalancerSpec) -> BalancerProxy:
    proxy = BalancerProxy(ProxyConfig.from_spec(spec, balancer_token(settings)))
    await proxy.start()
    return proxy


def test_token_is_generated_once_and_private(settings: Settings) -> None:
    t = balancer_token(settings)
    assert len(t) >= 40 and balancer_token(settings) == t
    assert token_path(settings).stat().st_mode & 0o777 == 0o600
    assert balancer_token(settings.model_copy(update={"balancer_token": "given"})) == "given"


def test_members_for_maps_health_and_drain() -> None:
    class S:
        def __init__(self, sid: str, health: str, state: str = "running") -> None:
            self.server_id, self.host, self.port, self.health, self.state = sid, "10.0.0.1", 80, health, state

    servers = [S("a", "healthy"), S("b", "unhealthy"), S("c", "initial"), S("d", "healthy", "draining"),
               S("e", "healthy", "terminated")]  # fmt: skip
    got = {m.server_id: m.state for m in members_for(servers, weights={"a": 3})}
    assert got == {"a": MemberState.IN_ROTATION, "b": MemberState.OUT, "c": MemberState.IN_ROTATION,
                   "d": MemberState.DRAINING}  # fmt: skip
    strict = {m.server_id: m.state for m in members_for(servers, require_healthy=True)}
    assert strict["c"] is MemberState.OUT and strict["a"] is MemberState.IN_ROTATION
    assert members_for(servers, weights={"a": 3})[0].weight == 3


async def test_sync_pool_balancers_is_idempotent(settings: Settings, backends: list[Backend]) -> None:
    spec = store_pool(settings, backends)
    proxy = await start_proxy(settings, spec)
    acts = BalancerActivities(settings)
    env = ActivityEnvironment()
    try:
        members = [b.member() for b in backends[:2]]
        [report] = await env.run(
            acts.sync_pool_balancers, SyncBalancersInput(team=settings.team, pool="web", members=members)
        )
        assert (
            report.balancer == "front" and report.result is not None and report.result.added == ["s0", "s1"]
        )
        [again] = await env.run(
            acts.sync_pool_balancers, SyncBalancersInput(team=settings.team, pool="web", members=members)
        )
        assert again.result is not None and not again.result.changed
        async with httpx.AsyncClient() as c:
            assert set(await who(c, proxy.url, 4)) == {"s0", "s1"}
        # members=None: the pool's live servers from the store, with their stored weights
        [fromstore] = await env.run(
            acts.sync_pool_balancers, SyncBalancersInput(team=settings.team, pool="web")
        )
        assert fromstore.result is not None and fromstore.result.added == ["s2"]
        assert {m.server_id: m.weight for m in proxy.members()} == {"s0": 1, "s1": 2, "s2": 3}
        # a pool without balancers: nothing to do
        assert (
            await env.run(acts.sync_pool_balancers, SyncBalancersInput(team=settings.team, pool="none")) == []
        )
    finally:
        await proxy.stop()
    # the balancer is down: a retryable failure
    from temporalio.exceptions import ApplicationError

    with pytest.raises(ApplicationError) as err:
        await env.run(
            acts.sync_pool_balancers, SyncBalancersInput(team=settings.team, pool="web", members=[])
        )
    assert err.value.type == "BalancerUnavailableError" and not err.value.non_retryable


async def test_drain_server_waits_for_in_flight_requests(settings: Settings, backends: list[Backend]) -> None:
    spec = store_pool(settings, backends)
    proxy = await start_proxy(settings, spec)
    acts = BalancerActivities(settings)
    heartbeats: list[object] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *d: heartbeats.append(d)
    try:
        await env.run(
            acts.sync_pool_balancers,
            SyncBalancersInput(team=settings.team, pool="web", members=[b.member() for b in backends[:2]]),
        )
        async with httpx.AsyncClient(timeout=10) as c:
            slow = asyncio.create_task(c.get(proxy.url + "/slow"))  # round robin: s0 first
            await asyncio.wait_for(backends[0].slow_started.wait(), 5)
            # the timeout passes first: not drained, still draining
            res = await env.run(
                acts.drain_server,
                DrainInput(
                    team=settings.team, pool="web", server_id="s0", timeout_s=0.3, poll_interval_s=0.05
                ),
            )
            assert not res.drained and res.remaining_connections == {"front": 1}
            assert proxy.members_by_id()["s0"].state is MemberState.DRAINING
            assert await who(c, proxy.url, 3) == ["s1"] * 3
            drain = asyncio.create_task(
                env.run(
                    acts.drain_server,
                    DrainInput(team=settings.team, pool="web", server_id="s0", poll_interval_s=0.05),
                )
            )
            await asyncio.sleep(0.3)
            assert not drain.done()
            backends[0].release.set()
            assert (await slow).text == "s0 slow done"
            res = await asyncio.wait_for(drain, 5)
            assert res.drained and res.remaining_connections == {}
        assert heartbeats
        # a server no balancer knows is drained at once (nothing to wait for, whatever the timeout)
        res = await env.run(
            acts.drain_server, DrainInput(team=settings.team, pool="web", server_id="ghost", timeout_s=600)
        )
        assert res.drained and res.remaining_connections == {}
    finally:
        await proxy.stop()


async def test_rollup_computes_deltas_and_shares(settings: Settings, backends: list[Backend]) -> None:
    spec = store_pool(settings, backends, algorithm="weighted")
    proxy = await start_proxy(settings, spec)
    acts = BalancerActivities(settings)
    env = ActivityEnvironment()
    try:
        await env.run(acts.sync_pool_balancers, SyncBalancersInput(team=settings.team, pool="web"))
        async with httpx.AsyncClient() as c:
            await who(c, proxy.url, 6)  # weights 1,2,3
            first = await env.run(acts.rollup_balancer_stats, RollupInput())
            [b1] = first.balancers
            assert b1.requests == 6 and b1.success_rate == 1.0
            await who(c, proxy.url, 12)
        second = await env.run(acts.rollup_balancer_stats, RollupInput())
        assert second.balancers[0].requests == 12
        with session_scope(settings.resolved_database_url) as s:
            b = store.get_balancer(s, "front", settings.team, "web")
            row = store.last_rollup(s, b.id)
            assert row is not None
            shares = {k: round(v["share"], 3) for k, v in row.servers.items()}
            assert shares == {"s0": round(2 / 12, 3), "s1": round(4 / 12, 3), "s2": 0.5}
            assert all(v["mean_latency_s"] is not None for v in row.servers.values())
            assert store.balancer_totals(s, b.id) == (18, 18, 0)
    finally:
        await proxy.stop()


@pytest.mark.temporal
async def test_stats_schedule_rolls_up_on_trigger(
    client: Client, settings: Settings, worker: None, backends: list[Backend]
) -> None:
    spec = store_pool(settings, backends)
    proxy = await start_proxy(settings, spec)
    try:
        proxy.set_members([b.member() for b in backends])
        async with httpx.AsyncClient() as c:
            await who(c, proxy.url, 3)
        handle = await ensure_stats_schedule(client, settings)
        again = await ensure_stats_schedule(client, settings)  # idempotent
        assert again.id == handle.id == schedule_id(settings)
        desc = await handle.describe()
        from temporalio.client import ScheduleOverlapPolicy

        assert desc.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert desc.schedule.spec.intervals[0].every.total_seconds() == settings.balancer_stats_interval_s
        await handle.trigger()
        row = None
        for _ in range(100):
            with session_scope(settings.resolved_database_url) as s:
                b = store.get_balancer(s, "front", settings.team, "web")
                row = store.last_rollup(s, b.id)
                if row is not None:
                    requests = row.requests
                    break
            await asyncio.sleep(0.2)
        assert row is not None and requests == 3
        # a changed interval updates the existing schedule
        faster = settings.model_copy(update={"balancer_stats_interval_s": 60.0})
        await ensure_stats_schedule(client, faster)
        desc = await handle.describe()
        assert desc.schedule.spec.intervals[0].every.total_seconds() == 60.0

        # `poolctl lb stats` shows live numbers and the roll-up (a subprocess: the proxy runs in this loop)
        import os
        import sys

        env = {**os.environ, "POOLCTL_STATE_DIR": str(settings.state_dir),
               "POOLCTL_DATABASE_URL": settings.resolved_database_url}  # fmt: skip

        async def cli(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "poolctl.starter.cli", *args, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, out.decode()
            return out.decode()

        data = json.loads(await cli("lb", "stats", "front", "--pool", "web", "--json"))
        assert data["live"]["requests"] == 3 and data["live"]["success_rate"] == 1.0
        assert {s["server_id"]: round(s["share"], 3) for s in data["live"]["servers"]} == {
            "s0": 0.333, "s1": 0.333, "s2": 0.333,
        }  # fmt: skip
        # the schedule may also have fired on its own since the trigger (its interval is aligned to the
        # clock): a later roll-up then holds the delta 0; the roll-ups together hold the 3 requests
        assert data["last_rollup"]["requests"] in (0, 3)
        with session_scope(settings.resolved_database_url) as s:
            b = store.get_balancer(s, "front", settings.team, "web")
            assert sum(r.requests for r in store.list_rollups(s, b.id, limit=100)) == 3
        text = await cli("lb", "stats", "front", "--pool", "web")
        assert "success rate 100.0%" in text and "last roll-up" in text, text
        await handle.delete()
    finally:
        await proxy.stop()


def test_store_members_in_rotation_only_when_healthy_if_the_pool_is_checked(settings: Settings) -> None:
    """`pool_members` (what `balancer serve` starts with and a sync without members sends) agrees with the
    workflow: a check (the pool's own, or one derived from its balancer's health_check_* settings) keeps
    servers out until healthy; weights follow a re-applied server_weight."""

    def doc(**lb: object) -> SpecDocument:
        spec = LoadBalancerSpec.model_validate({"name": "front", "port": 18080, **lb})
        return SpecDocument(
            team=settings.team,
            pools=[PoolSpec(name="web", provider="fake", server_weight=2, load_balancers=[spec])],
        )

    url = settings.resolved_database_url
    with session_scope(url) as s:
        inventory.apply_document(s, doc())  # health_check_enabled (default): a derived check
        for i, health in enumerate(["initial", "healthy", "unhealthy"]):
            inventory.record_server(
                s, team=settings.team, pool="web", server_id=f"s{i}", provider="fake", idempotency_key=f"k{i}",
                host="127.0.0.1", port=9000 + i, state="running", created_at=datetime.now(UTC), weight=2,
            )  # fmt: skip
            s.get(Server, f"s{i}").health = health
    with session_scope(url) as s:
        got = {m.server_id: (m.state, m.weight) for m in store.pool_members(s, settings.team, "web")}
    assert got == {"s0": (MemberState.OUT, 2), "s1": (MemberState.IN_ROTATION, 2), "s2": (MemberState.OUT, 2)}
    with session_scope(url) as s:
        changed = doc(health_check_enabled=False)
        changed.pools[0].server_weight = 4
        inventory.apply_document(s, changed)
    with session_scope(url) as s:
        got = {m.server_id: (m.state, m.weight) for m in store.pool_members(s, settings.team, "web")}
        assert store.pool_members(s, settings.team, "nope") == []
    assert got == {"s0": (MemberState.IN_ROTATION, 4), "s1": (MemberState.IN_ROTATION, 4),
                   "s2": (MemberState.OUT, 4)}  # fmt: skip


def test_lb_stats_of_a_balancer_that_is_down_names_it_its_address_and_what_to_check(
    cli_env: Settings, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from poolctl.starter.cli import app

    spec = store_pool(cli_env, [])  # nothing runs the balancer: its admin port is free
    result = CliRunner().invoke(app, ["lb", "stats", "front", "--pool", "web"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"{cli_env.team}/web/front (builtin, round_robin): not reachable at its admin endpoint " in out
    assert (
        f"http://127.0.0.1:{spec.admin_port} (connection refused); is it running? poolctl dev status" in out
    )
    assert "poolctl dev up starts them" in out and "poolctl balancer serve --pool web --name front" in out
    assert "Error(" not in out, (
        out
    )  # no exception repr (it showed ConnectError('All connection attempts failed'))

    sock = tmp_path / "haproxy.sock"  # an HAProxy balancer whose Runtime API socket is not there
    edge = LoadBalancerSpec.model_validate({"name": "edge", "port": free_port(), "driver": "haproxy",
                                            "haproxy": {"stats_socket": str(sock)}})  # fmt: skip
    with session_scope(cli_env.resolved_database_url) as s:
        pool = PoolSpec(name="edge", provider="fake", load_balancers=[edge])
        inventory.apply_document(s, SpecDocument(team=cli_env.team, pools=[pool]))
    result = CliRunner().invoke(app, ["lb", "stats", "edge", "--pool", "edge"])
    assert result.exit_code == 0, result.output
    assert (
        f"not reachable at HAProxy's Runtime API at {sock} (no such socket); is HAProxy running"
        in " ".join(result.output.split())
    )
