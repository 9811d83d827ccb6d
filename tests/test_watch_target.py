"""The probe loop (`watch_target`) with a fake clock and scripted probes; the activity wrapper
through temporalio's ActivityEnvironment against a real closed port."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import pytest
from temporalio.testing import ActivityEnvironment

from poolctl.activities.watch import (
    WatchOutcome,
    WatchParams,
    WatchProgress,
    watch_target,
    watch_target_activity,
)
from poolctl.domain.health import HealthState, HealthStatus, ProbeResult
from poolctl.domain.health_spec import HealthCheckSpec

T0 = 1_700_000_000.0
OK = ProbeResult(ok=True, latency_ms=1.0, status_code=200)
FAIL = ProbeResult(ok=False, error="connection refused")


class FakeTime:
    def __init__(self, t: float = T0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        assert d >= 0
        self.sleeps.append(d)
        self.t += d
        await asyncio.sleep(0)


class Script:
    """A probe that returns scripted results (the last one repeats) and takes `duration` seconds."""

    def __init__(self, ft: FakeTime, results: Iterable[ProbeResult], duration: float = 0.01) -> None:
        self.ft = ft
        self.results = list(results)
        self.duration = duration
        self.calls: list[float] = []

    async def __call__(self, spec: HealthCheckSpec, host: str, port: int | None) -> ProbeResult:
        self.calls.append(self.ft.t)
        self.ft.t += self.duration
        i = min(len(self.calls) - 1, len(self.results) - 1)
        return self.results[i]


def params(**kw: object) -> WatchParams:
    spec = kw.pop("spec", None) or HealthCheckSpec(
        interval=5, timeout=1, healthy_threshold=2, unhealthy_threshold=3, jitter="10%"
    )
    base = {
        "check_id": "health/t/p/s1",
        "host": "127.0.0.1",
        "port": 8080,
        "spec": spec,
        "first_probe_delay": 0,
    }
    base.update(kw)
    return WatchParams(**base)  # type: ignore[arg-type]


async def go(p: WatchParams, ft: FakeTime, probe: Callable, resume: WatchProgress | None = None):
    beats: list[WatchProgress] = []
    out = await watch_target(
        p, heartbeat=beats.append, resume_from=resume, probe=probe, clock=ft.clock, sleep=ft.sleep
    )
    return out, beats


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
async def test_unhealthy_after_exactly_n_failures(threshold: int) -> None:
    ft = FakeTime()
    spec = HealthCheckSpec(interval=5, timeout=1, unhealthy_threshold=threshold)
    probe = Script(ft, [FAIL])
    out, beats = await go(params(spec=spec, status=HealthStatus(state=HealthState.HEALTHY)), ft, probe)
    assert out.reason == "transition"
    assert out.transition is not None and out.transition.to_state == HealthState.UNHEALTHY
    assert out.transition.consecutive == threshold
    assert len(probe.calls) == threshold == out.probes
    assert out.status.consecutive_failures == threshold
    assert beats[-1].status == out.status


async def test_initial_becomes_healthy_after_threshold_and_failures_reset_it() -> None:
    ft = FakeTime()
    probe = Script(ft, [OK, FAIL, OK, OK])
    out, _ = await go(params(), ft, probe)
    assert out.reason == "transition" and out.probes == 4
    assert out.transition is not None
    assert (out.transition.from_state, out.transition.to_state) == (HealthState.INITIAL, HealthState.HEALTHY)


async def test_flapping_below_thresholds_runs_until_lease_end() -> None:
    ft = FakeTime()
    probe = Script(ft, [OK, FAIL, FAIL] * 100)
    out, beats = await go(params(status=HealthStatus(state=HealthState.HEALTHY), lease_s=300), ft, probe)
    assert out.reason == "lease_end" and out.transition is None
    assert out.status.state == HealthState.HEALTHY
    assert ft.t >= T0 + 300
    assert 59 <= out.probes <= 61  # every 5 s for 300 s
    assert beats


async def test_returns_on_lease_end_when_nothing_changes() -> None:
    ft = FakeTime()
    probe = Script(ft, [OK])
    out, _ = await go(params(status=HealthStatus(state=HealthState.HEALTHY), lease_s=3600), ft, probe)
    assert out.reason == "lease_end"
    assert T0 + 3600 <= ft.t < T0 + 3600 + 5
    assert out.probes in (720, 721)  # slot 720 lands before the lease end when its jitter is below slot 0's
    assert out.status.consecutive_successes == out.probes
    assert out.next_probe_at is not None and out.next_probe_at >= T0 + 3600


async def test_schedule_does_not_drift_and_jitter_is_bounded() -> None:
    ft = FakeTime()
    probe = Script(ft, [OK], duration=0.9)  # slow probes: the schedule must not accumulate them
    out, beats = await go(params(status=HealthStatus(state=HealthState.HEALTHY), lease_s=500), ft, probe)
    base = beats[0].base
    for k, t in enumerate(probe.calls):
        offset = t - (base + 5 * k)
        assert 0 <= offset <= 0.5 + 1e-9, (k, offset)  # within [0, jitter]
    # jitter actually varies
    assert len({round(t - (base + 5 * k), 6) for k, t in enumerate(probe.calls)}) > 10
    for b in beats:
        if b.last_started_at is not None and b.last_scheduled_at is not None:
            assert b.last_started_at == pytest.approx(b.last_scheduled_at)


async def test_missed_slots_are_skipped_not_burst() -> None:
    ft = FakeTime()
    calls: list[float] = []

    async def stalls_once(spec: HealthCheckSpec, host: str, port: int | None) -> ProbeResult:
        calls.append(ft.t)
        if len(calls) == 2:
            ft.t += 23.0  # the loop was stuck for 23 s, from slot 1 (~T0+5) to ~T0+28
        return OK

    p = params(status=HealthStatus(state=HealthState.HEALTHY), lease_s=60)
    out, beats = await go(p, ft, stalls_once)
    # slots 2, 3 and 4 passed entirely: skipped; slot 5 (due ~T0+25) runs late, at once; then on schedule
    assert out.skipped_slots == 3
    assert calls[2] == pytest.approx(calls[1] + 23.0)
    base = beats[0].base
    assert [round((t - base) // 5) for t in calls[3:6]] == [6, 7, 8]
    assert all(b - a > 1.0 for a, b in zip(calls[2:], calls[3:], strict=False))  # no burst


async def test_spread_first_probe_within_interval() -> None:
    ft = FakeTime()
    probe = Script(ft, [OK])
    p = params(first_probe_delay=None, status=HealthStatus(state=HealthState.HEALTHY), lease_s=20)
    await go(p, ft, probe)
    assert T0 <= probe.calls[0] < T0 + 5


async def test_next_probe_at_continues_the_schedule() -> None:
    ft = FakeTime()
    probe = Script(ft, [OK])
    p = params(next_probe_at=T0 + 2.0, status=HealthStatus(state=HealthState.HEALTHY), lease_s=20)
    await go(p, ft, probe)
    assert probe.calls[0] == T0 + 2.0


async def test_heartbeats_between_long_intervals() -> None:
    ft = FakeTime()
    spec = HealthCheckSpec(interval=120, timeout=5, unhealthy_threshold=1, jitter=0)
    probe = Script(ft, [OK, FAIL])
    out, beats = await go(
        params(spec=spec, status=HealthStatus(state=HealthState.HEALTHY), heartbeat_every_s=10), ft, probe
    )
    assert out.reason == "transition"
    assert all(d <= 10 for d in ft.sleeps)
    assert len(beats) >= 11  # one per 10 s wait + one per probe


async def test_config_error_returns_at_once() -> None:
    ft = FakeTime()
    bad = ProbeResult(
        ok=False, config_error=True, error="ProbeConfigError: no permission to open ICMP sockets"
    )
    probe = Script(ft, [bad])
    status = HealthStatus(state=HealthState.HEALTHY, consecutive_successes=4)
    out, _ = await go(params(status=status), ft, probe)
    assert out.reason == "config_error" and out.config_error == bad.error
    assert out.probes == 1 and out.transition is None
    assert out.status.state == HealthState.HEALTHY and out.status.consecutive_successes == 4


async def test_grace_period_holds_in_the_loop() -> None:
    ft = FakeTime()
    spec = HealthCheckSpec(interval=5, timeout=1, unhealthy_threshold=2, grace_period=60, jitter=0)
    probe = Script(ft, [FAIL])
    started = datetime.fromtimestamp(T0, UTC)
    out, _ = await go(params(spec=spec, server_started_at=started), ft, probe)
    assert out.reason == "transition" and out.transition is not None
    assert out.transition.to_state == HealthState.UNHEALTHY
    assert probe.calls[-1] >= T0 + 60  # not before the grace period ended
    assert out.status.consecutive_failures == 13  # failures inside the grace period were counted


class Crash(Exception):
    pass


async def test_resume_from_heartbeat_keeps_counters() -> None:
    """A worker dies after 2 of 3 failures; the retry resumes from the last heartbeat (as plain
    JSON, as Temporal returns it) and transitions after exactly one more failure."""
    ft = FakeTime()
    probe = Script(ft, [FAIL])
    p = params(status=HealthStatus(state=HealthState.HEALTHY))
    beats: list[WatchProgress] = []

    def dying_heartbeat(progress: WatchProgress) -> None:
        beats.append(progress)
        if progress.probes == 2:
            raise Crash

    with pytest.raises(Crash):
        await watch_target(
            p, heartbeat=dying_heartbeat, resume_from=None, probe=probe, clock=ft.clock, sleep=ft.sleep
        )
    assert len(probe.calls) == 2
    wire = json.loads(json.dumps(beats[-1].model_dump(mode="json")))
    resume = WatchProgress.model_validate(wire)
    assert resume.status.consecutive_failures == 2

    ft.t += 2.0  # the retry starts a little later, on another worker
    out, _ = await go(p, ft, probe, resume=resume)
    assert out.reason == "transition" and out.transition is not None
    assert out.transition.consecutive == 3
    assert len(probe.calls) == 3  # exactly one more probe
    # the schedule continued: the third probe sits in slot 2 of the original schedule
    assert probe.calls[2] - (resume.base + 2 * 5) == pytest.approx(
        resume.next_probe_at - (resume.base + 2 * 5)
    )
    assert out.probes == 3


async def test_resume_keeps_the_lease() -> None:
    ft = FakeTime()
    probe = Script(ft, [OK])
    p = params(status=HealthStatus(state=HealthState.HEALTHY), lease_s=100)
    resume = WatchProgress(
        status=HealthStatus(state=HealthState.HEALTHY, consecutive_successes=7),
        lease_started_at=T0 - 90,
        base=T0 - 90,
        slot=18,
        next_probe_at=T0,
    )
    out, _ = await go(p, ft, probe, resume=resume)
    assert out.reason == "lease_end"
    assert len(probe.calls) == 2  # T0 and T0+5; the lease ends at T0+10
    assert out.status.consecutive_successes == 9


# ---------------------------------------------------------------------------- activity wrapper


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_activity_wrapper_resumes_from_heartbeat_details() -> None:
    spec = HealthCheckSpec(type="tcp", interval=0.2, timeout=0.1, unhealthy_threshold=3, jitter=0)
    p = WatchParams(
        check_id="health/t/p/s1",
        host="127.0.0.1",
        port=closed_port(),
        spec=spec,
        status=HealthStatus(state=HealthState.HEALTHY),
        first_probe_delay=0,
    )
    now = time.time()
    details = WatchProgress(
        status=HealthStatus(state=HealthState.HEALTHY, consecutive_failures=2),
        lease_started_at=now,
        base=now,
        slot=0,
        next_probe_at=now,
    ).model_dump(mode="json")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_details=[details])
    seen: list[object] = []
    env.on_heartbeat = lambda *d: seen.append(d[0])
    out = await env.run(watch_target_activity, p)
    assert isinstance(out, WatchOutcome)
    assert out.reason == "transition" and out.probes == 1  # 2 resumed + 1 = threshold 3
    assert out.transition is not None and out.transition.consecutive == 3
    assert seen and isinstance(seen[-1], dict)  # heartbeats are plain JSON
    WatchProgress.model_validate(seen[-1])


async def test_activity_wrapper_cancellation() -> None:
    spec = HealthCheckSpec(type="tcp", interval=30, timeout=1, jitter=0)
    p = WatchParams(check_id="c", host="127.0.0.1", port=closed_port(), spec=spec, first_probe_delay=20)
    env = ActivityEnvironment()
    task = asyncio.create_task(env.run(watch_target_activity, p))
    await asyncio.sleep(0.2)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
