"""Driver parity (issue 15): the same balancer scenarios, with the same assertions, on the built-in proxy and
on a REAL HAProxy (Debian's 2.6, installed by scripts/install-system-deps.sh) started by the test on
loopback. Each test is parametrized over both drivers; membership goes through each driver's own interface
(the admin endpoint, the Runtime API), as the pool drives it.

Scenarios: share per server for each algorithm with equal and unequal weights (long requests for least
connections), IP hash per client, sticky clients, drain with `drain_sticky: keep` and `move` (bounded by
`drain_timeout_s`), every server unhealthy (503 + Retry-After, same body), recovery, slow start, and a
balancer restarted empty and rebuilt by the pool (real worker, dev server, local servers).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from pydantic import ValidationError
from temporalio.client import Client

from poolctl.activities.balancers.base import BalancerDriver
from poolctl.activities.balancers.builtin import BuiltinBalancerDriver
from poolctl.balancer.credentials import balancer_token
from poolctl.balancer.proxy import BalancerProxy, ProxyConfig
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import Member, MemberState, no_member_body
from poolctl.settings import Settings
from poolctl.starter.haproxy_stack import HAProxyProcess, haproxy_binary, temp_workdir
from tests.backends import Backend, free_port, who
from tests.helpers import apply_yaml, eventually

needs_haproxy = pytest.mark.skipif(
    haproxy_binary() is None,
    reason="!!! HAProxy is NOT installed: the HAProxy half of the parity suite is SKIPPED. "
    "Run `make system-deps` (scripts/install-system-deps.sh) to install Debian's haproxy package !!!",
)
DRIVERS = [pytest.param("builtin", id="builtin"), pytest.param("haproxy", id="haproxy", marks=needs_haproxy)]
TOKEN = "parity-admin-token"


@dataclass
class LB:
    """One running balancer of either driver: where clients go, and the driver that manages it."""

    spec: LoadBalancerSpec
    driver: BalancerDriver
    restart_empty: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    async def set(self, *members: Member) -> None:
        await self.driver.sync_members(list(members))


def lb_spec(driver: str, **kw: object) -> LoadBalancerSpec:
    base: dict[str, object] = {
        "name": "web",
        "port": free_port(),
        "driver": driver,
        "health_check_interval": 1.0,
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
    }
    if driver == "builtin":
        base["admin_port"] = free_port()
    base.update(kw)
    return LoadBalancerSpec.model_validate(base)


async def start_lb(spec: LoadBalancerSpec, token: str = TOKEN) -> LB:
    if spec.driver == "builtin":
        box = [BalancerProxy(ProxyConfig.from_spec(spec, token))]
        await box[0].start()
        driver: BalancerDriver = BuiltinBalancerDriver.from_spec(spec, token)

        async def restart_builtin() -> None:
            await box[0].stop(grace_s=0.5)
            box[0] = BalancerProxy(ProxyConfig.from_spec(spec, token))  # no members: as after a crash
            await box[0].start()

        async def close_builtin() -> None:
            await driver.close()
            await box[0].stop(grace_s=0.5)

        return LB(spec, driver, restart_builtin, close_builtin)
    hap = HAProxyProcess(spec, temp_workdir())
    await hap.start()

    async def close_haproxy() -> None:
        await hap.stop()

    return LB(spec, hap.driver(), hap.restart, close_haproxy)


@pytest.fixture(params=DRIVERS)
async def make_lb(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[LB]]]:
    """`await make_lb(**spec_fields)`: a balancer of this test's driver, stopped at the end."""
    started: list[LB] = []

    async def make(**kw: object) -> LB:
        lb = await start_lb(lb_spec(request.param, **kw))
        started.append(lb)
        return lb

    yield make
    for lb in started:
        await lb.close()


async def get(lb: LB, path: str = "/hello", cookie: str | None = None) -> httpx.Response:
    """One request on a fresh connection (a new client), with the sticky cookie when given."""
    async with httpx.AsyncClient(timeout=20, verify=False) as c:
        headers = {"Cookie": f"{lb.spec.sticky_cookie}={cookie}"} if cookie else {}
        return await c.get(lb.url + path, headers=headers)


