"""How the PoolWorkflow recovers from `error` on its own: a failed scaling schedules the next try with
capped exponential backoff (domain.error_retry), the pool stays `error` with the last cause until a try
succeeds, and each try is an ordinary scaling (so `poolctl events` lists every one)."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from poolctl.domain.error_retry import after_failure, error_reason, retry_cause, retry_due
    from poolctl.domain.pool_spec import PoolStatus
    from poolctl.domain.pool_state import PoolRuntime, PoolState, ScaleIntent


def scaling_failed(state: PoolState, error: str, runtime: PoolRuntime, now: datetime) -> None:
    """Put the pool in `error` after a failed scaling and schedule its next try (desired is kept)."""
    state.error_retry = after_failure(
        state.error_retry,
        error,
        now,
        initial_s=runtime.error_retry_initial_s,
        max_s=runtime.error_retry_max_s,
    )
    state.status = PoolStatus.ERROR
    state.status_reason = error_reason(state.error_retry)


def may_reconcile(state: PoolState, now: datetime) -> bool:
    """May the pool act now? Not while in `error` before its next try is due; when a try is due, the
    scaling it starts says so in its cause."""
    if state.status is not PoolStatus.ERROR:
        return True
    if not retry_due(state.error_retry, now):
        return False
    if state.error_retry is not None:
        state.intent = ScaleIntent(cause=retry_cause(state.error_retry))
    return True


def retry_wake_s(state: PoolState, now: datetime) -> float | None:
    """Seconds until the next try of a pool in `error`, or None when none is scheduled."""
    if state.status is not PoolStatus.ERROR or state.error_retry is None:
        return None
    return max((state.error_retry.next_retry_at - now).total_seconds(), 0.0)
