"""Property and table tests of the pure scaling decisions (policy_spec + scaling)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from poolctl.domain.arbitration import CooldownState, arbitrate
from poolctl.domain.decision import Direction, ReasonCode, Recommendation
from poolctl.domain.evaluation import (
    MAX_HISTORY,
    PolicyState,
    evaluate_policy,
    evaluation_error_decision,
    pause,
    resume,
)
from poolctl.domain.policy_spec import Behavior, PolicySpec
from poolctl.domain.readiness import ServerSample, sample_server, server_readiness
from poolctl.domain.strategies import find_step, percent_change

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

counts = st.integers(min_value=0, max_value=200)
metrics = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)


def tt(**kw: object) -> PolicySpec:
    return PolicySpec.model_validate({"name": "tt", "target": 50, **kw})


def thr(**kw: object) -> PolicySpec:
    return PolicySpec.model_validate(
        {"name": "thr", "threshold_up": 80, "threshold_down": 20, "scale_up_by": 2, **kw}
    )


def rec(
    policy: str, desired: int, current: int, *, missing: bool = False, abstain: bool = False
) -> Recommendation:
    return Recommendation(
        policy=policy,
        at=T0,
        desired=desired,
        direction=Direction.of(current, desired),
        reason=ReasonCode.TARGET_TRACKING,
        metric_missing=missing,
        abstain=abstain,
    )


# --- specs ----------------------------------------------------------------------------------------


def test_direction_is_ordered_by_risk() -> None:
    assert Direction.DOWN < Direction.NONE < Direction.UP
    assert min(Direction.UP, Direction.DOWN, Direction.NONE) is Direction.DOWN


def test_spec_defaults_and_inference() -> None:
    p = thr(cooldown_minutes=5)
    assert p.strategy == "threshold" and p.metric == "cpu_percent"
    assert p.source is not None and p.source.kind == "scrape" and p.source.metric == "cpu_percent"
    assert p.scale_out_cooldown_s == p.scale_in_cooldown_s == 300
    assert tt(type="memory").metric == "memory_percent"
    assert PolicySpec.model_validate(p.model_dump()) == p  # round trip (Temporal payloads)


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"threshold_up": 20, "threshold_down": 80}, "threshold_down"),
        ({"strategy": "threshold"}, "needs threshold_up"),
        ({"target": 50, "threshold_up": 80}, "does not use threshold_up"),
        ({"strategy": "step", "threshold": 50}, "non-empty list of steps"),
        (
            {
                "threshold": 50,
                "steps": [
                    {"lower_bound": 0, "upper_bound": 20, "adjustment": 1},
                    {"lower_bound": 10, "adjustment": 2},
                ],
            },
            "overlap",
        ),
        (
            {"type": "schedule", "schedule": {"cron": "0 9 * *", "min_servers": 2, "duration_s": 60}},
            "5 fields",
        ),
        (
            {
                "type": "schedule",
                "schedule": {
                    "cron": "0 9 * * *",
                    "timezone": "Mars/Base",
                    "min_servers": 2,
                    "duration_s": 60,
                },
            },
            "time zone",
        ),
        ({"type": "schedule", "schedule": {"cron": "0 9 * * *", "min_servers": 2}}, "duration_s or end_cron"),
        ({"type": "custom", "target": 5}, "source"),
        ({"target": 50, "on_metric_error": "fallback"}, "fallback_servers"),
        ({"target": 50, "cooldown_minutes": 5, "scale_in_cooldown_s": 3}, "not both"),
        ({"target": 50, "evaluation_interval": 0.5}, "evaluation_interval"),
    ],
)
def test_bad_specs_are_named(doc: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as e:
        PolicySpec.model_validate({"name": "p", **doc})
    assert fragment in str(e.value)


# --- target tracking ------------------------------------------------------------------------------


@given(current=st.integers(min_value=1, max_value=200), m1=metrics, m2=metrics)
def test_target_tracking_is_monotone_in_the_metric(current: int, m1: float, m2: float) -> None:
    spec = tt(stabilization_window_s=0)
    lo, hi = sorted((m1, m2))
    d_lo, _ = evaluate_policy(spec, current=current, metric=lo, now=T0, state=PolicyState())
    d_hi, _ = evaluate_policy(spec, current=current, metric=hi, now=T0, state=PolicyState())
    assert d_lo.raw <= d_hi.raw


@given(current=st.integers(min_value=1, max_value=200), ratio=st.floats(min_value=0.9, max_value=1.1))
def test_target_tracking_holds_within_tolerance(current: int, ratio: float) -> None:
    d, _ = evaluate_policy(tt(), current=current, metric=50 * ratio, now=T0, state=PolicyState())
    assert d.desired == current and d.reason is ReasonCode.WITHIN_TOLERANCE


def test_target_tracking_formula_and_zero() -> None:
    d, _ = evaluate_policy(tt(), current=4, metric=90, now=T0, state=PolicyState())
    assert d.desired == 8 and d.reason is ReasonCode.TARGET_TRACKING and "ceil(4 x 1.800)" in d.formula
    d0, _ = evaluate_policy(tt(), current=0, metric=120, now=T0, state=PolicyState())
    assert d0.desired == 3
    # from zero, a metric above activation_threshold (default 0) asks for at least one server
    d01, _ = evaluate_policy(tt(), current=0, metric=10, now=T0, state=PolicyState())
    assert (d01.desired, d01.reason) == (1, ReasonCode.SCALE_FROM_ZERO)
    d00, _ = evaluate_policy(tt(), current=0, metric=0, now=T0, state=PolicyState())
    assert (d00.desired, d00.reason) == (0, ReasonCode.BELOW_ACTIVATION_THRESHOLD)


# --- step -----------------------------------------------------------------------------------------

STEP = PolicySpec.model_validate(
    {
        "name": "step",
        "threshold": 50,
        "stabilization_window_s": 0,
        "steps": [
            {"upper_bound": -30, "adjustment": -2},
            {"lower_bound": -30, "upper_bound": 0, "adjustment": -1},
            {"lower_bound": 0, "upper_bound": 20, "adjustment": 1},
            {"lower_bound": 20, "adjustment": 3},
        ],
    }
)


@pytest.mark.parametrize(
    "metric, change",
    [(10, -2), (20, -2), (20.001, -1), (49.999, -1), (50, 1), (69.999, 1), (70, 3), (1e6, 3)],
)
def test_step_bounds_at_their_edges(metric: float, change: int) -> None:
    d, _ = evaluate_policy(STEP, current=10, metric=metric, now=T0, state=PolicyState())
    assert d.desired - 10 == change and d.reason is ReasonCode.STEP_ADJUSTMENT


@given(diff=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_step_edges_follow_aws_rules(diff: float) -> None:
    s = find_step(STEP.steps or [], diff)
    assert s is not None  # contiguous steps cover everything
    if diff >= 0:
        assert s.lower <= diff < s.upper
    else:
        assert s.lower < diff <= s.upper


def test_step_one_sided_table_holds_on_the_other_side_and_percent_rounding() -> None:
    out_only = PolicySpec.model_validate(
        {"name": "g", "threshold": 50, "steps": [{"lower_bound": 0, "adjustment": 1}]}
    )
    d, _ = evaluate_policy(out_only, current=5, metric=45, now=T0, state=PolicyState())
    assert d.desired == 5 and d.reason is ReasonCode.WITHIN_THRESHOLDS
    assert percent_change(10, 25, None) == 2  # 2.5 rounds toward zero
    assert percent_change(2, 10, None) == 1  # 0.2 never rounds to zero
    assert percent_change(10, -25, None) == -2
    assert percent_change(10, 10, 3) == 3  # minimum magnitude
    exact = PolicySpec.model_validate(
        {
            "name": "e",
            "threshold": 50,
            "adjustment_type": "exact_capacity",
            "steps": [{"lower_bound": 0, "adjustment": 7}],
        }
    )
    d, _ = evaluate_policy(exact, current=2, metric=60, now=T0, state=PolicyState())
    assert d.desired == 7


# --- threshold, stabilization, missing metric, clamps ---------------------------------------------


def test_threshold_original_semantics() -> None:
    up, _ = evaluate_policy(thr(), current=3, metric=80, now=T0, state=PolicyState())
    assert (up.desired, up.reason) == (5, ReasonCode.SCALE_OUT_THRESHOLD)
    mid, _ = evaluate_policy(thr(), current=3, metric=50, now=T0, state=PolicyState())
    assert (mid.desired, mid.reason) == (3, ReasonCode.WITHIN_THRESHOLDS)
    down, _ = evaluate_policy(
        thr(stabilization_window_s=0), current=3, metric=20, now=T0, state=PolicyState()
    )
    assert (down.desired, down.reason) == (2, ReasonCode.SCALE_IN_THRESHOLD)


@settings(max_examples=200)
@given(
    window=st.integers(min_value=0, max_value=900),
    series=st.lists(st.tuples(st.integers(min_value=1, max_value=60), metrics), min_size=1, max_size=80),
)
def test_no_scale_in_inside_the_stabilization_window(window: int, series: list[tuple[int, float]]) -> None:
    """A scale-in to N happens only when no raw recommendation in the window was above N."""
    spec = tt(stabilization_window_s=window)
    state = PolicyState()
    now = T0
    current = 10
    seen: list[tuple[datetime, int]] = []
    for gap, m in series:
        now += timedelta(seconds=gap)
        d, state = evaluate_policy(spec, current=current, metric=m, now=now, state=state)
        seen.append((now, d.raw))
        assert len(state.history) <= MAX_HISTORY
        if d.desired < current:
            in_window = [r for t, r in seen if t > now - timedelta(seconds=window) or t == now]
            assert max(in_window) <= d.desired
        current = d.desired


@given(current=counts, kind=st.sampled_from(["hold", "fallback", "ignore"]))
def test_missing_metric_never_scales_in(current: int, kind: str) -> None:
    extra: dict[str, object] = {"on_metric_error": kind}
    if kind == "fallback":
        extra["fallback_servers"] = 4
    spec = tt(**extra)
    for bad in (None, float("nan"), float("inf")):
        d, _ = evaluate_policy(spec, current=current, metric=bad, now=T0, state=PolicyState())
        if kind == "hold":
            assert d.metric_missing and not d.abstain and d.desired == current
            assert d.reason is ReasonCode.METRIC_UNAVAILABLE
        elif kind == "ignore":
            assert d.abstain and d.reason is ReasonCode.METRIC_UNAVAILABLE
        else:
            assert d.raw == 4 and "fallback" in d.formula


def test_policy_clamps_max_step_and_dry_run() -> None:
    d, _ = evaluate_policy(tt(max_servers=6), current=4, metric=200, now=T0, state=PolicyState())
    assert d.desired == 6 and d.reason is ReasonCode.AT_MAX_SERVERS and d.raw == 16
    d, _ = evaluate_policy(tt(max_step=2), current=4, metric=200, now=T0, state=PolicyState())
    assert d.desired == 6 and d.reason is ReasonCode.MAX_STEP_LIMITED
    d, _ = evaluate_policy(tt(dry_run=True), current=4, metric=200, now=T0, state=PolicyState())
    assert d.desired == 4 and d.abstain and d.reason is ReasonCode.DRY_RUN and d.clamps[-1].before == 16


def test_pause_flags() -> None:
    d, _ = evaluate_policy(tt(), current=4, metric=200, now=T0, state=pause(PolicyState()))
    assert d.abstain and d.reason is ReasonCode.PAUSED and d.desired == 4
    s = pause(PolicyState(), scale_in=False)
    d, _ = evaluate_policy(tt(), current=4, metric=200, now=T0, state=s)
    assert d.desired == 4 and d.reason is ReasonCode.SCALE_OUT_PAUSED and not d.abstain
    s = pause(PolicyState(), scale_out=False)
    d, _ = evaluate_policy(tt(stabilization_window_s=0), current=4, metric=1, now=T0, state=s)
    assert d.desired == 4 and d.reason is ReasonCode.SCALE_IN_PAUSED and d.abstain
    d, _ = evaluate_policy(tt(), current=4, metric=200, now=T0, state=resume(s))
    assert d.desired == 16


# --- arbitrate ------------------------------------------------------------------------------------

rec_lists = st.lists(
    st.tuples(st.integers(min_value=0, max_value=60), st.booleans(), st.booleans()), min_size=0, max_size=6
)


def _recs(raw: list[tuple[int, bool, bool]], current: int) -> list[Recommendation]:
    return [rec(f"p{i}", d, current, missing=m, abstain=a) for i, (d, m, a) in enumerate(raw)]


@settings(max_examples=300)
@given(
    raw=rec_lists,
    current=st.integers(min_value=0, max_value=60),
    pool_min=st.integers(min_value=0, max_value=30),
    span=st.integers(min_value=0, max_value=30),
    out_age=st.one_of(st.none(), st.integers(min_value=0, max_value=1000)),
    in_age=st.one_of(st.none(), st.integers(min_value=0, max_value=1000)),
)
def test_arbitrate_properties(
    raw: list[tuple[int, bool, bool]],
    current: int,
    pool_min: int,
    span: int,
    out_age: int | None,
    in_age: int | None,
) -> None:
    pool_max = pool_min + span
    cd = CooldownState()
    if out_age is not None:
        cd = cd.after_scaling(
            Direction.UP, T0 - timedelta(seconds=out_age), scale_out_cooldown_s=300, scale_in_cooldown_s=300
        )
    if in_age is not None:
        cd = cd.after_scaling(
            Direction.DOWN, T0 - timedelta(seconds=in_age), scale_out_cooldown_s=300, scale_in_cooldown_s=300
        )
    recs = _recs(raw, current)
    d = arbitrate(recs, current=current, pool_min=pool_min, pool_max=pool_max, now=T0, cooldowns=cd)
    # never outside min/max
    assert pool_min <= d.desired <= pool_max
    inside = pool_min <= current <= pool_max
    voters = [r for r in recs if not r.abstain]
    # nothing during cooldown (except coming back inside the bounds)
    if inside and cd.blocks(Direction.UP, T0):
        assert d.desired <= current
    if inside and cd.blocks(Direction.DOWN, T0):
        assert d.desired >= current
    # no scale-in with a metric missing, or without every voter agreeing
    if inside and d.desired < current:
        assert voters and not any(r.metric_missing for r in voters)
        assert all(r.desired < current for r in voters)
        assert d.desired == max(pool_min, max(r.desired for r in voters))
    # largest scale-out wins
    ups = [r.desired for r in voters if r.desired > current]
    if inside and ups and not cd.blocks(Direction.UP, T0):
        assert d.desired == min(pool_max, max(ups))
    if inside and not ups and d.desired > current:
        pytest.fail("scaled out with no scale-out vote")


def test_arbitrate_table() -> None:
    cd = CooldownState()
    out = arbitrate(
        [rec("a", 5, 3), rec("b", 7, 3), rec("c", 2, 3)],
        current=3,
        pool_min=1,
        pool_max=10,
        now=T0,
        cooldowns=cd,
    )
    assert (out.desired, out.direction) == (7, Direction.UP)
    split = arbitrate(
        [rec("a", 2, 3), rec("b", 3, 3)], current=3, pool_min=1, pool_max=10, now=T0, cooldowns=cd
    )
    assert split.desired == 3
    agree = arbitrate(
        [rec("a", 1, 5), rec("b", 3, 5)], current=5, pool_min=1, pool_max=10, now=T0, cooldowns=cd
    )
    assert (agree.desired, agree.direction) == (3, Direction.DOWN)
    missing = arbitrate(
        [rec("a", 1, 5), rec("b", 5, 5, missing=True)],
        current=5,
        pool_min=1,
        pool_max=10,
        now=T0,
        cooldowns=cd,
    )
    assert missing.desired == 5 and missing.reason is ReasonCode.METRIC_UNAVAILABLE
    capped = arbitrate([rec("a", 50, 5)], current=5, pool_min=1, pool_max=10, now=T0, cooldowns=cd)
    assert capped.desired == 10 and capped.reason is ReasonCode.AT_MAX_SERVERS
    floor = arbitrate([], current=0, pool_min=2, pool_max=10, now=T0, cooldowns=cd)
    assert floor.desired == 2 and floor.reason is ReasonCode.AT_MIN_SERVERS
    # a stale UP (pool moved past it) is a hold, not a scale-in vote
    stale = Recommendation(
        policy="a", at=T0, desired=4, direction=Direction.UP, reason=ReasonCode.TARGET_TRACKING
    )
    d = arbitrate([stale, rec("b", 2, 6)], current=6, pool_min=1, pool_max=10, now=T0, cooldowns=cd)
    assert d.desired == 6


def test_cooldown_blocks_then_releases() -> None:
    cd = CooldownState().after_scaling(Direction.UP, T0, scale_out_cooldown_s=60, scale_in_cooldown_s=120)
    r_up = [rec("a", 8, 4)]
    held = arbitrate(r_up, current=4, pool_min=1, pool_max=10, now=T0 + timedelta(seconds=59), cooldowns=cd)
    assert held.desired == 4 and held.reason is ReasonCode.COOLDOWN_ACTIVE
    go = arbitrate(r_up, current=4, pool_min=1, pool_max=10, now=T0 + timedelta(seconds=60), cooldowns=cd)
    assert go.desired == 8
    r_down = [rec("a", 2, 4)]
    held = arbitrate(
        r_down, current=4, pool_min=1, pool_max=10, now=T0 + timedelta(seconds=119), cooldowns=cd
    )
    assert held.desired == 4 and held.reason is ReasonCode.COOLDOWN_ACTIVE
    # survives a round trip through JSON (continue-as-new, worker restart)
    again = CooldownState.model_validate_json(cd.model_dump_json())
    assert again.blocks(Direction.DOWN, T0 + timedelta(seconds=119))


def test_policy_and_pool_compose_through_recommendation() -> None:
    spec = thr()
    d, state = evaluate_policy(spec, current=3, metric=95, now=T0, state=PolicyState())
    state2 = PolicyState.model_validate_json(state.model_dump_json())
    assert state2 == state
    verdict = arbitrate(
        [d.as_recommendation()], current=3, pool_min=1, pool_max=10, now=T0, cooldowns=CooldownState()
    )
    assert verdict.desired == 5 and verdict.reason is ReasonCode.SCALE_OUT_THRESHOLD
    assert "3 -> 5" in verdict.explain()


# --- issue: scaling decisions right where autoscalers are known to fail ---------------------------

QUEUE = {"type": "custom", "source": {"kind": "http_json", "url": "http://127.0.0.1:1/q", "path": "v"}}


@pytest.mark.parametrize("metric, expected", [(0, 0), (5, 1), (9.5, 1), (10, 1), (11, 1), (11.5, 2), (30, 3)])
def test_scale_from_zero_with_activation_keda_table(metric: float, expected: int) -> None:
    """A custom target-tracking policy (target 10) at 0 servers: the issue's table, exactly."""
    spec = PolicySpec.model_validate({"name": "q", "target": 10, **QUEUE})
    assert spec.activation_threshold == 0
    d, _ = evaluate_policy(spec, current=0, metric=metric, now=T0, state=PolicyState())
    assert d.desired == expected
    reason = ReasonCode.BELOW_ACTIVATION_THRESHOLD if expected == 0 else ReasonCode.SCALE_FROM_ZERO
    assert d.reason is reason


