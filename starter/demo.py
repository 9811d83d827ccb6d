"""`poolctl demo`: the guided first run. It brings the stack up, applies examples/demo.yaml (a pool of real
HTTP servers behind a built-in balancer, health-checked, with a CPU policy), sends traffic through the
balancer, breaks a server to show auto-healing, and (with --with-load) shows the policy scale out and in."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from temporalio.client import Client

from poolctl.domain.errors import SpecError
from poolctl.domain.pool_spec import PoolSpec, SpecDocument
from poolctl.settings import Settings
from poolctl.starter import balancer_stack, devstack, pool_ops
from poolctl.starter.output import EXIT_BAD_INPUT, console, fail, table
from poolctl.starter.progress import wait_with_progress
from poolctl.starter.runner import run_command
from poolctl.starter.specfile import load_spec_files
from poolctl.store import queries
from poolctl.store.db import session_scope
from poolctl.temporal_client import connect

DEMO_TIMEOUT_S = 900.0  # the whole story, load included: each wait inside bounds itself
DEMO_SPEC = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def say(message: str) -> None:
    """A line of the story; a long one (a command to copy) is wrapped by the terminal, not cut into lines."""
    console.print(message, highlight=False, soft_wrap=True)


def _metrics_line(settings: Settings) -> str:
    """Where the worker's Prometheus endpoint is (poolctl's counters and the SDK's metrics)."""
    if not settings.worker_metrics_port:
        return ""
    return f"Metrics:     [bold]http://127.0.0.1:{settings.worker_metrics_port}/metrics[/] (worker)\n"


def run_demo(settings: Settings, spec_path: Path = DEMO_SPEC, *, with_load: bool = False) -> None:
    console.rule("[bold]1. the embedded stack: Temporal dev server + poolctl worker")
    try:
        devstack.up(settings, say=lambda m: say("  " + m))
    except RuntimeError as e:
        fail(str(e))
    if settings.worker_metrics_port:
        say(f"  worker metrics: curl http://127.0.0.1:{settings.worker_metrics_port}/metrics | grep poolctl_")
    try:
        docs = load_spec_files([spec_path])
    except SpecError as e:
        fail(str(e), EXIT_BAD_INPUT)
    # errors inside (a refused apply, Temporal gone, ...) are one line and an exit code: runner.run_command
    run_command(lambda: _story(settings, spec_path, docs[0], with_load), DEMO_TIMEOUT_S)


async def _story(settings: Settings, spec_path: Path, doc: SpecDocument, with_load: bool) -> None:
    client = await connect(settings)
    spec = doc.pools[0]
    console.rule(f"[bold]2. apply {spec_path.name}: pool {spec.name}")
    for o in await pool_ops.apply_documents(client, settings, [doc]):
        say(f"  pool {o.team}/{o.pool}: {o.action}; workflow {o.workflow}")
    await balancer_stack.after_apply(client, settings, say=lambda m: say("  " + m))
    view = await wait_with_progress(client, doc.team, spec.name, 120)
    if view is None or view.status.value == "error":
        fail(f"pool {spec.name} did not come up: {view.status_reason if view else 'no workflow'}")
    view = await _wait_all_healthy(client, doc.team, spec.name, 60)
    await _show_servers(view)
    lb_url = await _show_balancer(spec)
    await _show_healing(client, settings, doc.team, spec)
    _explain_autoscaling(spec, doc.team, lb_url)
    if with_load and spec.policies:
        await _run_load(client, doc.team, spec, lb_url)
    ui = devstack.ui_url(settings)
    console.print(
        Panel.fit(
            Group(
                f'Temporal UI: [bold]{ui}[/]  (filter: PoolId = "{doc.team}/{spec.name}")\n'
                + (f"Balancer:    [bold]{lb_url}/[/]\n" if lb_url else "")
                + _metrics_line(settings)
                + "\nTry next (as .venv/bin/poolctl, or `source .venv/bin/activate` first):",
                _commands(spec.name),
            ),
            title="poolctl demo is up",
        )
    )


def _commands(pool: str) -> Table:
    """Commands to try, each with what it shows (fits 80 columns; narrower, only a comment wraps)."""
    rows = [
        ("poolctl status", "pools: size, state, last action"),
        (f"poolctl health {pool}", "servers' health, counters, uptime"),
        (f"poolctl scale {pool} --desired 5", "by hand (the policy may undo it)"),
        (f"poolctl events {pool}", "each action, its cause and result"),
        (f"poolctl local unhealthy {pool}", "break a server: see it replaced"),
        ("poolctl lb stats demo-lb", "requests, success rate, share"),
        (f"poolctl scale {pool} --desired 50", "refused: outside min..max"),
        ("poolctl dev down", "stop (--purge removes everything)"),
    ]
    grid = Table.grid(padding=(0, 2, 0, 0))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for command, why in rows:
        grid.add_row(f"  {command}", f"# {why}")
    return grid


