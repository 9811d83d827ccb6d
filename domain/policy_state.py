"""The PolicyWorkflow's input (carried through continue-as-new), its `state` query view, and the
messages it exchanges with its activities. Pure models: safe to import inside workflows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from poolctl.domain.decision import Decision, Recommendation
from poolctl.domain.evaluation import PolicyState
from poolctl.domain.model import Message
from poolctl.domain.policy_spec import MetricSource, PolicySpec
from poolctl.domain.pool_state import ServerRecord
from poolctl.domain.readiness import ServerSample

# Decisions that changed the recommendation, kept in the workflow for `poolctl policy show`.
MAX_DECISIONS = 20


class PolicyInput(Message):
    """Everything a PolicyWorkflow run starts from; a continued run gets the previous run's state."""

    team: str
    pool: str
    spec: PolicySpec
    state: PolicyState | None = None
    last_sent: Recommendation | None = None
    decisions: list[Decision] = Field(default_factory=list)
    current: int | None = None
    last_error: str | None = None
    history_budget: int = 2000
    members: list[ServerRecord] = Field(
        default_factory=list, description="the pool's membership view, as the pool last signalled it"
    )


class MetricReadRequest(Message):
    """`read_policy_metric`'s input: the pool's members (as the pool told its policy), which source
    (None: only count the servers), and how long after its creation a server's metrics start to count."""

    team: str
    pool: str
    source: MetricSource | None = None
    servers: list[ServerRecord] = Field(default_factory=list)
    instance_warmup_s: float = 0.0


class MetricReading(Message):
    """`read_policy_metric`'s answer: the value (None when unavailable, with `error`) and the pool's size.

    `servers`: each counted server with its readiness and, for a scrape source, its own value (the
    decision code aggregates the ready ones); None from a reader that predates per-server samples.
    """

    value: float | None = None
    error: str | None = None
    current: int = 0
    ready: int = Field(default=0, description="members whose health check passes (health `healthy`)")
    servers_read: int = 0
    servers: list[ServerSample] | None = None


class DecisionRecord(Message):
    """`record_policy_decision`'s input: one decision that changed a policy's recommendation."""

    team: str
    pool: str
    policy: str
    decision: Decision


def policy_status(spec: PolicySpec, state: PolicyState) -> str:
    """The PolicyState search attribute: paused (signal or is_active: false), dry_run, or active."""
    if state.paused or not spec.is_active:
        return "paused"
    if spec.dry_run:
        return "dry_run"
    return "active"


class PolicyStateView(Message):
    """The `state` query's answer.

    `cooldown_remaining_s` is what this policy can know: the cooldowns it asked for, counted from the
    last recommendation it sent that moved the pool. The pool's own (authoritative, durable) cooldowns
    are in the pool's `status` query; `poolctl policy show` prints both.
    """

    team: str
    pool: str
    policy: str
    type: str
    strategy: str | None = None
    status: str
    paused: bool
    scale_in_paused: bool
    scale_out_paused: bool
    dry_run: bool
    evaluation_interval: float
    evaluations: int
    current: int | None = None
    last_metric: float | None = None
    last_metric_at: datetime | None = None
    last_error: str | None = None
    last_recommendation: Recommendation | None = None
    last_reason: str | None = None
    last_decision: Decision | None = None
    decisions: list[Decision] = Field(default_factory=list)
    cooldown_remaining_s: dict[str, float] = Field(default_factory=dict)
    next_evaluation_at: datetime | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
