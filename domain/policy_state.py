"""The PolicyWorkflow's input and its one state model (`PolicyRunState`, carried whole through
continue-as-new), its `state` query view, and the messages it exchanges with its activities: the
evaluation loop's parameters, heartbeat (`PolicyLoopProgress`) and outcome. Pure models: safe to import
inside workflows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from poolctl.domain.decision import Decision, Recommendation
from poolctl.domain.evaluation import PolicyState
from poolctl.domain.model import Message
from poolctl.domain.policy_spec import MetricSource, PolicySpec
from poolctl.domain.pool_state import ServerRecord
from poolctl.domain.readiness import ServerSample

# Decisions that changed the recommendation, kept in the workflow for `poolctl policy show`.
MAX_DECISIONS = 20


# Longest one evaluation-loop activity runs before it returns to the workflow (which then starts the next).
DEFAULT_LEASE_S = 3600.0

# Bounds of an evaluation loop's heartbeat timeout (`loop_heartbeat_timeout_s`), seconds.
MIN_LOOP_HEARTBEAT_TIMEOUT_S = 5.0
MAX_LOOP_HEARTBEAT_TIMEOUT_S = 60.0


def loop_heartbeat_timeout_s(interval_s: float) -> float:
    """Heartbeat timeout (seconds) of an evaluation loop evaluating every `interval_s` seconds: twice the
    interval, within [MIN_LOOP_HEARTBEAT_TIMEOUT_S, MAX_LOOP_HEARTBEAT_TIMEOUT_S] (30 s at 15 s).

    The loop sends a heartbeat `loop_precheck_s` before each evaluation (activities/heartbeats.py paces
    them; the SDK's own throttle, 0.8 x the timeout, is lowered by the worker), so the server hears from
    a healthy loop once per interval and the loop may fall silent for a whole interval plus a slow read
    before a retry: at a timeout of one interval a loaded worker was retried (a gap in the evaluations),
    at two it is not. A crashed worker's loop is retried from its last heartbeat at most T + 1 s
    (LOOP_RETRY's first interval) after that heartbeat reached the server: 31 s at 15 s, 61 s at most."""
    return max(MIN_LOOP_HEARTBEAT_TIMEOUT_S, min(2 * interval_s, MAX_LOOP_HEARTBEAT_TIMEOUT_S))


def loop_heartbeat_every_s(heartbeat_timeout_s: float) -> float:
    """Longest (seconds) the loop waits without a heartbeat between evaluations (0.4 x the heartbeat
    timeout; only intervals longer than it beat in between, and those beats are paced to one per 0.8 x
    the timeout)."""
    return 0.4 * heartbeat_timeout_s


def loop_precheck_s(interval_s: float) -> float:
    """How long (seconds) before each evaluation the loop sends the heartbeat whose reply brings a pending
    cancellation: a tenth of the interval, 1 s at most (a heartbeat's round trip is milliseconds; a later
    reply still stops the evaluation it interrupts).

    So a pause, resume, toggle, new spec or new members signalled at t reaches the loop before the first
    evaluation due after t + this, and the restarted loop evaluates at once with it: within one interval
    (at most `interval_s - loop_precheck_s(interval_s)` plus a round trip and a workflow task). A
    decision made before the change arrived is dropped by the workflow (`_handle`)."""
    return min(1.0, 0.1 * interval_s)


class PolicyRunState(Message):
    """Everything a PolicyWorkflow knows that is not its identity: the one model it holds (`self.state`)
    and passes whole to the next run on continue-as-new.

    The evaluation state (`evaluation`: counters, stabilization windows, last metric, last decision) is
    as of the last time the evaluation loop returned (a decision, a lease end, a restart); the running
    loop heartbeats newer values (`PolicyLoopProgress`), which `poolctl policy show` reads too.
    """

    spec: PolicySpec
    evaluation: PolicyState = Field(default_factory=PolicyState)
    members: list[ServerRecord] = Field(
        default_factory=list, description="the pool's membership view, as the pool last signalled it"
    )
    last_sent: Recommendation | None = None
    last_sent_at: datetime | None = Field(default=None, description="when `last_sent` reached the pool")
    decisions: list[Decision] = Field(
        default_factory=list, description="the last MAX_DECISIONS decisions that changed the recommendation"
    )
    current: int | None = Field(default=None, description="the pool's size at the last evaluation")
    last_error: str | None = None
    next_evaluation_at: datetime | None = Field(
        default=None, description="when the next evaluation is due (the loop keeps this schedule)"
    )
    loops: int = Field(default=0, description="evaluation-loop activities that returned, over all runs")


class PolicyInput(Message):
    """Everything a PolicyWorkflow run starts from: its identity, tunables, and either a first spec and
    membership (a new policy) or `state`, the previous run's whole state (continue-as-new)."""

    team: str
    pool: str
    spec: PolicySpec
    members: list[ServerRecord] = Field(default_factory=list, description="the pool's members at the start")
    history_budget: int = 2000
    lease_s: float = Field(default=DEFAULT_LEASE_S, gt=0, description="longest one evaluation loop runs")
    state: PolicyRunState | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_separate_fields(cls, data: Any) -> Any:
        """A run continued by an earlier version carried its state in separate fields: fold them in."""
        if not isinstance(data, dict):
            return data
        old = data.get("state")
        legacy = ("last_sent", "decisions", "current", "last_error")
        if isinstance(old, dict) and "spec" not in old or any(k in data for k in legacy):
            data = dict(data)
            data["state"] = {
                "spec": data.get("spec"),
                "evaluation": old or {},
                "members": data.get("members") or [],
                **{k: data.pop(k) for k in legacy if k in data},
            }
        return data

    def run_state(self) -> PolicyRunState:
        """The state this run starts from."""
        if self.state is not None:
            return self.state
        return PolicyRunState(spec=self.spec, members=list(self.members))


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


class PolicyLoopParams(Message):
    """Input of one evaluation loop (the `policy_loop` activity): what the workflow knows when it starts it.

    The loop evaluates at `next_evaluation_at` (now when None or `evaluate_now`), then every
    `spec.evaluation_interval` on that grid, and returns when a decision's recommendation differs from
    `last_sent`, or at its first evaluation after `lease_s`."""

    policy_id: str = Field(description="the PolicyWorkflow id policy/{team}/{pool}/{policy}")
    team: str
    pool: str
    spec: PolicySpec
    members: list[ServerRecord] = Field(default_factory=list)
    evaluation: PolicyState = Field(default_factory=PolicyState)
    last_sent: Recommendation | None = None
    current: int | None = None
    last_error: str | None = None
    next_evaluation_at: datetime | None = None
    evaluate_now: bool = Field(default=False, description="a signal changed the policy: evaluate at once")
    lease_s: float = Field(default=DEFAULT_LEASE_S, gt=0)
    heartbeat_every_s: float = Field(default=10.0, gt=0, description="heartbeat at least this often")


class PolicyLoopProgress(Message):
    """What the loop heartbeats after each evaluation (and while it waits): enough to resume, and what
    `poolctl policy show` reads for live counters (the workflow's own state is as of the last return)."""

    evaluation: PolicyState
    current: int | None = None
    last_error: str | None = None
    lease_started_at: datetime
    next_evaluation_at: datetime
    evaluations: int = Field(default=0, description="evaluations in this loop")
    pending: Decision | None = Field(
        default=None, description="a decision that changed the recommendation, not yet returned"
    )


class PolicyLoopOutcome(Message):
    """Why the loop returned, with its state. `decision` is the latest decision (None if the loop was
    stopped before its first evaluation)."""

    reason: Literal["decision", "lease_end", "cancelled"]
    evaluation: PolicyState
    current: int | None = None
    last_error: str | None = None
    next_evaluation_at: datetime | None = None
    decision: Decision | None = None
    evaluations: int = 0


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
    live: bool = Field(default=False, description="counters come from the running loop's last heartbeat")

    def with_progress(self, progress: PolicyLoopProgress) -> PolicyStateView:
        """This view with the running loop's heartbeated counters (when they are newer): the workflow's
        own are as of the loop's last return. Pause flags and the recommendation stay the workflow's."""
        ev = progress.evaluation
        if ev.evaluations < self.evaluations:
            return self
        return self.model_copy(
            update={
                "evaluations": ev.evaluations,
                "current": progress.current,
                "last_metric": ev.last_metric,
                "last_metric_at": ev.last_metric_at,
                "last_error": progress.last_error,
                "last_decision": ev.last_decision,
                "next_evaluation_at": progress.next_evaluation_at,
                "live": True,
            }
        )
