"""A schedule policy sets the pool's capacity at its cron time in its IANA time zone. Runs on the
time-skipping test server, so the test waits for a cron minute without waiting in wall-clock time."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from poolctl import search_attributes
from poolctl.domain.names import policy_workflow_id
from poolctl.settings import Settings
from poolctl.starter import policy_ops
from poolctl.temporal_client import DATA_CONVERTER
from tests.conftest import VENV_BIN
from tests.helpers import apply_yaml, pool_view

pytestmark = [pytest.mark.temporal]

ZONE = "America/New_York"


@pytest.fixture
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(VENV_BIN / "temporal-test-server"),
        data_converter=DATA_CONVERTER,
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in search_attributes.ALL
            },
        )
    )
    yield env
    await env.shutdown()


async def test_schedule_policy_sets_capacity_at_its_cron_time_in_its_zone(
    skipping_env: WorkflowEnvironment, tmp_path: Path
):
    from poolctl.store.db import migrate
    from poolctl.worker import build_worker

    client = skipping_env.client
    settings = Settings(
        state_dir=tmp_path / "state",
        database_url=f"sqlite:///{tmp_path / 'poolctl.db'}",
        temporal_address=client.service_client.config.target_host,
        task_queue=f"tq-{uuid.uuid4().hex[:8]}",
        team=f"t{uuid.uuid4().hex[:6]}",
        reconcile_interval_s=3600,
        retry_initial_interval_s=0.2,
    )
    settings.ensure_state_dir()
    migrate(settings.resolved_database_url)
    # the cron minute ~2 hours ahead, written in New York wall-clock time
    now = await skipping_env.get_current_time()
    fire = (now + timedelta(hours=2)).astimezone(ZoneInfo(ZONE)).replace(second=0, microsecond=0)
    spec = f"""
pools:
  - name: web
    provider: fake
    min_servers: 1
    max_servers: 10
    desired_servers: 1
    policies:
      - name: business-hours
        type: schedule
        evaluation_interval: 3600
        schedule:
          cron: "{fire.minute} {fire.hour} * * *"
          timezone: {ZONE}
          desired_servers: 4
          min_servers: 3
          duration_s: 1800
"""
    # no team check here: the Java time-skipping server drops the headers of workflow-to-workflow signals
    # (a policy's recommend to its pool); teams are tested on the dev server (tests/test_teams.py)
    async with build_worker(client, settings, interceptors=[]):
        await apply_yaml(client, settings, spec)
        await skipping_env.sleep(60)
        view = await pool_view(client, settings, "web")
        assert view is not None and view.current == 1
        state = await policy_ops.query_policy(client, settings.team, "web", "business-hours")
        assert state.last_reason == "ScheduleInactive"

        # a minute before the fire time nothing has changed
        before = fire.astimezone(UTC) - timedelta(minutes=1)
        await skipping_env.sleep((before - await skipping_env.get_current_time()).total_seconds())
        view = await pool_view(client, settings, "web")
        assert view is not None and view.desired == 1

        await skipping_env.sleep(120)
        view = await pool_view(client, settings, "web")
        assert view is not None and view.desired == 4
        state = await policy_ops.query_policy(client, settings.team, "web", "business-hours")
        active = [d for d in state.decisions if d.reason.value == "ScheduleActive"]
        assert active, state.decisions
        # evaluated at the cron instant itself (a wake at the fire time, not a whole interval later)
        fire_utc = fire.astimezone(UTC)
        assert fire_utc <= active[0].at < fire_utc + timedelta(seconds=1), (active[0].at, fire_utc)
        assert active[0].floor == 3 and active[0].desired == 4
        handle = client.get_workflow_handle(policy_workflow_id(settings.team, "web", "business-hours"))
        await handle.terminate()
