"""Unit and property tests of the pure recovery pieces: the error-retry backoff (domain.error_retry), the
injected provider faults (domain.provider_faults) and the drift plan (domain.drift)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from poolctl.domain.drift import OrphanPolicy, drift_due, plan_drift
from poolctl.domain.error_retry import after_failure, error_reason, retry_delay_s, retry_due
from poolctl.domain.provider_faults import Fault, ProviderFaults, draw, fault_for
from poolctl.domain.provider_options import provider_option_problems

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
seconds = st.floats(min_value=0.001, max_value=86_400, allow_nan=False, allow_infinity=False)


def test_backoff_doubles_from_initial_up_to_the_cap() -> None:
    assert [retry_delay_s(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


@given(st.integers(min_value=1, max_value=10_000), seconds, seconds)
def test_backoff_stays_within_initial_and_cap(failures: int, initial_s: float, max_s: float) -> None:
    delay = retry_delay_s(failures, initial_s, max_s)
    assert min(initial_s, max_s) <= delay <= max(max_s, min(initial_s, max_s))
    assert delay <= retry_delay_s(failures + 1, initial_s, max_s)  # never shrinks


def test_backoff_refuses_zero_failures() -> None:
    with pytest.raises(ValueError, match="failures"):
        retry_delay_s(0, 1, 2)


def test_failures_in_a_row_count_up_and_push_the_next_try_back() -> None:
    first = after_failure(None, "scale up #1 failed: boom", T0, initial_s=2, max_s=5)
    assert (first.failures, first.next_retry_at) == (1, T0 + timedelta(seconds=2))
    assert not retry_due(first, T0 + timedelta(seconds=1.9)) and retry_due(first, T0 + timedelta(seconds=2))
    t1 = first.next_retry_at
    second = after_failure(first, "scale up #2 failed: still", t1, initial_s=2, max_s=5)
    third = after_failure(second, "scale up #3 failed: still", second.next_retry_at, initial_s=2, max_s=5)
    assert (second.failures, second.next_retry_at - t1) == (2, timedelta(seconds=4))
    assert (third.failures, third.next_retry_at - third.failed_at) == (3, timedelta(seconds=5))  # capped
    reason = error_reason(third)
    assert "scale up #3 failed: still" in reason and "failed 3x" in reason and "in 5s" in reason


def test_a_pool_in_error_without_retry_state_may_act() -> None:
    assert retry_due(None, T0)


def test_no_fault_options_means_no_fault() -> None:
    faults = ProviderFaults()
    assert not faults.any
    assert all(fault_for(faults, key=f"k{i}", call=1, elapsed_s=0) is Fault.NONE for i in range(100))


def test_the_outage_window_fails_every_call_then_none() -> None:
    faults = ProviderFaults(fail_for_s=120)
    assert fault_for(faults, key="k", call=7, elapsed_s=119.9) is Fault.FAIL
    assert fault_for(faults, key="k", call=8, elapsed_s=120) is Fault.NONE


@given(st.text(max_size=40), st.integers(min_value=1, max_value=50))
def test_faults_are_deterministic_by_key_and_call(key: str, call: int) -> None:
    faults = ProviderFaults(fail_ratio=0.3, hang_ratio=0.3, hang_s=5)
    assert fault_for(faults, key=key, call=call, elapsed_s=1) is fault_for(
        faults, key=key, call=call, elapsed_s=1
    )
    assert 0 <= draw(key, call, "fail") < 1


def test_ratios_give_about_that_share_of_faults() -> None:
    faults = ProviderFaults(fail_ratio=0.25, hang_ratio=0.5, hang_s=1)
    seen = [fault_for(faults, key=f"scale/p/{i}", call=1, elapsed_s=0) for i in range(4000)]
    fail = seen.count(Fault.FAIL) / len(seen)
    hang = seen.count(Fault.HANG) / len(seen)
    assert 0.22 < fail < 0.28
    assert 0.34 < hang < 0.41  # half of the calls that did not fail
    assert all(
        fault_for(ProviderFaults(fail_ratio=1), key=f"{i}", call=1, elapsed_s=0) is Fault.FAIL
        for i in range(50)
    )


def test_a_hang_needs_a_duration() -> None:
    assert fault_for(ProviderFaults(hang_ratio=1), key="k", call=1, elapsed_s=0) is Fault.NONE


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"fail_ratio": 1.5}, "fail_ratio"),
        ({"fail_ratio": True}, "fail_ratio"),
        ({"hang_s": -1}, "hang_s"),
        ({"boot_delay_s": float("nan")}, "boot_delay_s"),
        ({"fail_for_s": "2m"}, "fail_for_s"),
        ({"fail_rate": 0.5}, "fail_rate"),
    ],
)
def test_bad_fault_options_are_refused_naming_the_option(options: dict, where: str) -> None:
    problems = provider_option_problems("local", options)
    assert problems and problems[0][0] == where
    with pytest.raises(ValidationError):
        ProviderFaults.model_validate(options)


def test_fault_options_are_local_provider_options() -> None:
    ok = {"fail_ratio": 0.5, "hang_ratio": 0.1, "hang_s": 30, "fail_for_s": 120, "boot_delay_s": 2.5}
    assert provider_option_problems("local", ok) == []


def test_drift_plan_adopts_running_orphans_and_waits_for_booting_ones() -> None:
    plan = plan_drift({"b": True, "a": True, "c": False}, ["z", "y"], OrphanPolicy.ADOPT)
    assert (plan.adopt, plan.waiting, plan.terminate, plan.forget) == (["a", "b"], ["c"], [], ["y", "z"])
    assert plan.acts


def test_drift_plan_terminates_every_orphan_under_the_terminate_policy() -> None:
    plan = plan_drift({"b": True, "c": False}, [], OrphanPolicy.TERMINATE)
    assert (plan.adopt, plan.waiting, plan.terminate, plan.forget) == ([], [], ["b", "c"], [])
    assert not plan_drift({}, [], OrphanPolicy.TERMINATE).acts


@given(st.dictionaries(st.text(max_size=5), st.booleans()), st.lists(st.text(max_size=5), unique=True))
def test_drift_plan_handles_every_server_once(orphans: dict[str, bool], gone: list[str]) -> None:
    for policy in OrphanPolicy:
        plan = plan_drift(orphans, [g for g in gone if g not in orphans], policy)
        acted = plan.adopt + plan.waiting + plan.terminate
        assert sorted(acted) == sorted(orphans) and len(set(acted)) == len(acted)


def test_drift_checks_are_due_every_interval_and_can_be_turned_off() -> None:
    assert drift_due(None, 100, 60) and drift_due(40, 100, 60) and not drift_due(41, 100, 60)
    assert not drift_due(None, 100, 0)
