"""Waiting for a pool to settle while printing each change of its size or state."""

from __future__ import annotations

from typing import Any

from poolctl.starter import pool_ops
from poolctl.starter.output import console


async def wait_with_progress(client: Any, team: str, pool: str, timeout: float, after_seq: int = -1) -> Any:
    last: list[str] = []

    def progress(view: Any) -> None:
        line = f"  {pool}: {view.current}/{view.desired} servers, {view.status.value}"
        if not last or last[-1] != line:
            last.append(line)
            console.print(line, highlight=False)

    view = await pool_ops.wait_settled(
        client, team, pool, timeout=timeout, after_seq=after_seq, on_progress=progress
    )
    if view is None:
        console.print(f"  {pool}: no running workflow")
    elif view.current != view.desired or view.scaling:
        console.print(
            f"  [yellow]{pool}: still converging after {timeout:.0f}s[/] (see `poolctl status {pool}`)"
        )
    return view
