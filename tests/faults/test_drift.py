"""Faults: out-of-band changes the pool must notice by comparing its members with the provider's list
(drift reconcile, workflows/pool_drift.py) — a server process killed by hand on a pool without a health
check, a server the provider runs under the pool's tag that the pool does not count (started outside
poolctl, or created by a provision whose calls all timed out). Real dev server, real local servers. The
invariant: exactly the desired servers, no orphan process, store equal to the provider, every event
finished; each drift action is a recorded event."""

from __future__ import annotations

import os
import signal

import pytest
from temporalio.client import Client

from poolctl.activities.providers.base import ProvisionRequest
from poolctl.activities.providers.registry import get_provider
from poolctl.domain.names import pool_key
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope
from tests.faults.conftest import assert_invariants
from tests.helpers import apply_yaml, eventually, pool_view, settled

pytestmark = [pytest.mark.temporal, pytest.mark.slow]


def pool_yaml(size: int, extra: str = "") -> str:
    return f"pools:\n  - name: web\n    min_servers: 0\n    max_servers: 10\n    desired_servers: {size}\n{extra}"


@pytest.fixture
def drifty(quick_recovery: Settings) -> Settings:
    quick_recovery.scale_attempts = 3
    return quick_recovery


def drift_events(settings: Settings) -> list:
    with session_scope(settings.resolved_database_url) as s:
        return [e for e in inventory.list_events(s, settings.team, "web") if e.direction == "drift"]


async def test_server_killed_by_hand_on_a_pool_without_health_check_is_replaced(
    client: Client, drifty: Settings, worker, fault_record
):
    s = drifty
    await apply_yaml(client, s, pool_yaml(3))
    view = await settled(client, s, "web", 3, timeout=120)
    victim = view.servers[0].server_id
    info = await get_provider("local", s.state_dir).describe(victim)
    assert info is not None and info.pid
    os.kill(info.pid, signal.SIGKILL)  # outside poolctl: no health check will tell the pool
    await eventually(
        lambda: pool_view(client, s, "web"),
        lambda v: v is not None and not v.scaling and v.current == 3
        and victim not in {m.server_id for m in v.servers} and v.status.value == "active",
        timeout=120,
    )  # fmt: skip
    [note] = [e for e in drift_events(s) if victim in e.cause]
    assert "no longer runs" in note.cause and note.status == "succeeded"
    assert (note.from_count, note.to_count) == (3, 2)  # the pool's size around this change, not today's
    await assert_invariants(
        client, s, "web", 3, "server process killed by hand (no health check)", fault_record
    )


async def _start_orphan(s: Settings) -> str:
    """A server the provider runs under the pool's tag, started behind the pool's back."""
    info = await get_provider("local", s.state_dir).provision(
        ProvisionRequest(pool=pool_key(s.team, "web"), idempotency_key="outside-poolctl/1")
    )
    return info.server_id


async def test_orphan_under_the_pools_tag_is_adopted_and_the_pool_kept_at_desired(
    client: Client, drifty: Settings, worker, fault_record
):
    s = drifty
    await apply_yaml(client, s, pool_yaml(2))
    await settled(client, s, "web", 2, timeout=120)
    orphan = await _start_orphan(s)
    await eventually(
        lambda: _drift_causes(s), lambda c: any(orphan in x and "adopted" in x for x in c), timeout=60
    )
    # adopted, the pool counts 3: the normal reconcile scales in to the operator's 2
    await settled(client, s, "web", 2, timeout=120)
    [note] = [e for e in drift_events(s) if orphan in e.cause]
    assert (note.from_count, note.to_count) == (2, 3)
    await assert_invariants(
        client, s, "web", 2, "orphan server under the pool's tag (orphan_policy adopt)", fault_record
    )


async def test_orphan_under_the_pools_tag_is_terminated_by_policy(
    client: Client, drifty: Settings, worker, fault_record
):
    s = drifty
    await apply_yaml(client, s, pool_yaml(2, "    orphan_policy: terminate\n"))
    before = await settled(client, s, "web", 2, timeout=120)
    orphan = await _start_orphan(s)
    await eventually(
        lambda: _drift_causes(s), lambda c: any(orphan in x and "terminated" in x for x in c), timeout=60
    )
    info = await get_provider("local", s.state_dir).describe(orphan)
    assert info is not None and info.state.value == "terminated"
    [note] = [e for e in drift_events(s) if orphan in e.cause]
    assert (note.from_count, note.to_count) == (2, 2)  # not a member: the pool's size did not change
    after = await settled(client, s, "web", 2, timeout=60)
    assert {m.server_id for m in after.servers} == {m.server_id for m in before.servers}
    await assert_invariants(
        client, s, "web", 2, "orphan server under the pool's tag (orphan_policy terminate)", fault_record
    )


async def test_provisions_that_all_time_out_but_create_servers_are_adopted(
    client: Client, drifty: Settings, worker, fault_record
):
    s = drifty
    s.activity_timeout_s = 4.0
    s.scale_attempts = 2
    # every provision call creates its server, then hangs 30 s: the caller times out every attempt, the
    # scaling fails and the pool is `error`, while the provider runs the servers
    await apply_yaml(client, s, pool_yaml(2, "    provider_options: {hang_ratio: 1, hang_s: 30}\n"))
    await eventually(
        lambda: pool_view(client, s, "web"), lambda v: v is not None and v.status.value == "error", timeout=90
    )
    await settled(client, s, "web", 2, timeout=120)  # adopted by drift, then a retry finds nothing to do
    adopted = [e for e in drift_events(s) if "adopted" in e.cause]
    # one after the other, each with the size around its own adoption (it said 2->2 twice)
    assert sorted((e.from_count, e.to_count) for e in adopted) == [(0, 1), (1, 2)]
    await assert_invariants(
        client, s, "web", 2, "provider: calls hang past their timeout (servers created)", fault_record
    )


async def _drift_causes(s: Settings) -> list[str]:
    return [e.cause for e in drift_events(s)]
