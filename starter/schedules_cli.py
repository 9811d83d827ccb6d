"""`poolctl schedules`: poolctl's Temporal Schedules (statistics roll-up, housekeeping) with their next run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from poolctl.settings import get_settings
from poolctl.starter.output import console, print_json, table
from poolctl.starter.runner import run_command
from poolctl.starter.schedules import ScheduleView, ensure_schedules, list_schedules
from poolctl.temporal_client import connect


def _when(ts: datetime | None) -> str:
    return "" if ts is None else ts.astimezone(UTC).isoformat(timespec="seconds")


def schedules(
    ensure: Annotated[
        bool, typer.Option("--ensure", help="Create or update them first (as `dev up` and `apply` do).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
    ] = False,
) -> None:
    """List poolctl's Temporal Schedules: the balancer statistics roll-up (every
    POOLCTL_BALANCER_STATS_INTERVAL_S) and the weekly housekeeping that removes records older than
    POOLCTL_RETENTION_DAYS. Both skip a run while the previous one still runs."""
    settings = get_settings()

    async def go() -> list[ScheduleView]:
        client = await connect(settings)
        if ensure:
            await ensure_schedules(client, settings)
        return await list_schedules(client, settings)

    views = run_command(go)
    if as_json:
        print_json(
            [
                {
                    "id": v.id,
                    "what": v.what,
                    "every_s": v.every_s,
                    "exists": v.exists,
                    "paused": v.paused,
                    "next_run": _when(v.next_run) or None,
                    "last_run": _when(v.last_run) or None,
                }
                for v in views
            ]
        )
        return
    rows = [
        [v.id, v.what, f"{v.every_s:g}s", "paused" if v.paused else ("active" if v.exists else "missing"),
         _when(v.next_run), _when(v.last_run)]
        for v in views
    ]  # fmt: skip
    console.print(
        table(None, ["schedule", "what", "every", "state", "next run (UTC)", "last run (UTC)"], rows)
    )
    if any(not v.exists for v in views):
        console.print("create them with `poolctl schedules --ensure` (or `poolctl dev up` / `poolctl apply`)")
