"""Queries and writes on the inventory: applying specs, recording servers, membership and scaling events."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from poolctl.domain.errors import NotFoundError
from poolctl.domain.pool_spec import PoolSpec, SpecDocument
from poolctl.store.models import (
    HealthCheck,
    LoadBalancer,
    PoolMember,
    ScalingEvent,
    ScalingPolicy,
    Server,
    ServerPool,
    Team,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def spec_hash(spec: PoolSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class PoolChange:
    team: str
    pool: str
    action: str  # created | updated | unchanged
    changed_fields: list[str] = field(default_factory=list)


def get_or_create_team(session: Session, name: str) -> Team:
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name, created_at=utcnow())
        session.add(team)
        session.flush()
    return team


def find_pool(session: Session, team: str, pool: str) -> ServerPool | None:
    return session.scalar(select(ServerPool).join(Team).where(Team.name == team, ServerPool.name == pool))


def get_pool(session: Session, team: str, pool: str) -> ServerPool:
    row = find_pool(session, team, pool)
    if row is None:
        raise NotFoundError(f"pool {pool!r} not found in team {team!r}")
    return row


def list_pools(session: Session, team: str | None = None) -> list[ServerPool]:
    q = select(ServerPool).join(Team).order_by(Team.name, ServerPool.name)
    if team:
        q = q.where(Team.name == team)
    return list(session.scalars(q))


def apply_document(session: Session, doc: SpecDocument) -> list[PoolChange]:
    """Write every pool of `doc` (and its policies, balancers, checks) in the caller's transaction."""
    team = get_or_create_team(session, doc.team)
    changes = []
    for spec in doc.pools:
        changes.append(_apply_pool(session, team, spec))
    return changes


def store_pool_spec(session: Session, team: str, spec: PoolSpec, desired: int | None = None) -> PoolChange:
    """Upsert one pool's row with its policies and balancers from `spec` (idempotent: an equal spec
    changes nothing), and its desired size (the workflow's, which a re-apply may keep). The PoolWorkflow's
    `store_pool_spec` activity is the only caller outside tests."""
    change = _apply_pool(session, get_or_create_team(session, team), spec)
    if desired is not None:
        set_pool_desired(session, team, spec.name, desired)
    return change


def forget_pool(session: Session, team: str, pool: str) -> bool:
    """Remove a pool (and its policies, balancers, events) from the store; False when it was not there."""
    row = find_pool(session, team, pool)
    if row is None:
        return False
    session.delete(row)
    return True


def _apply_pool(session: Session, team: Team, spec: PoolSpec) -> PoolChange:
    now = utcnow()
    digest = spec_hash(spec)
    row = session.scalar(
        select(ServerPool).where(ServerPool.team_id == team.id, ServerPool.name == spec.name)
    )
    if row is not None and row.spec_hash == digest:
        return PoolChange(team.name, spec.name, "unchanged")
    new_spec = spec.model_dump(mode="json")
    if row is None:
        row = ServerPool(
            team_id=team.id, name=spec.name, created_at=now, status="active", spec={}, spec_hash=""
        )
        session.add(row)
        action, changed = "created", []
    else:
        old = row.spec or {}
        action = "updated"
        changed = sorted(k for k in set(old) | set(new_spec) if old.get(k) != new_spec.get(k))
    row.environment = spec.environment
    row.provider = spec.provider
    row.min_servers = spec.min_servers
    row.max_servers = spec.max_servers
    row.desired_servers = spec.initial_desired
    row.auto_healing = spec.auto_healing
    row.spec = new_spec
    row.spec_hash = digest
    row.updated_at = now
    session.flush()
    _sync_children(session, row, spec, now)
    if "server_weight" in changed:  # every member's balancer weight follows the spec (as the workflow's)
        for member in row.members:
            member.weight = spec.server_weight
    return PoolChange(team.name, spec.name, action, changed)


def _sync_children(session: Session, pool: ServerPool, spec: PoolSpec, now: datetime) -> None:
    wanted_policies = {p.name: p for p in spec.policies}
    for existing in list(pool.policies):
        if existing.name not in wanted_policies:
            pool.policies.remove(existing)
    by_name = {p.name: p for p in pool.policies}
    for name, p in wanted_policies.items():
        row = by_name.get(name)
        if row is None:
            row = ScalingPolicy(pool_id=pool.id, name=name, created_at=now)
            pool.policies.append(row)
        row.type = p.type
        row.is_active = p.is_active
        row.spec = p.model_dump(mode="json")
        row.updated_at = now

    wanted_lbs = {lb.name: lb for lb in spec.load_balancers}
    for existing_lb in list(pool.load_balancers):
        if existing_lb.name not in wanted_lbs:
            pool.load_balancers.remove(existing_lb)
    lb_by_name = {lb.name: lb for lb in pool.load_balancers}
    for name, lb in wanted_lbs.items():
        lb_row = lb_by_name.get(name)
        if lb_row is None:
            lb_row = LoadBalancer(pool_id=pool.id, name=name, created_at=now)
            pool.load_balancers.append(lb_row)
        lb_row.ip_address = lb.ip_address
        lb_row.port = lb.port
        lb_row.protocol = lb.protocol
        lb_row.algorithm = lb.algorithm
        lb_row.spec = lb.model_dump(mode="json")
        lb_row.updated_at = now
    session.flush()


