"""Scaling policies end to end on a real Temporal dev server with real local servers whose CPU the tests pin
through their admin endpoint: scale-out within an interval, scale-in only after the stabilization window,
pause/resume, durable cooldowns (worker restart + continue-as-new), missing metrics, dry run."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import Client

from poolctl.domain.decision import Recommendation
from poolctl.domain.health import HealthState
from poolctl.domain.health_messages import ServerHealthChange
from poolctl.domain.names import policy_workflow_id, pool_workflow_id
from poolctl.settings import Settings
from poolctl.starter import policy_ops
from poolctl.workflows.policy import PolicyWorkflow
from poolctl.workflows.pool import PoolWorkflow
from tests.helpers import apply_yaml, eventually, pool_view, settled
from tests.policy_helpers import CpuPinner, events, metric_server, policy_state, stored_decisions

pytestmark = [pytest.mark.temporal, pytest.mark.slow]

TARGET = """
pools:
  - name: web
    provider: local
    min_servers: 1
    max_servers: 4
    desired_servers: 2
    policies:
      - name: cpu
        type: cpu
        target: 50
        evaluation_interval: 2
        scale_out_cooldown_s: 1
        scale_in_cooldown_s: 1
        stabilization_window_s: 10
"""


async def test_load_scales_out_within_an_interval_and_in_only_after_the_window(
    client: Client, settings: Settings, worker
):
    await apply_yaml(client, settings, TARGET)
    await settled(client, settings, "web", 2)
    pinner = CpuPinner(settings, "web", 50.0)
    async with pinner.running():
        # load: 90% against a 50% target -> ceil(2 x 1.8) = 4
        await pinner.set(90.0)
        t_breach = time.monotonic()
        await eventually(
            lambda: pool_view(client, settings, "web"),
            lambda v: v is not None and v.desired == 4,
            timeout=2 + 4,
            interval=0.1,
        )
        assert time.monotonic() - t_breach <= 2 + 4
        view = await settled(client, settings, "web", 4)
        assert view.last_decision is not None and view.last_decision.reason.value in (
            "TargetTracking",
            "AtMaxServers",
        )

        # load removed: the policy wants 1 but must wait out the 10 s window after its last high wish
        await pinner.set(10.0)
        t_low = datetime.now(UTC)
        state = await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: s is not None and s.last_reason == "ScaleInStabilized",
            timeout=10,
        )
        assert state is not None and (await pool_view(client, settings, "web")).desired == 4  # type: ignore[union-attr]
        await settled(client, settings, "web", 1, timeout=40)
    downs = [e for e in events(settings, "web") if e.direction == "down"]
    assert downs and downs[-1].policy_name == "cpu"
    first_down = min(e.started_at.replace(tzinfo=UTC) for e in downs)
    # the last high evaluation was at most one interval before the load dropped
    assert first_down >= t_low + timedelta(seconds=10 - 2 - 0.5), (first_down, t_low)

    records = stored_decisions(settings, "web", "cpu")
    reasons = [r["reason"] for r in records]
    assert "ScaleInStabilized" in reasons and "TargetTracking" in reasons
    scale_out = next(r for r in reversed(records) if r["direction"] == "up")
    assert "ceil(2 x 1.800) = 4" in scale_out["decision"]["formula"]


THRESHOLD = """
pools:
  - name: web
    provider: local
    min_servers: 1
    max_servers: {max}
    desired_servers: 1
    policies:
      - name: cpu
        type: cpu
        threshold_up: 70
        threshold_down: 10
        evaluation_interval: {interval}
        scale_out_cooldown_s: {cooldown}
        scale_in_cooldown_s: {cooldown}
        stabilization_window_s: 0
        dry_run: {dry_run}