@given(
    metric=metrics,
    activation=st.floats(min_value=0, max_value=500),
    strategy=st.sampled_from(["target_tracking", "threshold", "step"]),
)
def test_every_strategy_leaves_zero_exactly_when_the_metric_passes_activation(
    metric: float, activation: float, strategy: str
) -> None:
    doc: dict[str, object] = {
        "target_tracking": {"target": 10},
        "threshold": {"threshold_up": 80, "threshold_down": 20},
        "step": {
            "threshold": 50,
            "adjustment_type": "percent_change_in_capacity",
            "steps": [{"lower_bound": 0, "adjustment": 50}, {"upper_bound": 0, "adjustment": -50}],
        },
    }[strategy]
    spec = PolicySpec.model_validate({"name": "z", "activation_threshold": activation, **QUEUE, **doc})
    d, _ = evaluate_policy(spec, current=0, metric=metric, now=T0, state=PolicyState())
    assert (d.desired >= 1) == (metric > activation)


def samples(ready_values: list[float | None], not_ready: int = 0) -> list[ServerSample]:
    out = [
        ServerSample(server_id=f"r{i}", created_at=T0 - timedelta(hours=1), value=v)
        for i, v in enumerate(ready_values)
    ]
    out += [
        ServerSample(
            server_id=f"b{i}", created_at=T0, health="initial", ready=False, not_ready_reason="booting"
        )
        for i in range(not_ready)
    ]
    return out


