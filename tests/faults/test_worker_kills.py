"""Faults: the worker SIGKILLed in the middle of a scale-in, a heal and a delete, and one of two workers
killed with work in flight. Real dev server, real worker processes, real local servers. Each test names
its fault, waits for the step to be under way (observed, never timed), kills, and checks the invariants:
exactly the desired servers, no duplicate, no orphan process, store equal to the provider, every event
finished."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.store.db import migrate
from tests.faults.conftest import check_pool
from tests.helpers import apply_yaml, eventually, pool_view, settled
from tests.processes import local_server_pids, start_worker_process, worker_env

pytestmark = [pytest.mark.temporal, pytest.mark.slow]


def pool_yaml(size: int, *, health: bool = False) -> str:
    check = (
        "    auto_healing: true\n    health_check: {type: http, path: /health, interval: 1, timeout: 0.5,"
        " jitter: 0, healthy_threshold: 1, unhealthy_threshold: 2}\n"
        if health
        else ""
    )
    return f"pools:\n  - name: web\n    min_servers: 0\n    max_servers: 10\n    desired_servers: {size}\n{check}"


async def pids(settings: Settings) -> int:
    return len(local_server_pids(settings))


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def fast(settings: Settings) -> Settings:
    migrate(settings.resolved_database_url)
    settings.activity_timeout_s = 8.0  # an activity lost with a killed worker is retried after this
    return settings


async def test_worker_killed_during_scale_in(client: Client, fast: Settings, tmp_path: Path, fault_record):
    w1 = start_worker_process(fast, tmp_path / "w1.log")
    try:
        await apply_yaml(client, fast, pool_yaml(5))
        await settled(client, fast, "web", 5, timeout=120)
        await pool_ops.request_scale(client, fast.team, "web", 1, "fault: scale in")
        await eventually(lambda: pids(fast), lambda n: n < 5, timeout=60, interval=0.05)  # terminating
        kill(w1)
    finally:
        stop(w1)
    w2 = start_worker_process(fast, tmp_path / "w2.log")
    try:
        await settled(client, fast, "web", 1, timeout=120)
        inv = await check_pool(client, fast, "web", 1)
        fault_record("worker SIGKILL while terminating (scale-in)", inv)
        inv.assert_clean()
    finally:
        stop(w2)


async def test_worker_killed_during_heal(client: Client, fast: Settings, tmp_path: Path, fault_record):
    w1 = start_worker_process(fast, tmp_path / "w1.log")
    try:
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
        kill(w1)
    finally:
        stop(w1)
    w2 = start_worker_process(fast, tmp_path / "w2.log")
    try:
        healed = await eventually(
            lambda: pool_view(client, fast, "web"),
            lambda v: v is not None and not v.scaling and v.current == 3
            and sick.server_id not in {s.server_id for s in v.servers}
            and all(s.health == "healthy" for s in v.servers),
            timeout=150,
        )  # fmt: skip
        assert healed is not None
        inv = await check_pool(client, fast, "web", 3)
        fault_record("worker SIGKILL while healing (replacement booting)", inv)
        inv.assert_clean()
    finally:
        stop(w2)


async def test_worker_killed_during_delete(client: Client, fast: Settings, tmp_path: Path, fault_record):
    w1 = start_worker_process(fast, tmp_path / "w1.log")
    try:
        await apply_yaml(client, fast, pool_yaml(4))
        await settled(client, fast, "web", 4, timeout=120)
        env = worker_env(fast, POOLCTL_TEAM=fast.team)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poolctl.starter.cli", "delete", "pool", "web", "--yes",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        await eventually(lambda: pids(fast), lambda n: n < 4, timeout=60, interval=0.05)
        kill(w1)
    finally:
        stop(w1)
    w2 = start_worker_process(fast, tmp_path / "w2.log")
    try:
        out, _ = await asyncio.wait_for(cli.communicate(), 300)
        assert cli.returncode == 0, out.decode()
        await eventually(lambda: pids(fast), lambda n: n == 0, timeout=60)
        assert (
            await pool_view(client, fast, "web") is None
            or (await pool_view(client, fast, "web")).current == 0
        )
        inv = await check_pool(client, fast, "web", 0)
        fault_record("worker SIGKILL while deleting a pool", inv)
        inv.assert_clean()
    finally:
        stop(w2)


async def test_one_of_two_workers_killed_with_work_in_flight(
    client: Client, fast: Settings, tmp_path: Path, fault_record
):
    w1 = start_worker_process(fast, tmp_path / "w1.log")
    w2 = start_worker_process(fast, tmp_path / "w2.log")
    try:
        await apply_yaml(client, fast, pool_yaml(1))
        await settled(client, fast, "web", 1, timeout=120)
        await pool_ops.request_scale(client, fast.team, "web", 6, "fault: burst with two workers")
        await eventually(lambda: pids(fast), lambda n: n >= 3, timeout=60, interval=0.05)
        kill(w1)  # the other worker must finish the scale-out alone
        await settled(client, fast, "web", 6, timeout=150)
        inv = await check_pool(client, fast, "web", 6)
        fault_record("one of two workers SIGKILLed mid scale-out", inv)
        inv.assert_clean()
    finally:
        stop(w1)
        stop(w2)
