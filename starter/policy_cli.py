"""`poolctl policy list|show|pause|resume|toggle`, `poolctl simulate` and `poolctl load`.

Registered in cli.py: `app.add_typer(policy_app, name="policy")`, `app.command()(simulate)`,
`app.command()(load)`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.markup import escape

from poolctl.domain.decision import Decision, same_recommendation
from poolctl.domain.errors import NotFoundError, SpecError
from poolctl.domain.policy_state import PolicyStateView
from poolctl.settings import get_settings
from poolctl.starter import policy_ops, pool_ops, waiting
from poolctl.starter.output import EXIT_BAD_INPUT, ago, console, fail, print_json, table
from poolctl.starter.runner import run_command
from poolctl.starter.specfile import load_spec_files
from poolctl.starter.teams import team_or_exit
from poolctl.store import queries
from poolctl.store.db import session_scope
from poolctl.store.queries import list_policy_decisions
from poolctl.temporal_client import connect

policy_app = typer.Typer(
    help="Scaling policies: list, show their latest decisions, pause / resume / toggle.\n\n"
    "Signals also work with plain Temporal: temporal workflow signal --name pause "
    "--workflow-id policy/TEAM/POOL/POLICY",
    no_args_is_help=True,
)

TeamOpt = Annotated[
    str | None,
    typer.Option(
        "--team", "-t", help="Team that owns the pool.  \\[default: your team token's, else POOLCTL_TEAM]"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
PoolArg = Annotated[str, typer.Argument(help="Pool name.")]
PolicyArg = Annotated[str, typer.Argument(help="Policy name.")]
TimeoutOpt = Annotated[float, typer.Option(help=waiting.TIMEOUT_HELP)]
T = TypeVar("T")


def _team(team: str | None) -> str:
    return team_or_exit(team)  # the caller's team (poolctl.starter.teams); exit 2 for another team's


def _run(coro_fn: Any, timeout: float = waiting.DEFAULT_TIMEOUT_S) -> Any:
    return run_command(coro_fn, timeout)


async def _naming_what_is_missing(team: str, pool: str, policy: str, work: Awaitable[T]) -> T:
    """`await work`; a policy without a running workflow is said as the store knows it: the pool does not
    exist, or has no such policy (`policy_ops.why_not_running`)."""
    try:
        return await work
    except NotFoundError:
        raise policy_ops.why_not_running(get_settings().resolved_database_url, team, pool, policy) from None


def _stored_policies(team: str, pool: str) -> list[tuple[str, str, bool]]:
    with session_scope(get_settings().resolved_database_url) as s:
        try:
            row = queries.get_pool(s, team, pool)
        except NotFoundError as e:
            fail(str(e), EXIT_BAD_INPUT)
        return [(p.name, p.type, p.is_active) for p in sorted(row.policies, key=lambda p: p.name)]


@policy_app.command("list")
def list_policies(
    pool: PoolArg,
    team: TeamOpt = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
) -> None:
    """A pool's policies: type, state, last metric and last recommendation (live from their workflows)."""
    t = _team(team)
    stored = _stored_policies(t, pool)

    async def go() -> list[dict[str, Any]]:
        client = await connect(get_settings())
        out = []
        for name, ptype, _active in stored:
            try:
                v = await waiting.for_worker(policy_ops.query_policy(client, t, pool, name))
            except NotFoundError:
                out.append({"policy": name, "type": ptype, "status": "no workflow"})
                continue
            rec = v.last_recommendation
            out.append(
                {
                    "policy": name,
                    "type": v.type,
                    "strategy": v.strategy,
                    "status": v.status,
                    "state": policy_ops.pause_state(v),
                    "scale_in_paused": v.scale_in_paused,
                    "scale_out_paused": v.scale_out_paused,
                    "interval_s": v.evaluation_interval,
                    "metric": v.last_metric,
                    "current": v.current,
                    "recommends": rec.desired if rec else None,
                    "abstains": rec.abstain if rec else None,
                    "reason": v.last_reason,
                    "evaluations": v.evaluations,
                    "error": v.last_error,
                }
            )
        return out

    data = _run(go, timeout)
    if as_json:
        print_json(data)
        return
    if not data:
        console.print(f"pool {pool} has no policies")
        return
    console.print(
        table(
            f"{t}/{pool}: policies",
            ["policy", "type", "status", "every", "metric", "current", "recommends", "reason", "evals"],
            [
                [
                    d["policy"],
                    f"{d['type']}" + (f"/{d['strategy']}" if d.get("strategy") else ""),
                    d.get("state", d["status"]),
                    f"{d['interval_s']:g}s" if d.get("interval_s") else "",
                    "n/a" if d.get("metric") is None else f"{d['metric']:.1f}",
                    d.get("current"),
                    f"{d['recommends']} (abstains)" if d.get("abstains") else d.get("recommends"),
                    d.get("reason") or "",
                    d.get("evaluations"),
                ]
                for d in data
            ],
        )
    )


