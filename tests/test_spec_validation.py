"""Spec validation without Temporal: any value in any number field is either accepted as a finite number in
range or refused with a SpecError (never another exception); the YAML loader's limits and scalars."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from poolctl.domain.errors import SpecError, printable
from poolctl.starter.spec_yaml import MAX_EXPANDED_NODES, SpecYamlError, load_yaml_documents
from poolctl.starter.specfile import parse_spec

BASE: dict[str, Any] = {
    "pools": [
        {
            "name": "web",
            "max_servers": 20,
            "health_check": {"interval": 10, "timeout": 2},
            "load_balancers": [{"name": "lb", "port": 18700}],
            "policies": [
                {"name": "cpu", "type": "cpu", "target": 50},
                {
                    "name": "steps",
                    "type": "custom",
                    "source": {"kind": "prometheus", "url": "http://127.0.0.1:9090", "query": "q"},
                    "threshold": 10,
                    "steps": [{"lower_bound": 0, "adjustment": 1}],
                },
                {
                    "name": "office",
                    "type": "schedule",
                    "schedule": {"cron": "0 8 * * *", "duration_s": 60, "min_servers": 2},
                },
            ],
        }
    ]
}

# (path into BASE, field): every number an operator can write
NUMBER_FIELDS = (
    [
        (("pools", 0), f)
        for f in ("min_servers", "max_servers", "desired_servers", "heal_after_s", "server_weight")
    ]
    + [
        (("pools", 0, "health_check"), f)
        for f in (
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
            "grace_period",
            "jitter",
            "port",
        )
    ]
    + [
        (("pools", 0, "load_balancers", 0), f)
        for f in ("port", "admin_port", "drain_timeout_s", "health_check_interval", "healthy_threshold")
    ]
    + [
        (("pools", 0, "policies", 0), f)
        for f in (
            "target",
            "tolerance_up",
            "tolerance_down",
            "evaluation_interval",
            "scale_out_cooldown_s",
            "scale_in_cooldown_s",
            "stabilization_window_s",
            "max_step",
            "min_servers",
            "max_servers",
            "cooldown_minutes",
        )
    ]
    + [
        (("pools", 0, "policies", 1), "threshold"),
        (("pools", 0, "policies", 1, "steps", 0), "adjustment"),
        (("pools", 0, "policies", 1, "steps", 0), "lower_bound"),
        (("pools", 0, "policies", 1, "source"), "timeout_s"),
        (("pools", 0, "policies", 2, "schedule"), "duration_s"),
        (("pools", 0, "provider_options"), "startup_timeout_s"),
    ]
)

VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.booleans(),
    st.sampled_from(["yes", "no", "on", "1:30", "0x10", "1e300", ".inf", "", "5"]),
)


def _spec_with(path: tuple[Any, ...], field: str, value: Any) -> str:
    import copy

    doc = copy.deepcopy(BASE)
    node: Any = doc
    for p in path:
        node = node.setdefault(p, {}) if isinstance(node, dict) else node[p]
    node[field] = value
    return yaml.safe_dump(doc)


@settings(max_examples=300, deadline=None)
@given(where=st.sampled_from(NUMBER_FIELDS), value=VALUES)
def test_any_number_is_accepted_finite_or_refused_with_a_spec_error(
    where: tuple[Any, str], value: Any
) -> None:
    path, field = where
    try:
        doc = parse_spec(_spec_with(path, field, value), "h.yaml")
    except SpecError as e:
        assert str(e).startswith("h.yaml: ")
        return
    node: Any = doc
    for p in path:
        node = getattr(node, p) if isinstance(p, str) else node[p]
    got = node.get(field) if isinstance(node, dict) else getattr(node, field, None)
    if isinstance(got, float):
        assert math.isfinite(got) and abs(got) <= 1e15
    if isinstance(got, int):
        assert not isinstance(value, bool) and abs(got) <= 10**6


def test_merge_keys_are_not_duplicates_but_repeated_keys_are() -> None:
    (doc,) = load_yaml_documents("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n")
    assert doc["b"] == {"x": 3, "y": 2}
    with pytest.raises(SpecYamlError, match="duplicate key 'x'"):
        load_yaml_documents("b:\n  x: 1\n  y: 2\n  x: 3\n")


def test_yaml_1_2_core_scalars() -> None:
    (doc,) = load_yaml_documents(
        "a: yes\nb: true\nc: 010\nd: 0x1f\ne: 1e3\nf: 1:30\ng: 2024-01-01\nh: .inf\ni: ~\nj: 0o17\nk: -.5\n"
    )
    assert doc == {
        "a": "yes",
        "b": True,
        "c": 10,
        "d": 31,
        "e": 1000.0,
        "f": "1:30",
        "g": "2024-01-01",
        "h": math.inf,
        "i": None,
        "j": 15,
        "k": -0.5,
    }


def test_aliases_within_the_bound_are_fine_and_beyond_it_refused() -> None:
    ok = "a: &a [" + ", ".join(["1"] * 100) + "]\nb: [" + ", ".join(["*a"] * 100) + "]\n"
    assert len(load_yaml_documents(ok)[0]["b"]) == 100
    too_many = "a: &a [" + ", ".join(["1"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 200) + "]\n"
    with pytest.raises(SpecYamlError, match=f"{MAX_EXPANDED_NODES:,}"):
        load_yaml_documents(too_many)


def test_printable_escapes_terminal_controls_and_keeps_text() -> None:
    assert printable("web") == "web"
    assert printable("\x1b[2Jé\u202e\r\x00") == "\\x1b[2Jé\\u202e\\x0d\\x00"
