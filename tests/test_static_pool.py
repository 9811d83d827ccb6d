"""Static pools (provider: static): servers poolctl did not start, registered by address. Real local-server
processes started by the test itself (not through the local provider), the real worker and dev server, the
built-in balancer running in this process, `poolctl server add/remove` as real subprocesses.

- three registered servers are health-checked and balanced; one killed by hand leaves the rotation (an
  event records it) and returns when restarted; nothing is ever provisioned or replaced;
- `server add --weight` registers a server whose weight the balancer honours; `server remove` drains and
  deregisters it (the process keeps running); bad input exits 2 and changes nothing;
- a policy on a static pool only recommends (dry run), and says so.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from poolctl.balancer.proxy import BalancerProxy
from poolctl.domain.static_pool import RECOMMENDATION_ONLY
from poolctl.settings import Settings
from poolctl.starter import policy_ops
from poolctl.store import inventory
from poolctl.store.db import session_scope
from tests.backends import free_port, in_process_balancer
from tests.cli_process import run_cli
from tests.helpers import apply_yaml, eventually, pool_view

pytestmark = pytest.mark.temporal


@dataclass
class External:
    """A server poolctl did not start: a local-server process run by the test on a port it chose."""

    name: str
    port: int
    state_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poolctl.localserver", "--server-id", self.name,
             "--state-dir", str(self.state_dir), "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    async def answering(self) -> None:
        async def health() -> int:
            try:
                async with httpx.AsyncClient(timeout=1) as http:
                    return (await http.get(f"http://{self.address}/health")).status_code
            except httpx.HTTPError:
                return 0

        await eventually(health, lambda code: code == 200, timeout=30)


@pytest.fixture
async def externals(tmp_path: Path) -> AsyncIterator[list[External]]:
    """Four servers started as plain processes (three for the spec, one for `server add`)."""
    servers = [External(f"ext{i}", free_port(), tmp_path / "external") for i in range(4)]
    for s in servers:
        s.start()
    try:
        for s in servers:
            await s.answering()
        yield servers
    finally:
        for s in servers:
            s.kill()


@pytest.fixture
async def front(settings: Settings) -> AsyncIterator[BalancerProxy]:
    """The built-in balancer the spec declares, running in this process on the ports it declares."""
    async with in_process_balancer(settings) as proxy:
        yield proxy


def static_spec(servers: list[External], front: BalancerProxy, *, policy: bool = False) -> str:
    listed = "\n".join(f'      - {{address: "{s.address}", weight: 1}}' for s in servers)
    policies = (
        """
    policies:
      - {name: cpu, type: cpu, target: 50, evaluation_interval: 1}"""
        if policy
        else ""
    )
    return f"""
pools:
  - name: web
    provider: static
    servers:
{listed}
    health_check: {{type: http, path: /health, interval: 1, timeout: 0.5, jitter: 0,
                   healthy_threshold: 1, unhealthy_threshold: 2}}
    load_balancers:
      - {{name: front, port: {front.port}, admin_port: {front.admin_port}, algorithm: weighted}}{policies}