def _decision_lines(d: Decision) -> list[str]:
    metric = "n/a" if d.metric is None else f"{d.metric:g}"
    lines = [
        f"[bold]{d.at.isoformat(timespec='seconds')}[/]  {d.current} -> {d.desired} "
        f"({d.direction.value})  [cyan]{d.reason.value}[/]  {d.metric_name or 'metric'}={metric}",
        f"    formula: {escape(d.formula)}",
    ]
    for c in d.clamps:
        lines.append(
            f"    clamp:   {c.reason.value}: {c.before} -> {c.after}"
            + (f" ({escape(c.detail)})" if c.detail else "")
        )
    return lines


@policy_app.command("show")
def show(
    pool: PoolArg,
    policy: PolicyArg,
    team: TeamOpt = None,
    limit: Annotated[int, typer.Option(help="How many decisions, newest first.")] = 10,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
) -> None:
    """One policy: its state, the pool's cooldowns, and its latest decisions with formula and clamps."""
    t = _team(team)

    async def go() -> dict[str, Any]:
        client = await connect(get_settings())
        view = await _naming_what_is_missing(
            t, pool, policy, waiting.for_worker(policy_ops.query_policy(client, t, pool, policy))
        )
        pool_view = await waiting.for_worker(pool_ops.query_status(client, t, pool))
        return {"view": view, "pool": pool_view}

    got = _run(go, timeout)
    view, pview = got["view"], got["pool"]
    stored: list[Decision] = []
    with session_scope(get_settings().resolved_database_url) as s:
        for r in list_policy_decisions(s, t, pool, policy, limit=limit):
            stored.append(Decision.model_validate(r.decision))
    decisions = stored or list(reversed(view.decisions))[:limit]
    if as_json:
        print_json(
            {
                "state": view.model_dump(mode="json", exclude={"decisions"}),
                "pool_cooldowns": pview.cooldowns.model_dump(mode="json") if pview else None,
                "recommendation_only": pview.recommendation_only if pview else None,
                "decisions": [d.model_dump(mode="json") for d in decisions],
            }
        )
        return
    console.print(
        f"[bold]policy {t}/{pool}/{policy}[/]  {view.type}" + (f"/{view.strategy}" if view.strategy else "")
    )
    console.print(
        f"  status:      {policy_ops.pause_state(view)}" + (" (dry run)" if view.dry_run else ""),
        highlight=False,
    )
    metric = "n/a" if view.last_metric is None else f"{view.last_metric:g} ({ago(view.last_metric_at)})"
    console.print(
        f"  last metric: {metric}; pool size seen: {view.current}; evaluations: {view.evaluations}",
        highlight=False,
    )
    if view.last_error:
        console.print(f"  last error:  [red]{escape(view.last_error)}[/]", highlight=False)
    if pview is not None and pview.recommendation_only:  # a static pool: poolctl never resizes it
        console.print(f"  mode:        {pview.recommendation_only}", highlight=False)
    rec = view.last_recommendation
    if rec:
        console.print(
            f"  recommends:  {rec.desired} ({rec.direction.value}, {rec.reason.value})"
            + (escape(" [abstains]: takes no part in the pool's vote") if rec.abstain else ""),
            highlight=False,
        )
    if pview is not None:
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        cd = pview.cooldowns
        from poolctl.domain.decision import Direction

        console.print(
            f"  pool:        {pview.current}/{pview.desired} servers; cooldown left: scale-out "
            f"{cd.remaining_s(Direction.UP, now):.0f}s, scale-in {cd.remaining_s(Direction.DOWN, now):.0f}s",
            highlight=False,
        )
    console.print(
        f"  next evaluation: {view.next_evaluation_at.isoformat(timespec='seconds') if view.next_evaluation_at else '?'}",
        highlight=False,
    )
    console.rule(f"latest decisions that changed the recommendation ({len(decisions)})")
    for d in decisions:
        for line in _decision_lines(d):
            console.print(line, highlight=False)