def test_a_booting_server_is_not_scaled_for_twice_hpa_and_aws() -> None:
    """CPU target 50: 4 servers at 62.5 % and a 5th booting. The right answer is 5, not 7."""
    scrape = tt()  # cpu: a scrape of the servers, per-server values
    d, _ = evaluate_policy(
        scrape, current=5, metric=None, now=T0, state=PolicyState(), servers=samples([62.5] * 4, 1)
    )
    assert (d.desired, d.reason) == (5, ReasonCode.WITHIN_TOLERANCE)  # (4 x 62.5 + 0) / 5 = 50 %
    assert "1 not ready at 0" in d.formula
    pool_level = PolicySpec.model_validate({"name": "q", "target": 50, **QUEUE})
    d, _ = evaluate_policy(
        pool_level, current=5, metric=62.5, now=T0, state=PolicyState(), servers=samples([None] * 4, 1)
    )
    assert d.desired == 5  # AWS: ceil(4 x 1.25)
    # without the booting server, the same load asks for the 5th
    d, _ = evaluate_policy(
        scrape, current=4, metric=None, now=T0, state=PolicyState(), servers=samples([62.5] * 4)
    )
    assert d.desired == 5


def test_missing_server_counts_at_target_on_scale_in_and_zero_on_scale_out() -> None:
    spec = tt(stabilization_window_s=0)
    # scale-in: 3 ready at 10 % and one without a value (counted at 50 %): (30 + 50) / 4 = 20 % -> ceil(4 x 0.4)
    d, _ = evaluate_policy(
        spec, current=4, metric=None, now=T0, state=PolicyState(), servers=samples([10, 10, 10, None])
    )
    assert d.desired == 2 and "1 without a value at 50" in d.formula
    # scale-out: 3 at 100 % and one missing at 0: (300 + 0) / 4 = 75 % -> ceil(4 x 1.5) = 6
    d, _ = evaluate_policy(
        spec, current=4, metric=None, now=T0, state=PolicyState(), servers=samples([100, 100, 100, None])
    )
    assert d.desired == 6
    # a fill that turns the direction around holds (HPA): 1 at 60 %, 3 missing at 0 -> 15 %
    d, _ = evaluate_policy(
        spec, current=4, metric=None, now=T0, state=PolicyState(), servers=samples([60, None, None, None])
    )
    assert d.desired == 4


