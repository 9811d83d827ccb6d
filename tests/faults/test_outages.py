"""Faults: the Temporal server (file-backed, as `poolctl dev up` runs it) stopped and started again in the
middle of a scale-out and in the middle of policy evaluation, and PostgreSQL (a private instance) stopped
and started while the worker runs. Everything resumes: the pool ends at its desired size, store equal to
provider, no orphan; a policy's stabilization window and the pool's cooldown are kept across the outage."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.store.db import dispose_all, migrate
from tests.faults.conftest import PrivatePostgres, PrivateStack, assert_invariants, check_pool
from tests.faults.test_worker_kills import pids, pool_yaml, start_worker_process, stop
from tests.helpers import apply_yaml, eventually, pool_view, settled
from tests.policy_helpers import events, metric_server, stored_decisions

pytestmark = [pytest.mark.temporal, pytest.mark.slow]


async def test_temporal_server_restarted_mid_scale_out(private_stack: PrivateStack, fault_record):
    own = private_stack.settings
    await apply_yaml(private_stack.client, own, pool_yaml(1))
    await settled(private_stack.client, own, "web", 1, timeout=120)
    await pool_ops.request_scale(private_stack.client, own.team, "web", 5, "fault: temporal restart")
    await eventually(lambda: pids(own), lambda n: n >= 2, timeout=60, interval=0.05)
    await private_stack.stop_temporal()
    await private_stack.start_temporal()
    await settled(private_stack.client, own, "web", 5, timeout=180)
    await assert_invariants(
        private_stack.client,
        own,
        "web",
        5,
        "Temporal server stopped and restarted mid scale-out",
        fault_record,
    )


WINDOW_S = 15.0  # the policy's scale-in stabilization window
COOLDOWN_S = 45.0  # the pool's scale-in cooldown: longer than the window plus the outage


def policy_pool_yaml(port: int) -> str:
    """Four servers and a policy tracking 50 on the test's metric endpoint, one server per scale-in."""
    return f"""
pools:
  - name: web
    min_servers: 1
    max_servers: 6
    desired_servers: 4
    policies:
      - name: load
        type: custom
        source: {{kind: http_json, url: "http://127.0.0.1:{port}/load", path: v, timeout_s: 1}}
        target: 50
        evaluation_interval: 1
        stabilization_window_s: {WINDOW_S:g}
        scale_in_cooldown_s: {COOLDOWN_S:g}
        scale_out_cooldown_s: 0
        max_step: 1
"""


def utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def decision_after(settings: Settings, since: datetime, **fields: Any) -> dict[str, Any] | None:
    """The first decision the policy recorded at or after `since` with these field values, or None."""
    rows = sorted(stored_decisions(settings, "web", "load"), key=lambda d: utc(d["at"]))
    return next(
        (d for d in rows if utc(d["at"]) >= since and all(d[k] == v for k, v in fields.items())), None
    )