def _signal_command(signal: str, doc: str) -> None:
    def command(
        pool: PoolArg,
        policy: PolicyArg,
        team: TeamOpt = None,
        timeout: TimeoutOpt = waiting.DEFAULT_TIMEOUT_S,
    ) -> None:
        t = _team(team)

        async def go() -> PolicyStateView:
            client = await connect(get_settings())
            return await _naming_what_is_missing(
                t,
                pool,
                policy,
                waiting.for_worker(
                    policy_ops.signal_and_read(client, t, pool, policy, signal),
                    f"waiting for policy {policy} to take the {signal} signal",
                    sends=True,
                ),
            )

        view = _run(go, timeout)
        console.print(f"policy {t}/{pool}/{policy}: {policy_ops.pause_state(view)}", highlight=False)

    command.__doc__ = doc
    policy_app.command(signal.replace("_", "-"))(command)


_AFTER = " Prints the policy's state once the signal took effect."
_signal_command("pause", "Pause a policy: it stops asking the pool for anything until resumed." + _AFTER)
_signal_command(
    "resume",
    "Resume a paused policy (every pause cleared; scale-in waits a full stabilization window)." + _AFTER,
)
_signal_command("toggle", "Pause a running policy, or resume a paused one." + _AFTER)
_signal_command("pause_scale_in", "Keep the policy's scale-out, but stop it from scaling in." + _AFTER)
_signal_command("pause_scale_out", "Keep the policy's scale-in, but stop it from scaling out." + _AFTER)


# ---- simulate -------------------------------------------------------------------------------------


def _step_json(s: Any, changed: bool) -> dict[str, Any]:
    def dec(d: Decision) -> dict[str, Any]:
        return {
            "desired": d.desired,
            "direction": d.direction.value,
            "reason": d.reason.value,
            "raw": d.raw,
            "formula": d.formula,
            "clamps": [c.model_dump(mode="json") for c in d.clamps],
        }

    return {
        "at": s.at.isoformat(),
        "trace_value": s.trace_value,
        "metric": s.metric,
        "current": s.current,
        "serving": s.serving,
        "ready": s.ready,
        "desired": s.desired,
        "policy": dec(s.policy_decision),
        "pool": dec(s.pool_decision),
        "policy_changed": changed,
    }


def simulate(
    file: Annotated[
        Path,
        typer.Option("--file", "-f", metavar="FILE", help="Spec file (YAML) holding the pool and policy."),
    ],
    policy: Annotated[str, typer.Option("--policy", help="Policy name in the spec.")],
    trace: Annotated[
        Path,
        typer.Option("--trace", metavar="CSV", help="CSV of timestamp,value (ISO 8601 or epoch seconds)."),
    ],
    pool: Annotated[
        str | None, typer.Option("--pool", help="Pool name (needed when the spec has several).")
    ] = None,
    start: Annotated[
        int | None,
        typer.Option("--start", help="Servers at the start.  \\[default: the pool's desired_servers]"),
    ] = None,
    boot_delay: Annotated[
        float, typer.Option("--boot-delay", help="Seconds before a new server serves.")
    ] = 30.0,
    load_model: Annotated[
        bool,
        typer.Option(
            "--load-model", help="Read values as per-server load at --start servers (capacity lowers it)."
        ),
    ] = False,
    as_json: JsonOpt = False,
    plot_png: Annotated[
        Path | None, typer.Option("--plot", metavar="PNG", help="Write a PNG of metric and capacity.")
    ] = None,
) -> None:
    """Run a policy over a recorded metric trace with the live loop's decision code, on a modelled pool."""
    from poolctl.simulate import format_timeline, load_trace_csv, plot
    from poolctl.simulate import simulate as run_sim

    try:
        docs = load_spec_files([file])
    except SpecError as e:
        fail(str(e), EXIT_BAD_INPUT)
    pools = [p for d in docs for p in d.pools if pool is None or p.name == pool]
    if not pools:
        fail(f"no pool {pool!r} in {file}", EXIT_BAD_INPUT)
    if len(pools) > 1:
        fail(
            f"{file} has several pools ({', '.join(p.name for p in pools)}): choose one with --pool",
            EXIT_BAD_INPUT,
        )
    pspec = pools[0]
    match = [p for p in pspec.policies if p.name == policy]
    if not match:
        names = ", ".join(p.name for p in pspec.policies) or "none"
        fail(f"pool {pspec.name} has no policy {policy!r} (policies: {names})", EXIT_BAD_INPUT)
    try:
        points = load_trace_csv(trace)
    except OSError as e:  # as a spec file that cannot be read is said (`starter.specfile`)
        fail(f"{trace}: cannot read: {e.strerror or e}", EXIT_BAD_INPUT)
    except ValueError as e:
        fail(str(e), EXIT_BAD_INPUT)
    n0 = pspec.initial_desired if start is None else start
    steps = run_sim(
        match[0],
        points,
        start=n0,
        boot_delay_s=boot_delay,
        pool_min=pspec.min_servers,
        pool_max=pspec.max_servers,
        load_model=load_model,
    )
    changed: list[bool] = []  # did the policy's recommendation change (what the live loop sends and records)
    prev = None
    for s in steps:
        rec = s.policy_decision.as_recommendation()
        changed.append(not same_recommendation(prev, rec))
        prev = rec
    if plot_png is not None:
        plot(
            steps, plot_png, spec=match[0], title=f"poolctl simulate: {pspec.name}/{policy} over {trace.name}"
        )
    if as_json:
        print_json([_step_json(s, c) for s, c in zip(steps, changed, strict=True)])
        return
    for line in format_timeline(steps):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    peak = max(s.desired for s in steps) if steps else n0
    changes = sum(1 for s in steps if s.scaled)
    console.print(
        f"{len(steps)} evaluations, {changes} capacity change(s), peak {peak}, end {steps[-1].desired if steps else n0}"
        + (f"; plot: {plot_png}" if plot_png else ""),
        highlight=False,
    )


