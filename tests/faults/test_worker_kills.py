"""Faults: the worker SIGKILLed in the middle of a scale-in, a heal and a delete, at each named step of an
activity (before provisioning, after the provider call and before the store write, while waiting for
health, while registering in the balancer, while draining, while terminating, after terminating and
before the store write), and one of two workers killed with work in flight. Real dev server, real worker
processes, real local servers, a real built-in balancer. Each test names its fault, kills at the step
(observed, or at the exact point through `POOLCTL_TEST_KILL_AT`, activities/kill_points.py), starts a new
worker and checks the invariants: exactly the desired servers, no duplicate, no orphan process, store
equal to the provider, every event finished, one event per action with the right outcome."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from poolctl.activities.kill_points import KILL_AT_ENV
from poolctl.balancer.proxy import BalancerProxy
from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.store.db import migrate
from tests.backends import in_process_balancer
from tests.faults.conftest import assert_invariants
from tests.helpers import apply_yaml, eventually, pool_view, settled
from tests.policy_helpers import events
from tests.processes import local_server_pids, start_worker_process, worker_env

pytestmark = [pytest.mark.temporal, pytest.mark.slow]

HEALTH = (
    "    auto_healing: true\n    health_check: {type: http, path: /health, interval: 1, timeout: 0.5,"
    " jitter: 0, healthy_threshold: 1, unhealthy_threshold: 2}\n"
)


def pool_yaml(size: int, *, health: bool = False, balancer: BalancerProxy | None = None) -> str:
    lb = (
        f"    load_balancers:\n      - {{name: front, port: {balancer.port}, admin_port: {balancer.admin_port},"
        " algorithm: weighted, drain_timeout_s: 5}\n"
        if balancer
        else ""
    )
    check = HEALTH if health or balancer else ""
    return f"pools:\n  - name: web\n    min_servers: 0\n    max_servers: 10\n    desired_servers: {size}\n{check}{lb}"


async def pids(settings: Settings) -> int:
    return len(local_server_pids(settings))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class Workers:
    """The worker processes of one test: started on its settings, SIGKILLed and replaced; all stopped at
    the end."""

    def __init__(self, settings: Settings, tmp_path: Path):
        self.settings = settings
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []

    def start(self, **env: str) -> subprocess.Popen:
        proc = start_worker_process(self.settings, self.tmp_path / f"w{len(self.started) + 1}.log", **env)
        self.started.append(proc)
        return proc

    def replace(self, proc: subprocess.Popen) -> subprocess.Popen:
        """SIGKILL `proc` (work in flight dies with it), then start a new worker."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return self.start()

    async def replace_when_dead(self, proc: subprocess.Popen, timeout: float = 120) -> subprocess.Popen:
        """Wait for `proc` to kill itself (at its kill point), then start a new worker."""
        await eventually(lambda: asyncio.to_thread(proc.poll), lambda rc: rc is not None, timeout=timeout)
        assert proc.returncode == -signal.SIGKILL, (
            f"worker ended with {proc.returncode}, not at its kill point"
        )
        return self.start()

    def stop_all(self) -> None:
        for proc in self.started:
            stop(proc)


@pytest.fixture
def fast(settings: Settings) -> Settings:
    migrate(settings.resolved_database_url)
    settings.activity_timeout_s = 8.0  # an activity lost with a killed worker is retried after this
    settings.health_heartbeat_timeout_s = 5.0  # ... and a probe loop after this
    return settings


