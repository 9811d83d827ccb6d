"""The `poolctl` command line: apply specs, run the dev stack, read status, scale by hand, show history."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperGroup

from poolctl.domain.errors import NotFoundError, SpecError
from poolctl.settings import Settings, get_settings
from poolctl.starter import (
    balancer_stack,
    devstack,
    health_cli,
    local_cli,
    policy_cli,
    pool_ops,
    runner,
    schedules_cli,
    server_cli,
    teams,
    waiting,
)
from poolctl.starter.balancer_cli import balancer_app
from poolctl.starter.help_format import install as install_help_format
from poolctl.starter.output import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    ago,
    console,
    err_console,
    fail,
    print_json,
    table,
)
from poolctl.starter.progress import wait_with_progress
from poolctl.starter.specfile import load_spec_files, stored_pools
from poolctl.store import queries
from poolctl.store.db import migrate, session_scope
from poolctl.temporal_client import connect

install_help_format()
app = typer.Typer(
    name="poolctl",
    help="Keep server pools at the right size and traffic on healthy servers, durably, on Temporal.\n\n"
    "Start with `poolctl dev up`, then `poolctl apply -f examples/demo.yaml` and `poolctl status`.\n\n"
    "Exit codes: 0 done; 2 bad input or refused; 3 timed out waiting (for a worker, or for a pool to settle: "
    "--timeout); 130 interrupted (Ctrl-C); 1 anything else.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings' line breaks inside a paragraph are not kept; `code` shows
)
dev_app = typer.Typer(
    help="Run the embedded stack (Temporal dev server + worker) in the background.", no_args_is_help=True
)


class _DeleteGroup(TyperGroup):
    """`poolctl delete NAME` (no kind given) says to write `poolctl delete pool NAME`."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except typer.TyperException as e:  # Typer's (vendored click's) UsageError
            if args and not args[0].startswith("-") and "Did you mean" not in e.message:
                e.message = f"No such command {args[0]!r}. Did you mean: poolctl delete pool {args[0]}"
            raise


