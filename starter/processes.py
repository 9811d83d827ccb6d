"""The dev stack's background processes: spawned detached with a log, known by their pid files, stopped only
through those pids, and the local ports they hold (with which process holds a port)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class Component:
    name: str
    pid: int | None
    alive: bool
    log: Path
    detail: str = ""


def read_pid(path: Path) -> int | None:
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


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class PortHolder:
    """The process listening on a local TCP port: its pid and command line (empty when not readable)."""

    pid: int
    cmdline: list[str]

    def describe(self) -> str:
        """`pid N (command line)` on one line (an argument's own newlines become spaces)."""
        cmd = " ".join(" ".join(self.cmdline).split())
        return f"pid {self.pid} ({cmd[:120]})" if cmd else f"pid {self.pid}"


def port_holder(port: int) -> PortHolder | None:
    """The process listening on TCP `port` on any local address, or None (nobody, or not visible to us)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                cmdline = psutil.Process(c.pid).cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                cmdline = []
            return PortHolder(c.pid, cmdline)
    return None


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start `cmd` in its own session (it outlives this command), output appended to `log`. Returns the pid."""
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


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stop(pid: int | None, timeout: float) -> bool:
    """SIGTERM the process group `pid` leads (a process this stack spawned with `spawn`), SIGKILL after
    `timeout` s. True if it was alive."""
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