@pytest.fixture
def workers(fast: Settings, tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(fast, tmp_path)
    yield ws
    ws.stop_all()


@pytest.fixture
async def front(fast: Settings) -> AsyncIterator[BalancerProxy]:
    """The built-in balancer a kill-point pool declares, running in this process on its ports."""
    async with in_process_balancer(fast) as proxy:
        yield proxy


async def test_worker_killed_during_scale_in(client: Client, fast: Settings, workers: Workers, fault_record):
    w1 = workers.start()
    await apply_yaml(client, fast, pool_yaml(5))
    await settled(client, fast, "web", 5, timeout=120)
    await pool_ops.request_scale(client, fast.team, "web", 1, "fault: scale in")
    await eventually(lambda: pids(fast), lambda n: n < 5, timeout=60, interval=0.05)  # terminating
    workers.replace(w1)
    await settled(client, fast, "web", 1, timeout=120)
    await assert_invariants(
        client, fast, "web", 1, "worker SIGKILL while terminating (scale-in)", fault_record
    )


async def test_worker_killed_during_heal(client: Client, fast: Settings, workers: Workers, fault_record):
    w1 = workers.start()
    await apply_yaml(client, fast, pool_yaml(3, health=True))
    view = await eventually(
        lambda: pool_view(client, fast, "web"),
        lambda v: v is not None and v.current == 3 and all(s.health == "healthy" for s in v.servers),
        timeout=120,
    )
    sick = view.servers[0]
    async with httpx.AsyncClient() as http:
        await http.post(f"http://{sick.host}:{sick.port}/admin/health", json={"healthy": False})
    # the replacement is launched before the sick server goes: kill while it boots
    await eventually(lambda: pids(fast), lambda n: n >= 4, timeout=90, interval=0.05)
    workers.replace(w1)
    healed = await eventually(
        lambda: pool_view(client, fast, "web"),
        lambda v: v is not None and not v.scaling and v.current == 3
        and sick.server_id not in {s.server_id for s in v.servers}
        and all(s.health == "healthy" for s in v.servers),
        timeout=150,
    )  # fmt: skip
    assert healed is not None
    await assert_invariants(
        client, fast, "web", 3, "worker SIGKILL while healing (replacement booting)", fault_record
    )


async def test_worker_killed_during_delete(client: Client, fast: Settings, workers: Workers, fault_record):
    w1 = workers.start()
    await apply_yaml(client, fast, pool_yaml(4))
    await settled(client, fast, "web", 4, timeout=120)
    env = worker_env(fast, POOLCTL_TEAM=fast.team)
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poolctl.starter.cli", "delete", "pool", "web", "--yes",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    await eventually(lambda: pids(fast), lambda n: n < 4, timeout=60, interval=0.05)
    workers.replace(w1)
    out, _ = await asyncio.wait_for(cli.communicate(), 300)
    assert cli.returncode == 0, out.decode()
    await eventually(lambda: pids(fast), lambda n: n == 0, timeout=60)
    view = await pool_view(client, fast, "web")
    assert view is None or view.current == 0
    await assert_invariants(client, fast, "web", 0, "worker SIGKILL while deleting a pool", fault_record)


async def test_one_of_two_workers_killed_with_work_in_flight(
    client: Client, fast: Settings, workers: Workers, fault_record
):
    w1 = workers.start()
    workers.start()
    await apply_yaml(client, fast, pool_yaml(1))
    await settled(client, fast, "web", 1, timeout=120)
    await pool_ops.request_scale(client, fast.team, "web", 6, "fault: burst with two workers")
    await eventually(lambda: pids(fast), lambda n: n >= 3, timeout=60, interval=0.05)
    os.kill(w1.pid, signal.SIGKILL)  # the other worker must finish the scale-out alone
    w1.wait()
    await settled(client, fast, "web", 6, timeout=150)
    await assert_invariants(
        client, fast, "web", 6, "one of two workers SIGKILLed mid scale-out", fault_record
    )


# (kill point, the pool has a health check, size after the scale-out, then scale to)
KILL_POINT_CASES = [
    ("before_provision", False, 2, None),
    ("after_provider_call", False, 2, None),
    ("waiting_for_health", True, 2, None),
    ("terminating", False, 2, 1),
    ("after_terminate", False, 2, 1),
]
BALANCER_KILL_POINT_CASES = [("registering_in_balancer", 2, None), ("draining", 2, 1)]


@pytest.mark.parametrize(("point", "health", "size", "scale_to"), KILL_POINT_CASES)
async def test_worker_killed_at_a_named_step(  # noqa: PLR0913 - the parameters of one case
    client: Client,
    fast: Settings,
    workers: Workers,
    fault_record,
    point: str,
    health: bool,
    size: int,
    scale_to: int | None,
):
    await _kill_at(client, fast, workers, fault_record, point, pool_yaml(size, health=health), size, scale_to)


@pytest.mark.parametrize(("point", "size", "scale_to"), BALANCER_KILL_POINT_CASES)
async def test_worker_killed_at_a_balancer_step(  # noqa: PLR0913 - the parameters of one case
    client: Client,
    fast: Settings,
    workers: Workers,
    fault_record,
    front: BalancerProxy,
    point: str,
    size: int,
    scale_to: int | None,
):
    spec = pool_yaml(size, balancer=front)
    await _kill_at(client, fast, workers, fault_record, point, spec, size, scale_to, balancer=front)


async def _kill_at(  # noqa: PLR0913
    client: Client,
    fast: Settings,
    workers: Workers,
    fault_record,  # type: ignore[no-untyped-def]
    point: str,
    spec: str,
    size: int,
    scale_to: int | None,
    *,
    balancer: BalancerProxy | None = None,
) -> None:
    """A worker that SIGKILLs itself at `point`, then a new one: the invariants, one event per action (its
    outcome succeeded), and a balancer (if any) holding exactly the pool's servers, in rotation."""
    w1 = workers.start(**{KILL_AT_ENV: point})
    await apply_yaml(client, fast, spec)
    if scale_to is not None:
        await settled(client, fast, "web", size, timeout=120)
        await pool_ops.request_scale(client, fast.team, "web", scale_to, f"fault: kill at {point}")
    await workers.replace_when_dead(w1)
    final = size if scale_to is None else scale_to
    view = await eventually(
        lambda: pool_view(client, fast, "web"),
        lambda v: v is not None and not v.scaling and v.current == final and v.status.value == "active"
        and all(s.health == "healthy" for s in v.servers),
        timeout=180,
    )  # fmt: skip
    assert view is not None
    expected = [("up", "succeeded")] + ([("down", "succeeded")] if scale_to is not None else [])
    actions = sorted((e.started_at, e.direction, e.status) for e in events(fast, "web"))
    assert [(d, st) for _, d, st in actions] == expected  # one event per action, with its outcome
    if balancer is not None:
        await eventually(
            lambda: asyncio.sleep(0, {m.server_id: m.state.value for m in balancer.members()}),
            lambda got: got == {s.server_id: "in_rotation" for s in view.servers},
            timeout=60,
        )
    await assert_invariants(client, fast, "web", final, f"worker SIGKILL at {point}", fault_record)
