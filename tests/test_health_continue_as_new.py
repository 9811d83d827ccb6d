"""A HealthCheckWorkflow carries its whole state (counters, totals, probe schedule) through
continue-as-new: real dev server, a real HTTP target whose health the test flips."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from temporalio.client import Client

from poolctl.domain.health import HealthState
from poolctl.domain.health_messages import HealthInput, HealthRuntime, HealthView
from poolctl.domain.health_spec import HealthCheckSpec
from poolctl.settings import Settings
from poolctl.workflows.health_check import HealthCheckWorkflow
from tests.helpers import eventually

pytestmark = pytest.mark.temporal


class Target:
    """An HTTP server whose `/health` answers 200 or 503 as the test says."""

    def __init__(self) -> None:
        self.healthy = True
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503, text="ok" if self.healthy else "down")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    await t.start()
    yield t
    assert t.runner is not None
    await t.runner.cleanup()


async def test_counters_and_totals_survive_continue_as_new(
    client: Client, settings: Settings, worker, target: Target
) -> None:
    wf_id = f"health/{settings.team}/p/s1"
    handle = await client.start_workflow(
        HealthCheckWorkflow.run,
        HealthInput(
            team=settings.team,
            pool="p",
            server_id="s1",
            host="127.0.0.1",
            port=target.port,
            server_started_at=datetime.now(UTC),
            spec=HealthCheckSpec(
                type="http",
                path="/health",
                interval=1,
                timeout=0.5,
                jitter=0,
                healthy_threshold=1,
                unhealthy_threshold=1,
            ),
            # short leases and a tiny history budget: the workflow continues-as-new every few watches
            runtime=HealthRuntime(lease_s=2, heartbeat_timeout_s=10, history_budget=12),
        ),
        id=wf_id,
        task_queue=settings.task_queue,
    )
    first_run = handle.result_run_id
    try:

        async def view() -> HealthView:
            return await client.get_workflow_handle(wf_id).query(HealthCheckWorkflow.state)

        await eventually(view, lambda v: v.state is HealthState.HEALTHY, timeout=60)
        target.healthy = False
        before = await eventually(
            view, lambda v: v.state is HealthState.UNHEALTHY and v.transitions >= 2, timeout=60
        )

        async def run_id() -> str | None:
            return (await client.get_workflow_handle(wf_id).describe()).run_id

        await eventually(run_id, lambda r: r != first_run, timeout=90)
        after = await view()
        # a new run: the totals and the check's state came along instead of starting over
        assert after.transitions >= before.transitions
        assert after.watches >= before.watches
        assert after.state is HealthState.UNHEALTHY
        assert after.status.consecutive_failures >= before.status.consecutive_failures
        target.healthy = True
        back = await eventually(view, lambda v: v.state is HealthState.HEALTHY, timeout=60)
        assert back.transitions >= before.transitions + 1
    finally:
        await client.get_workflow_handle(wf_id).cancel()
