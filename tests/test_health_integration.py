"""Health checks and auto-healing end to end: real dev server, real local servers turned unhealthy
through their admin path, HealthCheckWorkflows with their probe-loop activities, the pool healing."""

from __future__ import annotations

import httpx
import pytest
from temporalio.client import Client

from poolctl.domain.names import health_workflow_id
from poolctl.settings import Settings
from poolctl.starter.health_cli import health_report
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.store.models import HealthCheck, Server
from tests.helpers import apply_yaml, eventually, pool_view, settled

pytestmark = pytest.mark.temporal


def spec(size: int, *, auto_healing: bool, unhealthy_threshold: int = 3, heal_after_s: float = 0) -> str:
    return f"""
pools:
  - name: web
    min_servers: 1
    max_servers: 10
    desired_servers: {size}
    auto_healing: {str(auto_healing).lower()}
    heal_after_s: {heal_after_s}
    health_check:
      type: http
      path: /health
      interval: 1
      timeout: 0.5
      jitter: 0
      healthy_threshold: 2
      unhealthy_threshold: {unhealthy_threshold}
"""


async def set_health(server, healthy: bool) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://{server.host}:{server.port}/admin/health", json={"healthy": healthy})
        r.raise_for_status()


async def all_healthy(client: Client, settings: Settings, n: int):
    return await eventually(
        lambda: pool_view(client, settings, "web"),
        lambda v: v is not None and v.current == n and all(s.health == "healthy" for s in v.servers),
        timeout=60,
    )


def health_row(settings: Settings, server_id: str) -> HealthCheck | None:
    with session_scope(settings.resolved_database_url) as s:
        from sqlalchemy import select

        return s.scalar(select(HealthCheck).where(HealthCheck.server_id == server_id))


async def test_unhealthy_after_exactly_threshold_failures_and_healthy_after_threshold_successes(
    client: Client, settings: Settings, worker
):
    await apply_yaml(client, settings, spec(2, auto_healing=False, unhealthy_threshold=3))
    view = await all_healthy(client, settings, 2)
    victim = view.servers[0]
    first = health_row(settings, victim.server_id)
    assert first is not None and first.status == "healthy"
    assert first.transitions["items"][-1]["to_state"] == "healthy"
    assert first.transitions["items"][-1]["consecutive"] == 2

    await set_health(victim, False)
    view = await eventually(
        lambda: pool_view(client, settings, "web"),
        lambda v: (
            v is not None and {s.server_id: s.health for s in v.servers}[victim.server_id] == "unhealthy"
        ),
    )
    assert [s.health for s in view.servers if s.server_id != victim.server_id] == ["healthy"]
    row = health_row(settings, victim.server_id)
    assert row is not None and row.status == "unhealthy"
    last = row.transitions["items"][-1]
    assert (last["from_state"], last["to_state"], last["consecutive"]) == ("healthy", "unhealthy", 3)
    with session_scope(settings.resolved_database_url) as s:
        assert s.get(Server, victim.server_id).health == "unhealthy"

    report = health_report(settings.team, "web", 3600, settings=settings)
    assert report["summary"] == {"healthy": 1, "unhealthy": 1, "initial": 0}
    row = {r["server_id"]: r for r in report["servers"]}[victim.server_id]
    assert row["state"] == "unhealthy" and row["consecutive_failures"] >= 3
    assert row["uptime_percent"] is not None and 0 < row["uptime_percent"] < 100
    assert "503" in (row["last_error"] or "")

    await set_health(victim, True)
    await all_healthy(client, settings, 2)
    last = health_row(settings, victim.server_id).transitions["items"][-1]
    assert (last["from_state"], last["to_state"], last["consecutive"]) == ("unhealthy", "healthy", 2)
    # without auto-healing nothing was replaced
    with session_scope(settings.resolved_database_url) as s:
        assert [e.direction for e in inventory.list_events(s, settings.team, "web")] == ["up"]


async def test_auto_healing_replaces_one_at_a_time_launching_before_terminating(
    client: Client, settings: Settings, worker
):
    await apply_yaml(client, settings, spec(5, auto_healing=True, unhealthy_threshold=2))
    view = await all_healthy(client, settings, 5)
    victims = view.servers[:2]  # 2 of 5: under half, batch limit max(1, 10% of 5) = 1
    for v in victims:
        await set_health(v, False)

    def replaced(v) -> bool:
        ids = {s.server_id for s in v.servers}
        return v is not None and not ids & {x.server_id for x in victims} and len(ids) == 5

    await eventually(lambda: pool_view(client, settings, "web"), replaced, timeout=90)
    await all_healthy(client, settings, 5)
    with session_scope(settings.resolved_database_url) as s:
        events = [e for e in inventory.list_events(s, settings.team, "web") if e.direction == "replace"]
        assert len(events) == 2, "one replacement at a time (batch limit 1 for a pool of 5)"
        for e in events:
            assert e.status == "succeeded" and e.from_count == e.to_count == 5
            [new_id] = e.servers["added"]
            [old_id] = e.servers["removed"]
            new, old = s.get(Server, new_id), s.get(Server, old_id)
            assert old.state == "terminated"
            assert new.created_at <= old.terminated_at, "the replacement is launched before the old one goes"
    for v in victims:  # their health workflows ended with them
        result = await client.get_workflow_handle(
            health_workflow_id(settings.team, "web", v.server_id)
        ).result()
        assert result == "stopped"


