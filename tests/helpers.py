"""Test helpers: await a condition instead of sleeping, apply a YAML spec, read a pool's state."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from poolctl.domain.pool_state import PoolStatusView
from poolctl.settings import Settings
from poolctl.starter import pool_ops
from poolctl.starter.specfile import parse_spec

T = TypeVar("T")

POOLCTL = str(Path(sys.executable).parent / "poolctl")
"""The `poolctl` command of this environment, for tests that run it as a real subprocess."""

EMPTY_POOL_SPEC = """
pools:
  - name: web
    provider: local
    min_servers: 0
    max_servers: 2
    desired_servers: 0
    policies:
      - name: cpu
        type: cpu
        target: 50
        evaluation_interval: 60
"""
"""A pool of 0 servers with one policy: the cheapest pool that still has a pool and a policy workflow."""


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    timeout: float = 60.0,
    interval: float = 0.2,
) -> T:
    """Poll `probe` until `until(value)` holds; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not until(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)
        value = await probe()
    return value


async def apply_yaml(client: Client, settings: Settings, text: str) -> list[pool_ops.ApplyOutcome]:
    doc = parse_spec(text, "test.yaml")
    doc = doc.model_copy(update={"team": settings.team})
    return await pool_ops.apply_documents(client, settings, [doc])


async def pool_view(client: Client, settings: Settings, pool: str) -> PoolStatusView | None:
    """The pool's status query; None while there is no workflow, or no answer yet (a query waits for a
    worker: right after a worker died it can time out while the task moves to another one)."""
    try:
        return await pool_ops.query_status(client, settings.team, pool)
    except RPCError as e:
        if e.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
            return None
        raise


async def settled(
    client: Client, settings: Settings, pool: str, size: int, timeout: float = 60.0
) -> PoolStatusView:
    def ok(v: Any) -> bool:
        return v is not None and not v.scaling and v.current == size and v.status.value == "active"

    view = await eventually(lambda: pool_view(client, settings, pool), ok, timeout)
    assert view is not None
    return view