"""


def _threshold(max_servers: int = 3, interval: float = 1, cooldown: float = 0, dry_run: bool = False) -> str:
    return THRESHOLD.format(
        max=max_servers, interval=interval, cooldown=cooldown, dry_run=str(dry_run).lower()
    )


async def _listed(client: Client, query: str) -> list[str]:
    return sorted([w.id async for w in client.list_workflows(query)])


async def test_pause_stops_actions_and_resume_restarts_them(client: Client, settings: Settings, worker):
    await apply_yaml(client, settings, _threshold(max_servers=2))
    await settled(client, settings, "web", 1)
    pinner = CpuPinner(settings, "web", 50.0)
    async with pinner.running():
        await pinner.set(50.0)
        await policy_ops.signal_policy(client, settings.team, "web", "cpu", "pause")
        paused = await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: s is not None and s.paused and s.last_reason == "Paused",
        )
        assert paused is not None and paused.status == "paused"
        policy_id = policy_workflow_id(settings.team, "web", "cpu")
        await eventually(lambda: _listed(client, 'PolicyState = "paused"'), lambda ids: policy_id in ids)

        await pinner.set(90.0)
        n = paused.evaluations
        await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: s is not None and s.evaluations >= n + 3,
        )
        view = await pool_view(client, settings, "web")
        assert view is not None and view.desired == 1 and view.seq == 1
        [rec] = view.recommendations
        assert rec.abstain and rec.reason.value == "Paused"

        await policy_ops.signal_policy(client, settings.team, "web", "cpu", "resume")
        await settled(client, settings, "web", 2, timeout=20)
        state = await policy_state(client, settings, "web", "cpu")
        assert state is not None and not state.paused and state.status == "active"
    ups = [e for e in events(settings, "web") if e.direction == "up" and e.policy_name == "cpu"]
    assert len(ups) == 1 and ups[0].decision["reason"] == "ScaleOutThreshold"


async def _just_after_a_loop_heartbeat(client: Client, policy_id: str) -> None:
    """Return right after the policy's running loop sent a heartbeat (the worst moment to signal it: the
    next one is furthest away)."""

    async def last_beat() -> float | None:
        desc = await client.get_workflow_handle(policy_id).describe()
        pending = desc.raw_description.pending_activities
        if not pending or not pending[0].HasField("last_heartbeat_time"):
            return None
        return pending[0].last_heartbeat_time.ToNanoseconds() / 1e9

    first = await eventually(last_beat, lambda b: b is not None, timeout=60, interval=0.1)
    await eventually(last_beat, lambda b: b is not None and b != first, timeout=60, interval=0.05)


def _policy_rec(view, policy: str = "cpu"):  # type: ignore[no-untyped-def]
    return next((r for r in (view.recommendations if view else []) if r.policy == policy), None)


async def _seconds_to_rec(
    client: Client,
    settings: Settings,
    change: Callable[[], Awaitable[object]],
    until: Callable[[Recommendation], bool],
) -> float:
    """Make `change` just after the policy loop's heartbeat; seconds until the pool holds a recommendation
    from policy `cpu` of pool `web` that satisfies `until`."""
    await _just_after_a_loop_heartbeat(client, policy_workflow_id(settings.team, "web", "cpu"))
    t0 = time.monotonic()
    await change()
    await eventually(
        lambda: pool_view(client, settings, "web"),
        lambda v: (r := _policy_rec(v)) is not None and until(r),
        timeout=60,
        interval=0.1,
    )
    return time.monotonic() - t0


async def test_pause_acts_at_once_resume_and_new_spec_within_one_interval_signalled_right_after_a_heartbeat(
    client: Client, settings: Settings, worker
):
    """The loop hears of a signal with the reply to the heartbeat it sends just before each evaluation
    (once per interval); a full pause the workflow sends to the pool itself. Signalled just after a
    heartbeat, the SDK's own throttle (0.8 x the 2-interval heartbeat timeout) took 1.6 intervals."""
    interval = 10.0
    grace = 3.0  # a round trip, a few workflow tasks and a metric read, on a loaded 2-core machine
    await apply_yaml(client, settings, _threshold(max_servers=2, interval=interval))
    await settled(client, settings, "web", 1)
    pinner = CpuPinner(settings, "web", 50.0)

    def policy_signal(name: str) -> Callable[[], Awaitable[object]]:
        return lambda: policy_ops.signal_policy(client, settings.team, "web", "cpu", name)

    async with pinner.running():
        await pinner.set(50.0)  # between the thresholds: hold
        await eventually(
            lambda: pool_view(client, settings, "web"),
            lambda v: (r := _policy_rec(v)) is not None and not r.abstain,
            timeout=3 * interval,
        )
        paused_s = await _seconds_to_rec(
            client,
            settings,
            policy_signal("pause"),
            lambda r: r.abstain and r.reason.value == "Paused",
        )
        assert paused_s < grace, f"the pause reached the pool after {paused_s:.1f} s"

        await pinner.set(90.0)  # above threshold_up: scale out once resumed
        resumed_s = await _seconds_to_rec(
            client, settings, policy_signal("resume"), lambda r: not r.abstain and r.desired == 2
        )
        assert resumed_s < interval + grace, f"the resume took effect after {resumed_s:.1f} s"
        await settled(client, settings, "web", 2)

        # a new spec (re-applied): 90 % is now below threshold_down, so the policy asks for one server
        changed = _threshold(max_servers=2, interval=interval).replace("threshold_up: 70", "threshold_up: 99")
        changed = changed.replace("threshold_down: 10", "threshold_down: 95")
        respec_s = await _seconds_to_rec(
            client,
            settings,
            lambda: apply_yaml(client, settings, changed),
            lambda r: not r.abstain and r.desired == 1,
        )
        assert respec_s < interval + grace, f"the new spec took effect after {respec_s:.1f} s"


