"""The `haproxy` driver against a REAL HAProxy (Debian's 2.6, installed by scripts/install-system-deps.sh),
run on loopback by the test: the same membership tests as the built-in proxy."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest

from poolctl.activities.balancers.base import UnknownMemberError
from poolctl.activities.balancers.haproxy import (
    HAProxyDriver,
    decode_server_name,
    encode_server_name,
    parse_stat_csv,
)
from poolctl.activities.balancers.registry import make_driver
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import MemberState
from poolctl.starter.haproxy_stack import HAProxyProcess, haproxy_binary, render_haproxy_config, temp_workdir
from tests.backends import Backend, free_port, who

HAPROXY = haproxy_binary()
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None,
    reason="!!! HAProxy is NOT installed: the real-HAProxy tests are SKIPPED. "
    "Run `make system-deps` (scripts/install-system-deps.sh) to install Debian's haproxy package !!!",
)


def make_spec(**kw: object) -> LoadBalancerSpec:
    base: dict[str, object] = {
        "name": "web",
        "port": free_port(),
        "driver": "haproxy",
        "health_check_interval": 1.0,
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
    }
    base.update(kw)
    return LoadBalancerSpec.model_validate(base)


async def run_haproxy(spec: LoadBalancerSpec) -> HAProxyProcess:
    proc = HAProxyProcess(spec, temp_workdir())
    await proc.start()
    return proc


def url(spec: LoadBalancerSpec) -> str:
    return f"http://127.0.0.1:{spec.port}"


def test_server_names_round_trip() -> None:
    for sid in ["local-1a2b", "a_b", "x@y/z:1", "srv.9"]:
        name = encode_server_name("srv", sid)
        assert all(c.isalnum() or c in "-_.:" for c in name)
        assert decode_server_name("srv", name) == sid
    assert decode_server_name("srv", "static1") is None


def test_stat_csv_parse() -> None:
    text = "# pxname,svname,scur,stot,hrsp_2xx\nweb,srv-a,1,10,9\nweb,BACKEND,1,10,9\n\n"
    rows = parse_stat_csv(text)
    assert rows[0] == {"pxname": "web", "svname": "srv-a", "scur": "1", "stot": "10", "hrsp_2xx": "9"}
    assert len(rows) == 2


@needs_haproxy
@pytest.mark.parametrize("algorithm", ["round_robin", "least_connections", "ip_hash", "weighted"])
@pytest.mark.parametrize("drain_sticky", ["keep", "move"])
def test_rendered_config_is_valid(tmp_path: Path, algorithm: str, drain_sticky: str) -> None:
    spec = make_spec(algorithm=algorithm, sticky_sessions=True, drain_sticky=drain_sticky)
    text = render_haproxy_config(spec, str(tmp_path / "s.sock"), stats_port=free_port())
    assert "level admin" in text and f"bind 127.0.0.1:{spec.port}" in text
    if algorithm == "ip_hash":
        assert "balance source" in text and "hash-type consistent" in text
    cfg = tmp_path / "h.cfg"
    cfg.write_text(text)
    assert HAPROXY is not None
    r = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_haproxy
async def test_members_added_and_removed_without_reload(backends: list[Backend]) -> None:
    spec = make_spec()
    hap = await run_haproxy(spec)
    try:
        assert hap.proc is not None
        pid = hap.proc.pid
        driver = hap.driver()
        assert await driver.members() == []
        res = await driver.sync_members([backends[0].member()])
        assert res.added == ["s0"]
        async with httpx.AsyncClient() as c:
            assert set(await who(c, url(spec), 3)) == {"s0"}
            # a new server takes traffic at once, without a reload
            res = await driver.sync_members([b.member() for b in backends])
            assert res.added == ["s1", "s2"] and res.unchanged == ["s0"]
            assert not (await driver.sync_members([b.member() for b in backends])).changed  # idempotent
            assert set(await who(c, url(spec), 9)) == {"s0", "s1", "s2"}
            res = await driver.sync_members([backends[1].member()])
            assert res.removed == ["s0", "s2"]
            assert set(await who(c, url(spec), 4)) == {"s1"}
        assert [m.server_id for m in await driver.members()] == ["s1"]
        assert hap.proc is not None and hap.proc.pid == pid and hap.proc.returncode is None
    finally:
        await hap.stop()


@needs_haproxy
async def test_out_of_rotation_and_weights(backends: list[Backend]) -> None:
    spec = make_spec(algorithm="weighted")
    hap = await run_haproxy(spec)
    try:
        driver = hap.driver()
        await driver.sync_members([backends[0].member(3), backends[1].member(1), backends[2].member(1)])
        async with httpx.AsyncClient() as c:
            seen = Counter(await who(c, url(spec), 50))
            assert seen == {"s0": 30, "s1": 10, "s2": 10}
            res = await driver.sync_members(
                [backends[0].member(1), backends[1].member(1), backends[2].member(state=MemberState.OUT)]
            )
            assert res.updated == ["s0", "s2"]
            members = {m.server_id: m for m in await driver.members()}
            assert members["s0"].weight == 1 and members["s2"].state is MemberState.OUT
            seen = Counter(await who(c, url(spec), 10))
            assert seen == {"s0": 5, "s1": 5}
            await driver.sync_members([b.member(state=MemberState.OUT) for b in backends])
            r = await c.get(url(spec) + "/")
            assert r.status_code == 503
        stats = await driver.stats()
        assert stats.no_member_responses == 1
        assert stats.success_rate is not None and stats.success_rate < 1
    finally:
        await hap.stop()


@needs_haproxy
async def test_drain_finishes_in_flight_then_gets_nothing(backends: list[Backend]) -> None:
    spec = make_spec()
    hap = await run_haproxy(spec)
    try:
        driver = hap.driver()
        await driver.sync_members([b.member() for b in backends[:2]])
        async with httpx.AsyncClient(timeout=10) as c:
            slow = [asyncio.create_task(c.get(url(spec) + "/slow")) for _ in range(2)]  # one per server
            await asyncio.wait_for(backends[0].slow_started.wait(), 5)
            await asyncio.wait_for(backends[1].slow_started.wait(), 5)
            assert await driver.active_connections("s0") == 1
            await driver.drain("s0")
            members = {m.server_id: m for m in await driver.members()}
            assert members["s0"].state is MemberState.DRAINING and members["s0"].active_connections == 1
            backends[1].release.set()
            assert await who(c, url(spec), 5) == ["s1"] * 5
            assert not await driver.wait_drained("s0", timeout_s=0.3, poll_interval_s=0.05)
            backends[0].release.set()
            done = await asyncio.gather(*slow)
            assert sorted(r.text for r in done) == ["s0 slow done", "s1 slow done"]
            assert await driver.wait_drained("s0", timeout_s=5, poll_interval_s=0.05)
            assert await who(c, url(spec), 3) == ["s1"] * 3
        with pytest.raises(UnknownMemberError):
            await driver.drain("nope")
    finally:
        await hap.stop()


@needs_haproxy
async def test_rebuild_after_restart_and_stats(backends: list[Backend]) -> None:
    spec = make_spec()
    hap = await run_haproxy(spec)
    try:
        driver = hap.driver()
        desired = [b.member() for b in backends]
        await driver.sync_members(desired)
        async with httpx.AsyncClient() as c:
            await who(c, url(spec), 6)
            stats = await driver.stats()
            assert stats.driver == "haproxy" and stats.requests == 6
            assert {s.server_id: s.responses_2xx for s in stats.servers} == {"s0": 2, "s1": 2, "s2": 2}
            assert all(s.mean_latency_s is not None for s in stats.servers)
            assert stats.success_rate == 1.0
            await hap.restart()  # dynamic servers vanish, like on a reload
            assert await driver.members() == []
            res = await driver.sync_members(desired)
            assert res.added == ["s0", "s1", "s2"]
            assert set(await who(c, url(spec), 6)) == {"s0", "s1", "s2"}
    finally:
        await hap.stop()


@needs_haproxy
async def test_sticky_sessions_with_a_stick_table(backends: list[Backend]) -> None:
    spec = make_spec(sticky_sessions=True, sticky_cookie="LB")
    hap = await run_haproxy(spec)
    try:
        driver = make_driver(spec, "")
        assert isinstance(driver, HAProxyDriver)
        driver.runtime.address = hap.socket_path
        await driver.sync_members([b.member() for b in backends])
        async with httpx.AsyncClient() as c:
            r = await c.get(url(spec) + "/")
            server, cookie = r.text.split()[0], r.cookies["LB"]
            assert "HttpOnly" in r.headers["set-cookie"]
        for _ in range(6):
            async with httpx.AsyncClient(cookies={"LB": cookie}) as c:
                r = await c.get(url(spec) + "/")
                assert r.text.split()[0] == server
                assert "set-cookie" not in r.headers
        await driver.sync_members(
            [
                b.member(state=MemberState.OUT if b.server_id == server else MemberState.IN_ROTATION)
                for b in backends
            ]
        )
        async with httpx.AsyncClient(cookies={"LB": cookie}) as c:
            r = await c.get(url(spec) + "/")
            assert r.text.split()[0] != server
            assert r.cookies["LB"] != cookie
    finally:
        await hap.stop()


@needs_haproxy
async def test_ip_hash_and_least_connections(backends: list[Backend]) -> None:
    for algorithm in ("ip_hash", "least_connections"):
        spec = make_spec(algorithm=algorithm)
        hap = await run_haproxy(spec)
        try:
            driver = hap.driver()
            await driver.sync_members([b.member(weight=5) for b in backends])
            assert {m.weight for m in await driver.members()} == ({1} if algorithm == "ip_hash" else {5})
            assert not (await driver.sync_members([b.member(weight=5) for b in backends])).changed
            async with httpx.AsyncClient() as c:
                seen = await who(c, url(spec), 6)
                if algorithm == "ip_hash":
                    assert len(set(seen)) == 1
                else:
                    assert len(set(seen)) >= 2
        finally:
            await hap.stop()
