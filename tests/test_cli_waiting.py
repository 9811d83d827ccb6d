"""No silent waits, no tracebacks: with the worker stopped, `poolctl scale` and `delete pool` (real subprocesses) say they wait
for a worker on the task queue, give up at `--timeout` with one line and exit code 3, and Ctrl-C ends `scale`
with one line and exit code 130."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client

from poolctl.settings import Settings
from poolctl.starter.waiting import SENT_CARRIES_ON
from tests.helpers import EMPTY_POOL_SPEC, POOLCTL, apply_yaml, eventually, settled

pytestmark = pytest.mark.temporal


def cli_env(settings: Settings) -> dict[str, str]:
    keep = {"POOLCTL_PAYLOAD_KEY"}  # the session's key (conftest): the test's worker and the CLI share it
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLCTL_") or k in keep}
    env.update(
        POOLCTL_STATE_DIR=str(settings.state_dir),
        POOLCTL_DATABASE_URL=settings.resolved_database_url,
        POOLCTL_TEMPORAL_ADDRESS=settings.temporal_address,
        POOLCTL_TASK_QUEUE=settings.task_queue,
        POOLCTL_TEAM=settings.team,
    )
    return env


@pytest.fixture
async def pool_without_worker(client: Client, settings: Settings) -> AsyncIterator[Settings]:
    """A running pool workflow (0 servers) whose worker has been stopped."""
    from poolctl.store.db import migrate
    from poolctl.worker import build_worker

    migrate(settings.resolved_database_url)
    async with build_worker(client, settings):
        await apply_yaml(client, settings, EMPTY_POOL_SPEC)
        await settled(client, settings, "web", 0)
    yield settings


@pytest.mark.parametrize(
    ("command", "sent"),
    [
        (["scale", "web", "--desired", "1"], ""),  # still asking the pool for its status: nothing sent
        (["delete", "pool", "web", "--yes"], SENT_CARRIES_ON),  # an update-with-start: sent
    ],
    ids=["scale", "delete"],
)
async def test_without_a_worker_says_so_and_times_out_with_one_line_and_exit_3(
    pool_without_worker: Settings, command: list[str], sent: str
):
    proc = await asyncio.create_subprocess_exec(
        POOLCTL, *command, "--timeout", "5",
        env=cli_env(pool_without_worker), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    lines = err.decode().splitlines()
    queue = pool_without_worker.task_queue
    # the notice (after ~3 s) comes before the 5 s deadline's line: it was said within the 5 s
    assert lines == [
        f"waiting for a worker on task queue {queue} (is the worker running? poolctl dev status)",
        f"error: timed out after 5s waiting for a worker on task queue {queue} "
        "(is the worker running? poolctl dev status; or raise --timeout)" + sent,
    ], err.decode()
    assert proc.returncode == 3
    assert out == b""


async def test_ctrl_c_while_waiting_prints_one_line_and_exits_130(pool_without_worker: Settings):
    proc = await asyncio.create_subprocess_exec(
        POOLCTL, "scale", "web", "--desired", "1", "--timeout", "300",
        env=cli_env(pool_without_worker), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    notice = await eventually(proc.stderr.readline, lambda line: b"waiting for a worker" in line, timeout=120)
    assert notice.startswith(b"waiting for a worker on task queue")
    proc.send_signal(signal.SIGINT)  # our own child, by its pid
    out, rest = await asyncio.wait_for(proc.communicate(), 60)
    assert rest.decode().splitlines() == [
        "error: interrupted: what was already sent to Temporal carries on (see poolctl status)"
    ], rest.decode()
    assert proc.returncode == 130
    assert b"Traceback" not in out
