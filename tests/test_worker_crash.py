"""Durability: SIGKILL the worker in the middle of a scale-out; a new worker finishes it with exactly the
desired servers and no orphan process (provisioning is idempotent by key)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from temporalio.client import Client

from poolctl.activities.providers.registry import get_provider
from poolctl.domain.names import pool_key
from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.store.db import migrate
from tests.helpers import apply_yaml, eventually, pool_view, settled

pytestmark = pytest.mark.temporal


def start_worker_process(settings: Settings, log_path) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        POOLCTL_STATE_DIR=str(settings.state_dir),
        POOLCTL_DATABASE_URL=settings.resolved_database_url,
        POOLCTL_TEMPORAL_ADDRESS=settings.temporal_address,
        POOLCTL_TASK_QUEUE=settings.task_queue,
    )
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "poolctl.worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def local_server_pids(settings: Settings) -> set[int]:
    """Every live local-server process started under this test's state dir (found via /proc)."""
    pids = set()
    marker = str(settings.state_dir).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().split(")")[-1].split()[0]
        except OSError:
            continue
        if b"poolctl.localserver" in cmd and marker in cmd and state != "Z":
            pids.add(int(entry))
    return pids


async def test_sigkill_worker_mid_scale_out_ends_with_exact_servers_and_no_orphans(
    client: Client, settings: Settings, tmp_path
):
    migrate(settings.resolved_database_url)
    settings.activity_timeout_s = 8.0  # a provision lost with the worker is retried after this
    proc = start_worker_process(settings, tmp_path / "worker1.log")
    try:
        await apply_yaml(
            client,
            settings,
            "pools:\n  - name: web\n    min_servers: 1\n    max_servers: 10\n    desired_servers: 1\n",
        )
        await settled(client, settings, "web", 1, timeout=90)
        await pool_ops.request_scale(client, settings.team, "web", 6, "burst")
        # kill as soon as the scale-out has started spawning servers, but before it finished
        await eventually(lambda: _count_pids(settings), lambda n: n >= 2, timeout=60, interval=0.05)
        view = await pool_view(client, settings, "web")
        assert view is not None and view.current == 1, "the scale-out must still be in flight when we kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    proc2 = start_worker_process(settings, tmp_path / "worker2.log")
    try:
        view = await settled(client, settings, "web", 6, timeout=120)
        provider = get_provider("local", settings.state_dir)
        running = {
            s.server_id
            for s in await provider.list_servers(pool_key(settings.team, "web"))
            if s.state.value == "running"
        }
        assert running == {s.server_id for s in view.servers}
        assert len(local_server_pids(settings)) == 6, "an orphan (or missing) server process"
    finally:
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(timeout=30) == 0, "worker must stop gracefully on SIGTERM"


async def _count_pids(settings: Settings) -> int:
    return len(local_server_pids(settings))