"""


def in_rotation(proxy: BalancerProxy) -> dict[str, int]:
    return {m.address: m.weight for m in proxy.members() if m.state.value == "in_rotation"}


async def rotation(proxy: BalancerProxy) -> dict[str, int]:
    return in_rotation(proxy)


async def answers(proxy: BalancerProxy, n: int) -> Counter[str]:
    """n requests through the balancer: which server (its id, the body) answered each."""
    seen: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(n):
            r = await http.get(proxy.url + "/")
            assert r.status_code == 200, r.text
            seen[r.text.strip()] += 1
    return seen


def causes(settings: Settings) -> list[str]:
    with session_scope(settings.resolved_database_url) as s:
        return [e.cause for e in inventory.list_events(s, settings.team, "web", limit=200)]


async def test_a_static_pool_of_servers_poolctl_did_not_start_is_checked_balanced_and_healed_by_rotation(
    client: Client, settings: Settings, worker, externals: list[External], front: BalancerProxy
) -> None:
    three = externals[:3]
    await apply_yaml(client, settings, static_spec(three, front))
    addresses = {s.address for s in three}
    await eventually(lambda: rotation(front), lambda m: set(m) == addresses, timeout=60)
    view = await pool_view(client, settings, "web")
    assert view is not None and view.current == 3 and {s.health.value for s in view.servers} == {"healthy"}
    ids = {s.server_id for s in view.servers}
    assert all(i.startswith("static-") for i in ids)
    assert set(await answers(front, 30)) == {"ext0", "ext1", "ext2"}

    victim = three[1]
    victim.kill()  # by hand, outside poolctl
    await eventually(lambda: rotation(front), lambda m: set(m) == addresses - {victim.address}, timeout=30)
    assert set(await answers(front, 20)) == {"ext0", "ext2"}
    await eventually(
        lambda: asyncio.to_thread(causes, settings),
        lambda cs: any("out of rotation (unhealthy)" in c for c in cs),
        timeout=30,
    )

    victim.start()  # restarted by hand on the same address
    await victim.answering()
    await eventually(lambda: rotation(front), lambda m: set(m) == addresses, timeout=30)
    assert set(await answers(front, 30)) == {"ext0", "ext1", "ext2"}
    await eventually(
        lambda: asyncio.to_thread(causes, settings),
        lambda cs: any("back in rotation (healthy)" in c for c in cs),
        timeout=30,
    )
    # healing recorded and rotated; it never provisioned, replaced or terminated anything
    view = await pool_view(client, settings, "web")
    assert view is not None and {s.server_id for s in view.servers} == ids and view.status.value == "active"
    assert not any(c.startswith(("auto-healing: replace", "pool created")) for c in causes(settings))


async def test_server_add_with_weight_and_remove_through_the_cli(
    client: Client, settings: Settings, worker, externals: list[External], front: BalancerProxy
) -> None:
    three, extra = externals[:3], externals[3]
    await apply_yaml(client, settings, static_spec(three, front))
    await eventually(lambda: rotation(front), lambda m: len(m) == 3, timeout=60)

    added = await run_cli(settings, "server", "add", "web", extra.address, "--weight", "5")
    assert added.code == 0, added.text
    assert f"{extra.address} added (weight 5)" in added.text
    await eventually(lambda: rotation(front), lambda m: m.get(extra.address) == 5, timeout=30)
    got = await answers(front, 160)  # weights 1:1:1:5 -> ext3 gets 5/8 of the traffic
    assert 0.5 < got["ext3"] / 160 < 0.75, got

    # bad input: exit 2, clear message, nothing changed
    for args, message in [
        (("server", "add", "web", "::1:80"), "needs brackets"),
        (("server", "add", "web", "127.0.0.1:70000"), "outside 1-65535"),
        (("server", "add", "web", extra.address, "--weight", "300"), "outside 0-256"),
        (("server", "remove", "web", "127.0.0.1:1"), "is not a server of pool web"),
        (("server", "add", "no-such-pool", "127.0.0.1:1"), "pool 'no-such-pool' not found in team"),
        (("scale", "no-such-pool", "--desired", "2"), "pool 'no-such-pool' not found in team"),
    ]:
        bad = await run_cli(settings, *args)
        assert bad.code == 2 and message in bad.text, (args, bad.text)
    view = await pool_view(client, settings, "web")
    assert view is not None and view.current == 4

    removed = await run_cli(settings, "server", "remove", "web", extra.address)
    assert removed.code == 0, removed.text
    assert "drained and deregistered" in removed.text
    assert extra.address not in in_rotation(front)
    assert set(await answers(front, 20)) == {"ext0", "ext1", "ext2"}
    assert extra.proc is not None and extra.proc.poll() is None  # poolctl never stops a static server
    view = await pool_view(client, settings, "web")
    assert view is not None and view.current == 3 and view.desired == 3

    # a re-apply of the unchanged file keeps hand-made changes alone (the file did not change)
    await run_cli(settings, "server", "add", "web", extra.address)
    await apply_yaml(client, settings, static_spec(three, front))
    await eventually(lambda: rotation(front), lambda m: extra.address in m, timeout=30)


async def test_a_policy_on_a_static_pool_only_recommends_and_says_so(
    client: Client, settings: Settings, worker, externals: list[External], front: BalancerProxy
) -> None:
    three = externals[:3]
    await apply_yaml(client, settings, static_spec(three, front, policy=True))
    view = await eventually(
        lambda: pool_view(client, settings, "web"), lambda v: v is not None and v.current == 3, timeout=60
    )
    assert view is not None and view.recommendation_only == RECOMMENDATION_ONLY
    state = await eventually(
        lambda: policy_ops.query_policy(client, settings.team, "web", "cpu"),
        lambda st: st.last_decision is not None,
        timeout=60,
    )
    assert state.dry_run and state.last_decision is not None and state.last_decision.dry_run
    shown = await run_cli(settings, "policy", "show", "web", "cpu")
    assert shown.code == 0, shown.text
    assert "recommendation only" in shown.text
    status = await run_cli(settings, "status", "web", "--json")
    assert status.code == 0 and RECOMMENDATION_ONLY in status.out, status.text
    # whatever it recommends, the pool is never resized
    view = await pool_view(client, settings, "web")
    assert view is not None and view.current == 3
    assert not any(c.startswith("policy ") for c in causes(settings))


async def test_server_add_reports_the_health_that_servers_shows(
    client: Client, settings: Settings, worker
) -> None:
    """Nothing listens on the added addresses: with no health check the pool never probes them, with a slow
    one it has not yet; either way `server add` says `initial`, as `poolctl servers` does (it said `health
    healthy` for the pool without a check)."""
    ports = {"web": free_port(), "api": free_port()}
    slow_check = "health_check: {type: tcp, interval: 30, timeout: 1, jitter: 0, unhealthy_threshold: 3}"
    await apply_yaml(
        client,
        settings,
        f"""
pools:
  - {{name: web, provider: static, servers: [{{address: "127.0.0.1:{free_port()}"}}]}}
  - {{name: api, provider: static, servers: [{{address: "127.0.0.1:{free_port()}"}}], {slow_check}}}
""",
    )
    for pool in ports:
        await eventually(
            lambda p=pool: pool_view(client, settings, p), lambda v: v is not None and v.current == 1
        )  # type: ignore[misc]
    for pool, why in (("web", "never probed: the pool has no health check"), ("api", "not yet probed")):
        added = await run_cli(settings, "server", "add", pool, f"127.0.0.1:{ports[pool]}")
        assert added.code == 0, added.text
        assert f", health initial ({why})" in added.out, added.out
        listed = await run_cli(settings, "servers", pool, "--json")
        assert {s["address"]: s["health"] for s in json.loads(listed.out)}[
            f"127.0.0.1:{ports[pool]}"
        ] == "initial"
        # each registration recorded with the pool's size around it (it said 1->1, then 2->2)
        with session_scope(settings.resolved_database_url) as s:
            events = inventory.list_events(s, settings.team, pool)
            sizes = sorted((e.from_count, e.to_count) for e in events if e.direction == "register")
        assert sizes == [(0, 1), (1, 2)], sizes
