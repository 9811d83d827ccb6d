"""Long runs of every long-lived workflow with short intervals: each run's history stays under a stated
bound across continue-as-new, and the state each run hands on is the state it held (real dev server, real
worker, real HTTP health targets and metric source).

One pool (fake provider, its servers on three real HTTP backends) with an HTTP health check and a metric
policy runs with a history budget of `BUDGET` events, a 1 s reconcile interval and 1 s probe and
evaluation leases, until the pool, its policy and a health check have each continued-as-new at least
`MIN_CONTINUES` times. Meanwhile the policy scales the pool out (the pool then holds a long cooldown) and
one server goes unhealthy. Then the test walks each workflow's chain of runs (from the first run id in
every run's start event, following each `WorkflowExecutionContinuedAsNew`) and checks, per run:
- its event count is at most `BUDGET + SLACK[kind]` (the bound stated in docs/reliability.md);
- the state it continued with is the state it held (the closed run's own query answers with it) and is
  the next run's input;
- counters add up over the chain (a health check's watches and transitions, a policy's loops);
- what was decided before a continue-as-new is there after it (the pool's desired size, servers and
  cooldowns; the policy's decisions, evaluation counters and cooldown).

Workflows not covered: ScalePoolWorkflow (one scaling), NotificationWorkflow (one event's delivery),
BalancerStatsWorkflow and HousekeepingWorkflow (one run per schedule tick) end on their own; none loops.

The budget and leases are below what `Settings` accepts (`history_budget` >= 100, `policy_lease_s` >= 60)
so the chains grow in seconds; the workflows take them as input (`PoolRuntime`), as from settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from poolctl import search_attributes as sa
from poolctl.domain.health import HealthState
from poolctl.domain.health_messages import HealthInput, HealthView
from poolctl.domain.names import health_workflow_id, policy_workflow_id, pool_key, pool_workflow_id
from poolctl.domain.policy_state import PolicyInput, PolicyStateView
from poolctl.domain.pool_state import PoolInput, PoolStatusView
from poolctl.settings import Settings
from poolctl.starter.pool_ops import runtime_from
from poolctl.starter.specfile import parse_spec
from poolctl.workflows.health_check import HealthCheckWorkflow
from poolctl.workflows.policy import PolicyWorkflow
from poolctl.workflows.pool import PoolWorkflow
from tests.backends import Backend
from tests.helpers import eventually, pool_view, settled
from tests.policy_helpers import metric_server, policy_state

pytestmark = pytest.mark.temporal

BUDGET = 40
"""History budget of every workflow here (events; production default 2000, settings minimum 100)."""
MIN_CONTINUES = 3
# Events a run may add after the budget check last passed: one turn of its loop (the check runs at the end
# of each turn), the messages received during that turn, and the continue-as-new itself. Measured maxima
# over four runs of this scenario (one with the machine loaded): pool 24, policy 25, health 14 over the
# budget; see docs/reliability.md.
SLACK = {"pool": 40, "policy": 35, "health": 25}

SPEC = """
pools:
  - name: web
    provider: fake
    provider_options: {{ports: [{ports}]}}
    min_servers: 1
    max_servers: 3
    desired_servers: 2
    auto_healing: false
    health_check: {{type: http, path: /health, interval: 1, timeout: 0.5, jitter: 0,
                   healthy_threshold: 1, unhealthy_threshold: 1}}
    policies:
      - name: load
        type: custom
        source: {{kind: http_json, url: "http://127.0.0.1:{metric_port}/load", path: v}}
        target: 50
        evaluation_interval: 1
        scale_out_cooldown_s: 600
        scale_in_cooldown_s: 600
        stabilization_window_s: 600
"""


@dataclass
class Run:
    run_id: str
    events: list[HistoryEvent]
    started: Any  # the run's input (a PoolInput, PolicyInput or HealthInput)
    carried: Any | None  # the input it continued-as-new with; None for the open (last) run


async def chain(client: Client, wf_id: str, input_type: type) -> list[Run]:
    """Every run of `wf_id`'s continue-as-new chain, oldest first."""
    latest = [e async for e in client.get_workflow_handle(wf_id).fetch_history_events()]
    run_id = latest[0].workflow_execution_started_event_attributes.first_execution_run_id
    runs: list[Run] = []
    while run_id:
        events = [e async for e in client.get_workflow_handle(wf_id, run_id=run_id).fetch_history_events()]
        [started] = await client.data_converter.decode(
            events[0].workflow_execution_started_event_attributes.input.payloads, [input_type]
        )
        carried, next_run = None, ""
        if events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            attrs = events[-1].workflow_execution_continued_as_new_event_attributes
            [carried] = await client.data_converter.decode(attrs.input.payloads, [input_type])
            next_run = attrs.new_execution_run_id
        runs.append(Run(run_id, events, started, carried))
        run_id = next_run
    return runs