async def test_cooldown_survives_worker_restart_and_continue_as_new(client: Client, settings: Settings):
    from poolctl.store.db import migrate
    from poolctl.worker import build_worker

    settings.history_budget = 100
    migrate(settings.resolved_database_url)
    cooldown = 30.0
    pool_handle = client.get_workflow_handle(pool_workflow_id(settings.team, "web"))
    policy_handle = client.get_workflow_handle(policy_workflow_id(settings.team, "web", "cpu"))
    pinner = CpuPinner(settings, "web", 50.0)
    async with pinner.running():
        async with build_worker(client, settings):
            await apply_yaml(client, settings, _threshold(max_servers=4, cooldown=cooldown))
            await settled(client, settings, "web", 1)
            await pinner.set(90.0)
            view = await settled(client, settings, "web", 2, timeout=20)
            until = view.cooldowns.scale_out_blocked_until
            assert until is not None
            # the policy asks for 3 and the pool holds it for the cooldown
            held = await eventually(
                lambda: pool_view(client, settings, "web"),
                lambda v: (
                    v is not None
                    and v.last_decision is not None
                    and v.last_decision.reason.value == "CooldownActive"
                ),
            )
            assert held is not None and held.desired == 2
            pool_run = (await pool_handle.describe()).run_id
            policy_run = (await policy_handle.describe()).run_id
        # the worker is gone; a new one takes over, and both workflows continue-as-new
        no_such_server = ServerHealthChange(
            server_id="no-such-server", state=HealthState.HEALTHY, at=datetime.now(UTC), reason="test"
        )
        async with build_worker(client, settings):
            for _ in range(40):
                await pool_handle.signal(PoolWorkflow.server_health, no_such_server)
                await policy_handle.signal(PolicyWorkflow.pause_scale_in)
            await eventually(lambda: pool_handle.describe(), lambda d: d.run_id != pool_run, timeout=20)
            await eventually(lambda: policy_handle.describe(), lambda d: d.run_id != policy_run, timeout=20)
            view = await pool_view(client, settings, "web")
            assert view is not None and view.cooldowns.scale_out_blocked_until == until
            assert datetime.now(UTC) < until, "the test took longer than the cooldown: raise it"
            assert view.desired == 2 and view.current == 2
            await settled(client, settings, "web", 3, timeout=cooldown + 10)
    ups = sorted((e for e in events(settings, "web") if e.direction == "up"), key=lambda e: e.started_at)
    assert [(e.from_count, e.to_count) for e in ups] == [(0, 1), (1, 2), (2, 3)]
    assert ups[2].started_at.replace(tzinfo=UTC) >= until


