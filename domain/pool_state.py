"""The PoolWorkflow's durable state and the messages it exchanges (inputs, updates, query views, results)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from pydantic import Field

from poolctl.domain.arbitration import CooldownState
from poolctl.domain.decision import Decision, Recommendation
from poolctl.domain.error_retry import ErrorRetry
from poolctl.domain.health import HealthState
from poolctl.domain.model import Message
from poolctl.domain.policy_spec import PolicySpec
from poolctl.domain.pool_spec import PoolSpec, PoolStatus
from poolctl.domain.static_pool import StaticMembership


class ServerLifecycle(StrEnum):
    """Where a member is in its life in the pool (terminated servers leave the pool's list)."""

    RUNNING = "running"
    DRAINING = "draining"


class ScaleAction(StrEnum):
    """What one ScalePoolWorkflow does: add servers, remove servers, or replace (launch, then remove)."""

    UP = "up"
    DOWN = "down"
    REPLACE = "replace"


class ServerRecord(Message):
    """A pool member as the pool workflow tracks it (and tells its policies, see PoolMembers)."""

    server_id: str
    host: str
    port: int
    created_at: datetime
    health: HealthState = HealthState.INITIAL
    state: ServerLifecycle = ServerLifecycle.RUNNING
    health_changed_at: datetime | None = None
    watched: bool = Field(default=False, description="a HealthCheckWorkflow runs for it")
    weight: int | None = Field(
        default=None,
        description="this member's balancer weight (static pools); None: the pool's server_weight",
    )


class EventNote(NamedTuple):
    """A scaling event the pool records for something other than a scaling it ran (a static server
    registered, a drift action): what, why, how it ended, and the pool's size (servers) just before and
    just after that one change."""

    direction: str
    cause: str
    status: str
    from_count: int
    to_count: int


class PoolMembers(Message):
    """The membership view a pool signals to its policies whenever membership or health changes."""

    servers: list[ServerRecord] = Field(default_factory=list)


class ScaleIntent(Message):
    """Why the next scaling action runs: the cause, and the policy and decision behind it (if any).

    Set as one value where the pool decides to move, consumed as one value by the scaling it starts."""

    cause: str
    policy: str | None = None
    decision: dict[str, Any] | None = None


class EventSummary(Message):
    seq: int
    direction: str
    from_count: int
    to_count: int
    cause: str
    status: str
    error: str | None = None
    finished_at: datetime | None = None


class PoolRuntime(Message):
    """Tunables the worker's settings inject (tests shorten them so loops run in seconds)."""

    scale_attempts: int = 3
    retry_initial_interval_s: float = 1.0
    retry_max_interval_s: float = 30.0
    activity_timeout_s: float = 60.0
    reconcile_interval_s: float = 30.0
    history_budget: int = 2000
    health_lease_s: float = 3600.0
    health_heartbeat_timeout_s: float = 30.0
    health_config_error_backoff_s: float = 60.0
    policy_lease_s: float = 3600.0
    error_retry_initial_s: float = 30.0
    error_retry_max_s: float = 600.0
    drift_interval_s: float = 60.0


class PoolState(Message):
    """Everything that survives continue-as-new, in one place."""

    desired: int
    status: PoolStatus = PoolStatus.ACTIVE
    status_reason: str | None = None
    servers: list[ServerRecord] = Field(default_factory=list)
    seq: int = 0
    last_event: EventSummary | None = None
    intent: ScaleIntent = Field(default_factory=lambda: ScaleIntent(cause="pool created"))
    desired_set_by: str = Field(default="spec", description="who last set `desired` (apply reports it)")
    applies: int = Field(default=0, description="apply updates accepted by this pool's workflow chain")
    spec_version: int = Field(default=1, description="bumped on every accepted spec change")
    stored_version: int = Field(default=0, description="spec_version last written to the store")
    policies: dict[str, PolicySpec] = Field(
        default_factory=dict, description="policy workflows started by the pool, with the spec last sent"
    )
    policies_version: int = Field(default=0, description="spec_version the policy workflows match")
    members_told: str | None = Field(
        default=None, description="fingerprint of the view last sent to policies"
    )
    recent_request_ids: list[str] = Field(default_factory=list)
    deleting: bool = False
    adopted: bool = False
    recommendations: dict[str, Recommendation] = Field(default_factory=dict, description="latest per policy")
    cooldowns: CooldownState = Field(default_factory=CooldownState)
    last_decision: Decision | None = None
    synced_members: str | None = Field(default=None, description="fingerprint of the last balancer sync")
    health_spec_changed: bool = Field(default=False, description="running checks still need the new spec")
    epoch: str = Field(
        default="",
        description="random tail of the first run id of this pool's workflow chain; part of idempotency keys",
    )
    static: StaticMembership = Field(
        default_factory=StaticMembership, description="a static pool's registered servers (provider: static)"
    )
    error_retry: ErrorRetry | None = Field(default=None, description="recovery state while in error")
    drift_checked_at: datetime | None = Field(default=None, description="last drift check (pool_drift)")


class PoolInput(Message):
    team: str
    spec: PoolSpec
    runtime: PoolRuntime = Field(default_factory=PoolRuntime)
    state: PoolState | None = None


class ScaleRequest(Message):
    """The `scale` update: set desired servers by hand."""

    desired: int
    reason: str = "manual scale"
    request_id: str | None = None


class ApplyRequest(Message):
    """The `apply` update: a pool's whole spec, as written in a spec file, and the team owning it."""

    team: str
    spec: PoolSpec


class ApplyResult(Message):
    """What an `apply` changed (`server_weight 1 → 2`) and what it kept (`desired 6 kept (set by ...)`)."""

    action: Literal["created", "updated", "unchanged"]
    changes: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list)
    previous_desired: int
    desired: int
    current: int


class ScaleAccepted(Message):
    previous_desired: int
    desired: int
    current: int


class PoolStatusView(Message):
    """The `status` query's answer."""

    team: str
    pool: str
    status: PoolStatus
    status_reason: str | None
    desired: int
    current: int
    min_servers: int
    max_servers: int
    scaling: bool
    seq: int
    servers: list[ServerRecord]
    last_event: EventSummary | None
    recommendations: list[Recommendation] = Field(default_factory=list)
    cooldowns: CooldownState = Field(default_factory=CooldownState)
    last_decision: Decision | None = None
    desired_set_by: str = "spec"
    recommendation_only: str | None = Field(
        default=None, description="why the pool's policies only recommend (static pools), else None"
    )


class ScaleInput(Message):
    """Input of one ScalePoolWorkflow: add `count` servers, or remove `victims`."""

    team: str
    pool: str
    seq: int
    epoch: str = ""
    direction: ScaleAction  # replace: launch `count`, then remove `victims`
    count: int
    from_count: int
    to_count: int
    cause: str
    policy_name: str | None = None
    decision: dict[str, Any] | None = None
    provider: str
    provider_options: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold credentials
    weight: int = 1
    victims: list[ServerRecord] = Field(default_factory=list)
    drain: bool = Field(
        default=False, description="drain victims from the pool's balancers before terminating"
    )
    drain_timeout_s: float = Field(default=30.0, description="longest wait for a victim's connections to end")
    runtime: PoolRuntime = Field(default_factory=PoolRuntime)


class ScaleResult(Message):
    added: list[ServerRecord] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    error: str | None = None
    status: str = "succeeded"  # succeeded | failed | partial
