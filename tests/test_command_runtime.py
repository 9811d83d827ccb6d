"""A command that asks about a workflow that does not exist leaves no Temporal runtime behind: the errors
the CLI handles (the server's "not found") are let go of with their frames, so the process exits without
`warning: a Temporal runtime was left behind` (`poolctl.temporal_client.command_runtime`)."""

from __future__ import annotations

import pytest

from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.starter.heartbeats import pending_heartbeat
from poolctl.starter.runner import run_async
from poolctl.temporal_client import connect, runtimes_left_behind

pytestmark = pytest.mark.temporal


def test_asking_about_unknown_workflows_leaves_no_runtime_behind(settings: Settings):
    async def ask() -> list[object]:
        client = await connect(settings)
        answers: list[object] = []
        for i in range(20):  # one kept error was enough to keep the runtime (it happened about 1 time in 4)
            answers.append(await pool_ops.query_status(client, settings.team, f"nosuch-{i}"))
            answers.append(await pool_ops.is_running(client, settings.team, f"nosuch-{i}"))
            answers.append(await pending_heartbeat(client, f"pool/{settings.team}/nosuch-{i}", "probe_loop"))
        return answers

    before = len(runtimes_left_behind())
    answers = run_async(ask, task_queue=settings.task_queue)
    assert set(answers) == {None, False}
    assert runtimes_left_behind()[before:] == []
