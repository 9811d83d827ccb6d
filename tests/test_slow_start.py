"""Property tests of the slow start ramp (poolctl.domain.slow_start) and of how `Balancing` applies it."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from poolctl.domain.balancing import Balancing, Member, MemberState, stable_hash
from poolctl.domain.slow_start import MIN_FRACTION, WEIGHT_SCALE, ramp_fraction, slow_start_weight

weights = st.integers(0, 256)
durations = st.floats(0, 3600, allow_nan=False)
times = st.floats(-10, 7200, allow_nan=False)


def member(sid: str, weight: int = 1, state: MemberState = MemberState.IN_ROTATION) -> Member:
    return Member(
        server_id=sid, address=f"127.0.0.1:{1000 + stable_hash(sid) % 60000}", weight=weight, state=state
    )


@given(weights, durations, times, times)
def test_ramp_never_goes_down_and_stays_in_bounds(
    weight: int, slow_start_s: float, t1: float, t2: float
) -> None:
    lo, hi = sorted((t1, t2))
    a, b = slow_start_weight(weight, lo, slow_start_s), slow_start_weight(weight, hi, slow_start_s)
    assert 0 <= a <= b <= weight * WEIGHT_SCALE
    assert (a == 0) == (weight == 0)  # weight 0 gets nothing, any other weight something at once


@given(weights, durations, st.floats(0, 7200, allow_nan=False))
def test_full_weight_once_the_ramp_is_over(weight: int, slow_start_s: float, extra_s: float) -> None:
    assert slow_start_weight(weight, slow_start_s + extra_s, slow_start_s) == weight * WEIGHT_SCALE
    assert slow_start_weight(weight, extra_s, 0.0) == weight * WEIGHT_SCALE  # no slow start: full at once


@given(st.floats(0.001, 3600, allow_nan=False), st.floats(0, 1, allow_nan=False))
def test_ramp_is_linear_from_a_small_start(slow_start_s: float, part: float) -> None:
    f = ramp_fraction(part * slow_start_s, slow_start_s)
    assert f >= MIN_FRACTION
    if part < 1:
        assert abs(f - max(part, MIN_FRACTION)) < 1e-9


def share(bal: Balancing, n: int) -> Counter[str]:
    """Who gets `n` requests that all stay in flight (what least connections weighs)."""
    conns: Counter[str] = Counter()
    for _ in range(n):
        conns[bal.pick(connections=conns).member.server_id] += 1
    return conns


@settings(deadline=None)
@given(st.sampled_from(["round_robin", "weighted", "least_connections"]), st.integers(1, 4))
def test_a_new_member_ramps_up_then_gets_its_full_share(algorithm: str, weight: int) -> None:
    bal = Balancing(algorithm, [member("a", weight)], slow_start_s=10.0, now=0.0)
    bal.advance(20.0)  # "a" is at full speed
    bal.set_members([member("a", weight), member("b", weight)], now=20.0)
    assert bal.ramping
    early = share(bal, 160)
    assert early["b"] < early["a"] / 4  # 1/16 of the weight at first
    bal.advance(25.0)  # half way: about half the weight
    mid = share(bal, 160)
    assert early["b"] < mid["b"] < mid["a"]
    assert bal.advance(30.0) and not bal.ramping  # the ramp ends at 30 s
    assert share(bal, 160) == {"a": 80, "b": 80}


def test_back_from_out_ramps_but_back_from_draining_does_not() -> None:
    bal = Balancing("weighted", [member("a"), member("b")], slow_start_s=10.0, now=0.0)
    bal.advance(10.0)
    assert not bal.ramping
    bal.set_members([member("a"), member("b", state=MemberState.DRAINING)], now=11.0)
    bal.set_members([member("a"), member("b")], now=12.0)
    assert not bal.ramping  # a draining server kept serving: it is warm
    bal.set_members([member("a"), member("b", state=MemberState.OUT)], now=13.0)
    bal.set_members([member("a"), member("b")], now=14.0)
    assert bal.ramping and share(bal, 64)["b"] < 16  # back from unhealthy: cold again


@settings(max_examples=40, deadline=None)  # each example builds a few 1,000-point rings
@given(st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=6, unique=True))
def test_ip_hash_ramp_only_moves_keys_to_the_newcomer(names: list[str]) -> None:
    keys = [f"10.0.{i // 256}.{i % 256}" for i in range(300)]
    old = [member(n) for n in names]
    bal = Balancing("ip_hash", old, slow_start_s=10.0, now=0.0)
    bal.advance(10.0)
    before = {k: bal.pick(k).member.server_id for k in keys}
    bal.set_members([*old, member("new")], now=10.0)
    prev = before
    for t in (10.0, 13.0, 16.0, 20.0):
        bal.advance(t)
        now = {k: bal.pick(k).member.server_id for k in keys}
        assert all(now[k] in (prev[k], "new") for k in keys)  # keys only ever move to the newcomer
        assert all(prev[k] != "new" or now[k] == "new" for k in keys)  # and stay with it as it ramps
        prev = now
