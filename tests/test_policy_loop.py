"""The policy evaluation loop (`run_policy_loop`) with a fake clock and scripted metric readings: it keeps
its grid, heartbeats its state, returns only on a changed recommendation, a lease end or cancellation, and
a retry resumes from the heartbeat."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from poolctl.activities.policy_loop import run_policy_loop
from poolctl.domain.decision import Direction
from poolctl.domain.policy_spec import PolicySpec
from poolctl.domain.policy_state import (
    MAX_LOOP_HEARTBEAT_TIMEOUT_S,
    MIN_LOOP_HEARTBEAT_TIMEOUT_S,
    MetricReading,
    MetricReadRequest,
    PolicyLoopParams,
    PolicyLoopProgress,
    loop_heartbeat_every_s,
    loop_heartbeat_timeout_s,
    loop_precheck_s,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = PolicySpec.model_validate(
    {
        "name": "load",
        "type": "custom",
        "source": {"kind": "http_json", "url": "http://127.0.0.1:9/v", "path": "v"},
        "target": 50,
        "evaluation_interval": 15,
        "stabilization_window_s": 0,
    }
)


class FakeTime:
    def __init__(self) -> None:
        self.t = T0

    def clock(self) -> datetime:
        return self.t

    async def sleep(self, d: float) -> None:
        assert d >= 0
        self.t += timedelta(seconds=d)
        await asyncio.sleep(0)


class Metric:
    """Scripted readings of a 2-server pool (the last value repeats); each read takes 0.1 s."""

    def __init__(self, ft: FakeTime, values: Iterable[float | None]) -> None:
        self.ft, self.values, self.at = ft, list(values), []  # type: ignore[var-annotated]

    async def __call__(self, req: MetricReadRequest) -> MetricReading:
        self.at.append(self.ft.t)
        self.ft.t += timedelta(seconds=0.1)
        v = self.values[min(len(self.at) - 1, len(self.values) - 1)]
        return MetricReading(value=v, error=None if v is not None else "down", current=2)


def params(**kw) -> PolicyLoopParams:  # type: ignore[no-untyped-def]
    return PolicyLoopParams(policy_id="policy/t/web/load", team="t", pool="web", spec=SPEC, **kw)


async def test_steady_metric_runs_to_the_lease_end_on_its_grid_then_a_change_returns() -> None:
    ft = FakeTime()
    beats: list[PolicyLoopProgress] = []
    first = await run_policy_loop(
        params(lease_s=600),
        heartbeat=beats.append,
        resume_from=None,
        read=Metric(ft, [50]),
        clock=ft.clock,
        sleep=ft.sleep,
    )
    assert first.reason == "decision" and first.evaluations == 1  # nothing sent yet: the first one is news
    assert first.decision is not None
    metric = Metric(ft, [50] * 45 + [90])
    out = await run_policy_loop(
        params(
            lease_s=600,
            evaluation=first.evaluation,
            last_sent=first.decision.as_recommendation(),
            next_evaluation_at=first.next_evaluation_at,
        ),
        heartbeat=beats.append,
        resume_from=None,
        read=metric,
        clock=ft.clock,
        sleep=ft.sleep,
    )
    # the lease (600 s) ends at the first evaluation past it; every evaluation on the 15 s grid, no drift
    assert out.reason == "lease_end" and out.evaluations == 40
    gaps = {round((b - a).total_seconds(), 6) for a, b in zip(metric.at, metric.at[1:], strict=False)}
    assert gaps == {15.0}
    assert out.evaluation.evaluations == 41 and beats[-1].evaluation.evaluations == 41
    assert out.decision is not None and out.decision.direction is Direction.NONE

    again = await run_policy_loop(
        params(
            evaluation=out.evaluation,
            last_sent=first.decision.as_recommendation(),
            next_evaluation_at=out.next_evaluation_at,
        ),
        heartbeat=beats.append,
        resume_from=None,
        read=Metric(ft, [50, 50, 50, 90]),
        clock=ft.clock,
        sleep=ft.sleep,
    )
    assert again.reason == "decision" and again.evaluations == 4
    assert again.decision is not None and again.decision.desired == 4


async def test_a_retry_resumes_from_the_heartbeat_and_returns_a_pending_decision_at_once() -> None:
    ft = FakeTime()
    beats: list[PolicyLoopProgress] = []
    await run_policy_loop(
        params(),
        heartbeat=beats.append,
        resume_from=None,
        read=Metric(ft, [90]),
        clock=ft.clock,
        sleep=ft.sleep,
    )
    assert beats[-1].pending is not None  # heartbeated before it returned
    metric = Metric(ft, [50])
    out = await run_policy_loop(
        params(), heartbeat=beats.append, resume_from=beats[-1], read=metric, clock=ft.clock, sleep=ft.sleep
    )
    assert out.reason == "decision" and metric.at == [] and out.decision == beats[-1].pending


async def test_cancellation_returns_the_state_so_far() -> None:
    beats: list[PolicyLoopProgress] = []

    async def read(req: MetricReadRequest) -> MetricReading:
        return MetricReading(value=50, current=2)

    first = await run_policy_loop(params(), heartbeat=beats.append, resume_from=None, read=read)
    assert first.decision is not None
    evaluated = asyncio.Event()

    def beat(progress: PolicyLoopProgress) -> None:
        if progress.evaluations >= 1:
            evaluated.set()

    loop = asyncio.create_task(
        run_policy_loop(
            params(
                evaluation=first.evaluation,
                last_sent=first.decision.as_recommendation(),
                evaluate_now=True,
                heartbeat_every_s=0.05,
            ),
            heartbeat=beat,
            resume_from=None,
            read=read,
        )
    )
    await evaluated.wait()
    loop.cancel()
    out = await loop
    assert out.reason == "cancelled" and out.evaluation.evaluations == 2
    assert out.next_evaluation_at is not None and out.next_evaluation_at > datetime.now(UTC)


async def test_a_reader_that_raises_is_an_unavailable_metric() -> None:
    async def read(req: MetricReadRequest) -> MetricReading:
        raise RuntimeError("boom")

    out = await run_policy_loop(params(), heartbeat=lambda p: None, resume_from=None, read=read)
    assert out.decision is not None and out.decision.reason.value == "MetricUnavailable"
    assert out.last_error is not None and "RuntimeError: boom" in out.last_error


def test_an_input_continued_by_the_earlier_version_folds_its_separate_fields_into_the_run_state() -> None:
    from poolctl.domain.policy_state import PolicyInput

    old = {
        "team": "t",
        "pool": "web",
        "spec": SPEC.model_dump(mode="json"),
        "state": {"paused": True, "evaluations": 7},
        "last_sent": None,
        "decisions": [],
        "current": 3,
        "last_error": "x",
        "history_budget": 2000,
        "members": [],
    }
    st = PolicyInput.model_validate(old).run_state()
    assert st.evaluation.paused and st.evaluation.evaluations == 7
    assert st.current == 3 and st.last_error == "x" and st.spec == SPEC
    fresh = PolicyInput(team="t", pool="web", spec=SPEC)
    again = PolicyInput.model_validate(
        fresh.model_copy(update={"state": fresh.run_state()}).model_dump(mode="json")
    )
    assert again.run_state() == fresh.run_state()


def test_the_heartbeat_timeout_is_twice_the_interval_within_its_bounds() -> None:
    assert loop_heartbeat_timeout_s(15) == 30 and loop_heartbeat_every_s(30) == 12
    assert loop_heartbeat_timeout_s(1) == MIN_LOOP_HEARTBEAT_TIMEOUT_S
    assert loop_heartbeat_timeout_s(86_400) == MAX_LOOP_HEARTBEAT_TIMEOUT_S


@given(st.floats(min_value=1, max_value=86_400))
def test_a_heartbeat_may_come_late_and_a_dead_worker_is_still_noticed(interval: float) -> None:
    timeout = loop_heartbeat_timeout_s(interval)
    every = loop_heartbeat_every_s(timeout)
    # between evaluations beats are paced to one per 0.8 x timeout; the loop beats twice per such window
    assert every <= 0.8 * timeout / 2
    # one evaluation interval of silence is survived (up to the cap), and a crash is noticed in bounded time
    assert timeout >= min(2 * interval, MAX_LOOP_HEARTBEAT_TIMEOUT_S)
    assert MIN_LOOP_HEARTBEAT_TIMEOUT_S <= timeout <= MAX_LOOP_HEARTBEAT_TIMEOUT_S


async def test_a_heartbeat_is_sent_just_before_each_evaluation_once_per_interval() -> None:
    """The check before each evaluation is what delivers a pause/resume/new spec within one interval."""
    ft = FakeTime()
    checks: list[datetime] = []
    metric = Metric(ft, [50])
    out = await run_policy_loop(
        params(lease_s=120, next_evaluation_at=T0 + timedelta(seconds=15), last_sent=None),
        heartbeat=lambda _p: None,
        heartbeat_now=lambda _p: checks.append(ft.t),
        resume_from=None,
        read=metric,
        clock=ft.clock,
        sleep=ft.sleep,
    )
    assert out.reason == "decision"  # the first evaluation's recommendation is news
    lead = loop_precheck_s(15)
    assert lead == 1.0
    # one check, `lead` before the evaluation, and the decision's own send
    assert checks[0] == metric.at[0] - timedelta(seconds=lead)
    assert len(checks) == 2 and checks[1] > metric.at[0]

    checks.clear()
    metric = Metric(ft, [50])
    assert out.decision is not None
    steady = await run_policy_loop(
        params(
            lease_s=150,
            evaluation=out.evaluation,
            last_sent=out.decision.as_recommendation(),
            next_evaluation_at=out.next_evaluation_at,
        ),
        heartbeat=lambda _p: None,
        heartbeat_now=lambda _p: checks.append(ft.t),
        resume_from=None,
        read=metric,
        clock=ft.clock,
        sleep=ft.sleep,
    )
    assert steady.reason == "lease_end"
    assert [c + timedelta(seconds=lead) for c in checks] == metric.at  # exactly one per evaluation


async def test_a_cancellation_delivered_by_the_check_returns_before_evaluating() -> None:
    ft = FakeTime()
    metric = Metric(ft, [50])
    cancelled = asyncio.Event()
    loop_task: asyncio.Task[object] | None = None

    def check(_progress: PolicyLoopProgress) -> None:
        # the heartbeat's reply says the workflow asked for a cancellation: the SDK cancels the task
        assert loop_task is not None
        loop_task.cancel()
        cancelled.set()

    async def run() -> object:
        return await run_policy_loop(
            params(lease_s=600, next_evaluation_at=T0 + timedelta(seconds=15)),
            heartbeat=lambda _p: None,
            heartbeat_now=check,
            resume_from=None,
            read=metric,
            clock=ft.clock,
            sleep=ft.sleep,
        )

    loop_task = asyncio.ensure_future(run())
    out = await loop_task
    assert cancelled.is_set()
    assert getattr(out, "reason", None) == "cancelled" and metric.at == []  # nothing evaluated
