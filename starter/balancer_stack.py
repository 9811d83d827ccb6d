"""The dev stack's built-in balancers: `poolctl dev up` (and `poolctl apply` while the stack runs) starts one
detached `poolctl balancer serve` per active builtin balancer the applied specs declare, with pid, log and
spec hash under the state directory; balancers no longer declared (or whose spec changed) are stopped
(and restarted). HAProxy balancers are not run by the dev stack: see `poolctl balancer haproxy-config`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from poolctl.settings import Settings
from poolctl.starter.processes import Component, pid_alive, port_open, read_pid, spawn, stop
from poolctl.store import queries as store
from poolctl.store.db import session_scope

PREFIX = "balancer-"


def _key(team: str, pool: str, name: str) -> str:
    return f"{PREFIX}{team}.{pool}.{name}"


def _dirs(settings: Settings) -> tuple[Path, Path]:
    root = settings.ensure_state_dir()
    (root / "pids").mkdir(exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    return root / "pids", root / "logs"


def _spec_hash(spec_json: str) -> str:
    return hashlib.sha256(spec_json.encode()).hexdigest()[:16]


def declared(settings: Settings) -> list[store.StoredBalancer]:
    """Active builtin balancers of every applied pool."""
    with session_scope(settings.resolved_database_url) as s:
        return [
            b for b in store.list_balancers(s) if b.spec.driver == "builtin" and b.spec.status == "active"
        ]


def _env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **settings.as_env(), "POOLCTL_DATABASE_URL": settings.resolved_database_url}
    # a balancer is the stack's process, not the caller's: it runs as the stack (the team auth key in the
    # state dir), whichever team's caller started it
    env.pop("POOLCTL_TEAM_TOKEN", None)
    return env


def up(settings: Settings, *, say=print, wait_s: float = 15.0) -> list[str]:  # type: ignore[no-untyped-def]
    """Start every declared balancer that is not running (restart those whose spec changed), stop the
    ones no longer declared. Idempotent. Returns the keys started."""
    pids, logs = _dirs(settings)
    wanted = {_key(b.team, b.pool, b.spec.name): b for b in declared(settings)}
    for pid_file in sorted(pids.glob(f"{PREFIX}*.pid")):
        key = pid_file.stem
        meta = pid_file.with_suffix(".json")
        b = wanted.get(key)
        stale = b is None
        if b is not None and meta.exists():
            stale = json.loads(meta.read_text()).get("spec_hash") != _spec_hash(b.spec.model_dump_json())
        if stale and stop(read_pid(pid_file), 10):
            say(f"balancer {key[len(PREFIX) :]} stopped" + (" (spec changed)" if b is not None else ""))
        if stale:
            pid_file.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
    started = []
    for key, b in wanted.items():
        pid_file = pids / f"{key}.pid"
        if pid_alive(read_pid(pid_file)):
            continue
        if port_open(b.spec.ip_address, b.spec.port, 0.2):
            say(
                f"warning: balancer {b.spec.name}: port {b.spec.port} is taken by another process; not started"
            )
            continue
        cmd = [sys.executable, "-m", "poolctl.starter.cli", "balancer", "serve",
               "--team", b.team, "--pool", b.pool, "--name", b.spec.name]  # fmt: skip
        pid = spawn(cmd, logs / f"{key}.log", _env(settings))
        pid_file.write_text(str(pid))
        pid_file.with_suffix(".json").write_text(
            json.dumps({"spec_hash": _spec_hash(b.spec.model_dump_json()), "port": b.spec.port})
        )
        started.append(key)
        say(
            f"starting balancer {b.team}/{b.pool}/{b.spec.name} on {b.spec.ip_address}:{b.spec.port} (pid {pid})"
        )
    deadline = time.monotonic() + wait_s
    for key in started:
        b = wanted[key]
        pid = read_pid(pids / f"{key}.pid")
        while (
            time.monotonic() < deadline
            and pid_alive(pid)
            and not port_open("127.0.0.1", b.spec.effective_admin_port, 0.2)
        ):
            time.sleep(0.1)
        if not pid_alive(pid):
            say(f"warning: balancer {b.spec.name} exited at start; see {logs / f'{key}.log'}")
    return started


def down(settings: Settings, *, say=print) -> None:  # type: ignore[no-untyped-def]
    pids, _ = _dirs(settings)
    for pid_file in sorted(pids.glob(f"{PREFIX}*.pid")):
        if stop(read_pid(pid_file), 10):
            say(f"balancer {pid_file.stem[len(PREFIX) :]} stopped")
        pid_file.unlink(missing_ok=True)
        pid_file.with_suffix(".json").unlink(missing_ok=True)


def status(settings: Settings) -> list[Component]:
    pids, logs = _dirs(settings)
    out = []
    for pid_file in sorted(pids.glob(f"{PREFIX}*.pid")):
        pid = read_pid(pid_file)
        meta = pid_file.with_suffix(".json")
        port = json.loads(meta.read_text()).get("port") if meta.exists() else None
        out.append(
            Component(
                f"balancer {pid_file.stem[len(PREFIX) :]}",
                pid,
                pid_alive(pid),
                logs / f"{pid_file.stem}.log",
                f"port {port}" if port else "",
            )
        )
    return out


def ensure_schedule(settings: Settings) -> None:
    """Create (or update) poolctl's Schedules (statistics roll-up, housekeeping); called by `poolctl dev up`."""
    from poolctl.starter.runner import run_command
    from poolctl.starter.schedules import ensure_schedules
    from poolctl.temporal_client import connect

    async def go() -> None:
        await ensure_schedules(await connect(settings), settings)

    run_command(go)


async def after_apply(client: Any, settings: Settings, *, say=print) -> None:  # type: ignore[no-untyped-def]
    """After specs are applied: keep poolctl's Schedules in place; with the dev stack running, start the
    newly declared built-in balancers (the pools' membership syncs retry until they answer)."""
    import asyncio

    from poolctl.starter.schedules import ensure_schedules

    await ensure_schedules(client, settings)
    if pid_alive(read_pid(_dirs(settings)[0] / "worker.pid")):  # the dev stack's worker runs
        await asyncio.to_thread(up, settings, say=say)
