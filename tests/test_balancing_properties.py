"""Property tests of the balancing algorithms in poolctl.domain.balancing."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import (
    Balancing,
    ConsistentHashSelector,
    LeastConnectionsSelector,
    Member,
    MemberState,
    NoHealthyMember,
    RoundRobinSelector,
    SmoothWeightedSelector,
    diff_members,
    make_selector,
    stable_hash,
    sticky_token,
)

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
states = st.sampled_from(list(MemberState))


def member(sid: str, weight: int = 1, state: MemberState = MemberState.IN_ROTATION, conns: int = 0) -> Member:
    return Member(
        server_id=sid,
        address=f"127.0.0.1:{1000 + stable_hash(sid) % 60000}",
        weight=weight,
        state=state,
        active_connections=conns,
    )


@st.composite
def member_sets(draw: st.DrawFn, min_size: int = 1, max_size: int = 8, max_weight: int = 6) -> list[Member]:
    names = draw(st.lists(ids, min_size=min_size, max_size=max_size, unique=True))
    return [
        member(n, draw(st.integers(0, max_weight)), draw(states), draw(st.integers(0, 20))) for n in names
    ]


def candidates(members: list[Member]) -> set[str]:
    return {m.server_id for m in members if m.state is MemberState.IN_ROTATION and m.weight > 0}


# --- exact distribution over a cycle ----------------------------------------------------------------------


@given(member_sets(), st.integers(0, 5))
def test_round_robin_gives_each_candidate_one_turn_per_cycle(members: list[Member], cycles: int) -> None:
    cands = candidates(members)
    sel = RoundRobinSelector(members)
    if not cands:
        with pytest.raises(NoHealthyMember):
            sel.pick()
        return
    picks = Counter(sel.pick().server_id for _ in range(len(cands) * (cycles + 1)))
    assert picks == {sid: cycles + 1 for sid in cands}


@given(member_sets(max_weight=8), st.integers(1, 4))
def test_smooth_weighted_matches_weights_exactly_over_a_cycle(members: list[Member], cycles: int) -> None:
    weights = {m.server_id: m.weight for m in members if m.server_id in candidates(members)}
    if not weights:
        return
    sel = SmoothWeightedSelector(members)
    total = sum(weights.values())
    for _ in range(cycles):
        picks = Counter(sel.pick().server_id for _ in range(total))
        assert picks == weights


@given(st.lists(st.integers(1, 12), min_size=2, max_size=6))
def test_smooth_weighted_interleaves(weights: list[int]) -> None:
    """A server of weight w >= 3 is never picked w times in a row when the other weights sum to at
    least 2 (so interleaving is possible): weights 3,1,1 give a b a c a, never a a a."""
    members = [member(f"s{i}", w) for i, w in enumerate(weights)]
    sel = SmoothWeightedSelector(members)
    total = sum(weights)
    seq = [sel.pick().server_id for _ in range(total * 3)]  # several cycles: runs across cycle borders count
    longest: Counter[str] = Counter()
    run = 0
    for i, sid in enumerate(seq):
        run = run + 1 if i and seq[i - 1] == sid else 1
        longest[sid] = max(longest[sid], run)
    for i, w in enumerate(weights):
        if w >= 3 and total - w >= 2:
            assert longest[f"s{i}"] < w, (weights, seq)


def test_smooth_weighted_is_nginx_sequence() -> None:
    sel = SmoothWeightedSelector([member("a", 5), member("b", 1), member("c", 1)])
    assert "".join(sel.pick().server_id for _ in range(7)) == "aabacaa"
    sel = SmoothWeightedSelector([member("a", 3), member("b", 1), member("c", 1)])
    seq = "".join(sel.pick().server_id for _ in range(10))
    assert "aaa" not in seq and Counter(seq) == {"a": 6, "b": 2, "c": 2}


# --- consistent hashing -----------------------------------------------------------------------------------

HASH_TOLERANCE = 0.05
"""Sampling noise allowed between the keys moved and the leaver's share of the ring (2,000 keys: sd <= 1.2%)."""


def ring_share(sel: ConsistentHashSelector, server_id: str) -> float:
    """The part of the hash space a member owns: the arcs that end at its points."""
    space = 1 << 64
    points, owners = sel._points, sel._owners
    owned = 0
    for i, (p, m) in enumerate(zip(points, owners, strict=True)):
        prev = points[i - 1] if i else points[-1] - space
        if m.server_id == server_id:
            owned += p - prev
    return owned / space


