"""Recovery of a pool in `error`: when its next retry is due, with capped exponential backoff.

A scaling that fails all its provider attempts puts the pool in `error`. As AWS Auto Scaling does, the
pool keeps trying on its own — after `initial_s`, then twice as long each time, never longer than
`max_s` — records each try as a scaling event, and stays `error` with the last cause until a try
succeeds. The operator's desired size is never touched by a failure.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import Field

from poolctl.domain.model import Message

BACKOFF_FACTOR = 2.0


class ErrorRetry(Message):
    """A pool's recovery state while it is in `error` (none when it is not)."""

    failures: int = Field(ge=1, description="failed scalings in a row (the first put the pool in error)")
    last_error: str = Field(description="the last failure's cause, as the scaling recorded it")
    failed_at: datetime = Field(description="when the last failure was seen")
    next_retry_at: datetime = Field(description="when the pool tries again")


def retry_delay_s(failures: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1, 2, ...): `initial_s * 2**(failures-1)`,
    at most `max_s` (and never below `initial_s` nor above `max_s` when they are misordered)."""
    if failures < 1:
        raise ValueError(f"failures must be >= 1, not {failures}")
    exponent = min(failures - 1, 64)  # 2**64 * any positive initial is past any sane cap
    return max(min(initial_s * BACKOFF_FACTOR**exponent, max_s), min(initial_s, max_s))


def after_failure(
    previous: ErrorRetry | None, error: str, now: datetime, *, initial_s: float, max_s: float
) -> ErrorRetry:
    """The recovery state after a failed scaling at `now` (`previous`: the state before it, if in error)."""
    failures = 1 if previous is None else previous.failures + 1
    delay = retry_delay_s(failures, initial_s, max_s)
    return ErrorRetry(
        failures=failures, last_error=error, failed_at=now, next_retry_at=now + timedelta(seconds=delay)
    )


def retry_due(retry: ErrorRetry | None, now: datetime) -> bool:
    """May a pool in error try again at `now`? (A pool in error without retry state waits for nothing.)"""
    return retry is None or now >= retry.next_retry_at


def error_reason(retry: ErrorRetry) -> str:
    """The status reason of a pool in error: the last cause, how many failures, when the next try is."""
    return (
        f"{retry.last_error} (failed {retry.failures}x; retrying at {retry.next_retry_at:%H:%M:%S} UTC, "
        f"in {(retry.next_retry_at - retry.failed_at).total_seconds():g}s)"
    )


def retry_cause(retry: ErrorRetry) -> str:
    """The cause recorded on the scaling event of a retry."""
    return f"retry {retry.failures} after error: {retry.last_error}"