def delete_pool(session: Session, team: str, pool: str) -> None:
    row = get_pool(session, team, pool)
    session.delete(row)


def set_pool_status(session: Session, team: str, pool: str, status: str, reason: str | None = None) -> None:
    row = find_pool(session, team, pool)
    if row is not None:
        row.status = status
        row.status_reason = reason
        row.updated_at = utcnow()


def set_pool_desired(session: Session, team: str, pool: str, desired: int) -> None:
    row = find_pool(session, team, pool)
    if row is not None:
        row.desired_servers = desired
        row.updated_at = utcnow()


def record_server(
    session: Session,
    *,
    team: str,
    pool: str,
    server_id: str,
    provider: str,
    idempotency_key: str,
    host: str,
    port: int,
    state: str,
    created_at: datetime,
    weight: int,
) -> None:
    """Insert or refresh a server and its membership (idempotent)."""
    pool_row = find_pool(session, team, pool)
    server = session.get(Server, server_id)
    if server is None:
        server = Server(
            id=server_id, idempotency_key=idempotency_key, created_at=created_at, health="initial"
        )
        session.add(server)
    server.pool_id = pool_row.id if pool_row else None
    server.provider = provider
    server.host = host
    server.port = port
    server.state = state
    session.flush()
    if pool_row is not None and state != "terminated":
        member = session.get(PoolMember, (pool_row.id, server_id))
        if member is None:
            session.add(
                PoolMember(pool_id=pool_row.id, server_id=server_id, weight=weight, joined_at=utcnow())
            )
        else:
            member.weight = weight


def mark_server_terminated(session: Session, server_id: str) -> None:
    server = session.get(Server, server_id)
    if server is None:
        return
    if server.state != "terminated":
        server.state = "terminated"
        server.terminated_at = utcnow()
    for member in session.scalars(select(PoolMember).where(PoolMember.server_id == server_id)):
        session.delete(member)


def set_server_state(session: Session, server_id: str, state: str) -> None:
    server = session.get(Server, server_id)
    if server is not None and server.state != "terminated":
        server.state = state


def list_servers(session: Session, team: str, pool: str, *, include_terminated: bool = False) -> list[Server]:
    pool_row = get_pool(session, team, pool)
    q = select(Server).where(Server.pool_id == pool_row.id).order_by(Server.created_at)
    if not include_terminated:
        q = q.where(Server.state != "terminated")
    return list(session.scalars(q))


def member_weights(session: Session, team: str, pool: str) -> dict[str, int]:
    pool_row = get_pool(session, team, pool)
    return {m.server_id: m.weight for m in pool_row.members}


def start_scaling_event(
    session: Session,
    *,
    team: str,
    pool: str,
    event_key: str,
    direction: str,
    from_count: int,
    to_count: int,
    cause: str,
    policy_name: str | None,
    decision: dict[str, Any] | None,
    started_at: datetime,
) -> None:
    """Record that a scaling action began (idempotent on event_key)."""
    existing = session.scalar(select(ScalingEvent).where(ScalingEvent.event_key == event_key))
    if existing is not None:
        return
    pool_row = get_pool(session, team, pool)
    session.add(
        ScalingEvent(
            pool_id=pool_row.id,
            event_key=event_key,
            direction=direction,
            from_count=from_count,
            to_count=to_count,
            cause=cause,
            policy_name=policy_name,
            decision=decision,
            status="running",
            started_at=started_at,
        )
    )


def finish_scaling_event(
    session: Session,
    *,
    event_key: str,
    status: str,
    error: str | None,
    servers: dict[str, Any] | None,
    finished_at: datetime,
) -> None:
    event = session.scalar(select(ScalingEvent).where(ScalingEvent.event_key == event_key))
    if event is None:
        return
    event.status = status
    event.error = error
    event.servers = servers
    event.finished_at = finished_at


def list_events(session: Session, team: str, pool: str, limit: int = 50) -> list[ScalingEvent]:
    pool_row = get_pool(session, team, pool)
    q = (
        select(ScalingEvent)
        .where(ScalingEvent.pool_id == pool_row.id)
        .order_by(ScalingEvent.started_at.desc(), ScalingEvent.id.desc())
        .limit(limit)
    )
    return list(session.scalars(q))


def health_rows(session: Session, team: str, pool: str) -> list[HealthCheck]:
    pool_row = get_pool(session, team, pool)
    return list(pool_row.health_checks)