def served_by(r: httpx.Response) -> str:
    assert r.status_code == 200, (r.status_code, r.text)
    return r.text.split()[0]


# --- share per server ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "weights", "requests", "expected"),
    [
        ("round_robin", (1, 1, 1), 30, (10, 10, 10)),
        ("round_robin", (3, 1, 1), 30, (10, 10, 10)),  # round robin ignores weights (other than 0)
        ("weighted", (1, 1, 1), 30, (10, 10, 10)),
        ("weighted", (3, 1, 1), 50, (30, 10, 10)),
        ("least_connections", (1, 1, 1), 30, (10, 10, 10)),
        ("least_connections", (3, 1, 1), 30, (10, 10, 10)),  # short requests: always 0 in flight, ties rotate
    ],
)
async def test_share_per_server(
    make_lb: Callable[..., Awaitable[LB]],
    backends: list[Backend],
    algorithm: str,
    weights: tuple[int, ...],
    requests: int,
    expected: tuple[int, ...],
) -> None:
    lb = await make_lb(algorithm=algorithm)
    await lb.set(*(b.member(w) for b, w in zip(backends, weights, strict=True)))
    async with httpx.AsyncClient(timeout=20, verify=False) as c:
        seen = Counter(await who(c, lb.url, requests))
    assert seen == {b.server_id: n for b, n in zip(backends, expected, strict=True)}


@pytest.mark.parametrize(("weights", "expected"), [((3, 1), (30, 10)), ((1, 1), (20, 20))])
async def test_least_connections_weighs_long_requests(
    make_lb: Callable[..., Awaitable[LB]],
    backends: list[Backend],
    weights: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    """40 long requests in flight, sent one at a time (each waits until the previous one is on a server):
    shared by active connections / weight, as HAProxy's leastconn does."""
    lb = await make_lb(algorithm="least_connections")
    two = backends[:2]
    await lb.set(*(b.member(w) for b, w in zip(two, weights, strict=True)))
    async with httpx.AsyncClient(timeout=60, verify=False, limits=httpx.Limits(max_connections=100)) as c:
        tasks = []
        try:
            for i in range(40):
                tasks.append(asyncio.create_task(c.get(lb.url + "/slow")))

                async def in_flight() -> int:
                    return sum(b.in_flight for b in two)

                await eventually(in_flight, lambda n, i=i: n == i + 1, timeout=20, interval=0.01)
            assert tuple(b.in_flight for b in two) == expected
        finally:
            for b in two:
                b.release.set()
            done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in done)


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1, 1)])
async def test_ip_hash_keeps_each_client_on_one_server(
    make_lb: Callable[..., Awaitable[LB]], backends: list[Backend], weights: tuple[int, ...]
) -> None:
    lb = await make_lb(algorithm="ip_hash")
    await lb.set(*(b.member(w) for b, w in zip(backends, weights, strict=True)))
    by_client: dict[str, set[str]] = {}
    for i in range(2, 14):  # 12 clients, each from its own loopback address
        source = f"127.0.0.{i}"
        transport = httpx.AsyncHTTPTransport(local_address=source, verify=False)
        async with httpx.AsyncClient(transport=transport, timeout=20, verify=False) as c:
            by_client[source] = set(await who(c, lb.url, 3))
    assert all(len(servers) == 1 for servers in by_client.values()), by_client
    assert len(set().union(*by_client.values())) >= 2  # and the clients are spread


# --- sticky sessions and drain ---------------------------------------------------------------------------


