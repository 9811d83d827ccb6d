"""Balancers in the store, and their statistics roll-ups (what the stats Schedule writes, `lb stats` reads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import LATENCY_BUCKETS_S, BalancerStats, Member, members_for
from poolctl.domain.errors import NotFoundError
from poolctl.domain.pool_spec import PoolSpec
from poolctl.store.models import BalancerStatsRollup, LoadBalancer, PoolMember, Server, ServerPool, Team


@dataclass(frozen=True)
class StoredBalancer:
    id: int
    team: str
    pool: str
    spec: LoadBalancerSpec


def list_balancers(
    session: Session, team: str | None = None, pool: str | None = None, name: str | None = None
) -> list[StoredBalancer]:
    q = (
        select(LoadBalancer, ServerPool.name, Team.name)
        .join(ServerPool, LoadBalancer.pool_id == ServerPool.id)
        .join(Team, ServerPool.team_id == Team.id)
        .order_by(Team.name, ServerPool.name, LoadBalancer.name)
    )
    if team:
        q = q.where(Team.name == team)
    if pool:
        q = q.where(ServerPool.name == pool)
    if name:
        q = q.where(LoadBalancer.name == name)
    return [
        StoredBalancer(lb.id, t, p, LoadBalancerSpec.model_validate(lb.spec))
        for lb, p, t in session.execute(q)
    ]


def get_balancer(
    session: Session, name: str, team: str | None = None, pool: str | None = None
) -> StoredBalancer:
    found = list_balancers(session, team, pool, name)
    if not found:
        where = f" in pool {pool!r}" if pool else ""
        whose = f"team {team!r}" if team else "any team"
        raise NotFoundError(f"load balancer {name!r} not found{where} ({whose}; poolctl lb list lists them)")
    if len(found) > 1:
        pools = ", ".join(f"{b.team}/{b.pool}" for b in found)
        raise NotFoundError(f"load balancer {name!r} exists in several pools ({pools}): pass --pool/--team")
    return found[0]


def desired_members(session: Session, team: str, pool: str, *, require_healthy: bool = False) -> list[Member]:
    """The pool's live servers as balancer members, from the store (weights from the membership table)."""
    q = (
        select(Server, PoolMember.weight)
        .join(PoolMember, PoolMember.server_id == Server.id)
        .join(ServerPool, PoolMember.pool_id == ServerPool.id)
        .join(Team, ServerPool.team_id == Team.id)
        .where(Team.name == team, ServerPool.name == pool, Server.state != "terminated")
        .order_by(Server.id)
    )
    rows = list(session.execute(q))
    return members_for(
        [r[0] for r in rows], weights={r[0].id: r[1] for r in rows}, require_healthy=require_healthy
    )


def pool_members(session: Session, team: str, pool: str) -> list[Member]:
    """What the pool's balancers should hold now, as the PoolWorkflow computes it: with a health check in
    the pool's spec only healthy servers are in rotation. Empty when the pool is not in the store. This is
    what a (re)started balancer begins with (`poolctl balancer serve`) and what a sync without members sends."""
    row = session.scalar(
        select(ServerPool)
        .join(Team, ServerPool.team_id == Team.id)
        .where(Team.name == team, ServerPool.name == pool)
    )
    if row is None:
        return []
    return desired_members(
        session,
        team,
        pool,
        require_healthy=PoolSpec.model_validate(row.spec).effective_health_check is not None,
    )


def last_rollup(session: Session, balancer_id: int) -> BalancerStatsRollup | None:
    q = (
        select(BalancerStatsRollup)
        .where(BalancerStatsRollup.load_balancer_id == balancer_id)
        .order_by(BalancerStatsRollup.collected_at.desc(), BalancerStatsRollup.id.desc())
        .limit(1)
    )
    return session.scalar(q)


def _cumulative(stats: BalancerStats) -> dict[str, Any]:
    return {
        "no_member": stats.no_member_responses,
        "servers": {
            s.server_id: {
                "requests": s.requests,
                "2xx": s.responses_2xx,
                "3xx": s.responses_3xx,
                "4xx": s.responses_4xx,
                "5xx": s.responses_5xx,
                "errors": s.upstream_errors,
                "latency_sum_s": s.latency_sum_s,
                "buckets": s.latency_buckets,
                "latency_mean_s": s.latency_mean_s,
            }
            for s in stats.servers
        },
    }