async def _wait_all_healthy(client: Client, team: str, pool: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    view = await pool_ops.query_status(client, team, pool)
    while time.monotonic() < deadline:
        view = await pool_ops.query_status(client, team, pool)
        if view is not None and view.servers and all(s.health == "healthy" for s in view.servers):
            say(f"  all {len(view.servers)} servers passed their health check")
            return view
        await asyncio.sleep(0.5)
    return view


async def _show_servers(view: Any) -> None:
    console.rule(f"[bold]3. {view.pool}: every server is a real process answering HTTP")
    rows = []
    async with httpx.AsyncClient(timeout=5) as http:
        for s in view.servers:
            try:
                r = await http.get(f"http://{s.host}:{s.port}/")
                answer = f"{r.status_code} {r.text.strip()[:40]}"
            except httpx.HTTPError as e:
                answer = f"no answer ({type(e).__name__})"
            rows.append([s.server_id, f"http://{s.host}:{s.port}/", s.health, answer])
    console.print(table(None, ["server", "url", "health", "GET / answered"], rows))


async def _show_balancer(spec: PoolSpec) -> str | None:
    if not spec.load_balancers:
        return None
    lb = spec.load_balancers[0]
    url = f"http://{lb.ip_address}:{lb.port}"
    console.rule(f"[bold]4. traffic through balancer {lb.name} ({lb.algorithm})")
    say(f"  {url}/ spreads 60 requests over the pool's healthy servers")
    counts: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the balancer was just started: wait for its members
            try:
                if (await http.get(url + "/")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        results = await asyncio.gather(*(http.get(url + "/") for _ in range(60)), return_exceptions=True)
    for r in results:
        counts[
            r.text.strip()[:40] if isinstance(r, httpx.Response) and r.status_code == 200 else "error"
        ] += 1
    console.print(table(None, ["answered by", "requests"], [[k, v] for k, v in sorted(counts.items())]))
    return url


async def _show_healing(client: Client, settings: Settings, team: str, spec: PoolSpec) -> None:
    if not (spec.auto_healing and spec.effective_health_check):
        return
    check = spec.effective_health_check
    view = await pool_ops.query_status(client, team, spec.name)
    assert view is not None
    victim = view.servers[0]
    console.rule(f"[bold]5. auto-healing: {victim.server_id} starts failing its health check")
    say(f"  poolctl local unhealthy {spec.name} {victim.server_id}   (its /health now answers 503)")
    async with httpx.AsyncClient(timeout=5) as http:
        await http.post(f"http://{victim.host}:{victim.port}/admin/health", json={"healthy": False})
    say(
        f"  the check probes every {check.interval:g}s; after {check.unhealthy_threshold} failures in a row the "
        "server leaves the balancer, a replacement is launched, then the old one is drained and terminated"
    )
    seen: set[str] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        view = await pool_ops.query_status(client, team, spec.name)
        if view is None:
            break
        ids = {s.server_id: s for s in view.servers}
        line = ""
        if victim.server_id in ids and ids[victim.server_id].health == "unhealthy":
            line = f"  {victim.server_id} is unhealthy: out of rotation"
        elif view.status.value == "scaling":
            line = f"  replacing: {view.status_reason}"
        elif victim.server_id not in ids and all(s.health == "healthy" for s in view.servers):
            say(f"  {victim.server_id} replaced; the pool has {len(view.servers)} healthy servers again")
            break
        if line and line not in seen:
            seen.add(line)
            say(line)
        await asyncio.sleep(0.5)
    with session_scope(settings.resolved_database_url) as s:
        events = queries.list_events(s, team, spec.name, 3)
        rows = [[e.direction, f"{e.from_count}->{e.to_count}", e.cause, e.status] for e in events]
    console.print(table("latest scaling events", ["action", "size", "cause", "result"], rows))


def _explain_autoscaling(spec: PoolSpec, team: str, lb_url: str | None) -> None:
    if not spec.policies:
        return
    p = spec.policies[0]
    console.rule(f"[bold]6. autoscaling: policy {p.name} on {spec.name}")
    what = f"target {p.metric} {p.target:g} %" if p.target is not None else (p.strategy or p.type)
    via = f" --url {lb_url}" if lb_url else ""
    say(
        f"  {p.name} ({p.type}, {p.strategy}) evaluates every {p.evaluation_interval:g}s: {what}; "
        f"scale-in waits a {p.stabilization_window_s:g}s window.\n"
        "  Load the pool and watch it scale out, then back in after the load stops "
        "(`make demo` does it now; to do it yourself):\n\n"
        f"    poolctl load {spec.name} --rps 60 --duration 90{via}\n"
        f"    watch -n 2 poolctl status {spec.name}\n"
        f"    poolctl policy show {spec.name} {p.name}         # each decision: formula, clamps, reason\n"
        f"    poolctl policy pause {spec.name} {p.name}        # (resume / toggle) the policy stops acting\n\n"
        f'  In the UI: PolicyId = "{team}/{spec.name}/{p.name}" shows the policy\'s loop.'
    )


async def _run_load(client: Client, team: str, spec: PoolSpec, lb_url: str | None) -> None:
    from poolctl.starter.policy_cli import _pool_urls, generate_load

    def urls() -> list[str]:
        return [lb_url] if lb_url else _pool_urls(team, spec.name)

    start = await pool_ops.query_status(client, team, spec.name)
    assert start is not None
    say(
        f"\n  sending 60 req/s for 75 s{' through the balancer' if lb_url else ''}; the pool has "
        f"{start.current} servers"
    )
    load = asyncio.create_task(generate_load(urls, 60, 75))
    peak = start.current
    last = ""
    while not load.done():
        view = await pool_ops.query_status(client, team, spec.name)
        if view is not None:
            peak = max(peak, view.current)
            line = f"  {view.current} servers (desired {view.desired}) {view.status.value}"
            if line != last:
                say(line)
                last = line
        await asyncio.sleep(1)
    result = await load
    say(f"  load done: {result['ok']} ok, {result['failed']} failed; peak {peak} servers")
    say("  now idle: the policy scales in after its stabilization window")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        view = await pool_ops.query_status(client, team, spec.name)
        if view is not None:
            line = f"  {view.current} servers (desired {view.desired}) {view.status.value}"
            if line != last:
                say(line)
                last = line
            if view.current <= start.current and not view.scaling:
                break
        await asyncio.sleep(1)
