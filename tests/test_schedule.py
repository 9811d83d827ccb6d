"""Schedule math: cron in an IANA time zone, windows, and DST transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

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
    # a wildcard hour runs by the clock (Vixie cron): the repeated 02:00 fires in both occurrences
    fires = []
    at = utc(2024, 10, 26, 22)
    for _ in range(5):
        at = next_fire(hourly, at)
        fires.append(at.astimezone(UTC).hour)
    assert fires == [23, 0, 1, 2, 3]  # 01:00, 02:00 CEST, 02:00 CET, 03:00, 04:00 CET


def fires_between(s: ScheduleSpec, after: datetime, before: datetime) -> list[datetime]:
    out: list[datetime] = []
    at = after
    while (at := next_fire(s, at)) < before:
        out.append(at)
    return out


def test_wildcard_jobs_fire_in_the_repeated_hour_athens_2013() -> None:
    """Vixie cron: `*/30 * * * *` in Europe/Athens on 2013-10-27 (04:00 EEST -> 03:00 EET)."""
    s = sched("*/30 * * * *", "Europe/Athens", duration_s=1800, min_servers=5)
    assert fires_between(s, utc(2013, 10, 26, 23, 0), utc(2013, 10, 27, 2, 1)) == [
        utc(2013, 10, 26, 23, 30),
        utc(2013, 10, 27, 0, 0),
        utc(2013, 10, 27, 0, 30),
        utc(2013, 10, 27, 1, 0),
        utc(2013, 10, 27, 1, 30),
        utc(2013, 10, 27, 2, 0),
    ]
    # the window opened at 01:00Z (03:00 EET, the repeated hour) is open at 01:15Z: the pool keeps 5
    active, start, end = schedule_window_active(s, utc(2013, 10, 27, 1, 15))
    assert active and (start, end) == (utc(2013, 10, 27, 1, 0), utc(2013, 10, 27, 1, 30))
    p = PolicySpec.model_validate(
        {"name": "night", "type": "schedule", "schedule": s.model_dump(exclude_none=True)}
    )
    d, _ = evaluate_policy(p, current=5, metric=None, now=utc(2013, 10, 27, 1, 15), state=PolicyState())
    assert d.reason is ReasonCode.SCHEDULE_ACTIVE and d.floor == 5


def test_wildcard_hour_fires_in_the_repeated_hour_berlin_2025() -> None:
    s = sched("0 * * * *", "Europe/Berlin")
    assert fires_between(s, utc(2025, 10, 25, 23, 30), utc(2025, 10, 26, 2, 1)) == [
        utc(2025, 10, 26, 0),
        utc(2025, 10, 26, 1),
        utc(2025, 10, 26, 2),
    ]


@pytest.mark.parametrize(
    "cron, tz, after, before, expected",
    [
        # fixed-time jobs on the same nights still fire once, at the first occurrence
        (
            "30 3 * * *",
            "Europe/Athens",
            utc(2013, 10, 26, 12),
            utc(2013, 10, 27, 12),
            [utc(2013, 10, 27, 0, 30)],
        ),
        (
            "0 3 * * *",
            "Europe/Athens",
            utc(2013, 10, 26, 12),
            utc(2013, 10, 27, 12),
            [utc(2013, 10, 27, 0, 0)],
        ),
        (
            "30 2 * * *",
            "Europe/Berlin",
            utc(2025, 10, 25, 12),
            utc(2025, 10, 26, 12),
            [utc(2025, 10, 26, 0, 30)],
        ),
        (
            "0,30 2 * * *",
            "Europe/Berlin",
            utc(2025, 10, 25, 12),
            utc(2025, 10, 26, 12),
            [utc(2025, 10, 26, 0, 0), utc(2025, 10, 26, 0, 30)],
        ),
        # spring forward (Berlin 2025-03-30 02:00 CET -> 03:00 CEST): a wildcard job skips the lost hour,
        # a fixed-time job in it fires at the end of the gap
        (
            "30 * * * *",
            "Europe/Berlin",
            utc(2025, 3, 29, 23),
            utc(2025, 3, 30, 3, 1),
            [
                utc(2025, 3, 29, 23, 30),
                utc(2025, 3, 30, 0, 30),
                utc(2025, 3, 30, 1, 30),
                utc(2025, 3, 30, 2, 30),
            ],
        ),
        ("30 2 * * *", "Europe/Berlin", utc(2025, 3, 29, 23), utc(2025, 3, 30, 3, 1), [utc(2025, 3, 30, 1)]),
    ],
)
def test_fixed_and_wildcard_jobs_across_dst(
    cron: str, tz: str, after: datetime, before: datetime, expected: list[datetime]
) -> None:
    assert fires_between(sched(cron, tz), after, before) == expected


@pytest.mark.parametrize("field", ["cron", "end_cron"])
@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_a_schedule_that_can_never_fire_is_refused(field: str, expr: str) -> None:
    doc = {"cron": "0 9 * * *", "end_cron": "0 17 * * *", field: expr}
    with pytest.raises(ValidationError) as e:
        sched(doc["cron"], "UTC", end_cron=doc["end_cron"])
    err = e.value.errors()[0]
    assert err["loc"] == (field,) and "can never fire" in err["msg"]


def test_29_february_stays_valid() -> None:
    s = sched("0 0 29 2 *", "UTC")
    assert next_fire(s, utc(2025, 1, 1)) == utc(2028, 2, 29)
    sched("0 0 30 2 1", "UTC")  # both day fields: cron fires on either (every Monday in February)


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


@pytest.mark.parametrize(
    "schedule, field",
    [
        ('{cron: "0 0 30 2 *", duration_s: 60, min_servers: 2}', "schedule.cron"),
        ('{cron: "0 0 31 4 *", duration_s: 60, min_servers: 2}', "schedule.cron"),
        ('{cron: "0 9 * * *", end_cron: "0 0 31 4 *", min_servers: 2}', "schedule.end_cron"),
    ],
)
def test_poolctl_validate_refuses_a_schedule_that_can_never_fire(tmp_path, schedule: str, field: str) -> None:
    """`poolctl validate` exits 2 naming the field; 29 February stays valid."""
    from typer.testing import CliRunner

    from poolctl.starter.cli import app

    def validate(sched_doc: str):  # type: ignore[no-untyped-def]
        f = tmp_path / "spec.yaml"
        f.write_text(
            "pools:\n  - name: web\n    policies:\n"
            f"      - {{name: night, type: schedule, schedule: {sched_doc}}}\n"
        )
        return CliRunner().invoke(app, ["validate", "-f", str(f)])

    result = validate(schedule)
    assert result.exit_code == 2, result.output
    assert field in result.output and "can never fire" in result.output
    assert validate('{cron: "0 0 29 2 *", duration_s: 60, min_servers: 2}').exit_code == 0


DST_NIGHTS = [  # (zone, the UTC instant of the change, local date of the change)
    ("Europe/Athens", utc(2013, 10, 27, 1), "2013-10-27"),
    ("Europe/Berlin", utc(2025, 10, 26, 1), "2025-10-26"),
    ("Europe/Berlin", utc(2025, 3, 30, 1), "2025-03-30"),
    ("America/New_York", utc(2024, 11, 3, 6), "2024-11-03"),
    ("America/New_York", utc(2024, 3, 10, 7), "2024-03-10"),
]


@settings(max_examples=12, deadline=None)
@given(night=st.sampled_from(DST_NIGHTS), n=st.sampled_from([5, 10, 15, 20, 30, 60]))
def test_wildcard_jobs_keep_the_clock_across_dst(night: tuple[str, datetime, str], n: int) -> None:
    """`*/n * * * *` (n divides 60) runs by the clock: consecutive fires are n minutes apart in real time,
    through a repeated hour and a skipped one alike."""
    tz, change, _ = night
    s = sched(f"*/{n} * * * *" if n < 60 else "0 * * * *", tz)
    fires = fires_between(s, change - timedelta(minutes=70), change + timedelta(minutes=70))
    assert all(b - a == timedelta(minutes=n) for a, b in zip(fires, fires[1:], strict=False))


@settings(max_examples=30, deadline=None)
@given(night=st.sampled_from(DST_NIGHTS), hour=st.integers(0, 23), minute=st.integers(0, 59))
def test_fixed_time_jobs_fire_once_on_a_dst_night(
    night: tuple[str, datetime, str], hour: int, minute: int
) -> None:
    tz, change, day = night
    s = sched(f"{minute} {hour} * * *", tz)
    fires = fires_between(s, change - timedelta(hours=30), change + timedelta(hours=30))
    local_days = [f.astimezone(ZoneInfo(tz)).date().isoformat() for f in fires]
    assert local_days.count(day) == 1
