"""`poolctl demo`: the guided first run — bring the stack up, apply the demo pool, show it reach its size
with every server answering HTTP, then point at the UI and the next commands."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from rich.panel import Panel

from poolctl.settings import Settings
from poolctl.starter import devstack, pool_ops
from poolctl.starter.output import console, fail, table
from poolctl.starter.progress import wait_with_progress
from poolctl.starter.specfile import load_spec_files
from poolctl.temporal_client import connect

DEMO_SPEC = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def run_demo(settings: Settings, spec_path: Path = DEMO_SPEC) -> None:
    console.rule("[bold]1. the embedded stack: Temporal dev server + poolctl worker")
    try:
        devstack.up(settings, say=lambda m: console.print("  " + m, highlight=False))
    except RuntimeError as e:
        fail(str(e))
    console.rule(f"[bold]2. apply {spec_path}")
    docs = load_spec_files([spec_path])
    asyncio.run(_apply_and_show(settings, docs))


async def _apply_and_show(settings: Settings, docs: list) -> None:  # type: ignore[type-arg]
    client = await connect(settings)
    for o in await pool_ops.apply_documents(client, settings, docs):
        console.print(f"  pool {o.team}/{o.pool}: {o.action}; workflow {o.workflow}", highlight=False)
    for doc in docs:
        for spec in doc.pools:
            view = await wait_with_progress(client, doc.team, spec.name, 120)
            if view is None or view.status.value == "error":
                fail(f"pool {spec.name} did not come up: {view.status_reason if view else 'no workflow'}")
            console.rule(f"[bold]3. {spec.name}: every server is a real process answering HTTP")
            rows = []
            async with httpx.AsyncClient(timeout=5) as http:
                for s in view.servers:
                    try:
                        r = await http.get(f"http://{s.host}:{s.port}/")
                        answer = f"{r.status_code} {r.text.strip()[:40]}"
                    except httpx.HTTPError as e:
                        answer = f"no answer ({type(e).__name__})"
                    rows.append([s.server_id, f"http://{s.host}:{s.port}/", answer])
            console.print(table(None, ["server", "url", "GET / answered"], rows))
    ui = devstack.ui_url(settings)
    team = docs[0].team
    pool = docs[0].pools[0].name
    _explain_autoscaling(docs[0].pools[0], team, ui)
    console.print(
        Panel.fit(
            f'Temporal UI: [bold]{ui}[/]  (filter: PoolId = "{team}/{pool}")\n\n'
            "Try next (as .venv/bin/poolctl, or `source .venv/bin/activate` first):\n"
            f"  poolctl status\n"
            f"  poolctl scale {pool} --desired 5\n"
            f"  poolctl scale {pool} --desired 2\n"
            f"  poolctl events {pool}\n"
            f"  poolctl servers {pool}\n"
            f"  poolctl scale {pool} --desired 50      # refused: outside min..max\n"
            "  poolctl dev down                        # stop the stack (add --purge to remove everything)",
            title="poolctl demo is up",
        )
    )


def _explain_autoscaling(spec, team: str, ui: str) -> None:  # type: ignore[no-untyped-def]
    """Step 4: the pool's scaling policy, and the load command that makes it act."""
    if not spec.policies:
        return
    p = spec.policies[0]
    console.rule(f"[bold]4. autoscaling: policy {p.name} on {spec.name}")
    what = f"target {p.metric} {p.target:g} %" if p.target is not None else p.strategy or p.type
    console.print(
        f"  {p.name} ({p.type}, {p.strategy}) evaluates every {p.evaluation_interval:g}s: {what}; "
        f"scale-in waits a {p.stabilization_window_s:g}s window.\n"
        "  Load the pool in another terminal and watch it scale out, then back in after the load stops:\n\n"
        f"    poolctl load {spec.name} --rps 60 --duration 90\n"
        f"    watch -n 2 poolctl status {spec.name}           # servers come and go\n"
        f"    poolctl policy show {spec.name} {p.name}         # each decision: formula, clamps, reason\n"
        f"    poolctl policy pause {spec.name} {p.name}        # (resume / toggle) the policy stops acting\n\n"
        f'  In the UI: PolicyId = "{team}/{spec.name}/{p.name}" shows the policy\'s loop.',
        highlight=False,
    )
