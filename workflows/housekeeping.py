"""HousekeepingWorkflow: one clean-up of the store (old scaling events, decision records, balancer
roll-ups and health transitions). A Temporal Schedule (`poolctl.starter.schedules`) starts it weekly with
overlap policy SKIP."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from poolctl.activities.housekeeping import HousekeepingActivities, HousekeepingInput, HousekeepingResult
    from poolctl.workflows.retry_policies import HOUSEKEEPING_RETRY


@workflow.defn
class HousekeepingWorkflow:
    @workflow.run
    async def run(self, inp: HousekeepingInput) -> HousekeepingResult:
        return await workflow.execute_activity_method(
            HousekeepingActivities.clean_up_store,
            inp,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=HOUSEKEEPING_RETRY,
            summary="remove records older than the retention",
        )