delete_app = typer.Typer(
    help="Delete things (their servers are terminated first).", no_args_is_help=True, cls=_DeleteGroup
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(dev_app, name="dev")
app.add_typer(delete_app, name="delete")
app.add_typer(db_app, name="db")
app.add_typer(policy_cli.policy_app, name="policy")
app.command()(policy_cli.simulate)
app.command()(policy_cli.load)
app.command()(health_cli.health)
app.command()(schedules_cli.schedules)
app.add_typer(local_cli.local_app, name="local")
app.add_typer(server_cli.server_app, name="server")
app.add_typer(balancer_app, name="balancer")
app.add_typer(balancer_app, name="lb", hidden=True)  # `poolctl lb` is `poolctl balancer`, listed once
app.add_typer(teams.team_app, name="team")

T = TypeVar("T")

TeamOpt = Annotated[
    str | None,
    typer.Option(
        "--team", "-t", help="Team that owns the pool.  \\[default: your team token's, else POOLCTL_TEAM]"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
TimeoutOpt = Annotated[float, typer.Option(help=waiting.TIMEOUT_HELP)]
WaitTimeoutOpt = Annotated[
    float,
    typer.Option(
        help="Seconds to wait for a worker to answer and, with --wait, for the pool to reach its size; "
        "exit code 3 when they run out."
    ),
]


def _settings() -> Settings:
    return get_settings()


def _team(team: str | None) -> str:
    """The team a command acts for: the caller's (`poolctl.starter.teams`); exit 2 for another team's."""
    return teams.team_or_exit(team)


def run(make: Callable[[], Awaitable[T]], timeout: float = waiting.DEFAULT_TIMEOUT_S) -> T:
    """Run a command's async body (see `runner.run_command`: the Temporal runtime is shut down before the
    loop closes, `waiting.for_worker` calls share the `timeout` budget, and poolctl's errors become one
    line with the documented exit code)."""
    return runner.run_command(make, timeout)


async def _client() -> Any:
    return await connect(_settings())


# ---- dev stack --------------------------------------------------------------------------------------


@dev_app.command("up")
def dev_up() -> None:
    """Start the Temporal dev server (file-backed, web UI) and a worker in the background."""
    s = _settings()
    try:
        devstack.up(s, say=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except RuntimeError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(
            "interrupted: the dev stack may be partly up (poolctl dev status shows what runs; "
            "poolctl dev up finishes it, poolctl dev down stops it)",
            EXIT_INTERRUPTED,
        )
    console.print(f"[green]ready[/]: Temporal UI at [bold]{devstack.ui_url(s)}[/]; state in {s.state_dir}")
    console.print("next: poolctl apply -f examples/demo.yaml")


@dev_app.command("down")
def dev_down(
    purge: Annotated[
        bool, typer.Option(help="Also stop every local server and delete the state directory.")
    ] = False,
) -> None:
    """Stop the worker and the Temporal dev server. Local servers keep running unless --purge: it says which,
    and how to stop them."""
    try:
        devstack.down(
            _settings(), purge=purge, say=lambda m: console.print(m, highlight=False, soft_wrap=True)
        )
    except KeyboardInterrupt:
        fail(
            "interrupted: the dev stack may be partly down (poolctl dev status shows what still runs; "
            "run poolctl dev down again)",
            EXIT_INTERRUPTED,
        )


@dev_app.command("status")
def dev_status(as_json: JsonOpt = False) -> None:
    """Show whether the dev server, the worker and the built-in balancers run, and which local servers run
    (those keep running after `poolctl dev down`), with their pids and logs."""
    comps = devstack.status(_settings())
    if as_json:
        print_json([c.__dict__ for c in comps])
        return
    console.print(
        table(
            None,
            ["component", "state", "pid", "where", "log"],
            [
                [c.name, "[green]running[/]" if c.alive else "[red]stopped[/]", c.pid, c.detail, c.log]
                for c in comps
            ],
        )
    )


# ---- specs ------------------------------------------------------------------------------------------


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Option("--file", "-f", metavar="FILE", help="Spec file (YAML); repeatable.")
    ],
) -> None:
    """Check spec files without applying anything."""
    try:
        docs = load_spec_files(files, stored_pools(_settings().resolved_database_url))
    except SpecError as e:
        fail(str(e), EXIT_BAD_INPUT)
    n = sum(len(d.pools) for d in docs)
    console.print(f"[green]valid[/]: {n} pool(s) in {len(files)} file(s)")


@app.command()
def apply(
    files: Annotated[
        list[Path], typer.Option("--file", "-f", metavar="FILE", help="Spec file (YAML); repeatable.")
    ],
    wait: Annotated[bool, typer.Option(help="Wait until every pool reaches its size.")] = True,
    timeout: WaitTimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
    as_json: JsonOpt = False,
) -> None:
    """Validate specs and send each pool's whole spec to its workflow (started if none runs).

    Nothing is sent unless every file is valid and no pool refuses its spec. Merges like `kubectl apply`:
    `desired_servers` moves a pool only when it changed in the file since the last apply, so a size set
    by a policy or by `poolctl scale` stays. Re-applying an unchanged file changes nothing."""
    try:
        docs = load_spec_files(files, stored_pools(_settings().resolved_database_url))
    except SpecError as e:
        fail(str(e), EXIT_BAD_INPUT)
    docs = teams.documents_or_exit(docs)  # a team's caller applies only its own team's pools

    async def go() -> list[pool_ops.ApplyOutcome]:
        client = await _client()  # reach Temporal before writing anything
        outcomes = await waiting.for_worker(pool_ops.apply_documents(client, _settings(), docs), sends=True)
        await balancer_stack.after_apply(client, _settings(), say=lambda m: console.print(m, highlight=False))
        if not as_json:
            for o in outcomes:
                what = {
                    "created": "[green]created[/]",
                    "updated": "[yellow]updated[/]",
                    "unchanged": "unchanged",
                }[o.action]
                said = "; ".join(o.kept + o.changes)
                extra = f": {escape(said)}" if said else ""
                console.print(
                    f"pool {o.team}/{o.pool}: {what}{extra} (workflow {o.workflow})", highlight=False
                )
        if wait:
            for o in outcomes:
                view = await wait_with_progress(client, o.team, o.pool)
                if view is not None and view.status.value == "error":
                    fail(f"pool {o.pool} is in error: {view.status_reason}")
        return outcomes

    outcomes = run(go, timeout)
    if as_json:
        print_json([{**o.__dict__, "workflow": o.workflow} for o in outcomes])


# ---- reading ----------------------------------------------------------------------------------------


@app.command()
def status(
    pool: Annotated[str | None, typer.Argument(help="Pool name; all pools when omitted.")] = None,
    team: TeamOpt = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
) -> None:
    """Pools with their size, bounds and state (live from the pool workflows)."""
    s = _settings()
    scope = _team(team) if pool else teams.listing_scope_or_exit(team)  # a team's caller sees its own pools

    async def go() -> list[dict[str, Any]]:
        with session_scope(s.resolved_database_url) as db:
            rows = [queries.get_pool(db, scope, pool)] if pool and scope else queries.list_pools(db, scope)
            pools = [
                (r.team.name, r.name, r.min_servers, r.max_servers, r.status, r.status_reason) for r in rows
            ]
        client = await _client()
        out = []
        for t, name, lo, hi, db_status, db_reason in pools:
            view = await waiting.for_worker(pool_ops.query_status(client, t, name))
            out.append(
                {
                    "team": t,
                    "pool": name,
                    "status": view.status.value if view else f"{db_status} (no workflow)",
                    "reason": (view.status_reason or view.recommendation_only) if view else db_reason,
                    "current": view.current if view else None,
                    "desired": view.desired if view else None,
                    "min_servers": lo,
                    "max_servers": hi,
                    "last_event": view.last_event.model_dump(mode="json")
                    if view and view.last_event
                    else None,
                }
            )
        return out

    data = run(go, timeout)
    if as_json:
        print_json(data)
        return
    if not data:
        console.print("no pools yet: poolctl apply -f examples/demo.yaml")
        return
    rows = []
    for d in data:
        ev = d["last_event"]
        last = (
            f"#{ev['seq']} {ev['direction']} {ev['from_count']}->{ev['to_count']} {ev['status']}"
            if ev
            else ""
        )
        rows.append(
            [
                f"{d['team']}/{d['pool']}",
                d["status"],
                d["current"],
                d["desired"],
                f"{d['min_servers']}..{d['max_servers']}",
                last,
                d["reason"] or "",
            ]
        )
    console.print(
        table(None, ["pool", "status", "current", "desired", "range", "last action", "reason"], rows)
    )


@app.command()
def servers(
    pool: Annotated[str, typer.Argument(help="Pool name.")],
    team: TeamOpt = None,
    include_terminated: Annotated[bool, typer.Option("--all", help="Include terminated servers.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """A pool's servers: id, address, state, health, weight, age."""
    s = _settings()
    with session_scope(s.resolved_database_url) as db:
        try:
            rows = queries.list_servers(db, _team(team), pool, include_terminated=include_terminated)
            weights = queries.member_weights(db, _team(team), pool)
        except NotFoundError as e:
            fail(str(e), EXIT_BAD_INPUT)
        data = [
            {
                "server_id": r.id,
                "address": f"{r.host}:{r.port}",
                "state": r.state,
                "health": r.health,
                "weight": weights.get(r.id),
                "created_at": r.created_at,
                "terminated_at": r.terminated_at,
            }
            for r in rows
        ]
    if as_json:
        print_json(data)
        return
    console.print(
        table(
            f"{pool}: {sum(1 for d in data if d['state'] != 'terminated')} live server(s)",
            ["server", "address", "state", "health", "weight", "created"],
            [
                [d["server_id"], d["address"], d["state"], d["health"], d["weight"], ago(d["created_at"])]
                for d in data
            ],
        )
    )


@app.command()
def events(
    pool: Annotated[str, typer.Argument(help="Pool name.")],
    team: TeamOpt = None,
    limit: Annotated[int, typer.Option(help="How many events, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The pool's scaling events: each action with its cause and outcome, newest first."""
    s = _settings()
    with session_scope(s.resolved_database_url) as db:
        try:
            rows = queries.list_events(db, _team(team), pool, limit)
        except NotFoundError as e:
            fail(str(e), EXIT_BAD_INPUT)
        data = [
            {
                "event": r.event_key,
                "direction": r.direction,
                "from": r.from_count,
                "to": r.to_count,
                "cause": r.cause,
                "policy": r.policy_name,
                "status": r.status,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "error": r.error,
                "servers": r.servers,
                "decision": r.decision,
            }
            for r in rows
        ]
    if as_json:
        print_json(data)
        return
    console.print(
        table(
            f"{pool}: scaling events",
            ["#", "when", "action", "cause", "result", "error"],
            [
                [
                    d["event"].split("/")[3].split("@")[0],
                    ago(d["started_at"]),
                    f"{d['direction']} {d['from']}->{d['to']}",
                    d["cause"]
                    + (f" (policy {d['policy']})" if d["policy"] and d["policy"] not in d["cause"] else ""),
                    d["status"],
                    d["error"] or "",
                ]
                for d in data
            ],
        )
    )


# ---- acting -----------------------------------------------------------------------------------------


@app.command()
def scale(
    pool: Annotated[str, typer.Argument(help="Pool name.")],
    desired: Annotated[int, typer.Option("--desired", "-d", help="Servers wanted; must be within min..max.")],
    team: TeamOpt = None,
    reason: Annotated[str, typer.Option(help="Recorded as the cause of the scaling event.")] = "manual scale",
    wait: Annotated[bool, typer.Option(help="Wait until the pool reaches the new size.")] = True,
    timeout: WaitTimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
) -> None:
    """Set a pool's desired size by hand. Out-of-range requests are refused and change nothing."""
    t = _team(team)

    async def go() -> None:
        client = await _client()
        before = await waiting.for_worker(pool_ops.query_status(client, t, pool))
        if before is None:
            raise NotFoundError(
                f"pool {pool!r} not found in team {t!r} (no running workflow: apply its spec first)"
            )
        accepted = await waiting.for_worker(
            pool_ops.request_scale(client, t, pool, desired, reason), sends=True
        )
        console.print(
            f"{pool}: desired {accepted.previous_desired} -> {accepted.desired} (now {accepted.current} servers)"
        )
        if wait:
            view = await wait_with_progress(client, t, pool, after_seq=before.seq)
            if view is not None and view.status.value == "error":
                fail(f"pool {pool} is in error: {view.status_reason}")

    run(go, timeout)


def _pool_or_exit(team: str, pool: str, timeout: float) -> str | None:
    """Return when the pool exists: the store lists it (its provider is returned), or (a pool whose first
    write is still to come, or a store that lost it) its workflow runs (None). Otherwise the usual
    not-found line and exit 2."""
    with session_scope(_settings().resolved_database_url) as db:
        row = queries.find_pool(db, team, pool)
        if row is not None:
            return str(row.provider)

    async def go() -> None:
        if not await pool_ops.is_running(await _client(), team, pool):
            raise NotFoundError(f"pool {pool!r} not found in team {team!r}")

    run(go, timeout)
    return None


@delete_app.command("pool")
def delete_pool(
    pool: Annotated[str, typer.Argument(help="Pool name.")],
    team: TeamOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    timeout: TimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
) -> None:
    """Delete a pool through its workflow: stop its policies, terminate its servers, remove it from the
    store, end the workflow. Re-running an interrupted delete finishes it."""
    t = _team(team)
    # before the question: nothing to confirm for a pool that does not exist
    static = _pool_or_exit(t, pool, timeout) == "static"
    servers = (
        "deregister its servers (static: they are left running)" if static else "terminate all its servers"
    )
    if not yes:
        try:
            confirmed = typer.confirm(f"Delete pool {t}/{pool} and {servers}?")
        except typer.Abort:
            if sys.stdin.isatty():
                raise  # Ctrl-C or Ctrl-D at the prompt
            fail(
                f"delete pool {t}/{pool}: no answer on stdin (not a terminal): add --yes to delete without asking",
                EXIT_BAD_INPUT,
            )
        if not confirmed:
            raise typer.Exit(1)

    async def go() -> int:
        client = await _client()
        n = await waiting.for_worker(pool_ops.delete_pool(client, _settings(), t, pool), sends=True)
        # with the dev stack running, its balancers are stopped too (they are no longer declared)
        await balancer_stack.after_apply(client, _settings(), say=lambda m: console.print(m, highlight=False))
        return n

    n = run(go, timeout)
    done = "deregistered, left running" if static else "terminated"
    console.print(f"pool {t}/{pool} deleted ({n} server(s) {done})")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the latest revision."""
    s = _settings()
    migrate(s.resolved_database_url)
    console.print(f"schema is current at {s.resolved_database_url}")


@app.command()
def demo(
    with_load: Annotated[
        bool,
        typer.Option("--with-load", help="Also load the pool and show the policy scale out and back in."),
    ] = False,
) -> None:
    """The guided first run: start the stack, apply examples/demo.yaml, send traffic through the
    balancer, break a server to show auto-healing, explain (or, with --with-load, show) autoscaling."""
    from poolctl.starter.demo import run_demo

    run_demo(_settings(), with_load=with_load)


@app.command()
def worker() -> None:
    """Run a worker in the foreground (Ctrl-C stops it gracefully)."""
    from poolctl.worker import main as worker_main

    worker_main()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"poolctl {version('poolctl')}", highlight=False)
        except PackageNotFoundError:
            console.print("poolctl (not installed: run from a checkout)", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print poolctl's version and exit."
        ),
    ] = False,
) -> None:
    pass


HELP_PANELS = {  # `poolctl --help` lists commands under these headings, in this order
    "Start here": ["demo", "dev"],
    "Pools and load balancers": [
        "apply",
        "validate",
        "status",
        "servers",
        "server",
        "events",
        "health",
        "scale",
        "delete",
        "balancer",
        "lb",
    ],
    "Policies": ["policy", "simulate", "load"],
    "Operations": ["team", "schedules", "local", "worker", "db"],
}


def _arrange_help() -> None:
    order = [name for names in HELP_PANELS.values() for name in names]
    panel = {name: title for title, names in HELP_PANELS.items() for name in names}

    def name(info: Any) -> str:
        return str(info.name or info.callback.__name__).replace("_", "-")

    for infos in (app.registered_commands, app.registered_groups):
        infos.sort(key=lambda i: order.index(name(i)) if name(i) in order else len(order))
        for info in infos:
            info.rich_help_panel = panel.get(name(info), "Other")


_arrange_help()


def main() -> None:
    try:
        app()
    finally:
        _exit_if_a_runtime_was_left_behind()


def _exit_if_a_runtime_was_left_behind() -> None:
    """Every command shuts its Temporal runtime down before its loop closes (`temporal_client.command_runtime`).
    Should one be left behind (a bug: something kept a client), its threads could abort the interpreter's
    finalization with exit 134 after the command did its work: say so in one line and end the process
    without finalization, keeping the command's exit code."""
    import os
    import sys

    from poolctl.temporal_client import runtimes_left_behind

    left = runtimes_left_behind()
    if not left:
        return
    code = sys.exc_info()[1]
    status = code.code if isinstance(code, SystemExit) else (1 if code else 0)
    err_console.print(
        f"warning: a Temporal runtime was left behind (held by {'; '.join(left)})", highlight=False
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status if isinstance(status, int) else 1)


if __name__ == "__main__":
    main()