async def continues(client: Client, wf_id: str) -> int:
    """How many times `wf_id` has continued-as-new (the runs before the current one)."""
    n = 0
    run_id = ""
    while True:
        events = [
            e async for e in client.get_workflow_handle(wf_id, run_id=run_id or None).fetch_history_events()
        ]
        prev = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not prev:
            return n
        n, run_id = n + 1, prev


def completed_activities(events: list[HistoryEvent], activity: str) -> int:
    """Activities named `activity` that completed (not failed, not cancelled) in one run's history."""
    scheduled = {
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity
    }
    return sum(
        1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
    )


def count(events: list[HistoryEvent], event_type: EventType.ValueType) -> int:
    return sum(1 for e in events if e.event_type == event_type)


def assert_bounded(kind: str, runs: list[Run]) -> None:
    sizes = [len(r.events) for r in runs]
    assert len(runs) > MIN_CONTINUES, f"{kind}: {len(runs) - 1} continue-as-new, wanted {MIN_CONTINUES}"
    assert max(sizes) <= BUDGET + SLACK[kind], f"{kind}: run sizes {sizes} over {BUDGET} + {SLACK[kind]}"
    for before, after in zip(runs, runs[1:], strict=False):
        assert before.carried == after.started, f"{kind}: run {after.run_id} did not start with the carry"


@asynccontextmanager
async def backends(n: int) -> AsyncIterator[list[Backend]]:
    """`n` HTTP servers answering 200 on every path: the fake provider's servers get their ports."""
    bs = [Backend(f"b{i}") for i in range(n)]
    try:
        for b in bs:
            await b.start()
        yield bs
    finally:
        for b in bs:
            b.release.set()
            await b.stop()


async def start_pool(client: Client, settings: Settings, text: str) -> None:
    """Start the pool's workflow as `apply` does, with short loops and a small budget in its runtime."""
    spec = parse_spec(text, "test.yaml").pools[0]
    runtime = runtime_from(settings).model_copy(
        update={
            "history_budget": BUDGET,
            "reconcile_interval_s": 1.0,
            "health_lease_s": 1.0,
            "health_heartbeat_timeout_s": 10.0,
            "policy_lease_s": 1.0,
        }
    )
    await client.start_workflow(
        PoolWorkflow.run,
        PoolInput(team=settings.team, spec=spec, runtime=runtime),
        id=pool_workflow_id(settings.team, spec.name),
        task_queue=settings.task_queue,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.POOL_ID, pool_key(settings.team, spec.name)),
                SearchAttributePair(sa.TEAM_ID, settings.team),
                SearchAttributePair(sa.POOL_STATE, "active"),
            ]
        ),
    )


async def test_long_runs_keep_every_history_bounded_and_carry_state_over(
    client: Client, settings: Settings, worker
) -> None:
    load = {"v": 50.0}
    pool_id = pool_workflow_id(settings.team, "web")
    policy_id = policy_workflow_id(settings.team, "web", "load")
    async with AsyncExitStack() as stack:
        bs = await stack.enter_async_context(backends(3))
        metric_port = await stack.enter_async_context(metric_server({"load": lambda: load["v"]}))
        ports = ", ".join(str(b.port) for b in bs)
        await start_pool(client, settings, SPEC.format(ports=ports, metric_port=metric_port))
        health_id = ""
        try:
            first = await settled(client, settings, "web", 2)
            # the policy scales out (load at twice the target): the pool takes it and holds a cooldown
            load["v"] = 100.0
            scaled = await eventually(
                lambda: pool_view(client, settings, "web"),
                lambda v: v is not None and v.desired == 3 and v.current == 3 and not v.scaling,
                timeout=60,
            )
            assert scaled is not None and scaled.cooldowns.scale_out_blocked_until is not None
            load["v"] = 50.0  # back within tolerance: the policy changes its mind, the pool holds
            # the first server's target goes down: its check turns it unhealthy
            victim = first.servers[0]
            [down] = [b for b in bs if b.port == victim.port]
            await down.stop()
            health_id = health_workflow_id(settings.team, "web", victim.server_id)

            async def health() -> HealthView:
                return await client.get_workflow_handle(health_id).query(HealthCheckWorkflow.state)

            await eventually(health, lambda v: v.state is HealthState.UNHEALTHY, timeout=60)

            async def fewest_continues() -> int:
                return min([await continues(client, wf) for wf in (pool_id, policy_id, health_id)])

            await eventually(fewest_continues, lambda n: n >= MIN_CONTINUES, timeout=120, interval=1.0)
            final_pool = await pool_view(client, settings, "web")
            final_policy = await policy_state(client, settings, "web", "load")
            final_health = await health()
        finally:
            for wf in filter(None, (pool_id, policy_id, health_id)):  # their histories end here, whole
                with contextlib.suppress(RPCError):
                    await client.get_workflow_handle(wf).terminate("test over")
        pool_runs = await chain(client, pool_id, PoolInput)
        policy_runs = await chain(client, policy_id, PolicyInput)
        health_runs = await chain(client, health_id, HealthInput)
        for kind, runs in (("pool", pool_runs), ("policy", policy_runs), ("health", health_runs)):
            print(kind, "events per run:", [len(r.events) for r in runs])

        assert_bounded("pool", pool_runs)
        assert_bounded("policy", policy_runs)
        assert_bounded("health", health_runs)
        await check_pool(client, pool_id, pool_runs, scaled, final_pool)
        await check_policy(client, policy_id, policy_runs, final_policy)
        await check_health(client, health_id, health_runs, final_health)


