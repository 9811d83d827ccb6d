"""`poolctl server add POOL ADDRESS [--weight N]` and `poolctl server remove POOL ADDRESS`: register and
deregister existing servers of a static pool (provider: static), as the original system added servers to a
pool with a weight. Each is an update to the pool's workflow (the CLI writes nothing); with --wait (the
default) the command waits until the workflow has registered (or drained and deregistered) the server."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from poolctl.domain.addresses import canonical_server_address, format_server_address
from poolctl.domain.pool_state import PoolStatusView
from poolctl.settings import get_settings
from poolctl.starter import pool_ops, waiting
from poolctl.starter.output import EXIT_BAD_INPUT, console, fail
from poolctl.starter.runner import run_command
from poolctl.starter.teams import team_or_exit
from poolctl.store import queries
from poolctl.store.db import session_scope
from poolctl.temporal_client import connect

server_app = typer.Typer(
    help="Existing servers of static pools: add (with a weight) and remove.", no_args_is_help=True
)

PoolArg = Annotated[str, typer.Argument(help="Pool name (a pool with provider: static).")]
AddressArg = Annotated[str, typer.Argument(help="host:port, e.g. 10.0.0.5:8080 or [2001:db8::5]:8080.")]
TeamOpt = Annotated[
    str | None,
    typer.Option(
        "--team", "-t", help="Team that owns the pool.  \\[default: your team token's, else POOLCTL_TEAM]"
    ),
]
WaitOpt = Annotated[bool, typer.Option(help="Wait until the pool has registered (or removed) the server.")]
TimeoutOpt = Annotated[
    float,
    typer.Option(help="Seconds to wait for a worker and for the change; exit code 3 when they run out."),
]


def _address(text: str) -> str:
    try:
        return canonical_server_address(text)
    except ValueError as e:
        fail(f"bad address: {e}", EXIT_BAD_INPUT)


def member(view: PoolStatusView | None, address: str) -> Any:
    """The pool member at `address` in a status view, or None."""
    for s in view.servers if view else []:
        if format_server_address(s.host, s.port) == address:
            return s
    return None


async def _wait_for(
    client: Any, team: str, pool: str, address: str, weight: int | None, present: bool
) -> Any:
    async def check() -> Any:
        while True:
            view = await pool_ops.query_status(client, team, pool)
            s = member(view, address)
            if (s is not None and (weight is None or s.weight == weight)) if present else s is None:
                return s
            await asyncio.sleep(0.3)

    return await waiting.for_worker(
        check(), f"waiting for pool {pool} to {'register' if present else 'remove'} {address}"
    )


def _change(
    pool: str, address: str, weight: int | None, team: str | None, wait: bool, timeout: float, adding: bool
) -> None:
    canonical = _address(address)
    if weight is not None and not 0 <= weight <= 256:
        fail(f"bad weight: {weight} is outside 0-256", EXIT_BAD_INPUT)
    t = team_or_exit(team)  # the caller's team (poolctl.starter.teams): another team's is refused here

    async def go() -> None:
        client = await connect(get_settings())
        result = await waiting.for_worker(
            pool_ops.request_server_change(client, t, pool, canonical, weight, adding=adding), sends=True
        )
        if result.action == "reweighted":
            say(f"{pool}: {result.address} weight {result.previous_weight} -> {result.weight}")
        elif result.action in ("added", "unchanged"):
            say(
                f"{pool}: {result.address} {result.action} (weight {result.weight}); {result.registered} server(s)"
            )
        else:
            say(f"{pool}: {result.address} removed; {result.registered} server(s)")
        if wait:
            s = await _wait_for(client, t, pool, result.address, result.weight if adding else None, adding)
            say(
                f"  registered as {s.server_id}, {_health(t, pool, s.server_id)}"
                if adding
                else "  drained and deregistered"
            )

    run_command(go, timeout)  # operator errors become one line and their exit code there (starter.runner)


def _health(team: str, pool: str, server_id: str) -> str:
    """A server's health as `poolctl servers` shows it (the store: `initial` until its check has decided),
    with why it is still `initial`. The pool's own view counts a server of a pool without a health check
    as healthy (it is in rotation), which `servers` does not show."""
    settings = get_settings()
    spec = pool_ops.stored_spec(settings, team, pool)
    with session_scope(settings.resolved_database_url) as db:
        rows = queries.list_servers(db, team, pool)
        health = next((r.health for r in rows if r.id == server_id), "initial")
    if health != "initial":
        return f"health {health}"
    if spec is not None and spec.effective_health_check is None:
        return "health initial (never probed: the pool has no health check)"
    return "health initial (not yet probed)"


def say(line: str) -> None:
    """One line, as is: addresses such as [::1]:80 are not Rich markup."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@server_app.command("add")
def add(
    pool: PoolArg,
    address: AddressArg,
    weight: Annotated[
        int | None,
        typer.Option(help="Balancer weight, 0-256 (default 1; a re-added server keeps its weight)."),
    ] = None,
    team: TeamOpt = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
) -> None:
    """Register an existing server (host:port) in a static pool, or change its weight. The pool health-checks
    it and the balancers send it traffic once healthy. Bad input: exit 2, nothing changed."""
    _change(pool, address, weight, team, wait, timeout, adding=True)


@server_app.command("remove")
def remove(
    pool: PoolArg,
    address: AddressArg,
    team: TeamOpt = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
) -> None:
    """Deregister a server from a static pool: drained from the balancers first; the server keeps running."""
    _change(pool, address, None, team, wait, timeout, adding=False)
