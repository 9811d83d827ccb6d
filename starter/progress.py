"""Waiting for a pool to settle while printing each change of its size or state."""

from __future__ import annotations

import asyncio
from typing import Any

from poolctl.starter import pool_ops, waiting
from poolctl.starter.output import console


async def wait_with_progress(
    client: Any, team: str, pool: str, timeout: float | None = None, after_seq: int = -1
) -> Any:
    """Poll the pool until it settles, printing each new `current/desired, state` line. `timeout` (s)
    defaults to what is left of the command's deadline (`waiting.remaining_s()`). Returns the last view
    (None: no running workflow); raises `waiting.WaitTimedOut` when the pool has not settled in time."""
    limit = waiting.remaining_s() if timeout is None else timeout
    last: list[str] = []

    def progress(view: Any) -> None:
        line = f"  {pool}: {view.current}/{view.desired} servers, {view.status.value}"
        if not last or last[-1] != line:
            last.append(line)
            console.print(line, highlight=False)

    try:  # a query blocks while no worker answers: bound the whole wait, not only the polling loop
        view = await asyncio.wait_for(
            pool_ops.wait_settled(
                client, team, pool, timeout=limit, after_seq=after_seq, on_progress=progress
            ),
            limit + 1.0,
        )
    except TimeoutError:
        raise waiting.WaitTimedOut(
            f"timed out after {limit:g}s waiting for pool {pool} to settle; no answer from its workflow "
            "(is the worker running? poolctl dev status)"
        ) from None
    if view is None:
        console.print(f"  {pool}: no running workflow")
    elif view.status.value != "error" and (view.current != view.desired or view.scaling):
        raise waiting.WaitTimedOut(
            f"timed out after {limit:g}s waiting for pool {pool} to settle: {view.current}/{view.desired} "
            f"servers, {view.status.value} (it carries on; see poolctl status {pool})"
        )
    return view
