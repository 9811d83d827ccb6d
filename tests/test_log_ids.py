"""Worker log lines carry team / pool / policy: the ids parsed from workflow ids, and a real activity's
log line (a server provisioned for a pool, through a real worker on the dev server) carrying them."""

from __future__ import annotations

import logging

import pytest
from temporalio.client import Client

from poolctl.domain.names import ids_from_workflow_id
from poolctl.log_ids import IdsFormatter
from poolctl.settings import Settings
from tests.helpers import apply_yaml, settled


def test_workflow_ids_name_their_team_pool_policy_and_server() -> None:
    assert ids_from_workflow_id("policy/t1/web/cpu") == {"team": "t1", "pool": "web", "policy": "cpu"}
    assert ids_from_workflow_id("pool/t1/web") == {"team": "t1", "pool": "web"}
    assert ids_from_workflow_id("scale/t1/web/7") == {"team": "t1", "pool": "web"}
    assert ids_from_workflow_id("health/t1/web/srv-1") == {"team": "t1", "pool": "web", "server": "srv-1"}
    assert ids_from_workflow_id("notify/t1/web/abc/scaling_action/1") == {"team": "t1", "pool": "web"}
    for other in ("housekeeping-cleanup", "pool/", "policy/t1/web", "", "x/y/z"):
        assert ids_from_workflow_id(other) == {}


@pytest.mark.temporal
async def test_an_activity_log_line_carries_team_and_pool(
    client: Client, settings: Settings, worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="temporalio.activity")
    await apply_yaml(
        client,
        settings,
        "pools:\n  - name: web\n    provider: fake\n    min_servers: 1\n    max_servers: 1\n",
    )
    await settled(client, settings, "web", 1)
    lines = [
        r for r in caplog.records if r.name == "temporalio.activity" and "server fake-" in r.getMessage()
    ]
    assert lines, [r.getMessage() for r in caplog.records]
    record = lines[0]
    assert (record.team, record.pool) == (settings.team, "web")  # type: ignore[attr-defined]
    text = IdsFormatter().format(record)
    assert f"team={settings.team} pool=web" in text
    assert f"scale/{settings.team}/web/1" in text  # the SDK's own workflow id is there too