async def test_sticky_clients(make_lb: Callable[..., Awaitable[LB]], backends: list[Backend]) -> None:
    lb = await make_lb(sticky_sessions=True, sticky_cookie="LB")
    await lb.set(*(b.member() for b in backends))
    first = await get(lb)
    server, cookie = served_by(first), first.cookies["LB"]
    assert "HttpOnly" in first.headers["set-cookie"]
    for _ in range(5):
        r = await get(lb, cookie=cookie)
        assert served_by(r) == server and "set-cookie" not in r.headers
    newcomers = {served_by(await get(lb)) for _ in range(6)}
    assert len(newcomers) >= 2  # clients without a cookie are still balanced
    # its server leaves rotation (unhealthy): the client moves and gets a new cookie
    await lb.set(
        *(
            b.member(state=MemberState.OUT if b.server_id == server else MemberState.IN_ROTATION)
            for b in backends
        )
    )
    r = await get(lb, cookie=cookie)
    assert served_by(r) != server and r.cookies["LB"] != cookie


@pytest.mark.parametrize("drain_sticky", ["keep", "move"])
async def test_drain_with_sticky_clients(
    make_lb: Callable[..., Awaitable[LB]], backends: list[Backend], drain_sticky: str
) -> None:
    """keep: a draining server still serves its sticky clients (no new ones) until the drain ends, which
    takes at most drain_timeout_s; move: its sticky clients are re-balanced at once."""
    lb = await make_lb(
        sticky_sessions=True, sticky_cookie="LB", drain_sticky=drain_sticky, drain_timeout_s=1.0
    )
    a, b = backends[0], backends[1]
    await lb.set(a.member(), b.member())
    first = await get(lb)
    pinned, cookie = served_by(first), first.cookies["LB"]
    other = b if pinned == a.server_id else a
    await lb.set(
        *(
            x.member(state=MemberState.DRAINING if x.server_id == pinned else MemberState.IN_ROTATION)
            for x in (a, b)
        )
    )

    assert {served_by(await get(lb)) for _ in range(4)} == {other.server_id}  # no new client goes there
    r = await get(lb, cookie=cookie)
    if drain_sticky == "keep":
        assert served_by(r) == pinned and "set-cookie" not in r.headers
    else:
        assert served_by(r) == other.server_id and r.cookies["LB"] != cookie

    # a long request of the sticky client: with keep it holds the draining server, and waiting for the
    # drain gives up after drain_timeout_s (then the pool removes the server anyway)
    slow = asyncio.create_task(get(lb, "/slow", cookie=cookie))
    await eventually(lambda: asyncio.sleep(0, result=a.in_flight + b.in_flight), lambda n: n == 1, timeout=20)
    started = time.monotonic()
    drained = await lb.driver.wait_drained(pinned, timeout_s=lb.spec.drain_timeout_s, poll_interval_s=0.05)
    assert drained is (drain_sticky == "move")
    if not drained:
        assert time.monotonic() - started >= lb.spec.drain_timeout_s
    a.release.set()
    b.release.set()
    assert (await slow).text == f"{pinned if drain_sticky == 'keep' else other.server_id} slow done"

    # the drain ends: the server leaves, and its sticky client moves on either setting
    await lb.set(other.member())
    r = await get(lb, cookie=cookie)
    assert served_by(r) == other.server_id


# --- unhealthy, recovery, slow start -----------------------------------------------------------------------


async def test_every_server_unhealthy_then_recovery(
    make_lb: Callable[..., Awaitable[LB]], backends: list[Backend]
) -> None:
    lb = await make_lb()
    await lb.set(*(b.member() for b in backends))
    assert {served_by(await get(lb)) for _ in range(3)} == {"s0", "s1", "s2"}
    await lb.set(*(b.member(state=MemberState.OUT) for b in backends))
    r = await get(lb)
    assert r.status_code == 503
    assert r.text == no_member_body(lb.spec.name)
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"].startswith("text/plain")
    stats = await lb.driver.stats()
    assert stats.no_member_responses == 1
    # recovery: the servers are back in rotation and share the traffic again
    await lb.set(*(b.member() for b in backends))
    async with httpx.AsyncClient(timeout=20, verify=False) as c:
        assert Counter(await who(c, lb.url, 9)) == {"s0": 3, "s1": 3, "s2": 3}