def test_threshold_and_step_count_booting_servers_toward_a_scale_out() -> None:
    """AWS warm-up: a scale-out adds to the ready servers; servers still booting count toward it."""
    spec = thr()  # scale_up_by 2
    d, _ = evaluate_policy(
        spec, current=6, metric=90, now=T0, state=PolicyState(), servers=samples([90] * 4, 2)
    )
    assert (d.desired, d.reason) == (6, ReasonCode.SERVERS_NOT_READY)  # 4 ready + 2 = 6: already there
    d, _ = evaluate_policy(
        spec, current=5, metric=90, now=T0, state=PolicyState(), servers=samples([90] * 4, 1)
    )
    assert d.desired == 6
    d, _ = evaluate_policy(
        STEP, current=11, metric=75, now=T0, state=PolicyState(), servers=samples([75] * 8, 3)
    )
    assert d.desired == 11  # 8 ready + 3 = 11
    # a ready server without a value: no scale-in on partial data
    d, _ = evaluate_policy(
        thr(stabilization_window_s=0),
        current=4,
        metric=None,
        now=T0,
        state=PolicyState(),
        servers=samples([5, 5, 5, None]),
    )
    assert (d.desired, d.reason) == (4, ReasonCode.MISSING_SERVER_METRICS)
    # nobody ready yet: hold, whatever the strategy
    for spec in (tt(), thr(), STEP):
        d, _ = evaluate_policy(
            spec, current=2, metric=None, now=T0, state=PolicyState(), servers=samples([], 2)
        )
        assert (d.desired, d.reason) == (2, ReasonCode.SERVERS_NOT_READY)