async def test_metric_source_down_blocks_scale_in_and_records_metric_unavailable(
    client: Client, settings: Settings, worker
):
    spec = """
pools:
  - name: web
    provider: local
    min_servers: 1
    max_servers: 3
    desired_servers: 3
    policies:
      - name: cpu
        type: cpu
        target: 50
        evaluation_interval: 1
        scale_in_cooldown_s: 0
        stabilization_window_s: 0
      - name: queue
        type: custom
        source: {kind: http_json, url: "http://127.0.0.1:9/queue", path: depth, timeout_s: 1}
        target: 10
        evaluation_interval: 1
        stabilization_window_s: 0
"""
    await apply_yaml(client, settings, spec)
    await settled(client, settings, "web", 3)
    pinner = CpuPinner(settings, "web", 10.0)
    async with pinner.running():
        await pinner.set(10.0)
        cpu = await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: (
                s is not None
                and s.last_recommendation is not None
                and s.last_recommendation.direction.value == "down"
            ),
        )
        assert (
            cpu is not None and cpu.last_recommendation is not None and cpu.last_recommendation.desired == 1
        )
        queue = await policy_state(client, settings, "web", "queue")
        assert queue is not None and queue.last_reason == "MetricUnavailable"
        assert queue.last_error and "http_json" in queue.last_error
        view = await eventually(
            lambda: pool_view(client, settings, "web"),
            lambda v: (
                v is not None
                and v.last_decision is not None
                and v.last_decision.reason.value == "MetricUnavailable"
            ),
        )
        n = cpu.evaluations
        await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: s is not None and s.evaluations >= n + 3,
        )
        view = await pool_view(client, settings, "web")
        assert view is not None and view.desired == 3 and view.current == 3
    assert [e.direction for e in events(settings, "web")] == ["up"]
    assert any(r["reason"] == "MetricUnavailable" for r in stored_decisions(settings, "web", "queue"))


async def test_dry_run_records_decisions_and_changes_nothing(client: Client, settings: Settings, worker):
    await apply_yaml(client, settings, _threshold(max_servers=3, dry_run=True))
    await settled(client, settings, "web", 1)
    pinner = CpuPinner(settings, "web", 90.0)
    async with pinner.running():
        await pinner.set(90.0)
        await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: s is not None and s.last_reason == "DryRun",
        )
        # the scale-out the pinned CPU asks for, held by dry run; it tells the pool nothing new once a
        # dry-run hold was sent (an earlier reading, before the pin landed), so read it from the state
        state = await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: s is not None and s.last_decision is not None and s.last_decision.raw == 2,
        )
        assert state is not None and state.last_decision is not None
        d = state.last_decision
        assert d.reason.value == "DryRun" and d.desired == 1 and d.dry_run
        await eventually(  # and the dry-run decision is on record
            lambda: _async(stored_decisions, settings, "web", "cpu"),
            lambda rs: any(r["reason"] == "DryRun" and r["decision"]["dry_run"] for r in rs),
        )
        n = (await policy_state(client, settings, "web", "cpu")).evaluations  # type: ignore[union-attr]
        await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: s is not None and s.evaluations >= n + 3,
        )
    view = await pool_view(client, settings, "web")
    assert view is not None and view.desired == 1 and view.seq == 1
    policy_id = policy_workflow_id(settings.team, "web", "cpu")
    await eventually(lambda: _listed(client, 'PolicyState = "dry_run"'), lambda ids: policy_id in ids)


