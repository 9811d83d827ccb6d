"""A second driver of the real evaluation loop for fault tests: the `policy_loop` activity with decision code
that raises on the second and third evaluations (registered on a worker of its own, with the real
PolicyWorkflow)."""

from __future__ import annotations

from typing import Any

from poolctl.domain.decision import Decision
from poolctl.domain.evaluation import PolicyState, evaluate_policy

INJECTED_FAULT = "injected fault in the decision code"


def evaluate_with_injected_fault(spec: Any, *, state: PolicyState, **kw: Any) -> tuple[Decision, PolicyState]:
    if state.evaluations in (1, 2):
        raise RuntimeError(INJECTED_FAULT)
    return evaluate_policy(spec, state=state, **kw)
