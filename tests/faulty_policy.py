"""A second driver of the real PolicyWorkflow for fault tests: registered under the same workflow name, it
runs the real loop, and its decision code raises on the second and third evaluations."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from poolctl.domain.decision import Decision
    from poolctl.domain.evaluation import PolicyState
    from poolctl.domain.policy_state import MetricReading, PolicyInput
    from poolctl.workflows.policy import PolicyWorkflow

INJECTED_FAULT = "injected fault in the decision code"


@workflow.defn(name="PolicyWorkflow")
class PolicyWorkflowWithInjectedFault(PolicyWorkflow):
    @workflow.run
    async def run(self, inp: PolicyInput) -> str:
        return await super().run(inp)

    def _evaluate_policy(self, reading: MetricReading) -> tuple[Decision, PolicyState]:
        if self.pstate.evaluations in (1, 2):
            raise RuntimeError(INJECTED_FAULT)
        return super()._evaluate_policy(reading)