async def _async(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


SIM_TRACE = [50, 90, 90, 50, 20, 20, 20, 20, 50, 50]


async def test_simulate_gives_the_same_decisions_as_the_live_loop(
    client: Client, settings: Settings, worker, tmp_path
):
    """The live loop reads the trace one value per evaluation (an http_json source serving it); `poolctl
    simulate` runs the same spec over the same trace as CSV. The decisions that changed the recommendation
    (the ones the live loop sends and records) must be the same, one for one."""
    import json
    from contextlib import AsyncExitStack

    from aiohttp import web
    from typer.testing import CliRunner

    from poolctl.starter.cli import app

    reads: list[float] = []

    async def metric(request: web.Request) -> web.Response:
        value = SIM_TRACE[min(len(reads), len(SIM_TRACE) - 1)]
        reads.append(value)
        return web.json_response({"cpu": value})

    web_app = web.Application()
    web_app.router.add_get("/cpu", metric)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    interval, window = 2, 5.5
    spec = f"""
pools:
  - name: web
    provider: fake
    min_servers: 1
    max_servers: 6
    desired_servers: 2
    policies:
      - name: sim
        type: custom
        source: {{kind: http_json, url: "http://127.0.0.1:{port}/cpu", path: cpu}}
        target: 50
        evaluation_interval: {interval}
        scale_out_cooldown_s: 0
        scale_in_cooldown_s: 0
        stabilization_window_s: {window}
"""
    async with AsyncExitStack() as stack:
        stack.push_async_callback(runner.cleanup)
        # the pool is at its size before the policy's first read, as the simulation assumes: apply the pool
        # first, then the same spec with the policy added (apply starts the new policy's workflow)
        await apply_yaml(client, settings, spec.split("    policies:")[0])
        await settled(client, settings, "web", 2)
        outcomes = await apply_yaml(client, settings, spec)
        assert [(o.action, o.changes) for o in outcomes] == [("updated", ["policies +sim"])]
        await eventually(lambda: _async(len, reads), lambda n: n >= len(SIM_TRACE) + 1, timeout=60)
        state = await policy_state(client, settings, "web", "sim")
    assert state is not None
    live = [(d.current, d.desired, d.direction.value, d.reason.value, d.metric) for d in state.decisions]

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec)
    trace_file = tmp_path / "trace.csv"
    trace_file.write_text(
        "timestamp,value\n"
        + "".join(f"{1_700_000_000 + i * interval},{v}\n" for i, v in enumerate(SIM_TRACE))
    )
    png = tmp_path / "plot.png"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "-f",
            str(spec_file),
            "--policy",
            "sim",
            "--trace",
            str(trace_file),
            "--start",
            "2",
            "--boot-delay",
            "0",
            "--json",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    steps = json.loads(result.output)
    simulated = [
        (s["current"], s["policy"]["desired"], s["policy"]["direction"], s["policy"]["reason"], s["metric"])
        for s in steps
        if s["policy_changed"]
    ]
    side_by_side = "\n".join(f"live {a!s:55} sim {b}" for a, b in zip(live, simulated, strict=False))
    assert live[: len(simulated)] == simulated, side_by_side
    assert [r for r in simulated if r[2] != "none"] == [
        (2, 4, "up", "TargetTracking", 90.0),
        (4, 8, "up", "TargetTracking", 90.0),
        (6, 3, "down", "TargetTracking", 20.0),
    ]
    assert "ScaleInStabilized" in [r[3] for r in simulated]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


LIVE_TRACES = {
    # from zero: below activation, activation, then the new server warms up for the rest of the test
    "zero": [0, 0, 5, 5, 5, 30, 30, 30, 30],
    # from 2: the load asks for 4, the scale-up rate policy allows 1 server per 600 s
    "capped": [50, 90, 90, 90, 90, 90, 90, 90, 90],
}
LIVE_SPEC = """
pools:
  - name: zero
    provider: fake
    min_servers: 0
    max_servers: 6
    desired_servers: 0
    policies:
      - name: queue
        type: custom
        source: {{kind: http_json, url: "http://127.0.0.1:{port}/zero", path: v}}
        target: 10
        instance_warmup_s: 600
        evaluation_interval: 2
        scale_out_cooldown_s: 0
        scale_in_cooldown_s: 0
  - name: capped
    provider: fake
    min_servers: 1
    max_servers: 10
    desired_servers: 2
    policies:
      - name: load
        type: custom
        source: {{kind: http_json, url: "http://127.0.0.1:{port}/capped", path: v}}
        target: 50
        evaluation_interval: 2
        scale_out_cooldown_s: 0
        scale_in_cooldown_s: 0
        behavior:
          scale_up:
            select_policy: max
            policies: [{{type: servers, value: 1, period_s: 600}}]
"""


