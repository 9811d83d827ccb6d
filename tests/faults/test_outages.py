"""Faults: the Temporal server (file-backed, as `poolctl dev up` runs it) stopped and started again in the
middle of a scale-out, and PostgreSQL (a private instance) stopped and started while the worker runs.
Everything resumes: the pool ends at its desired size, store equal to provider, no orphan."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client

from poolctl.activities.providers.registry import kill_all_local_servers
from poolctl.settings import Settings
from poolctl.starter import devstack, pool_ops
from poolctl.starter.processes import stop as stop_process
from poolctl.store.db import dispose_all, migrate
from poolctl.temporal_client import connect
from tests.backends import free_port
from tests.faults.conftest import PrivatePostgres, check_pool
from tests.faults.test_worker_kills import pids, pool_yaml, start_worker_process, stop
from tests.helpers import apply_yaml, eventually, settled

pytestmark = [pytest.mark.temporal, pytest.mark.slow]


async def test_temporal_server_restarted_mid_scale_out(settings: Settings, tmp_path: Path, fault_record):
    own = settings.model_copy(
        update={
            "state_dir": tmp_path / "stack",
            "database_url": f"sqlite:///{tmp_path / 'stack.db'}",
            "temporal_address": f"127.0.0.1:{free_port()}",
            "temporal_ui_port": free_port(),
            "worker_metrics_port": 0,
            "activity_timeout_s": 8.0,
        }
    )
    own.ensure_state_dir()
    await asyncio.to_thread(devstack.up, own, say=lambda m: None)
    try:
        client: Client = await connect(own)
        await apply_yaml(client, own, pool_yaml(1))
        await settled(client, own, "web", 1, timeout=120)
        await pool_ops.request_scale(client, own.team, "web", 5, "fault: temporal restart")
        await eventually(lambda: pids(own), lambda n: n >= 2, timeout=60, interval=0.05)
        # stop the Temporal server we started (its pid file), then start it again on the same file
        tpid = int((own.state_dir / "pids" / "temporal.pid").read_text())
        stopped = await asyncio.to_thread(stop_process, tpid, 20)
        assert stopped
        await asyncio.to_thread(devstack.up, own, say=lambda m: None)
        client = await connect(own)
        await settled(client, own, "web", 5, timeout=180)
        inv = await check_pool(client, own, "web", 5)
        fault_record("Temporal server stopped and restarted mid scale-out", inv)
        inv.assert_clean()
    finally:
        await asyncio.to_thread(devstack.down, own, say=lambda m: None)
        kill_all_local_servers(own.state_dir)


async def test_postgres_restarted_while_the_worker_runs(
    client: Client, settings: Settings, tmp_path: Path, private_postgres: PrivatePostgres, fault_record
):
    pg = settings.model_copy(update={"database_url": private_postgres.url, "activity_timeout_s": 8.0})
    migrate(pg.resolved_database_url)
    w = start_worker_process(pg, tmp_path / "w.log")
    try:
        await apply_yaml(client, pg, pool_yaml(1))
        await settled(client, pg, "web", 1, timeout=120)
        await pool_ops.request_scale(client, pg.team, "web", 5, "fault: database restart")
        await eventually(lambda: pids(pg), lambda n: n >= 2, timeout=60, interval=0.05)
        await asyncio.to_thread(private_postgres.stop)
        dispose_all()  # this process's pooled connections died with the server
        await asyncio.to_thread(private_postgres.start)
        await settled(client, pg, "web", 5, timeout=180)
        inv = await eventually(
            lambda: check_pool(client, pg, "web", 5), lambda i: (i.lost, i.orphans) == (0, 0), timeout=60
        )
        fault_record("PostgreSQL stopped and restarted mid scale-out", inv)
        inv.assert_clean()
    finally:
        stop(w)
        dispose_all()
