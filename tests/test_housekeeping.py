"""Housekeeping: the retention clean-up on the store (SQLite and PostgreSQL) and poolctl's two Schedules
on a real dev server (created idempotently, the housekeeping one run on trigger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import Client

from poolctl.domain.pool_spec import PoolSpec, SpecDocument
from poolctl.settings import Settings
from poolctl.starter.schedules import HOUSEKEEPING, ensure_schedules, list_schedules, schedule_id
from poolctl.store import inventory
from poolctl.store.db import migrate, session_scope
from poolctl.store.models import HealthCheck, PolicyDecision, ScalingEvent, ServerPool
from poolctl.store.retention import remove_older_than
from tests.helpers import eventually

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=1)


def seed(url: str, team: str) -> None:
    """One pool with an old and a recent row of each kind that housekeeping prunes."""
    migrate(url)
    with session_scope(url) as s:
        inventory.apply_document(s, SpecDocument(team=team, pools=[PoolSpec(name="web")]))
    with session_scope(url) as s:
        pool = s.query(ServerPool).filter_by(name="web").one()
        for i, (when, status) in enumerate([(OLD, "succeeded"), (RECENT, "succeeded"), (OLD, "running")]):
            s.add(
                ScalingEvent(
                    pool_id=pool.id, event_key=f"{team}-ev{i}", direction="up", from_count=0, to_count=1,
                    cause="test", status=status, started_at=when,
                )
            )  # fmt: skip
        for i, when in enumerate([OLD, RECENT]):
            s.add(
                PolicyDecision(
                    pool_id=pool.id, policy_name="p", decided_at=when, current=1, desired=2, direction="up",
                    reason="TargetTracking", formula="f", decision={}, record_key=f"{team}-d{i}",
                )
            )  # fmt: skip
        s.add(
            HealthCheck(
                pool_id=pool.id, server_id=None, type="http", spec={}, created_at=NOW,
                transitions={"items": [{"at": OLD.isoformat(), "to_state": "healthy"},
                                       {"at": RECENT.isoformat(), "to_state": "unhealthy"}]},
            )
        )  # fmt: skip


def counts(url: str) -> tuple[int, int, int]:
    with session_scope(url) as s:
        events = s.query(ScalingEvent).count()
        decisions = s.query(PolicyDecision).count()
        items = sum(len((h.transitions or {}).get("items", [])) for h in s.query(HealthCheck))
        return events, decisions, items


def test_retention_removes_only_what_is_older(own_db_url: str) -> None:
    db_url = own_db_url  # it counts every row: other tests' rows in a shared schema would change the counts
    seed(db_url, "team-a")
    assert counts(db_url) == (3, 2, 2)
    with session_scope(db_url) as s:
        removed = remove_older_than(s, NOW - timedelta(days=30))
    assert removed.as_dict() == {
        "scaling_events": 1, "policy_decisions": 1, "balancer_rollups": 0, "health_transitions": 1,
    }  # fmt: skip
    # the old event that is still running stays, as do the recent rows
    assert counts(db_url) == (2, 1, 1)
    with session_scope(db_url) as s:
        again = remove_older_than(s, NOW - timedelta(days=30))
    assert sum(again.as_dict().values()) == 0  # idempotent


@pytest.mark.temporal
async def test_schedules_exist_idempotently_and_housekeeping_runs(
    client: Client, settings: Settings, worker
) -> None:
    settings.retention_days = 30.0  # the worker's own retention (it runs with this settings object)
    short = settings
    seed(short.resolved_database_url, settings.team)
    first = await ensure_schedules(client, short)
    again = await ensure_schedules(client, short)  # idempotent
    assert [h.id for h in first] == [h.id for h in again]
    views = await list_schedules(client, short)
    assert [v.exists for v in views] == [True, True]
    assert all(v.next_run is not None for v in views)
    hk = next(v for v in views if v.id == schedule_id(short, HOUSEKEEPING))
    assert hk.every_s == short.housekeeping_interval_s
    desc = await client.get_schedule_handle(hk.id).describe()
    from temporalio.client import ScheduleOverlapPolicy

    assert desc.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    await client.get_schedule_handle(hk.id).trigger()

    async def now_counts() -> tuple[int, int, int]:
        return counts(short.resolved_database_url)

    await eventually(now_counts, lambda c: c == (2, 1, 1))
    for h in first:
        await h.delete()


@pytest.mark.temporal
async def test_a_housekeeping_start_cannot_shorten_the_workers_retention(
    client: Client, settings: Settings, worker
) -> None:
    """A housekeeping workflow has no team: any Temporal caller may start one. One asking for 1e-9 days
    removes only what the worker's own retention (90 days here) removes: nothing of these rows."""
    import uuid

    from poolctl.activities.housekeeping import HousekeepingInput
    from poolctl.workflows.housekeeping import HousekeepingWorkflow

    assert settings.retention_days == 90.0
    seed(settings.resolved_database_url, settings.team)
    before = counts(settings.resolved_database_url)
    await client.execute_workflow(
        HousekeepingWorkflow.run,
        HousekeepingInput(retention_days=1e-9),
        id=f"housekeeping-forged-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue,
    )
    assert counts(settings.resolved_database_url) == before
