"""After a real `poolctl dev up` (its own state dir, ports and task queue, POOLCTL_RETENTION_DAYS=30),
poolctl's two Schedules exist (`poolctl schedules --json` lists them with a next run), and triggering them
runs both: the statistics roll-up completes, and housekeeping leaves the store as documented (finished
scaling events, decision records and health transitions older than the retention removed; a running
event and recent rows kept)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from poolctl.settings import Settings
from poolctl.starter.schedules import BALANCER_STATS, HOUSEKEEPING, schedule_id
from poolctl.temporal_client import connect
from tests.backends import free_port
from tests.helpers import POOLCTL, eventually
from tests.test_housekeeping import counts, seed

pytestmark = pytest.mark.slow


@dataclass
class DevStack:
    env: dict[str, str]
    settings: Settings

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POOLCTL, *args], env=self.env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[DevStack]:
    """A private dev stack's environment (nothing of a developer's stack is touched); `dev down --purge`
    at the end stops only what it started, by its pid files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLCTL_") or k == "POOLCTL_PAYLOAD_KEY"}
    port, ui_port = free_port(), free_port()
    env.update(
        POOLCTL_STATE_DIR=str(tmp_path / "state"),
        POOLCTL_TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
        POOLCTL_TEMPORAL_UI_PORT=str(ui_port),
        POOLCTL_TASK_QUEUE="poolctl-schedules",
        POOLCTL_WORKER_METRICS_PORT="0",
        POOLCTL_RETENTION_DAYS="30",
        POOLCTL_TEAM="ops",
        POOLCTL_ENV_FILE=str(tmp_path / "none.env"),
    )
    settings = Settings(
        state_dir=tmp_path / "state",
        temporal_address=f"127.0.0.1:{port}",
        temporal_ui_port=ui_port,
        task_queue="poolctl-schedules",
        retention_days=30.0,
        team="ops",
    )
    stack = DevStack(env, settings)
    try:
        yield stack
    finally:
        stack.run("dev", "down", "--purge")


async def _last_run_status(client: Client, schedule: str) -> WorkflowExecutionStatus | None:
    """The status of the schedule's most recent run (its workflow id is the schedule's with a time suffix)."""
    desc = await client.get_schedule_handle(schedule).describe()
    if not desc.info.recent_actions:
        return None
    action = desc.info.recent_actions[-1].action
    wf_id = getattr(action, "workflow_id", None)
    if wf_id is None:
        return None
    return (await client.get_workflow_handle(wf_id).describe()).status


async def test_schedules_exist_after_dev_up_and_run_leaving_the_store_as_documented(dev_stack: DevStack):
    up = await asyncio.to_thread(dev_stack.run, "dev", "up")
    assert up.returncode == 0, up.stdout + up.stderr

    listed = await asyncio.to_thread(dev_stack.run, "schedules", "--json")
    assert listed.returncode == 0, listed.stderr
    views = {v["id"]: v for v in json.loads(listed.stdout)}
    s = dev_stack.settings
    ids = [schedule_id(s, BALANCER_STATS), schedule_id(s, HOUSEKEEPING)]
    assert sorted(views) == sorted(ids)
    assert all(views[i]["exists"] and not views[i]["paused"] and views[i]["next_run"] for i in ids)
    assert views[ids[0]]["every_s"] == s.balancer_stats_interval_s
    assert views[ids[1]]["every_s"] == s.housekeeping_interval_s

    url = s.resolved_database_url  # the dev stack's own store (the worker migrated it at start)
    seed(url, "ops")
    assert counts(url) == (3, 2, 2)

    client = await connect(s)
    for sid in ids:
        await client.get_schedule_handle(sid).trigger()
    for sid in ids:  # each triggered run completes
        await eventually(
            lambda sid=sid: _last_run_status(client, sid),
            lambda st: st == WorkflowExecutionStatus.COMPLETED,
            timeout=90,
        )

    async def now_counts() -> tuple[int, int, int]:
        return counts(url)

    # older than 30 days and finished: gone; the running event and recent rows: kept
    await eventually(now_counts, lambda c: c == (2, 1, 1), timeout=30)
    listed = await asyncio.to_thread(dev_stack.run, "schedules", "--json")
    assert all(v["last_run"] for v in json.loads(listed.stdout)), listed.stdout