async def test_temporal_server_restarted_mid_policy_evaluation_keeps_window_and_cooldown(
    private_stack: PrivateStack, fault_record
):
    """Temporal goes down while a scale-in waits for the policy's stabilization window and the pool's
    scale-in cooldown runs. After the restart the window is neither skipped nor started again, and the
    cooldown still holds the next scale-in until it ends."""
    own = private_stack.settings
    load = {"v": 50.0}
    reads = 0  # metric reads: the worker's policy loop keeps evaluating while Temporal is down
    window = timedelta(seconds=WINDOW_S)

    def answer() -> float:
        nonlocal reads
        reads += 1
        return load["v"]

    async def read_count() -> int:
        return reads

    async def record(since: datetime, **fields: Any) -> dict[str, Any]:
        found = await eventually(
            lambda: asyncio.to_thread(decision_after, own, since, **fields), lambda d: d is not None, 120
        )
        assert found is not None
        return found

    async with metric_server({"load": answer}) as port:
        await apply_yaml(private_stack.client, own, policy_pool_yaml(port))
        await settled(private_stack.client, own, "web", 4, timeout=120)  # 50 against target 50: hold 4
        load["v"] = 10.0  # low: after a window, one server in (4 -> 3), which starts the scale-in cooldown
        await settled(private_stack.client, own, "web", 3, timeout=120)
        view = await pool_view(private_stack.client, own, "web")
        assert view is not None and view.cooldowns.scale_in_blocked_until is not None
        cooldown_until = view.cooldowns.scale_in_blocked_until
        # one high reading, then low again: the policy must hold 3 until that reading leaves its window
        since = datetime.now(UTC)
        load["v"] = 50.0
        high = await record(since, metric=50.0, current=3, desired=3)
        since = datetime.now(UTC)
        load["v"] = 10.0
        await record(since, metric=10.0, current=3, desired=3, reason="ScaleInStabilized")  # pending
        await private_stack.stop_temporal()
        stopped_at = datetime.now(UTC)
        assert stopped_at < utc(high["at"]) + window, "the outage began after the window: shorten the setup"
        # Temporal stays down for some evaluations, so that a window started again at the restart would
        # end well after the kept one
        await eventually(read_count, lambda n, at_stop=reads: n >= at_stop + 6, timeout=60)  # type: ignore[misc]
        restarted_at = datetime.now(UTC)
        await private_stack.start_temporal()
        after = await eventually(
            lambda: pool_view(private_stack.client, own, "web"), lambda v: v is not None, timeout=120
        )
        assert after is not None and after.cooldowns.scale_in_blocked_until == cooldown_until
        # the window: a scale-in asked for no earlier than a full window after the high reading (not
        # skipped), and earlier than a window counted from the restart (not started again)
        scale_in = await record(utc(high["at"]), current=3, desired=2)
        assert utc(scale_in["at"]) >= utc(high["at"]) + window
        assert utc(scale_in["at"]) < restarted_at + window, (scale_in, restarted_at)
        assert utc(scale_in["at"]) < cooldown_until, "the window outlasted the cooldown: raise COOLDOWN_S"
        # the cooldown set before the outage holds the scale-in until it ends
        await settled(private_stack.client, own, "web", 2, timeout=COOLDOWN_S + 120)
        downs = sorted(
            (e for e in events(own, "web") if e.direction == "down"), key=lambda e: utc(e.started_at)
        )
        assert [(e.from_count, e.to_count) for e in downs] == [(4, 3), (3, 2)]
        assert utc(downs[1].started_at) >= cooldown_until
        await assert_invariants(
            private_stack.client, own, "web", 2,
            "Temporal restarted mid policy evaluation: window, cooldown kept", fault_record,
        )  # fmt: skip


async def test_postgres_restarted_while_the_worker_runs(
    client: Client, settings: Settings, tmp_path: Path, private_postgres: PrivatePostgres, fault_record
):
    pg = settings.model_copy(update={"database_url": private_postgres.url, "activity_timeout_s": 8.0})
    migrate(pg.resolved_database_url)
    w = start_worker_process(pg, tmp_path / "w.log")
    try:
        await apply_yaml(client, pg, pool_yaml(1))
        await settled(client, pg, "web", 1, timeout=120)
        await pool_ops.request_scale(client, pg.team, "web", 5, "fault: database restart")
        await eventually(lambda: pids(pg), lambda n: n >= 2, timeout=60, interval=0.05)
        await asyncio.to_thread(private_postgres.stop)
        dispose_all()  # this process's pooled connections died with the server
        await asyncio.to_thread(private_postgres.start)
        await settled(client, pg, "web", 5, timeout=180)
        inv = await eventually(
            lambda: check_pool(client, pg, "web", 5), lambda i: (i.lost, i.orphans) == (0, 0), timeout=60
        )
        fault_record("PostgreSQL stopped and restarted mid scale-out", inv)
        inv.assert_clean()
    finally:
        stop(w)
        dispose_all()