def test_readiness_health_and_instance_warmup() -> None:
    old, new = T0 - timedelta(seconds=600), T0 - timedelta(seconds=100)
    assert server_readiness(created_at=old, health="healthy", now=T0, instance_warmup_s=300) == (True, "")
    ready, why = server_readiness(created_at=new, health="healthy", now=T0, instance_warmup_s=300)
    assert not ready and why.startswith("warming up until")
    assert server_readiness(created_at=old, health="initial", now=T0, instance_warmup_s=0) == (
        False,
        "booting",
    )
    assert not server_readiness(created_at=old, health="unhealthy", now=T0, instance_warmup_s=0)[0]
    s = sample_server("a", created_at=new, health="healthy", now=T0, instance_warmup_s=300, value=90.0)
    assert not s.ready and s.value is None  # a warming server's value never counts


@settings(max_examples=200)
@given(
    ready_values=st.lists(st.floats(min_value=0, max_value=200), min_size=1, max_size=12),
    not_ready=st.integers(min_value=0, max_value=12),
)
def test_not_ready_servers_never_make_target_tracking_ask_for_more(
    ready_values: list[float], not_ready: int
) -> None:
    """Booting servers count toward a scale-out: adding them to a pool never makes target tracking ask
    for more than the ready servers alone do (or than the pool already has)."""
    spec = tt(stabilization_window_s=0)
    n = len(ready_values)
    alone, _ = evaluate_policy(
        spec, current=n, metric=None, now=T0, state=PolicyState(), servers=samples(ready_values)
    )
    d, _ = evaluate_policy(
        spec,
        current=n + not_ready,
        metric=None,
        now=T0,
        state=PolicyState(),
        servers=samples(ready_values, not_ready),
    )
    assert d.desired <= max(alone.desired, n + not_ready)


