"""The PoolWorkflow's signals as an interface: workflows the pool starts (policies, health checks) signal
their pool through these typed references without importing the pool's module (no import cycle)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from poolctl.domain.decision import Recommendation
    from poolctl.domain.health_messages import ServerHealthChange


class PoolSignals:
    """Implemented by PoolWorkflow (each override is decorated the same way, as the SDK requires)."""

    @workflow.signal
    def recommend(self, rec: Recommendation) -> None:
        """A policy's latest recommendation (PolicyWorkflow sends it when it changes)."""
        raise NotImplementedError

    @workflow.signal
    def server_health(self, change: ServerHealthChange) -> None:
        """A HealthCheckWorkflow saw a transition."""
        raise NotImplementedError