async def test_simulate_and_live_agree_on_warmup_activation_and_rate_limits(
    client: Client, settings: Settings, worker, tmp_path, monkeypatch
):
    """Two pools at once on the live loop (fake provider): one scales from zero past its activation
    threshold and then waits for its new server to warm up; one is held by a scale-up rate policy.
    `poolctl simulate` runs the same specs over the same traces: the recorded decisions are the same, and
    `poolctl policy show` explains the clamp with its HPA reason code."""
    import asyncio
    import json
    from contextlib import AsyncExitStack

    from typer.testing import CliRunner

    from poolctl.starter.cli import app

    reads: dict[str, list[float]] = {name: [] for name in LIVE_TRACES}

    def next_value(name: str):  # type: ignore[no-untyped-def]
        def value() -> float:
            trace = LIVE_TRACES[name]
            reads[name].append(trace[min(len(reads[name]), len(trace) - 1)])
            return reads[name][-1]

        return value

    async with AsyncExitStack() as stack:
        port = await stack.enter_async_context(
            metric_server({name: next_value(name) for name in LIVE_TRACES})
        )
        spec = LIVE_SPEC.format(port=port)
        without_policies = "\n".join(
            line
            for line in spec.splitlines()
            if not line.startswith(("    policies", "      ", "        ", "          "))
        )
        await apply_yaml(client, settings, without_policies)
        await settled(client, settings, "capped", 2)
        await apply_yaml(client, settings, spec)
        await eventually(
            lambda: _async(lambda: min(len(r) for r in reads.values())),
            lambda n: n >= max(len(t) for t in LIVE_TRACES.values()) + 1,
            timeout=90,
        )
        live = {}
        for pool, policy in (("zero", "queue"), ("capped", "load")):
            state = await policy_state(client, settings, pool, policy)
            assert state is not None
            live[pool] = [
                (d.current, d.desired, d.direction.value, d.reason.value, d.metric) for d in state.decisions
            ]

        monkeypatch.setenv("POOLCTL_STATE_DIR", str(settings.state_dir))
        monkeypatch.setenv("POOLCTL_DATABASE_URL", settings.resolved_database_url)
        monkeypatch.setenv("POOLCTL_TEMPORAL_ADDRESS", settings.temporal_address)
        monkeypatch.setenv("POOLCTL_TASK_QUEUE", settings.task_queue)
        monkeypatch.setenv("POOLCTL_TEAM", settings.team)
        from poolctl.settings import get_settings

        get_settings.cache_clear()
        stack.callback(get_settings.cache_clear)
        # the CLI runs its own event loop: call it from a thread, as a user's shell would
        shown = await asyncio.to_thread(CliRunner().invoke, app, ["policy", "show", "capped", "load"])
        assert shown.exit_code == 0, shown.output
        assert "ScaleUpLimit" in shown.output and "servers 1/600s from 2 -> 3" in shown.output

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec)
    simulated = {}
    for pool, policy, start in (("zero", "queue", "0"), ("capped", "load", "2")):
        trace_file = tmp_path / f"{pool}.csv"
        trace_file.write_text(
            "".join(f"{1_700_000_000 + i * 2},{v}\n" for i, v in enumerate(LIVE_TRACES[pool]))
        )
        result = CliRunner().invoke(
            app,
            ["simulate", "-f", str(spec_file), "--pool", pool, "--policy", policy, "--trace", str(trace_file)]
            + ["--start", start, "--boot-delay", "0", "--json"],
        )
        assert result.exit_code == 0, result.output
        simulated[pool] = [
            (
                s["current"],
                s["policy"]["desired"],
                s["policy"]["direction"],
                s["policy"]["reason"],
                s["metric"],
            )
            for s in json.loads(result.output)
            if s["policy_changed"]
        ]
    assert simulated["zero"] == [
        (0, 0, "none", "BelowActivationThreshold", 0.0),
        (0, 1, "up", "ScaleFromZero", 5.0),
        (1, 1, "none", "ServersNotReady", 5.0),
    ]
    assert simulated["capped"] == [
        (2, 2, "none", "WithinTolerance", 50.0),
        (2, 3, "up", "ScaleUpLimit", 90.0),
        (3, 3, "none", "ScaleUpLimit", 90.0),
    ]
    for pool in LIVE_TRACES:
        side_by_side = "\n".join(
            f"live {a!s:55} sim {b}" for a, b in zip(live[pool], simulated[pool], strict=False)
        )
        assert live[pool][: len(simulated[pool])] == simulated[pool], side_by_side