@pytest.mark.parametrize(
    "steps, fragment",
    [
        (  # the issue's first table: a gap from 50 to 100
            [
                {"lower_bound": 0, "upper_bound": 50, "adjustment": 1},
                {"lower_bound": 100, "adjustment": 3},
                {"upper_bound": 0, "adjustment": -1},
            ],
            "gap from 50 to 100",
        ),
        ([{"lower_bound": 0, "upper_bound": 50, "adjustment": 1}], "needs no upper_bound"),  # issue's second
        ([{"lower_bound": -50, "upper_bound": 0, "adjustment": -1}], "needs no lower_bound"),
        (
            [{"lower_bound": 0, "upper_bound": 20, "adjustment": 1}, {"lower_bound": 10, "adjustment": 2}],
            "overlap",
        ),
        ([{"lower_bound": 10, "adjustment": 1}], "gap between the threshold"),
        ([{"adjustment": 1}], "neither bound"),
        ([{"lower_bound": 0, "adjustment": 1}, {"upper_bound": -10, "adjustment": -1}], "gap from -10 to 0"),
    ],
)
def test_step_tables_aws_would_refuse(steps: list[dict[str, float]], fragment: str) -> None:
    with pytest.raises(ValidationError) as e:
        PolicySpec.model_validate({"name": "s", "threshold": 100, "steps": steps})
    message = str(e.value)
    assert "steps" in message and fragment in message


