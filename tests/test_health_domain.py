"""The health state machine, uptime, pool summary and healing plans (pure domain code)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from poolctl.domain.health import (
    HealthState,
    HealthStatus,
    MemberHealth,
    ProbeResult,
    Transition,
    heal_batch_limit,
    observe,
    plan_healing,
    summarize,
    uptime_percent,
)
from poolctl.domain.health_spec import HealthCheckSpec

T0 = datetime(2025, 1, 1, tzinfo=UTC)
OK = ProbeResult(ok=True, latency_ms=1.0, status_code=200)
FAIL = ProbeResult(ok=False, error="connection refused")
CONFIG = ProbeResult(ok=False, config_error=True, error="ProbeConfigError: no permission")

thresholds = st.integers(min_value=1, max_value=10)
states = st.sampled_from(list(HealthState))


def spec_of(ht: int, ut: int, grace: float = 0.0) -> HealthCheckSpec:
    return HealthCheckSpec(
        interval=5, timeout=1, healthy_threshold=ht, unhealthy_threshold=ut, grace_period=grace
    )


def run(status: HealthStatus, results: list[bool], spec: HealthCheckSpec, started_at=None, t0=T0, step=5.0):
    transitions: list[tuple[int, Transition]] = []
    for i, ok in enumerate(results):
        status, tr = observe(status, OK if ok else FAIL, t0 + timedelta(seconds=step * i), spec, started_at)
        if tr is not None:
            transitions.append((i, tr))
    return status, transitions


# ---------------------------------------------------------------------------- thresholds


@given(ht=thresholds, ut=thresholds, start=states)
def test_unhealthy_after_exactly_threshold_failures(ht: int, ut: int, start: HealthState) -> None:
    spec = spec_of(ht, ut)
    status = HealthStatus(state=start)
    status, trs = run(status, [False] * (ut - 1), spec)
    assert trs == []
    assert status.consecutive_failures == ut - 1
    status, trs = run(status, [False], spec)
    if start == HealthState.UNHEALTHY:
        assert trs == []
    else:
        assert len(trs) == 1
        assert trs[0][1].to_state == HealthState.UNHEALTHY
        assert trs[0][1].from_state == start
        assert trs[0][1].consecutive == ut
    assert status.state == HealthState.UNHEALTHY


@given(ht=thresholds, ut=thresholds, start=states)
def test_healthy_after_exactly_threshold_successes(ht: int, ut: int, start: HealthState) -> None:
    spec = spec_of(ht, ut)
    status, trs = run(HealthStatus(state=start), [True] * (ht - 1), spec)
    assert trs == []
    assert status.state == start
    status, trs = run(status, [True], spec)
    assert status.state == HealthState.HEALTHY
    assert (len(trs) == 1) == (start != HealthState.HEALTHY)


@given(ht=thresholds)
def test_initial_server_is_not_healthy_before_threshold(ht: int) -> None:
    spec = spec_of(ht, 3)
    status = HealthStatus()
    for i in range(ht - 1):
        status, tr = observe(status, OK, T0 + timedelta(seconds=i), spec)
        assert tr is None and status.state == HealthState.INITIAL


@st.composite
def flapping(draw: st.DrawFn) -> tuple[int, int, list[bool]]:
    ht = draw(st.integers(2, 8))
    ut = draw(st.integers(2, 8))
    runs = draw(st.lists(st.tuples(st.integers(1, ht - 1), st.integers(1, ut - 1)), min_size=1, max_size=20))
    seq: list[bool] = []
    for s, f in runs:
        seq += [True] * s + [False] * f
    return ht, ut, seq


@given(data=flapping(), start=states)
def test_flapping_under_thresholds_never_transitions(
    data: tuple[int, int, list[bool]], start: HealthState
) -> None:
    ht, ut, seq = data
    status, trs = run(HealthStatus(state=start), seq, spec_of(ht, ut))
    assert trs == []
    assert status.state == start


def reference(start: HealthState, seq: list[bool], ht: int, ut: int) -> list[tuple[int, HealthState]]:
    """An independent model: a transition exactly when a run reaches its threshold."""
    state, run_ok, run_len, out = start, None, 0, []
    for i, ok in enumerate(seq):
        run_len = run_len + 1 if ok == run_ok else 1
        run_ok = ok
        if ok and run_len >= ht and state != HealthState.HEALTHY:
            state = HealthState.HEALTHY
            out.append((i, state))
        if not ok and run_len >= ut and state != HealthState.UNHEALTHY:
            state = HealthState.UNHEALTHY
            out.append((i, state))
    return out


@given(ht=thresholds, ut=thresholds, start=states, seq=st.lists(st.booleans(), max_size=60))
def test_matches_reference_model(ht: int, ut: int, start: HealthState, seq: list[bool]) -> None:
    _, trs = run(HealthStatus(state=start), seq, spec_of(ht, ut))
    assert [(i, t.to_state) for i, t in trs] == reference(start, seq, ht, ut)


def test_config_error_changes_nothing() -> None:
    spec = spec_of(2, 2)
    status = HealthStatus(state=HealthState.HEALTHY, consecutive_failures=1)
    for _ in range(5):
        status, tr = observe(status, CONFIG, T0, spec)
        assert tr is None
    assert status.state == HealthState.HEALTHY
    assert status.consecutive_failures == 1
    assert status.last_result == CONFIG


# ---------------------------------------------------------------------------- grace period


@settings(max_examples=50)
@given(
    ut=thresholds,
    grace=st.integers(10, 300),
    start=st.sampled_from([HealthState.INITIAL, HealthState.HEALTHY]),
)
def test_grace_period_holds(ut: int, grace: int, start: HealthState) -> None:
    spec = spec_of(2, ut, grace=float(grace))
    started = T0
    # probe every second, failing, throughout the grace period: counted, never unhealthy
    status = HealthStatus(state=start)
    for s in range(grace):
        status, tr = observe(status, FAIL, started + timedelta(seconds=s), spec, started)
        assert tr is None
    assert status.state == start
    assert status.consecutive_failures == grace  # recorded
    # the first failure after the grace period, with the count above the threshold, transitions
    status, tr = observe(status, FAIL, started + timedelta(seconds=grace), spec, started)
    assert tr is not None and tr.to_state == HealthState.UNHEALTHY


def test_grace_period_allows_becoming_healthy() -> None:
    spec = spec_of(2, 2, grace=60)
    status, trs = run(HealthStatus(), [False, False, True, True], spec, started_at=T0, step=1)
    assert [t.to_state for _, t in trs] == [HealthState.HEALTHY]


# ---------------------------------------------------------------------------- uptime & summary


def tr(at_s: float, frm: HealthState, to: HealthState) -> Transition:
    return Transition(from_state=frm, to_state=to, at=T0 + timedelta(seconds=at_s), consecutive=1)


def test_uptime_from_transitions() -> None:
    H, U, I = HealthState.HEALTHY, HealthState.UNHEALTHY, HealthState.INITIAL  # noqa: E741
    trs = [tr(0, I, H), tr(600, H, U), tr(900, U, H)]
    # window [0, 3600): healthy 600 + 2700, unhealthy 300
    assert uptime_percent(trs, window_start=T0, window_end=T0 + timedelta(hours=1)) == pytest.approx(
        100 * 3300 / 3600
    )
    # window starting inside the unhealthy span
    w0 = T0 + timedelta(seconds=800)
    assert uptime_percent(trs, window_start=w0, window_end=w0 + timedelta(seconds=200)) == pytest.approx(50.0)
    # time spent initial is not counted
    trs2 = [tr(100, I, H)]
    assert uptime_percent(trs2, window_start=T0, window_end=T0 + timedelta(seconds=200)) == pytest.approx(
        100.0
    )
    assert uptime_percent([], window_start=T0, window_end=T0 + timedelta(seconds=1)) is None
    assert uptime_percent([], window_start=T0, window_end=T0 + timedelta(seconds=10), state_before=U) == 0.0


def test_summary_counts() -> None:
    s = summarize(
        [
            HealthState.HEALTHY,
            HealthStatus(state=HealthState.UNHEALTHY),
            MemberHealth(server_id="a"),
            HealthState.HEALTHY,
        ]
    )
    assert (s.healthy, s.unhealthy, s.initial, s.total) == (2, 1, 1, 4)


# ---------------------------------------------------------------------------- healing


def test_batch_limit_values() -> None:
    assert [heal_batch_limit(n) for n in (1, 5, 9, 10, 19, 20, 100)] == [1, 1, 1, 1, 1, 2, 10]


@given(
    n=st.integers(1, 60),
    data=st.data(),
)
def test_healing_batch_limit_and_degraded_rule(n: int, data: st.DataObject) -> None:
    members = {f"s{i}": data.draw(st.sampled_from(list(HealthState)), label=f"s{i}") for i in range(n)}
    unhealthy = [k for k, v in members.items() if v == HealthState.UNHEALTHY]
    in_flight = data.draw(st.lists(st.sampled_from(unhealthy), unique=True) if unhealthy else st.just([]))
    plan = plan_healing(members, n, in_flight=in_flight)
    limit = max(1, n // 10)
    assert plan.batch_limit == limit
    if 2 * len(unhealthy) > n:
        assert plan.status == "degraded"
        assert plan.replace == []
        assert "more than half" in plan.reason
    else:
        assert plan.status != "degraded"
        assert len(plan.replace) + len(in_flight) <= max(limit, len(in_flight))
        assert len(plan.replace) == min(max(0, limit - len(in_flight)), len(unhealthy) - len(in_flight))
        assert set(plan.replace) <= set(unhealthy) - set(in_flight)
        assert set(plan.replace) | set(plan.waiting) == set(unhealthy) - set(in_flight)


def test_healing_prefers_longest_unhealthy_and_respects_replace_after() -> None:
    now = T0 + timedelta(hours=1)
    members = [MemberHealth(server_id=f"s{i}", state=HealthState.HEALTHY) for i in range(20)]
    members[3] = MemberHealth(
        server_id="s3", state=HealthState.UNHEALTHY, unhealthy_since=now - timedelta(seconds=50)
    )
    members[7] = MemberHealth(
        server_id="s7", state=HealthState.UNHEALTHY, unhealthy_since=now - timedelta(seconds=500)
    )
    members[9] = MemberHealth(
        server_id="s9", state=HealthState.UNHEALTHY, unhealthy_since=now - timedelta(seconds=5)
    )
    plan = plan_healing(members, 20, now=now)
    assert plan.status == "healing" and plan.replace == ["s7", "s3"]
    plan = plan_healing(members, 20, now=now, replace_after=60)
    assert plan.replace == ["s7"] and plan.waiting == ["s3", "s9"]
    plan = plan_healing(members, 20, now=now, in_flight=["s7"])
    assert plan.replace == ["s3"]


def test_healing_stops_when_more_than_half_unhealthy() -> None:
    members = {f"s{i}": (HealthState.UNHEALTHY if i < 3 else HealthState.HEALTHY) for i in range(5)}
    plan = plan_healing(members, 5)
    assert plan.status == "degraded" and plan.replace == [] and "3 of 5" in plan.reason
    members["s2"] = HealthState.HEALTHY  # exactly... 2 of 5: not more than half
    plan = plan_healing(members, 5)
    assert plan.status == "healing" and plan.replace == ["s0"]
    # exactly half is not "more than half"
    assert plan_healing({"a": HealthState.UNHEALTHY, "b": HealthState.HEALTHY}, 2).status == "healing"
    assert plan_healing({"a": HealthState.HEALTHY}, 1).status == "ok"


# ---------------------------------------------------------------------------- spec validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 5, "timeout": 5}, "timeout (5.0s) must be less than interval (5.0s)"),
        ({"expected_status": ["399-200"]}, "reversed"),
        ({"expected_status": ["2xx"]}, "neither a code"),
        ({"expected_status": [700]}, "outside the HTTP status codes"),
        ({"expected_status": []}, "at least one"),
        ({"body_match": "a", "body_regex": "b"}, "not both"),
        ({"body_regex": "("}, "not a valid regular expression"),
        ({"method": "HEAD", "body_match": "ok"}, "HEAD returns no body"),
        ({"type": "tcp", "path": "/x"}, "path: only for http/https"),
        ({"type": "http", "tls_verify": False}, "only for https"),
        ({"type": "icmp", "port": 80}, "port does not apply"),
        ({"jitter": "150%"}, "below 100%"),
        ({"jitter": "fast"}, "seconds (0.5) or a percentage"),
        ({"interval": 5, "timeout": 1, "jitter": 6}, "jitter (6.0 = 6.0s) must be less than interval"),
        ({"path": "health"}, "must start with '/'"),
        ({"intervall": 5}, "Extra inputs are not permitted"),
    ],
)
def test_spec_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        HealthCheckSpec(**kwargs)
    assert message in str(e.value)


def test_spec_defaults_and_helpers() -> None:
    spec = HealthCheckSpec(interval=5, timeout=1, expected_status=[200, "300-304", "418"])
    assert spec.jitter_seconds == pytest.approx(0.5)
    assert [spec.status_ok(c) for c in (200, 201, 302, 305, 418, 500)] == [
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    assert HealthCheckSpec().status_ok(399) and not HealthCheckSpec().status_ok(400)
    assert HealthCheckSpec(interval=5, timeout=1, jitter=0.25).jitter_seconds == 0.25
    assert HealthCheckSpec(port=9000).target_port(8080) == 9000
    assert HealthCheckSpec().target_port(8080) == 8080
    assert HealthCheckSpec(type="icmp").target_port(8080) is None
    rx = HealthCheckSpec(body_regex=r"status\W+ok")
    assert rx.body_ok('{"status": "ok"}') and not rx.body_ok("status: down")
    # round trip through JSON (what workflows and activities carry)
    again = HealthCheckSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
