"""Static pools, the pure parts: strict server addresses (IPv4, [IPv6], names, ports), the spec rules, how
an apply merges with servers added by hand, the membership plan, and rotation changes (healing)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from poolctl.domain.addresses import canonical_server_address, format_server_address, parse_server_address
from poolctl.domain.health import HealthState
from poolctl.domain.pool_spec import PoolSpec
from poolctl.domain.static_pool import (
    Member,
    ServerChangeRequest,
    StaticServer,
    apply_server_change,
    merge_static_servers,
    plan_membership,
    rotation_changes,
    server_change_refusal,
)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("127.0.0.1:8001", "127.0.0.1:8001"),
        ("[::1]:8001", "[::1]:8001"),
        ("[0:0:0:0:0:0:0:1]:80", "[::1]:80"),
        ("[2001:DB8::5]:8080", "[2001:db8::5]:8080"),
        ("Web-1.Example.com:443", "web-1.example.com:443"),
        ("localhost:65535", "localhost:65535"),
        ("10.0.0.5:1", "10.0.0.5:1"),
    ],
)
def test_good_addresses_are_canonical(text: str, canonical: str) -> None:
    assert canonical_server_address(text) == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("::1:8001", "needs brackets"),
        ("[::1]", "[address]:port"),
        ("[::1]8001", "[address]:port"),
        ("[fe80::1%eth0]:80", "zone ids"),
        ("[::]:80", "not the address of one server"),
        ("[zz::1]:80", "not an IPv6 address"),
        ("0.0.0.0:80", "not the address of one server"),
        ("224.0.0.1:80", "not the address of one server"),
        ("256.1.1.1:80", "not an IPv4 address"),
        ("1.2.3:80", "not an IPv4 address"),
        ("127.0.0.1", "not a host:port address"),
        (":80", "not a host:port address"),
        ("127.0.0.1:0", "outside 1-65535"),
        ("127.0.0.1:65536", "outside 1-65535"),
        ("127.0.0.1:08", "leading zero"),
        ("127.0.0.1:-1", "not a number"),
        ("127.0.0.1:８０", "not a number"),
        ("a_b:80", "not a host name"),
        ("-a.example:80", "not a host name"),
        (" 10.0.0.1:80", "no spaces"),
        ("", "not a host:port address"),
    ],
)
def test_bad_addresses_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_server_address(text)
    assert message in str(caught.value)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_every_unicast_ip_and_port_round_trips(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255" or "%" in str(ip):
        return
    text = format_server_address(str(ip), port)
    host, got_port = parse_server_address(text)
    assert (ipaddress.ip_address(host), got_port) == (ip, port)
    assert canonical_server_address(text) == text


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        host, port = parse_server_address(text)
    except ValueError:
        return
    assert 1 <= port <= 65535 and host


def _pool(**kw: object) -> PoolSpec:
    return PoolSpec.model_validate({"name": "web", "provider": "static", **kw})


def test_spec_rules_for_static_pools() -> None:
    p = _pool(servers=[{"address": "127.0.0.1:8001", "weight": 2}], policies=[{"name": "cpu", "target": 50}])
    assert p.servers == [StaticServer(address="127.0.0.1:8001", weight=2)]
    assert p.policies[0].dry_run and p.initial_desired == 1
    for bad, message in [
        ({"servers": [{"address": "[::1]:1"}, {"address": "[0::1]:1"}]}, "listed twice"),
        ({"desired_servers": 1}, "a static pool's size is its servers list"),
        ({"servers": [{"address": "10.0.0.1:80", "weight": 257}]}, "less than or equal to 256"),
        ({"provider_options": {"x": 1}}, "the static provider has no options"),
    ]:
        with pytest.raises(ValidationError, match=message):
            _pool(**bad)
    with pytest.raises(ValidationError, match="only a static pool lists its servers"):
        PoolSpec.model_validate({"name": "web", "servers": [{"address": "10.0.0.1:80"}]})


def _servers(**weights: int) -> list[StaticServer]:
    return [StaticServer(address=f"10.0.0.{k[1:]}:80", weight=w) for k, w in weights.items()]


def test_apply_merges_like_kubectl_apply_and_keeps_hand_made_changes() -> None:
    first = _servers(a1=1, a2=1)
    assert merge_static_servers(None, first, {}) == {"10.0.0.1:80": 1, "10.0.0.2:80": 1}
    by_hand = {"10.0.0.1:80": 1, "10.0.0.2:80": 1, "10.0.0.9:80": 3}  # server add 10.0.0.9:80 --weight 3
    assert merge_static_servers(first, first, by_hand) == by_hand  # the file did not change
    changed = _servers(a1=4, a3=1)  # a1 reweighted, a2 removed, a3 added in the file
    assert merge_static_servers(first, changed, by_hand) == {
        "10.0.0.1:80": 4,
        "10.0.0.9:80": 3,
        "10.0.0.3:80": 1,
    }


def test_server_add_and_remove() -> None:
    reg: dict[str, int] = {"10.0.0.1:80": 1}
    assert "provider 'local'" in (
        server_change_refusal("local", reg, ServerChangeRequest(address="10.0.0.2:80"), pool="web") or ""
    )
    assert server_change_refusal("static", reg, ServerChangeRequest(address="10.0.0.2:80", remove=True),
                                 pool="web") == "10.0.0.2:80 is not a server of pool web"  # fmt: skip
    reg, r = apply_server_change(reg, ServerChangeRequest(address="10.0.0.2:80", weight=5))
    assert (r.action, r.weight, r.registered) == ("added", 5, 2)
    reg, r = apply_server_change(reg, ServerChangeRequest(address="10.0.0.2:80"))
    assert (r.action, r.weight) == ("unchanged", 5)
    reg, r = apply_server_change(reg, ServerChangeRequest(address="10.0.0.2:80", weight=2))
    assert (r.action, r.previous_weight, r.weight) == ("reweighted", 5, 2)
    reg, r = apply_server_change(reg, ServerChangeRequest(address="10.0.0.2:80", remove=True))
    assert (r.action, reg) == ("removed", {"10.0.0.1:80": 1})


def test_membership_plan() -> None:
    members = [
        Member(server_id="s1", host="10.0.0.1", port=80, weight=1),
        Member(server_id="s2", host="10.0.0.2", port=80, weight=1),
        Member(server_id="s6", host="::1", port=80, weight=1),
    ]
    plan = plan_membership({"10.0.0.1:80": 3, "10.0.0.4:80": 1, "[::1]:80": 1}, members)
    assert plan.to_register == {"10.0.0.4:80": 1}
    assert plan.to_deregister == ["s2"] and plan.reweight == {"s1": 3}
    assert plan_membership({"10.0.0.1:80": 1}, members[:1]).empty


def test_rotation_changes_record_leaving_and_returning_once() -> None:
    H, U, I = HealthState.HEALTHY, HealthState.UNHEALTHY, HealthState.INITIAL  # noqa: E741
    changes, out = rotation_changes([("a", H), ("b", U)], [])
    assert [(c.server_id, c.out) for c in changes] == [("b", True)] and out == ["b"]
    changes, out = rotation_changes([("a", H), ("b", U)], out)
    assert changes == [] and out == ["b"]
    changes, out = rotation_changes([("a", H), ("b", I)], out)
    assert changes == [] and out == ["b"]  # not healthy yet
    changes, out = rotation_changes([("a", H), ("b", H)], out)
    assert [(c.server_id, c.out) for c in changes] == [("b", False)] and out == []
    assert rotation_changes([("a", H)], ["gone"]) == ([], [])
