"""`poolctl balancer ...` (alias `poolctl lb ...`): run a built-in balancer, show statistics, list balancers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape

from poolctl.domain.balancer_errors import BalancerUnavailableError
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import BalancerStats, Member
from poolctl.domain.errors import NotFoundError
from poolctl.settings import get_settings
from poolctl.starter.output import EXIT_BAD_INPUT, ago, console, fail, print_json, table
from poolctl.starter.spec_yaml import decode_spec_bytes, load_yaml_documents
from poolctl.starter.teams import listing_scope_or_exit
from poolctl.store import queries as store
from poolctl.store.db import session_scope

balancer_app = typer.Typer(
    help="Load balancers: run a built-in one, show statistics (alias: `poolctl lb`).", no_args_is_help=True
)

TeamOpt = Annotated[
    str | None,
    typer.Option(
        "--team", "-t", help="Team of the pool.  \\[default: yours (team token); an operator: any team]"
    ),
]
PoolOpt = Annotated[str | None, typer.Option("--pool", "-p", help="Pool the balancer belongs to.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def _stored(name: str, pool: str | None, team: str | None) -> store.StoredBalancer:
    team = listing_scope_or_exit(team)  # a team's caller finds only its own team's balancers
    try:
        with session_scope(get_settings().resolved_database_url) as s:
            return store.get_balancer(s, name, team, pool)
    except NotFoundError as e:
        fail(str(e), EXIT_BAD_INPUT)


def _member(text: str) -> Member:
    sid, sep, rest = text.partition("=")
    address, _, weight = rest.partition("@")
    try:
        if not sep:
            raise ValueError("expected id=host:port[@weight]")
        return Member(server_id=sid, address=address, weight=int(weight or 1))
    except ValueError as e:
        fail(f"--member {text!r}: {e}", EXIT_BAD_INPUT)


@balancer_app.command("serve")
def serve(
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Balancer name in the pool's spec.")
    ] = None,
    pool: PoolOpt = None,
    team: TeamOpt = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", metavar="FILE", help="A YAML load balancer spec instead.")
    ] = None,
    member: Annotated[
        list[str] | None,
        typer.Option(metavar="ID=HOST:PORT[@WEIGHT]", help="Initial member (with -f); repeatable."),
    ] = None,
    no_uvloop: Annotated[bool, typer.Option("--no-uvloop", help="Use the default asyncio loop.")] = False,
) -> None:
    """Run one built-in balancer in the foreground, from the stored spec (--pool/--name) or a spec file.

    With a stored spec it starts with the pool's live servers from the store; the worker keeps the
    membership in line afterwards through the admin endpoint (token: see poolctl.balancer.credentials)."""
    from poolctl.balancer.credentials import balancer_token
    from poolctl.balancer.proxy import ProxyConfig, serve_until_signalled

    settings = get_settings()
    members: list[Member] = [_member(m) for m in member or []]
    if file is not None:
        try:
            docs = load_yaml_documents(decode_spec_bytes(file.read_bytes()))
            spec = LoadBalancerSpec.model_validate(docs[0] if len(docs) == 1 else docs)
        except OSError as e:
            fail(f"{file}: cannot read: {e.strerror or e}", EXIT_BAD_INPUT)
        except (ValueError, yaml.YAMLError) as e:  # SpecYamlError and ValidationError are ValueErrors
            fail(f"{file}: {e}", EXIT_BAD_INPUT)
    elif name:
        b = _stored(name, pool, team)
        spec = b.spec
        if not members:
            with session_scope(settings.resolved_database_url) as s:
                members = store.pool_members(s, b.team, b.pool)
    else:
        fail("give --name (and --pool) of a stored balancer, or --file", EXIT_BAD_INPUT)
    if spec.driver != "builtin":
        fail(
            f"balancer {spec.name} uses driver {spec.driver}: run HAProxy with `poolctl balancer haproxy-config`"
        )
    config = ProxyConfig.from_spec(spec, balancer_token(settings), members)

    async def main() -> None:
        await serve_until_signalled(config, f" members {len(members)}")

    runner: Any = asyncio.run
    if not no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    try:
        runner(main())
    except OSError as e:
        ports = f"{config.listen_host}:{config.listen_port}" + (
            f" (admin {config.admin_host}:{config.admin_port})" if config.admin_port is not None else ""
        )
        fail(
            f"balancer {spec.name}: cannot serve on {ports}: {e.strerror or e}"
            " (does the dev stack already run it? poolctl dev status)"
        )


@balancer_app.command("haproxy-config")
def haproxy_config(
    name: Annotated[str, typer.Argument(help="Balancer name.")],
    pool: PoolOpt = None,
    team: TeamOpt = None,
) -> None:
    """Print an HAProxy 2.6 configuration for a stored haproxy balancer (members arrive via the Runtime API).
    A built-in balancer is refused (exit 2)."""
    from poolctl.starter.haproxy_stack import render_haproxy_config

    spec = _stored(name, pool, team).spec
    if spec.driver != "haproxy":
        fail(
            f"balancer {spec.name} is built-in (driver {spec.driver}): haproxy-config is for haproxy balancers "
            "(driver: haproxy); poolctl balancer serve runs a built-in one",
            EXIT_BAD_INPUT,
        )
    sock = spec.haproxy.stats_socket if spec.haproxy else "/run/haproxy/admin.sock"
    typer.echo(render_haproxy_config(spec, sock), nl=False)


@balancer_app.command("list")
def list_balancers(team: TeamOpt = None, pool: PoolOpt = None, as_json: JsonOpt = False) -> None:
    """Every load balancer in the store (a team's caller: its team's)."""
    with session_scope(get_settings().resolved_database_url) as s:
        data = [
            {"team": b.team, "pool": b.pool, "name": b.spec.name, "driver": b.spec.driver,
             "listen": f"{b.spec.ip_address}:{b.spec.port}", "algorithm": b.spec.algorithm,
             "sticky": b.spec.sticky_sessions, "status": b.spec.status}
            for b in store.list_balancers(s, listing_scope_or_exit(team), pool)
        ]  # fmt: skip
    if as_json:
        print_json(data)
        return
    cols = ["team", "pool", "name", "driver", "listen", "algorithm", "sticky", "status"]
    console.print(table(None, cols, [[d[c] for c in cols] for d in data]))


def _not_reached(b: store.StoredBalancer, e: BalancerUnavailableError) -> str:
    """Where a balancer that could not be reached was looked for, why, and what to check: the rest of the
    line `TEAM/POOL/NAME (...): not reachable ...`."""
    if b.spec.driver == "builtin":
        where = f"its admin endpoint {e.address}"
        hint = (
            "is it running? poolctl dev status shows the dev stack's balancers and poolctl dev up starts them; "
            f"outside the dev stack: poolctl balancer serve --pool {b.pool} --name {b.spec.name}"
        )
    else:
        where = f"HAProxy's Runtime API at {e.address}"
        hint = (
            "is HAProxy running with that stats socket? (poolctl balancer haproxy-config prints its config)"
        )
    return f"at {where} ({e.reason}); {hint}"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v * 100:.1f}%"


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v * 1000:.1f} ms"


@balancer_app.command("stats")
def stats(
    name: Annotated[str, typer.Argument(help="Balancer name.")],
    pool: PoolOpt = None,
    team: TeamOpt = None,
    include_removed: Annotated[
        bool, typer.Option("--all", help="Also list the servers that left the balancer since it started.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Requests, success rate, per-server share and latency: live from the balancer (since it started),
    plus the last roll-up the stats Schedule stored. The table lists the current members; --all adds
    those that have left (share is of all requests either way). --json lists every server with its state."""
    from poolctl.activities.balancer_activities import BalancerActivities
    from poolctl.activities.balancers.base import BalancerError

    settings = get_settings()
    b = _stored(name, pool, team)
    live: BalancerStats | None = None
    live_error = not_reached = None
    try:
        live = asyncio.run(BalancerActivities(settings).read_stats(b.spec))
    except BalancerUnavailableError as e:
        live_error = str(e)
        not_reached = _not_reached(b, e) if e.address else None
    except BalancerError as e:
        live_error = str(e)
    with session_scope(settings.resolved_database_url) as s:
        last = store.last_rollup(s, b.id)
        totals = store.balancer_totals(s, b.id)
        rollup = (
            None
            if last is None
            else {
                "collected_at": last.collected_at,
                "requests": last.requests,
                "success_rate": last.success_rate,
                "servers": last.servers,
            }
        )
    total_server = sum(x.requests for x in live.servers) if live else 0
    servers = [
        {
            "server_id": x.server_id,
            "state": x.state,
            "weight": x.weight,
            "requests": x.requests,
            "share": None if not total_server else x.requests / total_server,
            "2xx": x.responses_2xx,
            "4xx": x.responses_4xx,
            "5xx": x.responses_5xx,
            "errors": x.upstream_errors,
            "success_rate": x.success_rate,
            "active_connections": x.active_connections,
            "mean_latency_s": x.mean_latency_s,
            "p99_latency_s_le": x.latency_quantile_s(0.99),
        }
        for x in (live.servers if live else [])
    ]

    data = {
        "team": b.team,
        "pool": b.pool,
        "balancer": b.spec.name,
        "driver": b.spec.driver,
        "live": None
        if live is None
        else {"requests": live.requests, "success_rate": live.success_rate,
              "no_member_responses": live.no_member_responses, "servers": servers},
        "live_error": live_error,
        "last_rollup": rollup,
        "totals": {"requests": totals[0], "successful": totals[1], "failed": totals[2]},
    }  # fmt: skip
    if as_json:
        print_json(data)
        return
    removed = [x for x in servers if x["state"] == "removed"]
    if not include_removed:
        servers = [x for x in servers if x["state"] != "removed"]
    head = f"{b.team}/{b.pool}/{b.spec.name} ({b.spec.driver}, {b.spec.algorithm})"
    if live is None:
        why = not_reached or f"({live_error})"
        console.print(f"{head}: [red]not reachable[/] {escape(why)}", highlight=False)
    else:
        console.print(
            f"{head}: {live.requests} requests, success rate {_pct(live.success_rate) or 'n/a'}"
            f", {live.no_member_responses} with no server in rotation",
            highlight=False,
        )
        console.print(
            table(
                None,
                ["server", "state", "weight", "requests", "share", "2xx", "4xx", "5xx", "errors", "active", "mean", "p99 <="],
                [[x["server_id"], x["state"], x["weight"], x["requests"], _pct(x["share"]), x["2xx"], x["4xx"],
                  x["5xx"], x["errors"], x["active_connections"], _ms(x["mean_latency_s"]),
                  _ms(x["p99_latency_s_le"])] for x in servers],
            )
        )  # fmt: skip
        if removed and not include_removed:
            console.print(
                f"{len(removed)} server(s) that left the balancer ({sum(x['requests'] for x in removed)} "
                "requests) not shown: --all shows them",
                highlight=False,
            )
    if rollup is None:
        every = f"{get_settings().balancer_stats_interval_s:g}s"
        console.print(
            f"no roll-up yet: the stats Schedule stores one every {every} (POOLCTL_BALANCER_STATS_INTERVAL_S)",
            highlight=False,
        )
    else:
        console.print(
            f"last roll-up {ago(rollup['collected_at'])}: {rollup['requests']} requests, "
            f"success rate {_pct(rollup['success_rate']) or 'n/a'}; stored totals {totals[0]} requests",
            highlight=False,
        )