@settings(max_examples=60, deadline=None)
@given(st.lists(ids, min_size=2, max_size=12, unique=True), st.data())
def test_consistent_hash_moves_only_the_leavers_keys(names: list[str], data: st.DataObject) -> None:
    members = [member(n) for n in names]
    leaver = data.draw(st.sampled_from(names))
    keys = [f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(2000)]
    before = ConsistentHashSelector(members)
    after = ConsistentHashSelector([m for m in members if m.server_id != leaver])
    moved = 0
    for k in keys:
        b, a = before.pick(k).server_id, after.pick(k).server_id
        if b != a:
            assert b == leaver, "a key moved although its server stayed"
            moved += 1
    # only the leaver's keys move: as many as its share of the ring (about 1/N, with ~8% ring noise)
    assert abs(moved / len(keys) - ring_share(before, leaver)) <= HASH_TOLERANCE


@settings(deadline=None)  # builds two rings of up to 1,280 points per example: slow on a busy machine
@given(st.lists(ids, min_size=1, max_size=8, unique=True), st.lists(ids, min_size=1, max_size=20))
def test_consistent_hash_is_deterministic_and_order_independent(names: list[str], keys: list[str]) -> None:
    a = ConsistentHashSelector([member(n) for n in names])
    b = ConsistentHashSelector([member(n) for n in reversed(names)])
    assert [a.pick(k).server_id for k in keys] == [b.pick(k).server_id for k in keys]


# --- least connections ------------------------------------------------------------------------------------


@given(member_sets(), st.lists(st.tuples(st.integers(0, 7), st.integers(-1, 1)), max_size=30))
def test_least_connections_never_picks_a_busier_server(
    members: list[Member], moves: list[tuple[int, int]]
) -> None:
    """Busier per unit of weight (HAProxy leastconn): the pick has the lowest connections / weight."""
    cands = sorted(candidates(members))
    weight = {m.server_id: m.weight for m in members}
    sel = LeastConnectionsSelector(members)
    if not cands:
        with pytest.raises(NoHealthyMember):
            sel.pick(connections={})
        return
    conns = {m.server_id: m.active_connections for m in members}
    for idx, delta in moves:
        sid = cands[idx % len(cands)]
        conns[sid] = max(0, conns[sid] + delta)
        picked = sel.pick(connections=conns).server_id
        assert picked in cands
        assert Fraction(conns[picked], weight[picked]) == min(Fraction(conns[c], weight[c]) for c in cands)
        conns[picked] += 1  # the pick opens a connection


def test_least_connections_ties_go_round_robin() -> None:
    sel = LeastConnectionsSelector([member("a"), member("b"), member("c")])
    assert [sel.pick(connections={}).server_id for _ in range(6)] == list("abcabc")


@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 12))
def test_least_connections_shares_long_requests_by_weight(wa: int, wb: int, rounds: int) -> None:
    """Requests that stay in flight end up shared in proportion to the weights: 3:1 and 40 give 30/10."""
    sel = LeastConnectionsSelector([member("a", wa), member("b", wb)])
    conns = {"a": 0, "b": 0}
    for _ in range((wa + wb) * rounds):
        conns[sel.pick(connections=conns).server_id] += 1
    assert conns == {"a": wa * rounds, "b": wb * rounds}


def test_least_connections_3_to_1_with_40_in_flight() -> None:
    sel = LeastConnectionsSelector([member("a", 3), member("b", 1)])
    conns = {"a": 0, "b": 0}
    for _ in range(40):
        conns[sel.pick(connections=conns).server_id] += 1
    assert conns == {"a": 30, "b": 10}


# --- nobody out of rotation -------------------------------------------------------------------------------


