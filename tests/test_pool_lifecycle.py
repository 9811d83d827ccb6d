"""End to end on a real Temporal dev server with real local server processes: apply, scale, re-apply,
refuse out-of-range requests, fail after the configured attempts, delete, continue-as-new, UI filtering."""

from __future__ import annotations

import httpx
import pytest
from temporalio.client import Client

from poolctl.activities.providers.registry import get_provider
from poolctl.domain.names import pool_key, pool_workflow_id
from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.store import inventory
from poolctl.store.db import session_scope
from tests.helpers import apply_yaml, eventually, pool_view, settled

pytestmark = pytest.mark.temporal

POOL = """
pools:
  - name: web
    provider: local
    min_servers: 1
    max_servers: 6
    desired_servers: 2
"""


def _events(settings: Settings, pool: str) -> list:
    with session_scope(settings.resolved_database_url) as s:
        return inventory.list_events(s, settings.team, pool)


async def test_apply_brings_real_servers_up_and_reapply_changes_nothing(
    client: Client, settings: Settings, worker
):
    outcomes = await apply_yaml(client, settings, POOL)
    assert [(o.action, o.workflow) for o in outcomes] == [("created", "started")]
    view = await settled(client, settings, "web", 2)
    async with httpx.AsyncClient() as http:
        for server in view.servers:
            r = await http.get(f"http://{server.host}:{server.port}/")
            assert r.status_code == 200
            assert server.server_id in r.text

    again = await apply_yaml(client, settings, POOL)
    assert [(o.action, o.workflow) for o in again] == [("unchanged", "running")]
    view2 = await settled(client, settings, "web", 2)
    assert {s.server_id for s in view2.servers} == {s.server_id for s in view.servers}
    assert len(_events(settings, "web")) == 1


async def test_scale_up_then_down_leaves_exactly_that_many_live_servers(
    client: Client, settings: Settings, worker
):
    await apply_yaml(client, settings, POOL)
    await settled(client, settings, "web", 2)
    await pool_ops.request_scale(client, settings.team, "web", 5, "test up")
    await settled(client, settings, "web", 5)
    await pool_ops.request_scale(client, settings.team, "web", 1, "test down")
    view = await settled(client, settings, "web", 1)

    provider = get_provider("local", settings.state_dir)
    running = [
        s for s in await provider.list_servers(pool_key(settings.team, "web")) if s.state.value == "running"
    ]
    assert [s.server_id for s in running] == [view.servers[0].server_id]
    events = _events(settings, "web")
    assert [(e.direction, e.from_count, e.to_count, e.status, e.cause) for e in events] == [
        ("down", 5, 1, "succeeded", "test down"),
        ("up", 2, 5, "succeeded", "test up"),
        ("up", 0, 2, "succeeded", "pool created"),
    ]


async def test_out_of_range_scale_is_refused_and_changes_nothing(client: Client, settings: Settings, worker):
    await apply_yaml(client, settings, POOL)
    before = await settled(client, settings, "web", 2)
    with pytest.raises(pool_ops.RequestRefused, match=r"desired 7 is outside .*max_servers=6"):
        await pool_ops.request_scale(client, settings.team, "web", 7, "too many")
    with pytest.raises(pool_ops.RequestRefused, match=r"desired 0 is outside .*min_servers=1"):
        await pool_ops.request_scale(client, settings.team, "web", 0, "too few")
    after = await pool_view(client, settings, "web")
    assert after is not None and after.desired == 2 and after.seq == before.seq
    assert len(_events(settings, "web")) == 1


async def test_fake_provider_failing_every_call_drives_pool_to_error_after_attempts(
    client: Client, settings: Settings, worker
):
    settings.scale_attempts = 3
    spec = """
pools:
  - name: doomed
    provider: fake
    provider_options: {fail_provision: true}
    min_servers: 0
    max_servers: 3
    desired_servers: 1
"""
    await apply_yaml(client, settings, spec)
    view = await eventually(
        lambda: pool_view(client, settings, "doomed"), lambda v: v is not None and v.status.value == "error"
    )
    assert "failed" in (view.status_reason or "")
    fake = get_provider("fake", settings.state_dir)
    assert fake.calls["provision"] == 3  # type: ignore[attr-defined]
    [event] = _events(settings, "doomed")
    assert event.status == "failed" and "ProviderError" in (event.error or "")
    # the workflow keeps running and an operator can act on it
    accepted = await pool_ops.request_scale(client, settings.team, "doomed", 0, "give up")
    assert accepted.desired == 0
    await settled(client, settings, "doomed", 0)


