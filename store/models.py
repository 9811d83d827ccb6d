"""SQLAlchemy 2 typed models: the inventory and audit record poolctl keeps (teams, pools, servers,
membership, policies, balancers, health checks, scaling events)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime]

    pools: Mapped[list[ServerPool]] = relationship(back_populates="team")


class ServerPool(Base):
    __tablename__ = "server_pools"
    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_server_pools_team_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    environment: Mapped[str] = mapped_column(String(63))
    provider: Mapped[str] = mapped_column(String(32))
    min_servers: Mapped[int]
    max_servers: Mapped[int]
    desired_servers: Mapped[int]
    auto_healing: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16), default="active")
    status_reason: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    team: Mapped[Team] = relationship(back_populates="pools")
    members: Mapped[list[PoolMember]] = relationship(back_populates="pool", cascade="all, delete-orphan")
    policies: Mapped[list[ScalingPolicy]] = relationship(back_populates="pool", cascade="all, delete-orphan")
    load_balancers: Mapped[list[LoadBalancer]] = relationship(
        back_populates="pool", cascade="all, delete-orphan"
    )
    health_checks: Mapped[list[HealthCheck]] = relationship(
        back_populates="pool", cascade="all, delete-orphan"
    )


class Server(Base):
    """A server a provider created for a pool; rows are kept after termination as history."""

    __tablename__ = "servers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool_id: Mapped[int | None] = mapped_column(
        ForeignKey("server_pools.id", ondelete="SET NULL"), index=True
    )
    provider: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))  # pending | running | draining | terminated
    health: Mapped[str] = mapped_column(String(16), default="initial")  # initial | healthy | unhealthy
    created_at: Mapped[datetime]
    terminated_at: Mapped[datetime | None]


class PoolMember(Base):
    """Pool membership with the per-server balancer weight (the original server_pool_server pivot)."""

    __tablename__ = "server_pool_server"

    pool_id: Mapped[int] = mapped_column(ForeignKey("server_pools.id", ondelete="CASCADE"), primary_key=True)
    server_id: Mapped[str] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True)
    weight: Mapped[int] = mapped_column(default=1)
    joined_at: Mapped[datetime]

    pool: Mapped[ServerPool] = relationship(back_populates="members")
    server: Mapped[Server] = relationship()


class ScalingPolicy(Base):
    __tablename__ = "scaling_policies"
    __table_args__ = (UniqueConstraint("pool_id", "name", name="uq_scaling_policies_pool_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("server_pools.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(16))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    spec: Mapped[dict[str, Any]]
    last_triggered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    pool: Mapped[ServerPool] = relationship(back_populates="policies")


class LoadBalancer(Base):
    __tablename__ = "load_balancers"
    __table_args__ = (UniqueConstraint("pool_id", "name", name="uq_load_balancers_pool_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("server_pools.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    ip_address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int]
    protocol: Mapped[str] = mapped_column(String(8))
    algorithm: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="active")
    spec: Mapped[dict[str, Any]]
    total_requests: Mapped[int] = mapped_column(default=0)
    successful_requests: Mapped[int] = mapped_column(default=0)
    failed_requests: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    pool: Mapped[ServerPool] = relationship(back_populates="load_balancers")


class HealthCheck(Base):
    """Health of one server under its pool's check: counters, last result, last transition."""

    __tablename__ = "health_checks"
    __table_args__ = (UniqueConstraint("pool_id", "server_id", name="uq_health_checks_pool_server"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("server_pools.id", ondelete="CASCADE"), index=True)
    server_id: Mapped[str | None] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(8))
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="initial")
    consecutive_successes: Mapped[int] = mapped_column(default=0)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_check_at: Mapped[datetime | None]
    last_latency_ms: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_transition_at: Mapped[datetime | None]
    transitions: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]

    pool: Mapped[ServerPool] = relationship(back_populates="health_checks")


class ScalingEvent(Base):
    """The audit record of one scaling action: what, why, and how it ended."""

    __tablename__ = "scaling_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("server_pools.id", ondelete="CASCADE"), index=True)
    event_key: Mapped[str] = mapped_column(String(255), unique=True)  # the scale workflow id
    direction: Mapped[str] = mapped_column(String(8))  # up | down | replace
    from_count: Mapped[int]
    to_count: Mapped[int]
    cause: Mapped[str] = mapped_column(Text)
    policy_name: Mapped[str | None] = mapped_column(String(63))
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed | partial
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    servers: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class PolicyDecision(Base):
    """A policy decision that changed the policy's recommendation: inputs, formula, clamps, result."""

    __tablename__ = "policy_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("server_pools.id", ondelete="CASCADE"), index=True)
    policy_name: Mapped[str] = mapped_column(String(63))
    decided_at: Mapped[datetime]
    current: Mapped[int]
    desired: Mapped[int]
    direction: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(32))
    metric: Mapped[float | None] = mapped_column(Float)
    formula: Mapped[str] = mapped_column(Text)
    decision: Mapped[dict[str, Any]]
    # the workflow-side identity of the record (policy workflow id + decision time): makes retries idempotent
    record_key: Mapped[str] = mapped_column(String(255), unique=True)


class BalancerStatsRollup(Base):
    """One statistics roll-up of one balancer (the stats Schedule writes one per run): counts since the
    previous roll-up, plus the balancer's cumulative counters (to compute the next delta)."""

    __tablename__ = "balancer_stats_rollups"

    id: Mapped[int] = mapped_column(primary_key=True)
    load_balancer_id: Mapped[int] = mapped_column(
        ForeignKey("load_balancers.id", ondelete="CASCADE"), index=True
    )
    collected_at: Mapped[datetime] = mapped_column(index=True)
    driver: Mapped[str] = mapped_column(String(16))
    requests: Mapped[int] = mapped_column(default=0)  # since the previous roll-up
    responses_2xx: Mapped[int] = mapped_column(default=0)
    responses_3xx: Mapped[int] = mapped_column(default=0)
    responses_4xx: Mapped[int] = mapped_column(default=0)
    responses_5xx: Mapped[int] = mapped_column(default=0)
    errors: Mapped[int] = mapped_column(default=0)  # upstream errors + "no server in rotation"
    success_rate: Mapped[float | None] = mapped_column(Float)
    servers: Mapped[dict[str, Any]]  # server_id -> {requests, share, 2xx.., mean_latency_s, p99_s}
    cumulative: Mapped[dict[str, Any]]  # the balancer's raw counters at collection time


class WebhookDelivery(Base):
    """One attempt to deliver a notification to a webhook receiver (the audit of notifications)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "url", "attempt", name="uq_webhook_deliveries_attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    team: Mapped[str] = mapped_column(String(63))
    pool: Mapped[str] = mapped_column(String(63))
    url: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int]
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | failed
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempted_at: Mapped[datetime] = mapped_column(index=True)
