"""Every retry policy the workflows give their activities, in one place (what a retry can fix, how often)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from poolctl.activities.webhooks import WEBHOOK_REJECTED
from poolctl.domain.errors import NON_RETRYABLE_ERROR_TYPES
from poolctl.domain.pool_state import PoolRuntime

# Writes to poolctl's own store (events, status, specs, health records): retried until they land.
BOOKKEEPING_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))

# The probe loop (`watch_target`): a retried watch resumes its heartbeated counters.
WATCH_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))

# A policy's evaluation loop (`policy_loop`): as a probe loop, a retried loop resumes its heartbeat.
LOOP_RETRY = WATCH_RETRY

# Pushing membership to the balancers: a few quick tries; the next reconcile tries again.
SYNC_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5), maximum_attempts=4
)

# Draining a victim from the balancers: best effort before it is terminated anyway.
DRAIN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)

# The balancer statistics roll-up run by a Schedule.
ROLLUP_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=5))

# The weekly clean-up of old records run by a Schedule.
HOUSEKEEPING_RETRY = RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=10))

# A webhook delivery: about 20 minutes of tries; a receiver that rejects the event is not retried.
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=12,
    non_retryable_error_types=[WEBHOOK_REJECTED],
)


def provider_retry(runtime: PoolRuntime) -> RetryPolicy:
    """Exponential backoff for provider calls; `scale_attempts` tries in all (3 as in the original system)."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=runtime.retry_initial_interval_s),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=runtime.retry_max_interval_s),
        maximum_attempts=runtime.scale_attempts,
        non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
    )