async def test_delete_pool_terminates_its_servers_and_ends_the_workflow(
    client: Client, settings: Settings, worker
):
    await apply_yaml(client, settings, POOL)
    view = await settled(client, settings, "web", 2)
    removed = await pool_ops.delete_pool(client, settings, settings.team, "web")
    assert removed == 2
    provider = get_provider("local", settings.state_dir)
    for server in view.servers:
        info = await provider.describe(server.server_id)
        assert info is not None and info.state.value == "terminated"
    result = await client.get_workflow_handle(pool_workflow_id(settings.team, "web")).result()
    assert result == "deleted"
    with session_scope(settings.resolved_database_url) as s:
        assert inventory.find_pool(s, settings.team, "web") is None


async def test_pool_continues_as_new_keeping_its_state(client: Client, settings: Settings, worker):
    settings.history_budget = 100
    spec = POOL.replace("provider: local", "provider: fake")
    await apply_yaml(client, settings, spec)
    await settled(client, settings, "web", 2)
    handle = client.get_workflow_handle(pool_workflow_id(settings.team, "web"))
    first_run = (await handle.describe()).run_id
    for n in (3, 4, 5, 4, 3, 2, 3, 4):
        await pool_ops.request_scale(client, settings.team, "web", n, f"to {n}")
        await settled(client, settings, "web", n)
    desc = await client.get_workflow_handle(pool_workflow_id(settings.team, "web")).describe()
    assert desc.run_id != first_run, "expected at least one continue-as-new"
    view = await settled(client, settings, "web", 4)
    assert view.seq == 9 and view.last_event is not None and view.last_event.cause == "to 4"


async def test_pool_workflows_are_filterable_by_pool_id(client: Client, settings: Settings, worker):
    await apply_yaml(client, settings, POOL.replace("provider: local", "provider: fake"))
    await settled(client, settings, "web", 2)
    key = pool_key(settings.team, "web")

    async def listed(query: str) -> list[str]:
        return sorted([w.id async for w in client.list_workflows(query)])

    pool_id = pool_workflow_id(settings.team, "web")
    ids = await eventually(
        lambda: listed(f'PoolId = "{key}" AND PoolState = "active"'), lambda ids: pool_id in ids
    )
    assert ids == [pool_id]
    scale_id = f"scale/{settings.team}/web/1"
    all_ids = await eventually(lambda: listed(f'PoolId = "{key}"'), lambda ids: scale_id in ids)
    assert all_ids == sorted([pool_id, scale_id])


async def test_pool_lifecycle_on_postgresql(client: Client, settings: Settings, pg_schema_url: str):
    """The same apply/scale/events path with the store on PostgreSQL (the rest of the suite uses SQLite)."""
    from poolctl.store.db import migrate
    from poolctl.worker import build_worker

    settings.database_url = pg_schema_url
    migrate(pg_schema_url)
    async with build_worker(client, settings):
        await apply_yaml(client, settings, POOL)
        await settled(client, settings, "web", 2)
        await pool_ops.request_scale(client, settings.team, "web", 3, "on postgres")
        view = await settled(client, settings, "web", 3)
        with session_scope(pg_schema_url) as s:
            live = {r.id for r in inventory.list_servers(s, settings.team, "web")}
            events = inventory.list_events(s, settings.team, "web")
        assert live == {srv.server_id for srv in view.servers}
        assert [(e.direction, e.to_count, e.status) for e in events] == [
            ("up", 3, "succeeded"),
            ("up", 2, "succeeded"),
        ]


async def test_switching_provider_of_a_pool_with_servers_is_refused_and_changes_nothing(
    client: Client, settings: Settings, worker
):
    from poolctl.domain.errors import SpecError

    fake = POOL.replace("provider: local", "provider: fake")
    await apply_yaml(client, settings, fake)
    await settled(client, settings, "web", 2)
    with pytest.raises(
        SpecError, match=r"provider: cannot change provider from 'fake' to 'local' while the pool has 2"
    ):
        await apply_yaml(client, settings, POOL.replace("desired_servers: 2", "desired_servers: 3"))
    with session_scope(settings.resolved_database_url) as s:
        row = inventory.get_pool(s, settings.team, "web")
        assert (row.provider, row.desired_servers) == ("fake", 2)
    view = await settled(client, settings, "web", 2)
    assert view.seq == 1
