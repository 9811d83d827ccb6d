"""Messages between the HealthCheckWorkflow, its activities and the PoolWorkflow."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from poolctl.domain.health import HealthState, HealthStatus, Transition
from poolctl.domain.health_spec import HealthCheckSpec
from poolctl.domain.model import Message


class WatchProgress(Message):
    """What the loop heartbeats after each probe (and while waiting): enough to resume."""

    status: HealthStatus
    lease_started_at: float
    base: float = Field(description="schedule anchor, epoch seconds")
    slot: int = Field(description="index of the next probe's slot")
    next_probe_at: float
    probes: int = 0
    skipped_slots: int = 0
    last_scheduled_at: float | None = None
    last_started_at: float | None = None


class HealthRuntime(Message):
    """Tunables the worker's settings inject (tests shorten them)."""

    lease_s: float = 3600.0
    heartbeat_timeout_s: float = 30.0
    config_error_backoff_s: float = 60.0
    history_budget: int = 2000


class HealthCheckState(Message):
    """Everything a HealthCheckWorkflow carries through continue-as-new, in one place: the check's
    counters (inside `status`), where the probe schedule stands, and the workflow's totals."""

    status: HealthStatus = Field(default_factory=HealthStatus)
    next_probe_at: float | None = Field(default=None, description="epoch seconds of the next probe")
    first_watch: bool = Field(default=True, description="no watch has returned yet: probe at once")
    watches: int = Field(default=0, description="watch activities that returned, in all runs")
    transitions: int = Field(default=0, description="healthy/unhealthy transitions, in all runs")
    config_error: str | None = None
    pending_spec: HealthCheckSpec | None = Field(
        default=None, description="a spec received by `update_spec` that no watch runs with yet"
    )


class HealthInput(Message):
    team: str
    pool: str
    server_id: str
    host: str
    port: int
    server_started_at: datetime
    spec: HealthCheckSpec
    runtime: HealthRuntime = Field(default_factory=HealthRuntime)
    state: HealthCheckState = Field(default_factory=HealthCheckState)


class ServerHealthChange(Message):
    """Signal to the pool: a server's health changed."""

    server_id: str
    state: HealthState
    at: datetime
    reason: str = ""


class HealthRecord(Message):
    """What the store keeps after a watch returns (a transition, a config error, or a lease end)."""

    team: str
    pool: str
    server_id: str
    check_type: str
    spec: HealthCheckSpec
    status: HealthStatus
    transition: Transition | None = None
    config_error: str | None = None


class HealthView(Message):
    """The HealthCheckWorkflow's `state` query."""

    server_id: str
    status: HealthStatus
    config_error: str | None = None
    watches: int = 0
    transitions: int = 0

    @property
    def state(self) -> HealthState:
        return self.status.state