async def check_pool(
    client: Client, wf_id: str, runs: list[Run], scaled: PoolStatusView, final: PoolStatusView | None
) -> None:
    """Each closed run's own status is what it carried; after the scale-out, every carry keeps the desired
    size, the servers and the cooldowns the pool had then."""
    servers = {s.server_id for s in scaled.servers}
    for run in runs[:-1]:
        view: PoolStatusView = await client.get_workflow_handle(wf_id, run_id=run.run_id).query(
            PoolWorkflow.status
        )
        st = run.carried.state
        assert (view.desired, view.seq, view.cooldowns) == (st.desired, st.seq, st.cooldowns)
        assert [s.server_id for s in view.servers] == [s.server_id for s in st.servers]
        assert view.recommendations == [r for _, r in sorted(st.recommendations.items())]
        if st.seq >= scaled.seq:  # continued after the scale-out
            assert st.desired == 3 and {s.server_id for s in st.servers} == servers
            assert st.cooldowns == scaled.cooldowns
    assert final is not None and final.desired == 3 and final.cooldowns == scaled.cooldowns
    assert {s.server_id for s in final.servers} == servers


async def check_policy(client: Client, wf_id: str, runs: list[Run], final: PolicyStateView | None) -> None:
    """Each closed run's own view is what it carried; its loops add up over the chain; the scale-out decision,
    made before the continues, is in every later carry with its cooldown."""
    up = None
    for run in runs[:-1]:
        view: PolicyStateView = await client.get_workflow_handle(wf_id, run_id=run.run_id).query(
            PolicyWorkflow.view
        )
        st, start = run.carried.state, run.started.run_state()
        assert view.decisions == st.decisions and view.evaluations == st.evaluation.evaluations
        assert view.last_decision == st.evaluation.last_decision and view.last_recommendation == st.last_sent
        assert st.loops == start.loops + completed_activities(run.events, "policy_loop")
        assert st.evaluation.evaluations >= start.evaluation.evaluations
        ups = [d for d in st.decisions if d.direction.value == "up" and not d.abstain]
        if up is not None:
            assert up in st.decisions, "the scale-out decision was lost across continue-as-new"
        up = ups[-1] if ups else up
    assert up is not None, "the policy's scale-out decision never reached a continue-as-new"
    assert final is not None and up in final.decisions
    assert final.cooldown_remaining_s.get("scale_in", 0) > 0


async def check_health(client: Client, wf_id: str, runs: list[Run], final: HealthView) -> None:
    """Each closed run's own view is what it carried; watches and transitions add up over the chain."""
    for run in runs[:-1]:
        view: HealthView = await client.get_workflow_handle(wf_id, run_id=run.run_id).query(
            HealthCheckWorkflow.state
        )
        st, start = run.carried.state, run.started.state
        assert (view.watches, view.transitions, view.status) == (st.watches, st.transitions, st.status)
        assert st.watches == start.watches + completed_activities(run.events, "watch_target")
        # every transition signals the pool once
        signals = count(run.events, EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
        assert st.transitions == start.transitions + signals
    assert final.transitions >= 2 and final.state is HealthState.UNHEALTHY
    assert final.watches >= runs[-1].started.state.watches