@given(
    st.sampled_from(["round_robin", "least_connections", "ip_hash", "weighted"]),
    member_sets(min_size=0),
    st.lists(st.tuples(ids, st.booleans()), max_size=30),
    st.booleans(),
    st.sampled_from(["keep", "move"]),
)
def test_nothing_picks_a_server_out_of_rotation(
    algorithm: str, members: list[Member], requests: list[tuple[str, bool]], sticky: bool, drain_sticky: str
) -> None:
    """Only candidates are picked; the one exception is a sticky client of a draining server with
    drain_sticky: keep (HAProxy's persistence), which stays on it even when nobody else is in rotation."""
    cands = candidates(members)
    by_token = {sticky_token(m.server_id): m for m in members}
    bal = Balancing(algorithm, members, sticky=sticky, drain_sticky=drain_sticky)
    all_tokens = [sticky_token(m.server_id) for m in members]
    for i, (key, with_cookie) in enumerate(requests):
        cookie = all_tokens[i % len(all_tokens)] if with_cookie and all_tokens else None
        named = by_token.get(cookie or "")
        kept = sticky and drain_sticky == "keep" and named is not None and named.state is MemberState.DRAINING
        if not cands and not kept:
            with pytest.raises(NoHealthyMember):
                bal.pick(key, cookie, {})
            continue
        p = bal.pick(key, cookie, {})
        if kept:
            assert named is not None and p.member.server_id == named.server_id and p.set_cookie is None
        else:
            assert p.member.server_id in cands


@pytest.mark.parametrize("drain_sticky", ["keep", "move"])
def test_sticky_cookie_keeps_server_and_repicks_when_it_leaves_rotation(drain_sticky: str) -> None:
    a, b = member("a"), member("b")
    bal = Balancing("round_robin", [a, b], sticky=True, drain_sticky=drain_sticky)
    first = bal.pick("1.2.3.4")
    assert first.set_cookie == sticky_token(first.member.server_id)
    for _ in range(5):
        again = bal.pick("1.2.3.4", first.set_cookie)
        assert again.member.server_id == first.member.server_id and again.set_cookie is None
    other = b if first.member.server_id == "a" else a
    drained = first.member.model_copy(update={"state": MemberState.DRAINING})
    bal.set_members([drained, other])
    if drain_sticky == "keep":  # served by the draining server until the drain ends
        kept = bal.pick("1.2.3.4", first.set_cookie)
        assert kept.member.server_id == first.member.server_id and kept.set_cookie is None
        bal.set_members([first.member.model_copy(update={"state": MemberState.OUT}), other])
    moved = bal.pick("1.2.3.4", first.set_cookie)
    assert moved.member.server_id == other.server_id
    assert moved.set_cookie == sticky_token(other.server_id)
    assert bal.pick("x", "garbage").member.server_id == other.server_id


def test_membership_change_keeps_round_robin_turn() -> None:
    sel = RoundRobinSelector([member("a"), member("b"), member("c")])
    assert sel.pick().server_id == "a"
    sel.set_members([member("a"), member("c")])
    assert [sel.pick().server_id for _ in range(3)] == ["c", "a", "c"]


def test_diff_members() -> None:
    cur = [member("a"), member("b"), member("c", weight=2)]
    want = [member("a", conns=5), member("c", weight=3), member("d")]
    d = diff_members(cur, want)
    assert (d.added, d.removed, d.updated, d.unchanged) == (["d"], ["b"], ["c"], ["a"])
    assert not diff_members(want, want).changed


def test_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown algorithm"):
        make_selector("random")


# --- the spec ---------------------------------------------------------------------------------------------


def test_spec_defaults_and_validation() -> None:
    spec = LoadBalancerSpec(name="web")
    assert spec.effective_admin_port == 9080 and spec.drain_timeout_s == 30 and spec.status == "active"
    with pytest.raises(ValueError, match="ssl_enabled"):
        LoadBalancerSpec(name="web", protocol="https")
    with pytest.raises(ValueError, match="ssl_certificate and ssl_key"):
        LoadBalancerSpec(name="web", protocol="https", ssl_enabled=True)
    with pytest.raises(ValueError, match="not an IPv4"):
        LoadBalancerSpec(name="web", ip_address="example.com")
    with pytest.raises(ValueError, match="above 65535"):
        LoadBalancerSpec(name="web", port=65000)
    with pytest.raises(ValueError, match="Extra inputs"):
        LoadBalancerSpec(name="web", algoritm="ip_hash")  # type: ignore[call-arg]
    ok = LoadBalancerSpec(
        name="web",
        protocol="https",
        ssl_enabled=True,
        ssl_certificate="c.pem",
        ssl_key="k.pem",
        port=443,
        algorithm="least_connections",
        sticky_sessions=True,
    )
    assert ok.effective_admin_port == 1443
    h = LoadBalancerSpec(name="web", driver="haproxy", haproxy={"stats_socket": "/tmp/s.sock"})
    assert h.haproxy_backend == "web"