def _delta(cur: float, prev: float) -> float:
    """A counter's growth; a counter that went down means the balancer restarted: count from zero."""
    return cur - prev if cur >= prev else cur


def record_rollup(
    session: Session, balancer_id: int, stats: BalancerStats, collected_at: datetime
) -> BalancerStatsRollup:
    """Store what happened since the previous roll-up and add it to the balancer's running totals."""
    prev = last_rollup(session, balancer_id)
    prev_cum: dict[str, Any] = prev.cumulative if prev else {"no_member": 0, "servers": {}}
    cum = _cumulative(stats)
    servers: dict[str, Any] = {}
    for sid, c in cum["servers"].items():
        p = prev_cum["servers"].get(sid, {})
        d = {k: int(_delta(c[k], p.get(k, 0))) for k in ("requests", "2xx", "3xx", "4xx", "5xx", "errors")}
        buckets = c["buckets"] or []
        pb = p.get("buckets") or []
        restarted = c["requests"] < p.get("requests", 0)
        dbuckets = [b - (0 if restarted or i >= len(pb) else pb[i]) for i, b in enumerate(buckets)]
        count = dbuckets[-1] if dbuckets else 0
        if count > 0:
            mean = _delta(c["latency_sum_s"], 0 if restarted else p.get("latency_sum_s", 0.0)) / count
            p99: float | None = next(
                (bound for bound, n in zip(LATENCY_BUCKETS_S, dbuckets, strict=False) if n >= 0.99 * count),
                float("inf"),
            )
        else:
            mean, p99 = c.get("latency_mean_s"), None
        done = d["2xx"] + d["3xx"] + d["4xx"] + d["5xx"] + d["errors"]
        servers[sid] = {
            **d,
            "success_rate": None if done == 0 else (done - d["5xx"] - d["errors"]) / done,
            "mean_latency_s": mean,
            "p99_latency_s_le": None if p99 == float("inf") else p99,
        }
    total_server = sum(s["requests"] for s in servers.values())
    for s in servers.values():
        s["share"] = None if total_server == 0 else s["requests"] / total_server
    no_member = int(_delta(cum["no_member"], prev_cum.get("no_member", 0)))
    sums = {k: sum(s[k] for s in servers.values()) for k in ("2xx", "3xx", "4xx", "5xx", "errors")}
    ok = sums["2xx"] + sums["3xx"] + sums["4xx"]
    bad = sums["5xx"] + sums["errors"] + no_member
    row = BalancerStatsRollup(
        load_balancer_id=balancer_id,
        collected_at=collected_at,
        driver=stats.driver,
        requests=total_server + no_member,
        responses_2xx=sums["2xx"],
        responses_3xx=sums["3xx"],
        responses_4xx=sums["4xx"],
        responses_5xx=sums["5xx"],
        errors=sums["errors"] + no_member,
        success_rate=None if ok + bad == 0 else ok / (ok + bad),
        servers=servers,
        cumulative=cum,
    )
    session.add(row)
    lb = session.get(LoadBalancer, balancer_id)
    if lb is not None:
        lb.total_requests += row.requests
        lb.successful_requests += ok
        lb.failed_requests += bad
    session.flush()
    return row


def list_rollups(session: Session, balancer_id: int, limit: int = 10) -> list[BalancerStatsRollup]:
    q = (
        select(BalancerStatsRollup)
        .where(BalancerStatsRollup.load_balancer_id == balancer_id)
        .order_by(BalancerStatsRollup.collected_at.desc(), BalancerStatsRollup.id.desc())
        .limit(limit)
    )
    return list(session.scalars(q))


def balancer_totals(session: Session, balancer_id: int) -> tuple[int, int, int]:
    lb = session.get(LoadBalancer, balancer_id)
    if lb is None:
        raise NotFoundError(f"load balancer #{balancer_id} not found")
    return lb.total_requests, lb.successful_requests, lb.failed_requests
