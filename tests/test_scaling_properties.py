"""Property and table tests of the pure scaling decisions (policy_spec + scaling)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from poolctl.domain.arbitration import CooldownState, arbitrate
from poolctl.domain.decision import Direction, ReasonCode, Recommendation
from poolctl.domain.evaluation import MAX_HISTORY, PolicyState, evaluate_policy, pause, resume
from poolctl.domain.policy_spec import PolicySpec
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