@given(
    cuts=st.lists(st.integers(min_value=1, max_value=500), min_size=0, max_size=4, unique=True),
    below=st.lists(st.integers(min_value=1, max_value=500), min_size=0, max_size=4, unique=True),
    with_below=st.booleans(),
    diff=st.floats(min_value=-1e4, max_value=1e4),
)
def test_a_valid_step_table_covers_every_metric_in_its_directions(
    cuts: list[int], below: list[int], with_below: bool, diff: float
) -> None:
    ups = [0, *sorted(cuts)]
    steps = [
        {"lower_bound": lo, **({"upper_bound": hi} if hi is not None else {}), "adjustment": 1}
        for lo, hi in zip(ups, [*ups[1:], None], strict=True)
    ]
    if with_below:
        downs = [0, *sorted(-b for b in below)][::-1]  # 0, -b1, -b2 ... descending
        downs = sorted({0, *(-b for b in below)}, reverse=True)
        for hi, lo in zip(downs, [*downs[1:], None], strict=True):
            steps.append(
                {"upper_bound": hi, **({"lower_bound": lo} if lo is not None else {}), "adjustment": -1}
            )
    spec = PolicySpec.model_validate({"name": "s", "threshold": 0, "steps": steps})
    found = find_step(spec.steps or [], diff)
    assert (found is not None) == (diff >= 0 or with_below)


def test_rate_limits_issue_example_and_hpa_period_rule() -> None:
    """From 20 servers with a low metric, scale-in policies percent 10 / 60 s and servers 4 / 60 s with
    select_policy min remove 2 in the first period; the next period starts from 18."""
    spec = tt(
        stabilization_window_s=0,
        behavior={
            "scale_down": {
                "select_policy": "min",
                "policies": [
                    {"type": "percent", "value": 10, "period_s": 60},
                    {"type": "servers", "value": 4, "period_s": 60},
                ],
            }
        },
    )
    state, current, now = PolicyState(), 20, T0
    seen = []
    for _ in range(9):
        d, state = evaluate_policy(spec, current=current, metric=5, now=now, state=state)
        seen.append(d.desired)
        assert d.reason is ReasonCode.SCALE_DOWN_LIMIT
        current, now = d.desired, now + timedelta(seconds=15)
    assert seen == [18, 18, 18, 18, 16, 16, 16, 16, 14]  # 20 x 0.9 = 18, 18 x 0.9 = 16.2 -> 16, ...
    maxed = spec.model_copy(
        update={
            "behavior": Behavior.model_validate(
                {
                    "scale_down": {
                        "policies": [
                            {"type": "percent", "value": 10, "period_s": 60},
                            {"type": "servers", "value": 4, "period_s": 60},
                        ]
                    }
                }
            )
        }
    )
    d, _ = evaluate_policy(maxed, current=20, metric=5, now=T0, state=PolicyState())
    assert d.desired == 16  # select_policy max (the default): the largest change


