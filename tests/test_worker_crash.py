"""Durability: SIGKILL the worker in the middle of a scale-out; a new worker finishes it with exactly the
desired servers and no orphan process (provisioning is idempotent by key)."""

from __future__ import annotations

import os
import signal

import pytest
from temporalio.client import Client

from poolctl.activities.providers.registry import get_provider
from poolctl.domain.names import pool_key
from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.store.db import migrate
from tests.helpers import apply_yaml, eventually, pool_view, settled
from tests.processes import local_server_pids, start_worker_process

pytestmark = pytest.mark.temporal


async def test_sigkill_worker_mid_scale_out_ends_with_exact_servers_and_no_orphans(
    client: Client, settings: Settings, tmp_path
):
    migrate(settings.resolved_database_url)
    settings.activity_timeout_s = 8.0  # a provision lost with the worker is retried after this
    proc = start_worker_process(settings, tmp_path / "worker1.log")
    try:
        await apply_yaml(
            client,
            settings,
            "pools:\n  - name: web\n    min_servers: 1\n    max_servers: 10\n    desired_servers: 1\n",
        )
        await settled(client, settings, "web", 1, timeout=90)
        await pool_ops.request_scale(client, settings.team, "web", 6, "burst")
        # kill as soon as the scale-out has started spawning servers, but before it finished
        await eventually(lambda: _count_pids(settings), lambda n: n >= 2, timeout=60, interval=0.05)
        view = await pool_view(client, settings, "web")
        assert view is not None and view.current == 1, "the scale-out must still be in flight when we kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    proc2 = start_worker_process(settings, tmp_path / "worker2.log")
    try:
        view = await settled(client, settings, "web", 6, timeout=120)
        provider = get_provider("local", settings.state_dir)
        running = {
            s.server_id
            for s in await provider.list_servers(pool_key(settings.team, "web"))
            if s.state.value == "running"
        }
        assert running == {s.server_id for s in view.servers}
        assert len(local_server_pids(settings)) == 6, "an orphan (or missing) server process"
    finally:
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(timeout=30) == 0, "worker must stop gracefully on SIGTERM"


async def _count_pids(settings: Settings) -> int:
    return len(local_server_pids(settings))


async def test_sigkill_worker_during_probe_loop_resumes_the_counters(
    client: Client, settings: Settings, tmp_path
):
    """The probe loop heartbeats its counters; the retried activity on a new worker continues them, so the
    server turns unhealthy at exactly `unhealthy_threshold` failures counted across both workers."""
    import httpx
    from temporalio.api.enums.v1 import EventType

    from poolctl.activities.watch import WatchOutcome
    from poolctl.domain.names import health_workflow_id
    from poolctl.starter.health_cli import live_progress, live_statuses

    migrate(settings.resolved_database_url)
    settings.health_heartbeat_timeout_s = 3.0
    threshold = 8
    spec = f"""
pools:
  - name: web
    min_servers: 1
    max_servers: 2
    desired_servers: 1
    auto_healing: false
    health_check: {{type: http, interval: 1, timeout: 0.5, jitter: 0, healthy_threshold: 1, unhealthy_threshold: {threshold}}}
"""
    proc = start_worker_process(settings, tmp_path / "worker1.log")
    try:
        await apply_yaml(client, settings, spec)
        view = await eventually(
            lambda: pool_view(client, settings, "web"),
            lambda v: v is not None and v.current == 1 and v.servers[0].health == "healthy",
            timeout=90,
        )
        server = view.servers[0]
        import os as _os

        _os.environ["POOLCTL_TEMPORAL_ADDRESS"] = settings.temporal_address
        from poolctl.settings import get_settings

        get_settings.cache_clear()
        try:
            # let the current watch make a few (successful) probes first, so its probe count tells
            # a resumed watch (count goes on) from one restarted from scratch (count starts at 0)
            await eventually(
                lambda: live_progress(settings.team, "web", [server.server_id]),
                lambda p: server.server_id in p and p[server.server_id].probes >= 3,
                timeout=30,
            )
            async with httpx.AsyncClient() as http:
                r = await http.post(
                    f"http://{server.host}:{server.port}/admin/health", json={"healthy": False}
                )
                r.raise_for_status()
            live = await eventually(
                lambda: live_statuses(settings.team, "web", [server.server_id]),
                lambda st: server.server_id in st and st[server.server_id].consecutive_failures >= 3,
                timeout=30,
            )
        finally:
            del _os.environ["POOLCTL_TEMPORAL_ADDRESS"]
            get_settings.cache_clear()
        assert live[server.server_id].consecutive_failures < threshold
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    proc2 = start_worker_process(settings, tmp_path / "worker2.log")
    try:
        await eventually(
            lambda: pool_view(client, settings, "web"),
            lambda v: v is not None and v.servers[0].health == "unhealthy",
            timeout=60,
        )
        handle = client.get_workflow_handle(health_workflow_id(settings.team, "web", server.server_id))
        history = await handle.fetch_history()
        attempts = [
            e.activity_task_started_event_attributes.attempt
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        ]
        outcomes = []
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                payloads = e.activity_task_completed_event_attributes.result.payloads
                [raw] = await client.data_converter.decode(payloads, [dict])
                if isinstance(raw, dict) and raw.get("reason") == "transition":
                    outcomes.append(WatchOutcome.model_validate(raw))
        unhealthy = [o for o in outcomes if o.transition and o.transition.to_state.value == "unhealthy"]
        assert len(unhealthy) == 1
        out = unhealthy[0]
        assert out.transition.consecutive == threshold
        assert max(attempts) >= 2, "the probe loop must have been retried on the new worker"
        # resumed: the watch's probe count includes the probes made before the kill (a watch restarted
        # from zero would have made exactly `threshold` probes to reach the threshold)
        assert out.probes > threshold
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(timeout=30)