# ---- load ---------------------------------------------------------------------------------------


def _pool_urls(team: str, pool: str) -> list[str]:
    with session_scope(get_settings().resolved_database_url) as s:
        return [
            f"http://{r.host}:{r.port}" for r in queries.list_servers(s, team, pool) if r.state == "running"
        ]


async def generate_load(
    urls_fn: Any, rps: float, duration: float, *, say: Any = None, refresh_s: float = 2.0
) -> dict[str, int]:
    """Send GET / at `rps` for `duration` seconds, round-robin over `urls_fn()` (re-read every `refresh_s`)."""
    sent = ok = failed = 0
    urls: list[str] = list(urls_fn())
    cycle = itertools.cycle(urls) if urls else None
    t0 = time.monotonic()
    last_refresh = last_report = t0
    pending: set[asyncio.Task[None]] = set()

    async with httpx.AsyncClient(timeout=5) as http:

        async def one(url: str) -> None:
            nonlocal ok, failed
            try:
                r = await http.get(url + "/")
                if r.status_code < 500:
                    ok += 1
                else:
                    failed += 1
            except httpx.HTTPError:
                failed += 1

        while (now := time.monotonic()) - t0 < duration:
            if now - last_refresh >= refresh_s:
                fresh = list(urls_fn())
                if fresh != urls:
                    urls, cycle = fresh, (itertools.cycle(fresh) if fresh else None)
                last_refresh = now
            due = int((now - t0) * rps) - sent
            for _ in range(max(0, due)):
                if cycle is None:
                    failed += 1
                else:
                    task = asyncio.create_task(one(next(cycle)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                sent += 1
            if say is not None and now - last_report >= 5:
                last_report = now
                say(f"  {now - t0:5.0f}s  sent {sent}  ok {ok}  failed {failed}  targets {len(urls)}")
            await asyncio.sleep(min(0.05, 1.0 / max(rps, 1.0)))
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return {"sent": sent, "ok": ok, "failed": failed}


def load(
    pool: PoolArg,
    rps: Annotated[float, typer.Option("--rps", help="Requests per second in total.")] = 40.0,
    duration: Annotated[float, typer.Option("--duration", help="Seconds to run.")] = 60.0,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Send to this URL (e.g. a balancer) instead of the pool's servers."),
    ] = None,
    team: TeamOpt = None,
) -> None:
    """Generate HTTP load on a pool (GET /, round-robin over its servers) so its CPU gauge rises.

    Local servers model CPU = 5 + 2 x req/s per server, averaged over ~10 s: 40 req/s over 2 servers
    is about 45 % CPU each. New servers join the rotation as the pool scales."""
    t = _team(team)
    if rps <= 0 or duration <= 0:
        fail("--rps and --duration must be positive", EXIT_BAD_INPUT)
    if url is not None:
        target = url.rstrip("/")

        def urls_fn() -> list[str]:
            return [target]
    else:
        _stored_policies(t, pool)  # fails clearly when the pool is unknown

        def urls_fn() -> list[str]:
            return _pool_urls(t, pool)

        if not urls_fn():
            fail(f"pool {t}/{pool} has no running servers to load", EXIT_BAD_INPUT)
    console.print(
        f"load on {url or f'{t}/{pool}'}: {rps:g} req/s for {duration:g}s (Ctrl-C stops)", highlight=False
    )
    try:
        result = asyncio.run(
            generate_load(urls_fn, rps, duration, say=lambda m: console.print(m, highlight=False))
        )
    except KeyboardInterrupt:
        console.print("stopped")
        return
    console.print(
        f"done: sent {result['sent']}, ok {result['ok']}, failed {result['failed']}", highlight=False
    )