def test_scale_up_rate_limit_disabled_direction_and_max_step_together() -> None:
    up = {
        "policies": [
            {"type": "servers", "value": 2, "period_s": 60},
            {"type": "percent", "value": 50, "period_s": 60},
        ]
    }
    spec = tt(behavior={"scale_up": up})
    d, _ = evaluate_policy(spec, current=4, metric=200, now=T0, state=PolicyState())
    assert (d.desired, d.reason) == (6, ReasonCode.SCALE_UP_LIMIT)  # max(4 + 2, ceil(4 x 1.5))
    d, _ = evaluate_policy(
        tt(behavior={"scale_up": {**up, "select_policy": "min"}}, max_step=1),
        current=4,
        metric=200,
        now=T0,
        state=PolicyState(),
    )
    assert (d.desired, d.reason) == (5, ReasonCode.MAX_STEP_LIMITED)  # max_step still applies after
    d, _ = evaluate_policy(
        tt(behavior={"scale_up": {"select_policy": "disabled"}}),
        current=4,
        metric=200,
        now=T0,
        state=PolicyState(),
    )
    assert (d.desired, d.reason) == (4, ReasonCode.SCALE_UP_LIMIT)
    with pytest.raises(ValidationError, match="same setting"):
        tt(stabilization_window_s=60, behavior={"scale_down": {"stabilization_window_s": 30}})
    assert tt(behavior={"scale_down": {"stabilization_window_s": 30}}).stabilization_window_s == 30


@settings(max_examples=200)
@given(
    value=st.integers(min_value=1, max_value=10),
    percent=st.integers(min_value=1, max_value=200),
    period=st.integers(min_value=15, max_value=300),
    select=st.sampled_from(["max", "min"]),
    up=st.booleans(),
    gaps=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=30),
)
def test_rate_limits_hold_over_any_period(
    value: int, percent: int, period: int, select: str, up: bool, gaps: list[int]
) -> None:
    """Within any period, the pool moves no further than the loosest policy allows from the count at
    the start of that period; every clamp is explained by ScaleUpLimit / ScaleDownLimit."""
    rules = {
        "select_policy": select,
        "policies": [
            {"type": "servers", "value": value, "period_s": period},
            {"type": "percent", "value": min(percent, 100) if not up else percent, "period_s": period},
        ],
    }
    spec = tt(stabilization_window_s=0, behavior={"scale_up" if up else "scale_down": rules})
    state, current, now = PolicyState(), 50, T0
    history = [(now, current)]
    for gap in gaps:
        d, state = evaluate_policy(spec, current=current, metric=500 if up else 1, now=now, state=state)
        if d.desired != d.raw and d.clamps:
            assert d.clamps[0].reason in (
                ReasonCode.SCALE_UP_LIMIT,
                ReasonCode.SCALE_DOWN_LIMIT,
                ReasonCode.AT_MIN_SERVERS,
            )
        current = d.desired
        history.append((now, current))
        # the count at the start of the period: the last one recorded at or before its start
        base = [c for t, c in history if t <= now - timedelta(seconds=period)][-1:] or [history[0][1]]
        start = base[0]
        loosest = (
            max(start + value, math.ceil(start * (1 + percent / 100)))
            if up
            else min(start - value, int(start * (1 - min(percent, 100) / 100)))
        )
        assert (current <= max(loosest, start)) if up else (current >= min(loosest, start))
        now += timedelta(seconds=gap)


@settings(max_examples=200)
@given(
    window=st.integers(min_value=1, max_value=600),
    series=st.lists(st.tuples(st.integers(min_value=1, max_value=60), metrics), min_size=1, max_size=60),
)
def test_no_scale_up_above_the_lowest_recommendation_in_the_window(
    window: int, series: list[tuple[int, float]]
) -> None:
    spec = tt(stabilization_window_s=0, behavior={"scale_up": {"stabilization_window_s": window}})
    state, now, current = PolicyState(), T0, 10
    seen: list[tuple[datetime, int]] = []
    for gap, m in series:
        now += timedelta(seconds=gap)
        d, state = evaluate_policy(spec, current=current, metric=m, now=now, state=state)
        seen.append((now, d.raw))
        assert len(state.up_history) <= MAX_HISTORY
        if d.desired > current:
            assert min(r for t, r in seen if t > now - timedelta(seconds=window)) >= d.desired
        if any(c.reason is ReasonCode.SCALE_UP_STABILIZED for c in d.clamps):
            assert d.desired < d.raw
        current = d.desired


def test_an_evaluation_error_is_a_held_decision() -> None:
    d = evaluation_error_decision(tt(), current=3, now=T0, error=ValueError("boom"))
    assert (d.desired, d.direction, d.reason) == (3, Direction.NONE, ReasonCode.EVALUATION_ERROR)
    assert "ValueError: boom" in d.formula and not d.as_recommendation().abstain