SLOW_START_S = 3


async def test_slow_start(make_lb: Callable[..., Awaitable[LB]], backends: list[Backend]) -> None:
    """A server back in rotation starts with a small share and reaches its full share after slow_start_s."""
    lb = await make_lb(slow_start_s=SLOW_START_S)
    a, b = backends[0], backends[1]
    await lb.set(a.member(), b.member(state=MemberState.OUT))
    # s0 entered rotation too (it ramps as well, on both drivers): let its ramp end, a known duration
    await asyncio.sleep(SLOW_START_S + 1)
    await lb.set(a.member(), b.member())  # s1 enters rotation now
    entered = time.monotonic()
    async with httpx.AsyncClient(timeout=20, verify=False) as c:
        early = Counter(await who(c, lb.url, 20))
        early_s = time.monotonic() - entered
        assert early["s1"] <= 6, (early, early_s)  # 10 at full speed

        async def batch() -> Counter[str]:
            return Counter(await who(c, lb.url, 10))

        assert await eventually(batch, lambda n: n["s1"] == 5, timeout=SLOW_START_S + 20, interval=0.2)
    assert time.monotonic() - entered >= SLOW_START_S / 2  # it took a ramp, not a jump


# --- restarted empty, rebuilt by the pool ----------------------------------------------------------------


@pytest.mark.temporal
@pytest.mark.parametrize("driver", DRIVERS)
async def test_restarted_balancer_is_rebuilt_by_the_pool(
    client: Client, settings: Settings, worker: None, driver: str
) -> None:
    """A pool of two local servers behind a balancer of this driver; the balancer restarts with no member
    (a crash, an HAProxy reload): the pool's reconcile puts both servers back without any change."""
    spec = lb_spec(driver, health_check_enabled=False, algorithm="round_robin")
    if driver == "haproxy":
        workdir = temp_workdir()
        spec = lb_spec(
            driver,
            health_check_enabled=False,
            algorithm="round_robin",
            haproxy={"stats_socket": str(workdir / "admin.sock")},
        )
        hap = HAProxyProcess(spec, workdir)
        await hap.start()
        lb = LB(spec, hap.driver(), hap.restart, hap.stop)
    else:
        lb = await start_lb(spec, balancer_token(settings))
    try:
        pool = {"name": f"parity-{driver}", "provider": "local", "min_servers": 2, "max_servers": 2,
                "auto_healing": False, "load_balancers": [spec.model_dump(mode="json", exclude_none=True)]}  # fmt: skip
        await apply_yaml(client, settings, json.dumps({"pools": [pool]}))  # JSON is YAML

        async def in_rotation() -> set[str]:
            return {m.server_id for m in await lb.driver.members() if m.state is MemberState.IN_ROTATION}

        servers = await eventually(in_rotation, lambda s: len(s) == 2, timeout=60)

        async def answering() -> set[str]:
            try:
                async with httpx.AsyncClient(timeout=5, verify=False) as c:
                    return {(await c.get(lb.url + "/")).text.strip() for _ in range(6)}
            except httpx.HTTPError:
                return set()

        assert await eventually(answering, lambda s: s == servers, timeout=30) == servers
        await lb.restart_empty()
        assert await eventually(in_rotation, lambda s: s == servers, timeout=60) == servers
        assert await eventually(answering, lambda s: s == servers, timeout=30) == servers
    finally:
        await lb.close()


# --- what HAProxy cannot do is refused, not silently different ---------------------------------------------


def test_haproxy_refuses_a_fractional_slow_start() -> None:
    with pytest.raises(
        ValidationError, match=r"slow_start_s 1.5 is not a whole number of seconds.*driver: haproxy"
    ):
        lb_spec("haproxy", slow_start_s=1.5)
    assert lb_spec("haproxy", slow_start_s=2).slow_start_s == 2
    assert lb_spec("builtin", slow_start_s=1.5).slow_start_s == 1.5
