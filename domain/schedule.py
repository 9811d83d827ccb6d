"""Schedule math: when a cron expression fires in an IANA time zone, and whether a schedule window is open.

Pure: `now` is always passed in. Cron fields are matched against local wall-clock time, with Vixie
cron's DST rules: a fixed-time job (minute and hour fields without `*`) fires once — a time skipped by a
spring-forward gap at the end of the gap (02:30 → 03:00), a time repeated by a fall-back at its first
occurrence; a wildcard job (`*` or `*/n` in the minute or hour field) runs by the clock — in both
occurrences of a repeated hour, and not in a skipped one.

Instants are returned in UTC: Python never finds an ambiguous local time equal to anything in another
zone (PEP 495), so local times make poor values to compare.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from poolctl.domain.decision import require_aware
from poolctl.domain.policy_spec import PolicySpec, ScheduleSpec

# Longer than any UTC offset change (DST shifts are at most two hours).
_FOLD_MARGIN = timedelta(hours=3)
_MAX_ITERATIONS = 100_000


def _schedule_of(spec: ScheduleSpec | PolicySpec) -> ScheduleSpec:
    if isinstance(spec, ScheduleSpec):
        return spec
    if spec.schedule is None:
        raise ValueError(f"policy {spec.name!r} has no schedule")
    return spec.schedule


def _wall(at: datetime, tz: ZoneInfo) -> datetime:
    """The naive local wall-clock time at instant `at`."""
    return at.astimezone(tz).replace(tzinfo=None, fold=0)


def fire_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant (UTC) at which a cron fire at local wall-clock `wall` happens.

    Monotone in `wall`: skipped times map to the end of the gap, repeated times to their first occurrence.
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(first, tz) == wall:
        return first
    # `wall` does not exist (spring-forward gap): find the transition, the first instant past the gap.
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)  # before the gap, offset after the shift
    hi = first  # after the gap
    lo_off = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == lo_off:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


# Vixie cron's @aliases as five fields (its wildcard rule reads the minute and hour fields).
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def is_wildcard_job(expr: str) -> bool:
    """Vixie cron's rule: a job whose minute or hour field starts with `*` (`*`, `*/30`) is a wildcard job,
    run by the clock (again in a repeated hour, never in a skipped one); any other is a fixed-time job."""
    fields = _ALIASES.get(expr.strip().lower(), expr).split()
    return fields[0].startswith("*") or fields[1].startswith("*")


def _instants(wall: datetime, tz: ZoneInfo, wildcard: bool) -> list[datetime]:
    """The instants (UTC) at which a fire at local wall-clock `wall` happens.

    Fixed-time jobs: once (a repeated time at its first occurrence, a skipped time at the end of the gap).
    Wildcard jobs: at each occurrence of the wall time (twice in a repeated hour), none in a skipped hour.
    """
    first = fire_instant(wall, tz)
    if not wildcard:
        return [first]
    if _wall(first, tz) != wall:
        return []  # skipped by a spring-forward gap
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return [first, second] if second != first and _wall(second, tz) == wall else [first]


def _shift_near(at: datetime, tz: ZoneInfo) -> timedelta:
    """How far the zone's UTC offset moves within _FOLD_MARGIN of `at` (zero far from a DST change):
    how far apart in wall-clock time two instants can be misordered there."""
    before = (at - _FOLD_MARGIN).astimezone(tz).utcoffset() or timedelta(0)
    after = (at + _FOLD_MARGIN).astimezone(tz).utcoffset() or timedelta(0)
    return abs(after - before)


def _cron_next(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    """First fire strictly after instant `after` (UTC)."""
    wildcard = is_wildcard_job(expr)
    # in a repeated hour the next fire may be at an earlier wall time (its second occurrence)
    it = croniter(expr, _wall(after, tz) - _shift_near(after, tz))
    best: datetime | None = None
    for _ in range(_MAX_ITERATIONS):
        wall = it.get_next(datetime)
        # fire_instant is monotone in the wall time and a wall's instants are never before it
        if best is not None and fire_instant(wall, tz) >= best:
            return best
        for candidate in _instants(wall, tz, wildcard):
            if candidate > after and (best is None or candidate < best):
                best = candidate
    if best is not None:
        return best
    raise ValueError(f"cron {expr!r} has no fire after {after.isoformat()}")


def _cron_prev(expr: str, tz: ZoneInfo, at: datetime) -> datetime | None:
    """Last fire at or before instant `at` (UTC), or None if there is none."""
    wildcard = is_wildcard_job(expr)
    # in a repeated hour, later wall times may already have fired (their first occurrence)
    it = croniter(expr, _wall(at, tz) + timedelta(seconds=1) + _shift_near(at, tz))
    best: datetime | None = None
    margin = timedelta(0)
    for _ in range(_MAX_ITERATIONS):
        try:
            wall = it.get_prev(datetime)
        except Exception:  # croniter gives up far in the past
            return best
        # an earlier wall fires no later than its own instant plus the DST shift (near a transition)
        if best is not None and fire_instant(wall, tz) + margin <= best:
            return best
        for candidate in _instants(wall, tz, wildcard):
            if candidate <= at and (best is None or candidate > best):
                best = candidate
                margin = _shift_near(best, tz)
    return best


def next_fire(spec: ScheduleSpec | PolicySpec, after: datetime) -> datetime:
    """The first time (UTC) the schedule's `cron` fires strictly after `after`."""
    require_aware(after, "after")
    sched = _schedule_of(spec)
    return _cron_next(sched.cron, sched.zone, after.astimezone(UTC))


def window_end(spec: ScheduleSpec | PolicySpec, start: datetime) -> datetime:
    """When the window that opened at `start` closes: `duration_s` of elapsed time, or the next `end_cron`."""
    require_aware(start, "start")
    sched = _schedule_of(spec)
    if sched.duration_s is not None:
        end = start.astimezone(UTC) + timedelta(seconds=sched.duration_s)
    else:
        assert sched.end_cron is not None
        end = _cron_next(sched.end_cron, sched.zone, start.astimezone(UTC))
    return end


def schedule_window_active(
    spec: ScheduleSpec | PolicySpec, now: datetime
) -> tuple[bool, datetime | None, datetime | None]:
    """Whether a window is open at `now`: (True, its start, its end) or (False, next start, next end).

    The window containing `now` is the one opened by the last fire at or before `now`; a later fire
    always closes no earlier than an earlier one, so overlapping windows need no special case.
    """
    require_aware(now, "now")
    sched = _schedule_of(spec)
    tz = sched.zone
    now_utc = now.astimezone(UTC)
    start = _cron_prev(sched.cron, tz, now_utc)
    if start is not None:
        end = window_end(sched, start)
        if start <= now_utc < end:
            return True, start, end
    nxt = next_fire(sched, now_utc)
    return False, nxt, window_end(sched, nxt)