async def test_most_of_the_pool_unhealthy_stops_healing_and_marks_degraded(
    client: Client, settings: Settings, worker
):
    # heal_after_s: both servers go unhealthy within a probe or two of each other; the pool waits that long
    await apply_yaml(client, settings, spec(3, auto_healing=True, unhealthy_threshold=2, heal_after_s=4))
    view = await all_healthy(client, settings, 3)
    for v in view.servers[:2]:
        await set_health(v, False)
    degraded = await eventually(
        lambda: pool_view(client, settings, "web"), lambda v: v is not None and v.status.value == "degraded"
    )
    assert "2 of 3 servers are unhealthy" in (degraded.status_reason or "")
    assert {s.server_id for s in degraded.servers} == {s.server_id for s in view.servers}

    async def events() -> list[tuple[str, str, str]]:
        with session_scope(settings.resolved_database_url) as s:
            return [(e.direction, e.status, e.cause) for e in inventory.list_events(s, settings.team, "web")]

    # the status and the held event are written by separate activities: wait for the event to finish
    evs = await eventually(events, lambda es: any(d == "heal" and st == "held" for d, st, _ in es))
    notes = [e for e in evs if e[0] == "heal"]
    assert len(notes) == 1 and "auto-healing stopped" in notes[0][2]
    assert not [e for e in evs if e[0] == "replace"]
    # health recovers -> the pool is active again, with the same servers
    for v in view.servers[:2]:
        await set_health(v, True)
    await settled(client, settings, "web", 3)
    await all_healthy(client, settings, 3)


async def test_flapping_under_the_thresholds_never_transitions(client: Client, settings: Settings, worker):
    await apply_yaml(client, settings, spec(1, auto_healing=True, unhealthy_threshold=3))
    view = await all_healthy(client, settings, 1)
    server = view.servers[0]
    before = len(health_row(settings, server.server_id).transitions["items"])
    # flap in probes, not in seconds: 2 failing probes (under the threshold of 3), then 2 passing ones,
    # five times over; the server counts its own /health requests
    async with httpx.AsyncClient() as http:

        async def server_state() -> dict:
            r = await http.get(f"http://{server.host}:{server.port}/admin/state")
            return r.json()

        for _ in range(5):
            r = await http.post(
                f"http://{server.host}:{server.port}/admin/health", json={"healthy": True, "fail_probes": 2}
            )
            start = r.json()["health_probes"]
            await eventually(server_state, lambda st, n=start: st["health_probes"] >= n + 4, timeout=60)
    view = await pool_view(client, settings, "web")
    assert view is not None and [s.server_id for s in view.servers] == [server.server_id]
    assert view.servers[0].health == "healthy"
    assert len(health_row(settings, server.server_id).transitions["items"]) == before
    with session_scope(settings.resolved_database_url) as s:
        assert [e.direction for e in inventory.list_events(s, settings.team, "web")] == ["up"]


async def test_grace_period_holds_for_a_new_server(client: Client, settings: Settings, worker):
    grace = 6.0
    text = spec(1, auto_healing=False, unhealthy_threshold=2).replace(
        "      jitter: 0\n", f"      jitter: 0\n      grace_period: {grace}\n"
    )
    await apply_yaml(client, settings, text)

    def first_server():
        with session_scope(settings.resolved_database_url) as s:
            from sqlalchemy import select

            return s.scalar(select(Server).where(Server.state == "running"))

    async def probe_server():
        return first_server()

    server = await eventually(probe_server, lambda srv: srv is not None, interval=0.05)
    async with httpx.AsyncClient() as http:  # broken from its first probe on
        r = await http.post(f"http://{server.host}:{server.port}/admin/health", json={"healthy": False})
        r.raise_for_status()
    await eventually(
        lambda: pool_view(client, settings, "web"),
        lambda v: v is not None and v.servers and v.servers[0].health == "unhealthy",
        timeout=30,
    )
    row = health_row(settings, server.id)
    [t] = [t for t in row.transitions["items"] if t["to_state"] == "unhealthy"]
    from datetime import UTC, datetime, timedelta

    created = server.created_at if server.created_at.tzinfo else server.created_at.replace(tzinfo=UTC)
    assert t["from_state"] == "initial"
    assert datetime.fromisoformat(t["at"]) >= created + timedelta(seconds=grace), (
        "marked unhealthy inside the grace period"
    )
    assert t["consecutive"] > 2, "failures inside the grace period were counted, not acted on"
