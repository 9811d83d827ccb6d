"""`poolctl health POOL`: every server's health under the pool's check — state, counters, last latency,
uptime over a window (computed from stored transitions) — and the pool's summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import select
from temporalio.client import Client

from poolctl.domain.errors import NotFoundError
from poolctl.domain.health import HealthState, HealthStatus, Transition, summarize, uptime_percent
from poolctl.domain.health_messages import WatchProgress
from poolctl.domain.names import health_workflow_id
from poolctl.domain.pool_spec import PoolSpec
from poolctl.settings import Settings, get_settings
from poolctl.starter.heartbeats import pending_heartbeat
from poolctl.starter.output import EXIT_BAD_INPUT, ago, console, err_console, fail, print_json, table
from poolctl.starter.runner import run_command, start_hint
from poolctl.starter.teams import team_or_exit
from poolctl.store import queries
from poolctl.store.db import session_scope
from poolctl.store.models import HealthCheck
from poolctl.temporal_client import TemporalUnreachable, connect


async def live_statuses(team: str, pool: str, server_ids: list[str]) -> dict[str, HealthStatus]:
    """Live counters from each HealthCheckWorkflow's running probe loop (its last heartbeat), so the
    table is current without the probe loop writing every probe to the store. Empty if Temporal is away."""
    return {sid: p.status for sid, p in (await live_progress(team, pool, server_ids)).items()}


async def live_progress(team: str, pool: str, server_ids: list[str]) -> dict[str, WatchProgress]:
    """The last heartbeat of each server's running probe loop (empty if Temporal is away)."""
    try:
        client = await connect(get_settings())
    except TemporalUnreachable:
        return {}
    return await _progress(client, team, pool, server_ids)


async def live_or_unreachable(team: str, pool: str, server_ids: list[str]) -> dict[str, HealthStatus] | str:
    """`live_statuses`, or why Temporal cannot be reached (one line) when it cannot."""
    try:
        client = await connect(get_settings())
    except TemporalUnreachable as e:
        return str(e)
    return {sid: p.status for sid, p in (await _progress(client, team, pool, server_ids)).items()}


async def _progress(client: Client, team: str, pool: str, server_ids: list[str]) -> dict[str, WatchProgress]:
    out: dict[str, WatchProgress] = {}
    for sid in server_ids:
        raw = await pending_heartbeat(client, health_workflow_id(team, pool, sid), "watch_target")
        if raw is not None:
            out[sid] = WatchProgress.model_validate(raw)
    return out


def health_report(
    team: str,
    pool: str,
    window_s: float,
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
    live: dict[str, HealthStatus] | None = None,
) -> dict[str, Any]:
    """The data behind `poolctl health` (also used by tests and the demo). `live` overrides the stored
    counters with those of the running probe loops."""
    live = live or {}
    now = now or datetime.now(UTC)
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as s:
        pool_row = queries.get_pool(s, team, pool)
        servers = queries.list_servers(s, team, pool)
        checks = {
            c.server_id: c for c in s.scalars(select(HealthCheck).where(HealthCheck.pool_id == pool_row.id))
        }
        has_check = PoolSpec.model_validate(pool_row.spec).effective_health_check is not None
        rows = []
        for srv in servers:
            c = checks.get(srv.id)
            transitions = [
                Transition.model_validate(t) for t in ((c.transitions or {}).get("items", []) if c else [])
            ]
            uptime = uptime_percent(
                transitions, window_start=now - timedelta(seconds=window_s), window_end=now
            )
            row = {
                "server_id": srv.id,
                "address": f"{srv.host}:{srv.port}",
                "state": (c.status if c else srv.health),
                "consecutive_successes": c.consecutive_successes if c else None,
                "consecutive_failures": c.consecutive_failures if c else None,
                "last_check_at": c.last_check_at if c else None,
                "last_latency_ms": c.last_latency_ms if c else None,
                "last_error": c.last_error if c else None,
                "last_transition_at": c.last_transition_at if c else None,
                "uptime_percent": uptime,
                "live": srv.id in live,
            }
            st = live.get(srv.id)
            if st is not None:
                row.update(
                    state=row["state"] if row["state"] == "config_error" else st.state.value,
                    consecutive_successes=st.consecutive_successes,
                    consecutive_failures=st.consecutive_failures,
                    last_check_at=st.last_probe_at,
                    last_latency_ms=st.last_result.latency_ms if st.last_result else None,
                    last_error=(st.last_result.error if st.last_result else None) or row["last_error"],
                )
            rows.append(row)
        stored_at = [pool_row.updated_at] + [
            t for c in checks.values() for t in (c.last_check_at, c.last_transition_at) if t is not None
        ]
    states = [HealthState(r["state"]) for r in rows if r["state"] in {h.value for h in HealthState}]
    summary = summarize(states)
    return {
        "team": team,
        "pool": pool,
        "health_check": has_check,
        "status": pool_row.status,
        "status_reason": pool_row.status_reason,
        "window_s": window_s,
        "stored_as_of": max(stored_at),
        "summary": {"healthy": summary.healthy, "unhealthy": summary.unhealthy, "initial": summary.initial},
        "servers": rows,
    }


