"""BalancerStatsWorkflow: one statistics roll-up of every balancer into the store. A Temporal Schedule
(`poolctl.starter.schedules`) starts it every `balancer_stats_interval_s` (10 minutes by default)
with overlap policy SKIP, so runs never pile up."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from poolctl.activities.balancer_activities import BalancerActivities, RollupInput, RollupResult
    from poolctl.workflows.retry_policies import ROLLUP_RETRY


@workflow.defn
class BalancerStatsWorkflow:
    @workflow.run
    async def run(self, inp: RollupInput) -> RollupResult:
        return await workflow.execute_activity_method(
            BalancerActivities.rollup_balancer_stats,
            inp,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=ROLLUP_RETRY,
            summary="roll up balancer statistics",
        )
