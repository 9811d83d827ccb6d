"""HousekeepingWorkflow: one clean-up of the store (old scaling events, decision records, balancer
roll-ups and health transitions). A Temporal Schedule (`poolctl.starter.schedules`) starts it weekly with
overlap policy SKIP."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from poolctl.activities.housekeeping import HousekeepingActivities, HousekeepingInput, HousekeepingResult


@workflow.defn
class HousekeepingWorkflow:
    @workflow.run
    async def run(self, inp: HousekeepingInput) -> HousekeepingResult:
        return await workflow.execute_activity_method(
            HousekeepingActivities.clean_up_store,
            inp,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=10)),
            summary="remove records older than the retention",
        )
