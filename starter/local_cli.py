"""`poolctl local ...`: poke the local provider's servers through their admin path — make one unhealthy,
slow or crash it — to watch health checks, auto-healing and the balancer react."""

from __future__ import annotations

from typing import Annotated

import httpx
import typer

from poolctl.domain.errors import NotFoundError
from poolctl.settings import get_settings
from poolctl.starter.output import EXIT_BAD_INPUT, console, fail
from poolctl.starter.teams import team_or_exit
from poolctl.store import queries
from poolctl.store.db import session_scope

local_app = typer.Typer(
    help="Poke local-provider servers (unhealthy, healthy, slow, crash) to see checks and healing react.",
    no_args_is_help=True,
)

PoolArg = Annotated[str, typer.Argument(help="Pool name.")]
ServerArg = Annotated[str | None, typer.Argument(help="Server id; the pool's oldest server when omitted.")]
TeamOpt = Annotated[
    str | None,
    typer.Option(
        "--team", "-t", help="Team that owns the pool.  \\[default: your team token's, else POOLCTL_TEAM]"
    ),
]


def _server_url(team: str | None, pool: str, server: str | None) -> tuple[str, str]:
    t = team_or_exit(team)  # the caller's team (poolctl.starter.teams)
    with session_scope(get_settings().resolved_database_url) as s:
        try:
            rows = queries.list_servers(s, t, pool)
        except NotFoundError as e:
            fail(str(e), EXIT_BAD_INPUT)
        if rows and rows[0].provider != "local":
            fail(
                f"pool {pool} uses provider {rows[0].provider!r}: only local servers have an admin path",
                EXIT_BAD_INPUT,
            )
        chosen = [r for r in rows if server is None or r.id == server]
        if not chosen:
            fail(
                f"no live server {server!r} in pool {pool}" if server else f"pool {pool} has no live server",
                EXIT_BAD_INPUT,
            )
        return chosen[0].id, f"http://{chosen[0].host}:{chosen[0].port}"


def _post(url: str, path: str, body: dict[str, object]) -> None:
    try:
        httpx.post(f"{url}{path}", json=body, timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        fail(f"{url}{path}: {e}")


@local_app.command()
def unhealthy(
    pool: PoolArg,
    server: ServerArg = None,
    mode: Annotated[str, typer.Option(help="503, 500, or hang (health requests never answer).")] = "503",
    team: TeamOpt = None,
) -> None:
    """Make a server fail its health check (it keeps serving `/`): the check marks it unhealthy after
    `unhealthy_threshold` probes, the balancer stops sending to it, and auto-healing replaces it."""
    sid, url = _server_url(team, pool, server)
    _post(url, "/admin/health", {"healthy": False, "mode": mode})
    console.print(f"{sid} now fails its health check ({mode}); watch: poolctl health {pool}", highlight=False)


@local_app.command()
def healthy(pool: PoolArg, server: ServerArg = None, team: TeamOpt = None) -> None:
    """Make a server pass its health check again."""
    sid, url = _server_url(team, pool, server)
    _post(url, "/admin/health", {"healthy": True})
    console.print(f"{sid} passes its health check again", highlight=False)


@local_app.command()
def slow(
    pool: PoolArg,
    server: ServerArg = None,
    delay_ms: Annotated[int, typer.Option(help="Delay added to every response.")] = 800,
    team: TeamOpt = None,
) -> None:
    """Slow a server down (0 restores it)."""
    sid, url = _server_url(team, pool, server)
    _post(url, "/admin/slow", {"delay_ms": delay_ms})
    console.print(f"{sid} answers after {delay_ms} ms", highlight=False)


@local_app.command()
def crash(pool: PoolArg, server: ServerArg = None, team: TeamOpt = None) -> None:
    """Kill a server's process at once (as a crash would)."""
    sid, url = _server_url(team, pool, server)
    try:
        httpx.post(f"{url}/admin/exit", json={"code": 1}, timeout=5)
    except httpx.HTTPError:
        pass  # it died answering
    console.print(f"{sid} crashed", highlight=False)