STATE_STYLE = {"healthy": "green", "unhealthy": "red", "initial": "yellow", "config_error": "magenta"}


def health(
    pool: Annotated[str, typer.Argument(help="Pool name.")],
    team: Annotated[
        str | None,
        typer.Option(
            "--team", "-t", help="Team that owns the pool.  \\[default: your team token's, else POOLCTL_TEAM]"
        ),
    ] = None,
    window: Annotated[float, typer.Option(help="Uptime window in hours.")] = 24.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Servers' health under the pool's check: state, counters, last latency, uptime %; and the summary.

    Counters and latency are live (read from each probe loop's last heartbeat) when Temporal is reachable.
    When it is not, the table is the last state stored, and a warning on stderr says so and how old it
    is. Uptime comes from stored transitions."""
    t = team_or_exit(team)  # the caller's team (poolctl.starter.teams)
    try:
        with session_scope(get_settings().resolved_database_url) as s:
            ids = [srv.id for srv in queries.list_servers(s, t, pool)]
        live = run_command(lambda: live_or_unreachable(t, pool, ids))
        unreachable = live if isinstance(live, str) else None
        report = health_report(t, pool, window * 3600, live=None if unreachable else live)
    except NotFoundError as e:
        fail(str(e), EXIT_BAD_INPUT)
    report["temporal_unreachable"] = unreachable
    if unreachable:
        err_console.print(
            f"warning: {unreachable}: this is the last known state, stored {ago(report['stored_as_of'])} "
            f"({start_hint(get_settings().temporal_address)})",
            highlight=False,
            soft_wrap=True,
        )
    if as_json:
        print_json(report)
        return
    if not report["health_check"]:
        console.print(f"pool {pool} has no health_check: servers count as healthy once they answer at boot")
    rows = []
    for r in report["servers"]:
        style = STATE_STYLE.get(r["state"], "white")
        latency = f"{r['last_latency_ms']:.1f} ms" if r["last_latency_ms"] is not None else ""
        up = f"{r['uptime_percent']:.2f}%" if r["uptime_percent"] is not None else "n/a"
        counters = (
            f"{r['consecutive_successes']} ok / {r['consecutive_failures']} fail"
            if r["consecutive_successes"] is not None
            else ""
        )
        rows.append(
            [
                r["server_id"],
                r["address"],
                f"[{style}]{r['state']}[/]",
                counters,
                latency,
                up,
                ago(r["last_transition_at"]),
                (r["last_error"] or "")[:40],
            ]
        )
    sm = report["summary"]
    console.print(
        table(
            f"{pool}: {sm['healthy']} healthy, {sm['unhealthy']} unhealthy, {sm['initial']} initial "
            f"(pool {report['status']})"
            + (f" as stored {ago(report['stored_as_of'])}" if unreachable else ""),
            [
                "server",
                "address",
                "state",
                "counters",
                "last latency",
                f"uptime {window:g}h",
                "changed",
                "last error",
            ],
            rows,
        )
    )
    if report["status_reason"]:
        console.print(f"pool status reason: {report['status_reason']}", highlight=False)
