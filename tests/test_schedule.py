"""Schedule math: cron in an IANA time zone, windows, and DST transitions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from poolctl.domain.arbitration import CooldownState, arbitrate
from poolctl.domain.decision import ReasonCode
from poolctl.domain.evaluation import PolicyState, evaluate_policy
from poolctl.domain.policy_spec import PolicySpec, ScheduleSpec
from poolctl.domain.schedule import next_fire, schedule_window_active


def sched(cron: str, tz: str, **kw: object) -> ScheduleSpec:
    doc: dict[str, object] = {"cron": cron, "timezone": tz, "min_servers": 4}
    doc.update(kw)
    if "end_cron" not in doc:
        doc.setdefault("duration_s", 3600)
    return ScheduleSpec.model_validate(doc)


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_daily_fire_follows_local_time_across_dst() -> None:
    s = sched("0 9 * * *", "America/New_York")
    assert next_fire(s, utc(2024, 3, 9, 0)) == utc(2024, 3, 9, 14)  # EST, UTC-5
    assert next_fire(s, utc(2024, 3, 10, 0)) == utc(2024, 3, 10, 13)  # EDT, UTC-4 (DST began 07:00Z)
    assert next_fire(s, utc(2024, 11, 3, 0)) == utc(2024, 11, 3, 14)  # back to EST


def test_skipped_time_fires_at_end_of_gap_new_york() -> None:
    s = sched("30 2 * * *", "America/New_York")
    # 2024-03-10 02:30 local does not exist; it fires at 03:00 EDT = 07:00Z
    assert next_fire(s, utc(2024, 3, 10, 0)) == utc(2024, 3, 10, 7)
    assert next_fire(s, utc(2024, 3, 10, 7)) == utc(2024, 3, 11, 6, 30)


def test_repeated_time_fires_once_new_york() -> None:
    s = sched("30 1 * * *", "America/New_York", duration_s=7200)
    first = next_fire(s, utc(2024, 11, 3, 0))
    assert first == utc(2024, 11, 3, 5, 30)  # 01:30 EDT, the first occurrence
    assert next_fire(s, first) == utc(2024, 11, 4, 6, 30)  # not 01:30 EST the same night
    # inside the repeated hour (01:45 EST) the last fire is still the 01:30 EDT one
    active, start, end = schedule_window_active(s, utc(2024, 11, 3, 6, 45))
    assert active and start == utc(2024, 11, 3, 5, 30) and end == utc(2024, 11, 3, 7, 30)


def test_europe_berlin_transitions() -> None:
    s = sched("30 2 * * *", "Europe/Berlin")
    assert next_fire(s, utc(2024, 3, 30, 23)) == utc(2024, 3, 31, 1)  # gap: 03:00 CEST
    assert next_fire(s, utc(2024, 10, 26, 23)) == utc(2024, 10, 27, 0, 30)  # 02:30 CEST, once
    assert next_fire(s, utc(2024, 10, 27, 0, 30)) == utc(2024, 10, 28, 1, 30)  # 02:30 CET next day
    hourly = sched("0 * * * *", "Europe/Berlin")
    # every wall-clock hour fires once; the repeated 02:00 does not fire twice
    fires = []
    at = utc(2024, 10, 26, 22)
    for _ in range(5):
        at = next_fire(hourly, at)
        fires.append(at.astimezone(UTC).hour)
    assert fires == [23, 0, 2, 3, 4]  # 01:00, 02:00 CEST, (no 02:00 CET), 03:00, 04:00, 05:00 CET


def test_window_by_duration_and_by_end_cron() -> None:
    s = sched("0 9 * * 1-5", "America/New_York", duration_s=8 * 3600)
    active, start, end = schedule_window_active(s, utc(2024, 3, 11, 14))  # Monday 10:00 EDT
    assert active and start == utc(2024, 3, 11, 13) and end == utc(2024, 3, 11, 21)
    active, start, end = schedule_window_active(s, utc(2024, 3, 11, 21))  # 17:00 EDT: closed
    assert not active and start == utc(2024, 3, 12, 13)
    assert schedule_window_active(s, utc(2024, 3, 11, 13))[0]  # opens exactly at the fire
    e = sched("0 22 * * *", "Europe/Berlin", end_cron="0 6 * * *")
    active, start, end = schedule_window_active(e, utc(2024, 1, 16, 3))  # 04:00 CET
    assert active and start == utc(2024, 1, 15, 21) and end == utc(2024, 1, 16, 5)
    assert not schedule_window_active(e, utc(2024, 1, 16, 5))[0]


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule_window_active(sched("0 9 * * *", "UTC"), datetime(2024, 1, 1))


def test_schedule_policy_sets_floor_and_desired() -> None:
    p = PolicySpec.model_validate(
        {
            "name": "biz",
            "type": "schedule",
            "schedule": {
                "cron": "0 9 * * *",
                "timezone": "Europe/Berlin",
                "min_servers": 3,
                "desired_servers": 5,
                "duration_s": 3600,
            },
        }
    )
    on, _ = evaluate_policy(p, current=2, metric=None, now=utc(2024, 7, 1, 7, 30), state=PolicyState())
    assert on.reason is ReasonCode.SCHEDULE_ACTIVE and on.desired == 5 and on.floor == 3
    pool = arbitrate(
        [on.as_recommendation()], current=2, pool_min=1, pool_max=10, now=on.at, cooldowns=CooldownState()
    )
    assert pool.desired == 5
    off, _ = evaluate_policy(p, current=5, metric=None, now=utc(2024, 7, 1, 9), state=PolicyState())
    assert off.reason is ReasonCode.SCHEDULE_INACTIVE and off.abstain and off.floor is None
